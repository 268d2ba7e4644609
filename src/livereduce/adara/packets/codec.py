"""Packet codec: whole packets to and from bytes, and the table of packet classes by format
word. The header layout is in :mod:`livereduce.adara.packets.wire`; the errors raised are those
of :mod:`livereduce.adara.errors`.
"""

from __future__ import annotations

import logging

from livereduce.adara.codes import PacketType
from livereduce.adara.errors import (
    BadPayloadLengthError,
    TruncatedPacketError,
    UnknownPacketTypeError,
)
from livereduce.adara.packets import control, events, metadata, rtdl
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
    metadata.VariableU32Array,
    metadata.VariableDoubleArray,
    events.BankedEvent,
    events.BeamMonitorEvent,
    control.Heartbeat,
    control.DataDone,
    rtdl.Rtdl,
    control.StreamAnnotation,
    control.Sync,
)
"""Every packet class :func:`encode` and :func:`decode` handle."""

log = logging.getLogger("livereduce.adara.packets")

_CLASS_OF: dict[int, type[Packet]] = {t: cls for cls in PACKET_CLASSES for t in cls.TYPES}

_PACKET_TYPES: dict[int, PacketType] = {t.value: t for t in PacketType}

DECODABLE: frozenset[PacketType] = frozenset(PacketType(t) for t in _CLASS_OF)
"""The packet types :func:`decode` has a layout for; see :func:`decodable` for newer versions."""

_LATEST: dict[int, PacketType] = {}
"""Base type id -> the newest format word of it that has a layout."""
for _type in sorted(DECODABLE):
    _LATEST[_type.base_type] = _type

_WARNED_NEWER: set[int] = set()
"""Format words of newer versions already warned about (once per type and version)."""


def decodable(format_word: int) -> bool:
    """Whether :func:`decode_payload` reads packets of ``format_word``: a known layout, or a
    version newer than the newest known one of a known base type (read with that layout, as
    ADARA's parser dispatches on the base type)."""
    if format_word in _CLASS_OF:
        return True
    latest = _LATEST.get(format_word >> 8)
    return latest is not None and format_word & 0xFF > latest.version


def layout_of(format_word: int) -> PacketType | None:
    """The format word whose layout reads ``format_word`` (itself when known, the newest known
    version of its base type for a newer version), None when there is none. Logs one warning
    per newer format word."""
    known = _PACKET_TYPES.get(format_word)
    if known is not None and known in _CLASS_OF:
        return known
    if not decodable(format_word):
        return None
    latest = _LATEST[format_word >> 8]
    if format_word not in _WARNED_NEWER:
        _WARNED_NEWER.add(format_word)
        log.warning(
            "ADARA packet type 0x%06x is version %d of %s, newer than this livereduce knows: "
            "read with the version %d layout",
            format_word,
            format_word & 0xFF,
            latest.name.rsplit("_V", 1)[0],
            latest.version,
        )
    return latest


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
    TruncatedPacketError when fewer than 16 bytes are given. The payload length is returned as
    declared, even when it is not a multiple of 4 (:func:`check_length` says so): the stream
    parser skips such a packet by its declared length. The timestamp's nanosecond word is taken
    as is, even when it is 10**9 or more (Mantid's client hello sends such values).
    """
    if len(data) < HEADER_SIZE:
        raise TruncatedPacketError(
            f"only {len(data)} of the {HEADER_SIZE} header bytes", offset=offset
        )
    payload_length, format_word, seconds, nanoseconds = HEADER.unpack_from(data)
    packet_type = _PACKET_TYPES.get(format_word, format_word)
    return build(
        Header,
        payload_length=payload_length,
        packet_type=packet_type,
        timestamp_ns=seconds * NS_PER_S + nanoseconds + EPICS_EPOCH_NS,
    )


def check_length(header: Header, offset: int | None = 0) -> None:
    """BadPayloadLengthError when ``header`` declares a payload that is not a multiple of 4
    bytes (every ADARA payload is whole u32 words)."""
    if header.payload_length % 4:
        raise BadPayloadLengthError(
            f"payload length {header.payload_length} is not a multiple of 4",
            packet_type=header.packet_type,
            offset=offset,
        )


def decode_payload(header: Header, payload: bytes | memoryview, offset: int | None = 0) -> Packet:
    """Decode a payload whose header is already decoded; ``payload`` must be exactly
    ``header.payload_length`` bytes of immutable memory (``bytes`` or a memoryview of
    ``bytes``): event arrays are read-only views on it.

    A newer version of a known type is read with the newest layout known (:func:`layout_of`).
    Raises UnknownPacketTypeError for a type that is not :func:`decodable`, and
    BadPayloadLengthError / BadFieldError for malformed payloads.
    """
    layout = layout_of(header.packet_type)
    if layout is None:
        raise UnknownPacketTypeError(
            "no decoder for this packet type", packet_type=header.packet_type, offset=offset
        )
    if len(payload) != header.payload_length:
        raise TruncatedPacketError(
            f"payload is {len(payload)} bytes, the header says {header.payload_length}",
            packet_type=header.packet_type,
            offset=offset,
        )
    return _CLASS_OF[layout]._decode(
        layout, header.timestamp_ns, payload, PayloadContext(header.packet_type, offset)
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
    check_length(header, offset)
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
