"""A small ADARA client: connect to an SMS, send the client hello, read packets in the
background.

A reader thread receives bytes, frames and decodes them with
:class:`~livereduce.adara.parser.StreamParser` and puts packets on a queue bounded in packets
and in bytes (``queue_packets``, ``queue_bytes``: the wire bytes of the queued packets). When
the consumer falls behind, the reader stops receiving, the socket's buffers fill up and TCP
makes the SMS wait: back-pressure, nothing is dropped. The ADARA listener drains the queue into
its chunk buffer, which has its own bound in bytes and stops draining when full.

With ``background=False`` there is no reader thread and no queue: the consumer calls
:meth:`AdaraClient.receive`, which reads the socket once and returns the packets completed by
those bytes, in order, so a consumer that handles each packet before it reads again holds at
most one read's worth of packets (the fed bytes are freed at once and their memory reused by
the next read) and back-pressure is simply not reading.

Failures travel the same queue (or the same list), in order, so the consumer sees every packet
that came before them: :class:`ConnectionLost` when the SMS closes the connection or the
network fails (saying how many bytes of an incomplete packet were dropped), the parser's
:class:`~livereduce.adara.errors.AdaraProtocolError` for a malformed packet. A malformed but
correctly framed packet is skipped and reading goes on; a framing error ends the connection.
:meth:`AdaraClient.close` returns within about a second whatever the reader is doing.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator

from livereduce.adara import packets
from livereduce.adara.errors import AdaraProtocolError
from livereduce.adara.parser import StreamParser

log = logging.getLogger("livereduce.adara.client")

QUEUE_PACKETS = 4096
"""Packets buffered between the reader thread and the consumer: at 60 Hz and ~4 packets per
pulse, about 17 s of stream, enough to ride out a slow processing script."""
QUEUE_BYTES = 64 << 20
"""Wire bytes of packets buffered between the reader thread and the consumer: a few pulses of a
10**8 events/s stream (13 MB each), so a busy stream cannot make the queue hold gigabytes.
One packet larger than this (up to the parser's maximum payload) is still queued, alone."""
RECV_BYTES = 1 << 20
"""Bytes asked of one recv(); a pulse of a busy instrument is a few MB."""
_POLL_S = 0.1
"""How often a reader thread blocked on a full queue checks for close()."""


class ConnectionLost(Exception):
    """The connection to the SMS ended: closed by the SMS, reset, or closed by us. The message
    names the address and says how; ``dropped_bytes`` is the size of the incomplete packet
    that was discarded (0 when the stream ended on a packet boundary)."""

    def __init__(self, message: str, dropped_bytes: int = 0) -> None:
        super().__init__(message)
        self.dropped_bytes = dropped_bytes


class AdaraClient:
    """One connection to an SMS.

    ``start_time_ns`` is the client hello's start time: :data:`packets.START_NOW` (join the
    live stream), :data:`packets.START_OF_RUN` (the current run from its first pulse) or a Unix
    time in ns. ``connect()`` raises OSError (refused, unreachable, timeout after
    ``connect_timeout_s``). ``get()`` returns packets in stream order and raises the failures
    described in the module docstring. With ``background`` False no reader thread is started
    and the caller reads with :meth:`receive` instead of :meth:`get`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        start_time_ns: int = packets.START_NOW,
        connect_timeout_s: float = 5.0,
        queue_packets: int = QUEUE_PACKETS,
        queue_bytes: int = QUEUE_BYTES,
        background: bool = True,
    ) -> None:
        self.address = f"{host}:{port}"
        self._host_port = (host, port)
        self.start_time_ns = start_time_ns
        self.connect_timeout_s = connect_timeout_s
        self.last_packet_monotonic = time.monotonic()
        """Monotonic time of the latest complete packet from the SMS (heartbeats included):
        bytes that never complete a packet (a drip, a header with a huge length) keep a stream
        stale."""
        self._queue: deque[tuple[packets.Packet | BaseException, int]] = deque()
        self._queue_packets = queue_packets
        self._queue_bytes = queue_bytes
        self._queued_bytes = 0
        self._queue_changed = threading.Condition()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._ended: BaseException | None = None
        self.parser = StreamParser()
        self._put_offset = 0  # stream offset up to which bytes were accounted to queued packets
        self._background = background
        self._malformed_bytes = 0  # parser.malformed_bytes already accounted to errors

    def connect(self) -> None:
        """Connect, send the client hello and start the reader thread.
        Raises OSError when the SMS cannot be reached, RuntimeError when already connected
        (a second reader would feed the same parser)."""
        if self._sock is not None:
            raise RuntimeError(f"already connected to the SMS at {self.address}")
        sock = socket.create_connection(self._host_port, timeout=self.connect_timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            hello = packets.ClientHello(
                timestamp_ns=time.time_ns(), start_time_ns=self.start_time_ns, version=0
            )
            sock.sendall(packets.encode(hello))
            sock.settimeout(None)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.last_packet_monotonic = time.monotonic()
        if not self._background:
            return
        self._thread = threading.Thread(
            target=self._read, args=(sock,), name=f"adara-client-{self.address}", daemon=True
        )
        self._thread.start()

    def get(self, timeout_s: float | None = None) -> packets.Packet | None:
        """The next packet, or None when none arrived within ``timeout_s`` seconds (None:
        wait forever). Raises ConnectionLost once the connection has ended and every packet
        before the end was returned (and on every later call), AdaraProtocolError for a
        malformed packet; RuntimeError without a reader thread (``background`` False)."""
        if not self._background:
            raise RuntimeError("get() reads the queue of a reader thread: receive() without one")
        with self._queue_changed:
            if self._ended is not None and not self._queue:
                raise self._ended
            if not self._queue_changed.wait_for(lambda: self._queue, timeout_s):
                return None
            item, size = self._queue.popleft()
            self._queued_bytes -= size
            self._queue_changed.notify_all()
        if isinstance(item, ConnectionLost):
            self._ended = item
        if isinstance(item, BaseException):
            raise item
        return item

    @property
    def queued_bytes(self) -> int:
        """Wire bytes of the packets waiting in the queue."""
        return self._queued_bytes

    @property
    def ended(self) -> BaseException | None:
        """The failure that ended the connection, once get() has delivered it."""
        return self._ended

    def receive(
        self, timeout_s: float | None = None
    ) -> list[tuple[packets.Packet | AdaraProtocolError, int]]:
        """Without a reader thread (``background`` False): read the socket once, waiting at most
        ``timeout_s`` seconds (None: forever), and return what those bytes completed, in stream
        order, as ``(item, bytes)`` pairs: a decoded packet and its wire bytes, or the
        AdaraProtocolError of a malformed packet and the bytes skipped for it. An empty list
        when nothing arrived in time or the bytes completed no packet. Raises ConnectionLost
        once the connection ended (after the items before the end were returned, and on every
        later call), RuntimeError with a reader thread or before :meth:`connect`."""
        sock = self._sock
        if self._background or sock is None:
            raise RuntimeError("receive() reads without a reader thread, after connect()")
        if self._ended is not None:
            raise self._ended
        try:
            sock.settimeout(timeout_s)
            data = sock.recv(RECV_BYTES)
        except TimeoutError:
            return []
        except OSError as exc:
            self._ended = self._lost(f"connection to the SMS at {self.address} failed: {exc}")
            raise self._ended from None
        if not data:
            self._ended = self._lost(f"the SMS at {self.address} closed the connection")
            raise self._ended
        items = list(self._decode(data))
        if self.parser.broken:
            self._ended = self._lost(
                f"stream from the SMS at {self.address} cannot be framed any more"
            )
        return items

    def _read(self, sock: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                data = sock.recv(RECV_BYTES)
            except OSError as exc:
                self._put(self._lost(f"connection to the SMS at {self.address} failed: {exc}"))
                return
            if not data:
                self._put(self._lost(f"the SMS at {self.address} closed the connection"))
                return
            for item, size in self._decode(data):
                # an error holds no bytes: only packets count towards queue_bytes
                self._put(item, 0 if isinstance(item, AdaraProtocolError) else size)
                if self._closed.is_set():
                    return  # the rest of this read is not wanted any more
            if self.parser.broken:
                self._put(
                    self._lost(f"stream from the SMS at {self.address} cannot be framed any more")
                )
                return

    def _decode(self, data: bytes) -> Iterator[tuple[packets.Packet | AdaraProtocolError, int]]:
        """The packets and protocol errors that ``data`` completes, each with its bytes (see
        :meth:`receive`), as they are decoded; it stops where the parser lost the packet
        boundaries (``parser.broken``)."""
        parser = self.parser
        feed = parser.feed(data)
        while True:
            try:
                for packet in feed:
                    self.last_packet_monotonic = time.monotonic()
                    consumed = parser.offset
                    yield packet, consumed - self._put_offset
                    self._put_offset = consumed
                return
            except AdaraProtocolError as exc:
                yield exc, parser.malformed_bytes - self._malformed_bytes
                self._malformed_bytes = parser.malformed_bytes
                self._put_offset = parser.offset
                if parser.broken:
                    return
                feed = parser.feed(b"")

    def _lost(self, how: str) -> ConnectionLost:
        """The ConnectionLost for a connection that ended ``how``."""
        if self._closed.is_set():
            how = f"connection to the SMS at {self.address} closed by the client"
        dropped = self.parser.buffered
        if dropped:
            how += f"; {dropped} bytes of an incomplete packet dropped"
        return ConnectionLost(how, dropped)

    def _put(self, item: packets.Packet | BaseException, size: int = 0) -> None:
        """Queue ``item`` (``size``: its wire bytes), waiting while the queue is full; gives
        up once the client is closed. A packet fits an empty queue whatever its size."""

        def full() -> bool:
            return len(self._queue) >= self._queue_packets or bool(
                self._queue and self._queued_bytes + size > self._queue_bytes
            )

        with self._queue_changed:
            while full():
                if self._closed.is_set():
                    return
                self._queue_changed.wait(_POLL_S)
            self._queue.append((item, size))
            self._queued_bytes += size
            self._queue_changed.notify_all()

    def close(self) -> None:
        """Stop reading and close the socket; returns promptly. Safe to call twice."""
        self._closed.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
            if self._thread.is_alive():
                log.warning("reader thread for %s did not stop within 2 s", self.address)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> AdaraClient:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
