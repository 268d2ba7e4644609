"""Incremental ADARA stream parser: bytes in, whole decoded packets out.

Usage::

    parser = StreamParser()
    for data in chunks_from_socket:
        for packet in parser.feed(data):
            handle(packet)
    parser.close()  # raises TruncatedPacketError when the stream ended inside a packet

Bytes may arrive split anywhere, one byte at a time included. Packet types without a decoder
(not :func:`livereduce.adara.packets.decodable`) are skipped and counted in
:attr:`StreamParser.skipped`; a newer version of a known type is read with the newest layout
known.

Rules for malformed packets (every decoder of this stream, a faster one included, keeps them):

1. A packet whose declared payload length is within ``max_payload_bytes`` but which does not
   decode (a length that is not a multiple of 4, a payload too short for its type, a count or
   string length running past the payload, a field value the format forbids) is skipped *by
   its declared length*: the parser goes on with the bytes after it, and the connection stays.
   It is counted in :attr:`StreamParser.malformed` (format word -> packets) and
   :attr:`StreamParser.malformed_bytes`, and the iterator raises its
   :mod:`livereduce.adara.errors` error (naming the packet type, its stream offset and the
   problem) once, so the consumer can log it; the next ``feed`` goes on after it.
2. Only a declared length beyond ``max_payload_bytes`` breaks the framing: the parser is
   *broken* (OversizePacketError on every later call) and the consumer must reconnect.

Memory is bounded: a header declaring more than ``max_payload_bytes`` is rejected as soon as its
16 bytes are in, before any payload is buffered, so the parser holds at most one incomplete
packet (header plus at most ``max_payload_bytes``) besides the bytes of the latest ``feed``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from livereduce.adara.errors import AdaraProtocolError, OversizePacketError, TruncatedPacketError
from livereduce.adara.packets import (
    HEADER_SIZE,
    Header,
    Packet,
    check_length,
    decodable,
    decode_header,
    decode_payload,
)

MAX_PAYLOAD_BYTES = 32 * 1024 * 1024
"""Largest payload accepted, 32 MiB. A banked event packet carries one pulse: a 10**8 events/s
stream at 60 Hz puts 1.67 M events of 8 bytes, about 13.3 MB, in one packet, so 32 MiB leaves a
2.4x margin for bursts while bounding what one header can make us buffer. (Mantid's ADARA
parser stops at 8 MiB, which such a stream would exceed.)"""

MAX_SKIPPED_KINDS = 256
"""Distinct unknown format words counted one by one in :attr:`StreamParser.skipped`; packets of
further words count under :data:`OTHER_TYPES`, so a stream of made-up types cannot grow it."""
OTHER_TYPES = -1
"""The :attr:`StreamParser.skipped` key of unknown packets beyond :data:`MAX_SKIPPED_KINDS`."""

_SMALL_PIECE = 4096
"""Fed pieces shorter than this count as small for the joining below."""
_MAX_SMALL_RUN = 256
"""Consecutive small pieces joined into one, so one-byte feeding stays memory-proportional."""


class StreamParser:
    """Frames and decodes an ADARA byte stream fed in arbitrary pieces.

    ``max_payload_bytes``: headers declaring a longer payload raise OversizePacketError.

    After a framing error (a payload length over the maximum) the packet boundaries are lost:
    the parser is *broken* and every later :meth:`feed` raises the same error again; make a new
    parser on a fresh connection. After any other error (BadPayloadLengthError or BadFieldError
    of a packet within the maximum) the bad packet is dropped by its declared length and the
    next iteration goes on with the bytes after it (the module docstring's rules).

    Fed pieces are kept as immutable ``bytes`` and joined once per packet at most; a packet that
    lies inside one fed piece is decoded in place, so the event arrays of a large pulse are
    views on the very bytes that were fed (no copy at all).

    Counters: ``packets`` (decoded packets yielded), ``skipped`` (Counter of format word ->
    packets skipped because no decoder exists; at most MAX_SKIPPED_KINDS words, the rest
    under OTHER_TYPES), ``malformed`` (Counter of format word ->
    malformed packets dropped), ``malformed_bytes`` (their bytes, headers included),
    ``offset`` (stream bytes consumed so far).
    Not thread-safe: one thread feeds and iterates.
    """

    def __init__(self, *, max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.packets = 0
        self.skipped: Counter[int] = Counter()
        self.malformed: Counter[int] = Counter()
        self.malformed_bytes = 0
        self._head = b""  # the unconsumed bytes start at _head[_position] ...
        self._position = 0
        self._tail: list[bytes] = []  # ... and go on through these pieces
        self._tail_bytes = 0
        self._small_run = 0  # trailing pieces of _tail shorter than _SMALL_PIECE
        self._consumed = 0  # stream offset of _head[_position]
        self._header: Header | None = None  # header of the packet at _position, once read
        self._broken: AdaraProtocolError | None = None

    @property
    def offset(self) -> int:
        """Stream offset of the first byte not yet consumed (the next packet's start)."""
        return self._consumed

    @property
    def buffered(self) -> int:
        """Bytes held that belong to packets not yet complete (or not yet iterated over)."""
        return len(self._head) - self._position + self._tail_bytes

    @property
    def broken(self) -> bool:
        """Whether the packet boundaries are lost (a framing error): every feed raises."""
        return self._broken is not None

    @property
    def skipped_count(self) -> int:
        """Total number of packets skipped as unknown types."""
        return self.skipped.total()

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[Packet]:
        """Buffer ``data`` now and return an iterator over the whole packets now available.

        The iterator raises the packet's protocol error when it reaches a malformed packet
        (packets before it have been yielded). Bytes not iterated over stay buffered and come
        out of the next call's iterator. ``data`` that is not ``bytes`` is copied.
        """
        if self._broken is not None:
            raise self._broken
        if data:
            piece = data if isinstance(data, bytes) else bytes(data)
            self._tail.append(piece)
            self._tail_bytes += len(piece)
            self._small_run = self._small_run + 1 if len(piece) < _SMALL_PIECE else 0
            if self._small_run >= _MAX_SMALL_RUN:
                # many tiny pieces (one byte at a time) cost ~40 bytes of overhead each:
                # join them so buffering stays proportional to the bytes held
                run = self._tail[-self._small_run :]
                del self._tail[-self._small_run :]
                self._tail.append(b"".join(run))
                self._small_run = 0
        return self._packets()

    def close(self) -> None:
        """Declare the end of the stream. Raises TruncatedPacketError when it ended inside a
        packet, or the parser's framing error when it is broken."""
        if self._broken is not None:
            raise self._broken
        if self.buffered:
            packet_type = self._header.packet_type if self._header is not None else None
            raise TruncatedPacketError(
                f"the stream ended {self.buffered} bytes into a packet",
                packet_type=packet_type,
                offset=self.offset,
            )

    def _packets(self) -> Iterator[Packet]:
        while True:
            if self._broken is not None:
                raise self._broken
            packet = self._next()
            if packet is None:
                return
            yield packet

    def _next(self) -> Packet | None:
        """The next decoded packet, or None when more bytes are needed."""
        while True:
            if self._position == len(self._head) and self._tail:
                self._next_piece()
            buffered = len(self._head) - self._position + self._tail_bytes
            header = self._header
            if header is None:
                if buffered < HEADER_SIZE:
                    return None
                header = self._read_header()
            size = HEADER_SIZE + header.payload_length
            if buffered < size:
                return None
            offset = self._consumed
            self._header = None
            if not decodable(header.packet_type):
                self._skip(size)
                word = int(header.packet_type)
                if word not in self.skipped and len(self.skipped) >= MAX_SKIPPED_KINDS:
                    word = OTHER_TYPES
                self.skipped[word] += 1
                continue
            try:
                check_length(header, offset)
            except AdaraProtocolError:
                self._skip(size)
                self._count_malformed(header, size)
                raise
            self._contiguous(size)
            start = self._position + HEADER_SIZE
            payload = memoryview(self._head)[start : self._position + size]
            self._position += size
            self._consumed += size
            try:
                packet = decode_payload(header, payload, offset)
            except AdaraProtocolError:
                self._count_malformed(header, size)
                raise
            self.packets += 1
            return packet

    def _count_malformed(self, header: Header, size: int) -> None:
        self.malformed[int(header.packet_type)] += 1
        self.malformed_bytes += size

    def _read_header(self) -> Header:
        try:
            header = decode_header(self._peek(HEADER_SIZE), self._consumed)
        except AdaraProtocolError as error:
            self._broken = error
            raise
        if header.payload_length > self.max_payload_bytes:
            self._broken = OversizePacketError(
                f"payload length {header.payload_length} exceeds the maximum "
                f"{self.max_payload_bytes}",
                packet_type=header.packet_type,
                offset=self._consumed,
            )
            raise self._broken
        self._header = header
        return header

    def _peek(self, size: int) -> bytes:
        """The next ``size`` buffered bytes (there are at least that many), without joining
        the rest of the buffer."""
        first = self._head[self._position : self._position + size]
        if len(first) == size:
            return first
        parts = [first]
        have = len(first)
        for piece in self._tail:
            if have >= size:
                break
            parts.append(piece[: size - have])
            have += len(parts[-1])
        return b"".join(parts)

    def _contiguous(self, size: int) -> None:
        """Make the next ``size`` buffered bytes one run of ``_head`` (at most one join)."""
        if len(self._head) - self._position >= size:
            return
        with memoryview(self._head) as head:
            self._head = b"".join([head[self._position :], *self._tail])
        self._position = 0
        self._tail.clear()
        self._tail_bytes = 0
        self._small_run = 0

    def _skip(self, size: int) -> None:
        """Drop the next ``size`` buffered bytes (an unknown packet) without joining them."""
        self._consumed += size
        while size:
            available = len(self._head) - self._position
            if size < available:
                self._position += size
                return
            size -= available
            self._next_piece()

    def _next_piece(self) -> None:
        """Drop the consumed head and make the first tail piece the head."""
        self._head = self._tail.pop(0) if self._tail else b""
        self._tail_bytes -= len(self._head)
        self._position = 0
        self._small_run = min(self._small_run, len(self._tail))
