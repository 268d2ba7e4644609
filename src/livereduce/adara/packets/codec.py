"""Packet codec: whole packets to and from bytes, and the table of packet classes by format
word. The header layout is in :mod:`livereduce.adara.packets.wire`; the errors raised are those
of :mod:`livereduce.adara.errors`.
"""

from __future__ import annotations

from livereduce.adara.errors import (
    BadPayloadLengthError,
    TruncatedPacketError,
    UnknownPacketTypeError,
)
from livereduce.adara.packets import control, events, metadata, rtdl
from livereduce.adara.packets.codes import PacketType
from livereduce.adara.packets.wire import (
    EPICS_EPOCH_NS,
    HEADER,
    HEADER_SIZE,
    NS_PER_S,
    Header,
    Packet,
    PayloadContext,
    build,
    unix_ns_to_epics,
)

PACKET_CLASSES: tuple[type[Packet], ...] = (
    control.ClientHello,
    control.RunStatus,
    metadata.RunInfo,
    metadata.Geometry,
    metadata.BeamlineInfo,
    metadata.DeviceDescriptor,
    metadata.VariableU32,
    metadata.VariableDouble,
    metadata.VariableString,
    events.BankedEvent,
    events.BeamMonitorEvent,
    control.Heartbeat,
    control.DataDone,
    rtdl.Rtdl,
    control.StreamAnnotation,
    control.Sync,
)
"""Every packet class :func:`encode` and :func:`decode` handle."""

_CLASS_OF: dict[int, type[Packet]] = {t: cls for cls in PACKET_CLASSES for t in cls.TYPES}

_PACKET_TYPES: dict[int, PacketType] = {t.value: t for t in PacketType}

DECODABLE: frozenset[PacketType] = frozenset(PacketType(t) for t in _CLASS_OF)
"""The packet types :func:`decode` understands; the stream parser skips the others."""


def encode(packet: Packet) -> bytes:
    """The wire bytes of ``packet``: 16-byte header (EPICS time) and payload padded to 4 bytes.

    Raises ValueError when a field does not fit its wire width (e.g. a timestamp before 1990
    or after 2126, a name longer than 255 bytes, a v0 packet given v1-only fields).
    """
    payload = packet._payload()
    seconds, nanoseconds = unix_ns_to_epics("timestamp_ns", packet.timestamp_ns)
    return HEADER.pack(len(payload), packet.packet_type, seconds, nanoseconds) + payload


def decode_header(data: bytes | memoryview, offset: int | None = 0) -> Header:
    """Decode the 16-byte header at the start of ``data``.

    ``offset`` (the stream offset of ``data[0]``) only appears in errors. Raises
    TruncatedPacketError when fewer than 16 bytes are given and BadPayloadLengthError when the
    payload length is not a multiple of 4. The timestamp's nanosecond word is taken as is, even
    when it is 10**9 or more (Mantid's client hello sends such values).
    """
    if len(data) < HEADER_SIZE:
        raise TruncatedPacketError(f"only {len(data)} of the {HEADER_SIZE} header bytes")
    payload_length, format_word, seconds, nanoseconds = HEADER.unpack_from(data)
    packet_type = _PACKET_TYPES.get(format_word, format_word)
    if payload_length % 4:
        raise BadPayloadLengthError(
            f"payload length {payload_length} is not a multiple of 4",
            packet_type=format_word,
            offset=offset,
        )
    return build(
        Header,
        payload_length=payload_length,
        packet_type=packet_type,
        timestamp_ns=seconds * NS_PER_S + nanoseconds + EPICS_EPOCH_NS,
    )


def decode_payload(header: Header, payload: bytes | memoryview, offset: int | None = 0) -> Packet:
    """Decode a payload whose header is already decoded; ``payload`` must be exactly
    ``header.payload_length`` bytes of immutable memory (``bytes`` or a memoryview of
    ``bytes``): event arrays are read-only views on it.

    Raises UnknownPacketTypeError for a type not in :data:`DECODABLE`, and
    BadPayloadLengthError / BadFieldError for malformed payloads.
    """
    cls = _CLASS_OF.get(header.packet_type)
    if cls is None:
        raise UnknownPacketTypeError(
            "no decoder for this packet type", packet_type=header.packet_type, offset=offset
        )
    if len(payload) != header.payload_length:
        raise TruncatedPacketError(
            f"payload is {len(payload)} bytes, the header says {header.payload_length}",
            packet_type=header.packet_type,
            offset=offset,
        )
    return cls._decode(
        header.packet_type, header.timestamp_ns, payload, PayloadContext(header.packet_type, offset)
    )


def decode(data: bytes | bytearray | memoryview, offset: int | None = 0) -> Packet:
    """Decode exactly one whole packet (header and payload, nothing after it).

    ``data`` other than ``bytes`` is copied once so that event arrays never see later changes.
    Raises the :mod:`livereduce.adara.errors` errors: TruncatedPacketError when ``data`` is
    shorter than the header says, BadPayloadLengthError when longer or inconsistent,
    BadFieldError, UnknownPacketTypeError.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    header = decode_header(data, offset)
    end = HEADER_SIZE + header.payload_length
    if len(data) < end:
        raise TruncatedPacketError(
            f"{len(data) - HEADER_SIZE} of {header.payload_length} payload bytes",
            packet_type=header.packet_type,
            offset=offset,
        )
    if len(data) > end:
        raise BadPayloadLengthError(
            f"{len(data) - end} bytes follow the {header.payload_length}-byte payload",
            packet_type=header.packet_type,
            offset=offset,
        )
    return decode_payload(header, memoryview(data)[HEADER_SIZE:], offset)
