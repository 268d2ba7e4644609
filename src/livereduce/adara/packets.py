"""ADARA packets: the header and every packet type livereduce reads or writes, both ways.

API summary
-----------
- ``encode(packet) -> bytes``: one whole packet (header + payload, padded to 4 bytes).
- ``decode(data, offset=0) -> Packet``: one whole packet from ``bytes`` (header + payload);
  ``offset`` is only used in error messages. Raises the errors of
  :mod:`livereduce.adara.errors`.
- ``decode_header(data, offset=0) -> Header`` and ``decode_payload(header, payload, offset=0)``
  (``payload``: bytes or a memoryview of bytes) for callers that frame the stream themselves
  (:class:`livereduce.adara.parser.StreamParser`).
- ``PacketType``: IntEnum of format words (``type_id << 8 | version``), e.g.
  ``PacketType.BANKED_EVENT_V1 == 0x400001``; ``.base_type`` and ``.version`` split it.
- Packet dataclasses (frozen, slotted, keyword-only), all with ``timestamp_ns`` (header time,
  Unix epoch, ns) and a ``packet_type`` property; those with two versions take ``version``:
  ``ClientHello(start_time_ns, client_flags, version)``,
  ``RunStatus(run_number, run_start_ns, status: RunStatusCode, file_number, paused,
  pause_file_number, addendum, addendum_file_number, version)``, ``RunInfo(xml)``,
  ``Geometry(xml)``, ``BeamlineInfo(beamline_id, short_name, long_name, target_station,
  version)``, ``DeviceDescriptor(device_id, xml)``,
  ``VariableU32 / VariableDouble / VariableString(device_id, variable_id, status:
  VariableStatus, severity: VariableSeverity, value)``,
  ``BankedEvent(pulse_charge_10pc, pulse_energy_ev, cycle, flags, veto_flags, sources:
  tuple[SourceSection], version)`` with ``SourceSection(source_id, intra_pulse_time_100ns,
  tof_offset_100ns, tof_corrected, banks: tuple[BankSection])`` and ``BankSection(bank_id,
  events)`` (``events``: (N, 2) uint32 array of ``(tof_100ns, pixel_id)``; properties
  ``tof_100ns``, ``pixel_id``; ``BankSection.from_arrays(bank_id, tof_100ns, pixel_id)``);
  ``BankedEvent.event_arrays() -> (bank_id, tof_100ns, pixel_id)`` flat (N,) uint32 arrays
  (the last two are the columns of one new (N, 2) array), ``BankedEvent.banks``,
  ``BankedEvent.event_count``,
  ``BeamMonitorEvent(pulse_charge_10pc, pulse_energy_ev, cycle, flags, veto_flags, monitors:
  tuple[MonitorSection], version)`` with ``MonitorSection(monitor_id, source_id,
  tof_offset_100ns, tof_corrected, events)`` (``events``: (N,) uint32 raw words; properties
  ``tof_100ns``, ``cycle``, ``rising_edge``; ``MonitorSection.from_arrays(...)``) and
  ``BeamMonitorEvent.event_arrays() -> (monitor_id, tof_100ns)``,
  ``Heartbeat()``, ``DataDone()``, ``Rtdl(...)``, ``StreamAnnotation(marker_type, reset_hint,
  scan_index, comment)``, ``Sync(file_offset, comment, signature)``.
- Client hello start times: ``START_NOW`` (0) and ``START_OF_RUN`` (1) are sent as is; any
  other ``start_time_ns`` is a Unix time, sent as EPICS seconds.
- Constants: ``HEADER_FORMAT``, ``HEADER_SIZE``, ``EPICS_EPOCH_OFFSET_S``,
  ``UNMAPPED_BANK_ID``, ``ERROR_BANK_ID``, ``SYNC_SIGNATURE``, ``EVENT_DTYPE``;
  ``DECODABLE`` (the packet types with a decoder), ``PACKET_CLASSES``.
- ``encode`` raises ValueError for values that do not fit their wire fields.

Wire format
-----------
Source: ADARA-Neutrons/adara ``doc/design/1_Network_Protocol/component.tex`` and
``common/ADARA.h`` / ``common/ADARAPackets.{h,cc}`` (ADARA 1.10.4); summary in
reference/mantid-live-data.md §3.2. All fields are little-endian u32 words; every packet is a
multiple of 4 bytes. The 16-byte header (bit 31 on the left, as in the ADARA design document)::

    bit 31                                          8 7            0
        +---------------------------------------------------------+
      0 |             payload length (bytes, u32, multiple of 4)  |
        +--------------------------------------------+------------+
      4 |      type id (24 bits, e.g. 0x4000)        |  version   |  = format word
        +--------------------------------------------+------------+
      8 |       timestamp: seconds since 1990-01-01 UTC (EPICS)   |
        +---------------------------------------------------------+
     12 |       timestamp: nanoseconds                            |
        +---------------------------------------------------------+
     16 |       payload ...                                       |
   byte

For neutron and pulse packets the timestamp is the pulse ID (the pulse time). The EPICS epoch
is converted at this boundary: every packet carries ``timestamp_ns`` in Unix nanoseconds, and
so do run start times. Strings are UTF-8 of a declared length padded with zeros to 4 bytes;
bytes that are not UTF-8 survive a decode/encode round trip (``surrogateescape``).

Event payloads are decoded without per-event Python code: each bank's events are a read-only
numpy view on the packet's bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar

import numpy as np

from livereduce.adara.errors import (
    BadFieldError,
    BadPayloadLengthError,
    TruncatedPacketError,
    UnknownPacketTypeError,
)

HEADER_FORMAT = "<IIII"
"""payload length, format word, EPICS seconds, nanoseconds (ADARA.h ``struct Header``)."""
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)

EPICS_EPOCH_OFFSET_S = 631_152_000
"""Seconds from the Unix epoch to the EPICS epoch 1990-01-01 UTC (ADARA.h EPICS_EPOCH_OFFSET)."""
_NS_PER_S = 1_000_000_000
_EPICS_EPOCH_NS = EPICS_EPOCH_OFFSET_S * _NS_PER_S
_U32_MAX = 0xFFFF_FFFF

START_NOW = 0
"""Client hello start time: join the stream at the current position (Mantid "FromNow")."""
START_OF_RUN = 1
"""Client hello start time: replay the current run from its first pulse (Mantid
"FromStartOfRun")."""

UNMAPPED_BANK_ID = 0xFFFF_FFFF
"""Bank ID of pixels that were not in the pixel mapping table (protocol §Banked Event Section)."""
ERROR_BANK_ID = 0xFFFF_FFFE
"""Bank ID of pixels that had their error bit set by the detector."""

SYNC_SIGNATURE = b"SNSADARAORNL\x00\x00\xf0\x7f"
"""The 16-byte signature that opens a sync packet (protocol §Synchronization)."""

EVENT_DTYPE = np.dtype("<u4")
"""Dtype of every event word on the wire."""

_WORD = struct.Struct("<I")
_PREAMBLE = struct.Struct("<IIII")  # pulse charge, pulse energy, cycle, flags (banked/monitor)
_SOURCE_HEADER = struct.Struct("<IIII")  # source id, intra-pulse time, COR|TOF offset, banks
_BANK_HEADER = struct.Struct("<II")  # bank id, event count
_MONITOR_HEADER = struct.Struct("<III")  # monitor id|event count, source id, COR|TOF offset
_HEADER = struct.Struct(HEADER_FORMAT)


class PacketType(IntEnum):
    """ADARA format words, ``type_id << 8 | version`` (ADARA.h ``PacketType``).

    All types of ADARA 1.10.4 are named, so errors and skip counters can say what they saw;
    :data:`DECODABLE` lists the ones this module decodes.
    """

    RAW_EVENT_V0 = 0x000000
    RAW_EVENT_V1 = 0x000001
    RTDL_V0 = 0x000100
    RTDL_V1 = 0x000101
    SOURCE_LIST_V0 = 0x000200
    MAPPED_EVENT_V0 = 0x000300
    MAPPED_EVENT_V1 = 0x000301
    BANKED_EVENT_V0 = 0x400000
    BANKED_EVENT_V1 = 0x400001
    BANKED_EVENT_STATE_V0 = 0x410000
    BEAM_MONITOR_EVENT_V0 = 0x400100
    BEAM_MONITOR_EVENT_V1 = 0x400101
    PIXEL_MAPPING_V0 = 0x400200
    PIXEL_MAPPING_ALT_V0 = 0x410200
    PIXEL_MAPPING_ALT_V1 = 0x410201
    RUN_STATUS_V0 = 0x400300
    RUN_STATUS_V1 = 0x400301
    RUN_INFO_V0 = 0x400400
    TRANS_COMPLETE_V0 = 0x400500
    CLIENT_HELLO_V0 = 0x400600
    CLIENT_HELLO_V1 = 0x400601
    STREAM_ANNOTATION_V0 = 0x400700
    SYNC_V0 = 0x400800
    HEARTBEAT_V0 = 0x400900
    GEOMETRY_V0 = 0x400A00
    BEAMLINE_INFO_V0 = 0x400B00
    BEAMLINE_INFO_V1 = 0x400B01
    DATA_DONE_V0 = 0x400C00
    BEAM_MONITOR_CONFIG_V0 = 0x400D00
    BEAM_MONITOR_CONFIG_V1 = 0x400D01
    DETECTOR_BANK_SETS_V0 = 0x400E00
    DEVICE_DESCRIPTOR_V0 = 0x800000
    VARIABLE_U32_V0 = 0x800100
    VARIABLE_DOUBLE_V0 = 0x800200
    VARIABLE_STRING_V0 = 0x800300
    VARIABLE_U32_ARRAY_V0 = 0x800400
    VARIABLE_DOUBLE_ARRAY_V0 = 0x800500
    MULT_VARIABLE_U32_V0 = 0x810100
    MULT_VARIABLE_DOUBLE_V0 = 0x810200
    MULT_VARIABLE_STRING_V0 = 0x810300
    MULT_VARIABLE_U32_ARRAY_V0 = 0x810400
    MULT_VARIABLE_DOUBLE_ARRAY_V0 = 0x810500

    @property
    def base_type(self) -> int:
        """The 24-bit type id (e.g. 0x4000 for banked events)."""
        return self.value >> 8

    @property
    def version(self) -> int:
        """The 8-bit packet version."""
        return self.value & 0xFF


class RunStatusCode(IntEnum):
    """Run status of a run status packet (ADARA.h ``RunStatus``)."""

    NO_RUN = 0
    NEW_RUN = 1
    RUN_EOF = 2
    RUN_BOF = 3
    END_RUN = 4
    STATE = 5
    PROLOGUE = 6


class VariableStatus(IntEnum):
    """EPICS alarm status of a variable value (ADARA.h ``VariableStatus``)."""

    OK = 0
    READ_ERROR = 1
    WRITE_ERROR = 2
    HIHI_LIMIT = 3
    HIGH_LIMIT = 4
    LOLO_LIMIT = 5
    LOW_LIMIT = 6
    BAD_STATE = 7
    CHANGED_STATE = 8
    NO_COMMUNICATION = 9
    COMMUNICATION_TIMEOUT = 10
    HARDWARE_LIMIT = 11
    BAD_CALCULATION = 12
    INVALID_SCAN = 13
    LINK_FAILED = 14
    INVALID_STATE = 15
    BAD_SUBROUTINE = 16
    UNDEFINED_ALARM = 17
    DISABLED = 18
    SIMULATED = 19
    READ_PERMISSION = 20
    WRITE_PERMISSION = 21
    UPSTREAM_DISCONNECTED = 0xFFFE
    NOT_REPORTED = 0xFFFF


class VariableSeverity(IntEnum):
    """EPICS alarm severity of a variable value (ADARA.h ``VariableSeverity``)."""

    OK = 0
    MINOR_ALARM = 1
    MAJOR_ALARM = 2
    INVALID = 3
    NOT_REPORTED = 0xFFFF


class MarkerType(IntEnum):
    """Stream annotation marker types (ADARA.h ``MarkerType``)."""

    GENERIC = 0
    SCAN_START = 1
    SCAN_STOP = 2
    PAUSE = 3
    RESUME = 4
    OVERALL_RUN_COMMENT = 5
    SYSTEM = 6


class BankedEventFlag(IntEnum):
    """Bits of the banked / beam monitor event ``flags`` field (protocol table
    "Banked Event Flag Definitions"; Mantid's names)."""

    ERROR_PIXELS = 0x01
    PARTIAL_DATA = 0x02
    PULSE_VETO = 0x04
    MISSING_RTDL = 0x08
    MAPPING_ERROR = 0x10
    DUPLICATE_PULSE = 0x20
    PCHARGE_UNCORRECTED = 0x40
    VETO_UNCORRECTED = 0x80


# ---------------------------------------------------------------------------------- helpers


class _Ctx:
    """Where a payload came from, for error messages."""

    __slots__ = ("offset", "packet_type")

    def __init__(self, packet_type: int, offset: int | None):
        self.packet_type = packet_type
        self.offset = offset

    def length(self, problem: str) -> BadPayloadLengthError:
        return BadPayloadLengthError(problem, packet_type=self.packet_type, offset=self.offset)

    def field(self, problem: str) -> BadFieldError:
        return BadFieldError(problem, packet_type=self.packet_type, offset=self.offset)


def _check_uint(name: str, value: int, bits: int = 32) -> int:
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name}={value} does not fit in {bits} unsigned bits")
    return value


def _pad(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)


def _text_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _epics_to_unix_ns(seconds: int, nanoseconds: int = 0) -> int:
    return seconds * _NS_PER_S + nanoseconds + _EPICS_EPOCH_NS


def _unix_ns_to_epics(name: str, unix_ns: int) -> tuple[int, int]:
    seconds, nanoseconds = divmod(unix_ns - _EPICS_EPOCH_NS, _NS_PER_S)
    if not 0 <= seconds <= _U32_MAX:
        raise ValueError(
            f"{name}={unix_ns} ns is outside the EPICS u32 range (1990-01-01 .. 2126-02-07 UTC)"
        )
    return seconds, nanoseconds


def _exact(ctx: _Ctx, payload: bytes, expected: int) -> None:
    if len(payload) != expected:
        raise ctx.length(f"payload is {len(payload)} bytes, this type has exactly {expected}")


def _at_least(ctx: _Ctx, payload: bytes, minimum: int) -> None:
    if len(payload) < minimum:
        raise ctx.length(f"payload is {len(payload)} bytes, this type needs at least {minimum}")


def _sized_text(ctx: _Ctx, payload: bytes, start: int, size: int, what: str) -> str:
    available = len(payload) - start
    if size > available:
        raise ctx.length(f"{what} declares {size} bytes but the payload holds {available}")
    return _text(bytes(payload[start : start + size]))


def _enum(ctx: _Ctx, enum: type[IntEnum], value: int, what: str):
    try:
        return enum(value)
    except ValueError:
        raise ctx.field(f"{what} {value} is not a defined {enum.__name__}") from None


def _build(cls, **fields):
    """An instance of the frozen dataclass ``cls`` from already-validated decoded ``fields``,
    without running ``__init__`` / ``__post_init__``: about twice as fast, which matters for
    the per-pulse packets (the decode hot path). Every field must be given."""
    instance = object.__new__(cls)
    for name, value in fields.items():
        _setattr(instance, name, value)
    return instance


_setattr = object.__setattr__


def _version_of(cls, version: int, packet_types: tuple[PacketType, ...]) -> PacketType:
    for packet_type in packet_types:
        if packet_type.version == version:
            return packet_type
    raise ValueError(f"{cls.__name__} has no version {version}")


# ---------------------------------------------------------------------------------- packets


@dataclass(frozen=True, slots=True, kw_only=True)
class Header:
    """The 16-byte packet header, decoded: ``payload_length`` (bytes), ``packet_type``
    (format word; a :class:`PacketType` when known, else a plain int) and ``timestamp_ns``
    (Unix ns)."""

    payload_length: int
    packet_type: int
    timestamp_ns: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Packet:
    """Base of all packets: ``timestamp_ns`` is the header time in Unix nanoseconds (the pulse
    time for event packets)."""

    timestamp_ns: int

    TYPES: ClassVar[tuple[PacketType, ...]] = ()

    @property
    def packet_type(self) -> PacketType:
        """The format word this packet is encoded with."""
        return self.TYPES[0]

    def _payload(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def _decode(cls, packet_type: PacketType, timestamp_ns: int, payload: bytes, ctx: _Ctx):
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientHello(Packet):
    """Client hello (0x4006.0 / .1): the client's first packet; the SMS sends nothing before it.

    ``start_time_ns``: :data:`START_NOW`, :data:`START_OF_RUN`, or a Unix time in ns (sent as
    whole EPICS seconds). ``client_flags`` (v1 only): 0 pause agnostic, 1 no pause data,
    2 send pause data.
    """

    start_time_ns: int = START_NOW
    client_flags: int = 0
    version: int = 1

    TYPES: ClassVar = (PacketType.CLIENT_HELLO_V0, PacketType.CLIENT_HELLO_V1)

    @property
    def packet_type(self) -> PacketType:
        return _version_of(type(self), self.version, self.TYPES)

    def _payload(self) -> bytes:
        if self.start_time_ns in (START_NOW, START_OF_RUN):
            start = self.start_time_ns
        else:
            start, nanoseconds = _unix_ns_to_epics("start_time_ns", self.start_time_ns)
            if nanoseconds or start in (START_NOW, START_OF_RUN):
                raise ValueError(f"start_time_ns={self.start_time_ns} is not a whole EPICS second")
        if self.packet_type.version == 0:
            if self.client_flags:
                raise ValueError("a v0 client hello has no client_flags")
            return _WORD.pack(start)
        return struct.pack("<II", start, _check_uint("client_flags", self.client_flags))

    @classmethod
    def _decode(cls, packet_type, timestamp_ns, payload, ctx):
        version = packet_type.version
        _exact(ctx, payload, 4 if version == 0 else 8)
        (start,) = _WORD.unpack_from(payload)
        flags = _WORD.unpack_from(payload, 4)[0] if version else 0
        start_ns = start if start in (START_NOW, START_OF_RUN) else _epics_to_unix_ns(start)
        return cls(
            timestamp_ns=timestamp_ns, start_time_ns=start_ns, client_flags=flags, version=version
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStatus(Packet):
    """Run status (0x4003.0 / .1): ``run_number`` (0 = no run), ``run_start_ns`` (Unix ns,
    whole seconds on the wire), ``status``, ``file_number`` (24 bits); v1 adds ``paused``
    (8 bits), ``pause_file_number``, ``addendum`` (8 bits), ``addendum_file_number``."""

    run_number: int
    run_start_ns: int
    status: RunStatusCode
    file_number: int = 0
    paused: int = 0
    pause_file_number: int = 0
    addendum: int = 0
    addendum_file_number: int = 0
    version: int = 1

    TYPES: ClassVar = (PacketType.RUN_STATUS_V0, PacketType.RUN_STATUS_V1)

    @property
    def packet_type(self) -> PacketType:
        return _version_of(type(self), self.version, self.TYPES)

    def _payload(self) -> bytes:
        start, nanoseconds = _unix_ns_to_epics("run_start_ns", self.run_start_ns)
        if nanoseconds:
            raise ValueError(f"run_start_ns={self.run_start_ns} is not a whole second")
        words = [
            _check_uint("run_number", self.run_number),
            start,
            (_check_uint("status", self.status, 8) << 24)
            | _check_uint("file_number", self.file_number, 24),
        ]
        extra = (self.paused, self.pause_file_number, self.addendum, self.addendum_file_number)
        if self.packet_type.version == 0:
            if any(extra):
                raise ValueError("a v0 run status has no pause or addendum fields")
        else:
            words.append(
                (_check_uint("paused", self.paused, 8) << 24)
                | _check_uint("pause_file_number", self.pause_file_number, 24)
            )
            words.append(
                (_check_uint("addendum", self.addendum, 8) << 24)
                | _check_uint("addendum_file_number", self.addendum_file_number, 24)
            )
        return struct.pack(f"<{len(words)}I", *words)

    @classmethod
    def _decode(cls, packet_type, timestamp_ns, payload, ctx):
        version = packet_type.version
        _exact(ctx, payload, 12 if version == 0 else 20)
        words = struct.unpack(f"<{len(payload) // 4}I", payload)
        extra = {}
        if version:
            extra = {
                "paused": words[3] >> 24,
                "pause_file_number": words[3] & 0xFFFFFF,
                "addendum": words[4] >> 24,
                "addendum_file_number": words[4] & 0xFFFFFF,
            }
        return cls(
            timestamp_ns=timestamp_ns,
            run_number=words[0],
            run_start_ns=_epics_to_unix_ns(words[1]),
            status=_enum(ctx, RunStatusCode, words[2] >> 24, "run status"),
            file_number=words[2] & 0xFFFFFF,
            version=version,
            **extra,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class _XmlPacket(Packet):
    """A payload of one u32 length and that many bytes of XML text."""

    xml: str = field(repr=False)

    def _payload(self) -> bytes:
        raw = _text_bytes(self.xml)
        return _WORD.pack(len(raw)) + _pad(raw)

    @classmethod
    def _decode(cls, _packet_type, timestamp_ns, payload, ctx):
        _at_least(ctx, payload, 4)
        (size,) = _WORD.unpack_from(payload)
        return cls(timestamp_ns=timestamp_ns, xml=_sized_text(ctx, payload, 4, size, "the XML"))


@dataclass(frozen=True, slots=True, kw_only=True)
class RunInfo(_XmlPacket):
    """Run information (0x4004.0): ``xml``, the ``<runinfo>`` document (run title,
    proposal / experiment identifier, ...)."""

    TYPES: ClassVar = (PacketType.RUN_INFO_V0,)


@dataclass(frozen=True, slots=True, kw_only=True)
class Geometry(_XmlPacket):
    """Geometry (0x400A.0): ``xml``, the instrument definition (Mantid IDF)."""

    TYPES: ClassVar = (PacketType.GEOMETRY_V0,)


@dataclass(frozen=True, slots=True, kw_only=True)
class BeamlineInfo(Packet):
    """Beamline info (0x400B.0 / .1): ``beamline_id`` (e.g. "BL14B"), ``short_name`` (e.g.
    "HYS"), ``long_name`` (e.g. "HYSPEC", the name Mantid loads the instrument by), each at
    most 255 UTF-8 bytes; ``target_station`` (v1; 0 means unspecified, i.e. station 1)."""

    beamline_id: str
    short_name: str
    long_name: str
    target_station: int = 1
    version: int = 1

    TYPES: ClassVar = (PacketType.BEAMLINE_INFO_V0, PacketType.BEAMLINE_INFO_V1)

    @property
    def packet_type(self) -> PacketType:
        return _version_of(type(self), self.version, self.TYPES)

    def _payload(self) -> bytes:
        parts = [_text_bytes(s) for s in (self.beamline_id, self.short_name, self.long_name)]
        for name, raw in zip(("beamline_id", "short_name", "long_name"), parts, strict=True):
            _check_uint(f"len({name})", len(raw), 8)
        station = _check_uint("target_station", self.target_station, 8)
        if self.packet_type.version == 0 and station:
            raise ValueError("a v0 beamline info has no target_station (use 0)")
        sizes = (station << 24) | (len(parts[0]) << 16) | (len(parts[1]) << 8) | len(parts[2])
        return _WORD.pack(sizes) + _pad(b"".join(parts))

    @classmethod
    def _decode(cls, packet_type, timestamp_ns, payload, ctx):
        _at_least(ctx, payload, 4)
        (sizes,) = _WORD.unpack_from(payload)
        id_len, short_len, long_len = (sizes >> 16) & 0xFF, (sizes >> 8) & 0xFF, sizes & 0xFF
        text = _sized_text(ctx, payload, 4, id_len + short_len + long_len, "the beamline names")
        raw = _text_bytes(text)
        return cls(
            timestamp_ns=timestamp_ns,
            beamline_id=_text(raw[:id_len]),
            short_name=_text(raw[id_len : id_len + short_len]),
            long_name=_text(raw[id_len + short_len :]),
            target_station=sizes >> 24,
            version=packet_type.version,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceDescriptor(Packet):
    """Device descriptor (0x8000.0): ``device_id`` and ``xml``, the ``<device>`` document
    naming its process variables (``pv_name``, ``pv_id``, ``pv_type``, ``pv_units``)."""

    device_id: int
    xml: str = field(repr=False)

    TYPES: ClassVar = (PacketType.DEVICE_DESCRIPTOR_V0,)

    def _payload(self) -> bytes:
        raw = _text_bytes(self.xml)
        return struct.pack("<II", _check_uint("device_id", self.device_id), len(raw)) + _pad(raw)

    @classmethod
    def _decode(cls, _packet_type, timestamp_ns, payload, ctx):
        _at_least(ctx, payload, 8)
        device_id, size = struct.unpack_from("<II", payload)
        xml = _sized_text(ctx, payload, 8, size, "the descriptor XML")
        return cls(timestamp_ns=timestamp_ns, device_id=device_id, xml=xml)


@dataclass(frozen=True, slots=True, kw_only=True)
class _VariableValue(Packet):
    """Common part of variable value packets: word 0 device id, word 1 variable id, word 2
    status (high 16 bits) and severity (low 16 bits)."""

    device_id: int
    variable_id: int
    status: VariableStatus = VariableStatus.OK
    severity: VariableSeverity = VariableSeverity.OK

    def _prefix(self) -> bytes:
        return struct.pack(
            "<III",
            _check_uint("device_id", self.device_id),
            _check_uint("variable_id", self.variable_id),
            (_check_uint("status", self.status, 16) << 16)
            | _check_uint("severity", self.severity, 16),
        )

    @staticmethod
    def _decode_prefix(payload: bytes, ctx: _Ctx) -> dict:
        device_id, variable_id, alarm = struct.unpack_from("<III", payload)
        return {
            "device_id": device_id,
            "variable_id": variable_id,
            "status": _enum(ctx, VariableStatus, alarm >> 16, "variable status"),
            "severity": _enum(ctx, VariableSeverity, alarm & 0xFFFF, "variable severity"),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class VariableU32(_VariableValue):
    """Variable value, u32 (0x8001.0): ``value`` of process variable (device_id,
    variable_id) at ``timestamp_ns``."""

    value: int

    TYPES: ClassVar = (PacketType.VARIABLE_U32_V0,)

    def _payload(self) -> bytes:
        return self._prefix() + _WORD.pack(_check_uint("value", self.value))

    @classmethod
    def _decode(cls, _packet_type, timestamp_ns, payload, ctx):
        _exact(ctx, payload, 16)
        prefix = cls._decode_prefix(payload, ctx)
        return cls(timestamp_ns=timestamp_ns, value=_WORD.unpack_from(payload, 12)[0], **prefix)


@dataclass(frozen=True, slots=True, kw_only=True)
class VariableDouble(_VariableValue):
    """Variable value, double (0x8002.0)."""

    value: float

    TYPES: ClassVar = (PacketType.VARIABLE_DOUBLE_V0,)

    def _payload(self) -> bytes:
        return self._prefix() + struct.pack("<d", self.value)

    @classmethod
    def _decode(cls, _packet_type, timestamp_ns, payload, ctx):
        _exact(ctx, payload, 20)
        prefix = cls._decode_prefix(payload, ctx)
        (value,) = struct.unpack_from("<d", payload, 12)
        return cls(timestamp_ns=timestamp_ns, value=value, **prefix)


@dataclass(frozen=True, slots=True, kw_only=True)
class VariableString(_VariableValue):
    """Variable value, string (0x8003.0): word 3 the byte length, then the UTF-8 text."""

    value: str

    TYPES: ClassVar = (PacketType.VARIABLE_STRING_V0,)

    def _payload(self) -> bytes:
        raw = _text_bytes(self.value)
        return self._prefix() + _WORD.pack(len(raw)) + _pad(raw)

    @classmethod
    def _decode(cls, _packet_type, timestamp_ns, payload, ctx):
        _at_least(ctx, payload, 16)
        prefix = cls._decode_prefix(payload, ctx)
        (size,) = _WORD.unpack_from(payload, 12)
        value = _sized_text(ctx, payload, 16, size, "the string value")
        return cls(timestamp_ns=timestamp_ns, value=value, **prefix)


def _as_words(values, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype != EVENT_DTYPE:
        if array.size and (
            array.dtype.kind not in "ui" or array.min() < 0 or array.max() > _U32_MAX
        ):
            raise ValueError(f"{what} must be unsigned 32-bit integers")
        array = array.astype(EVENT_DTYPE)
    return array


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class BankSection:
    """One detector bank's events in one source section.

    ``events``: (N, 2) uint32 array of ``(tof_100ns, pixel_id)`` pairs, as on the wire (a
    read-only view on the packet's bytes after decoding). Compared by value.
    """

    bank_id: int
    events: np.ndarray = field(repr=False)

    def __post_init__(self):
        events = _as_words(self.events, "events")
        if events.ndim != 2 or events.shape[1] != 2:
            raise ValueError(f"events must have shape (N, 2), not {events.shape}")
        object.__setattr__(self, "events", events)

    @classmethod
    def _trusted(cls, bank_id: int, events: np.ndarray) -> BankSection:
        """Build from a decoded (N, 2) uint32 view without re-checking it (the hot path)."""
        section = object.__new__(cls)
        object.__setattr__(section, "bank_id", bank_id)
        object.__setattr__(section, "events", events)
        return section

    @classmethod
    def from_arrays(cls, bank_id: int, tof_100ns, pixel_id) -> BankSection:
        """Build from two equal-length 1-D arrays (time of flight in 100 ns, pixel ID)."""
        return cls(bank_id=bank_id, events=np.stack([tof_100ns, pixel_id], axis=1))

    @property
    def tof_100ns(self) -> np.ndarray:
        """(N,) time of flight of each event, in units of 100 ns (strided view)."""
        return self.events[:, 0]

    @property
    def pixel_id(self) -> np.ndarray:
        """(N,) logical pixel ID of each event (strided view)."""
        return self.events[:, 1]

    def __eq__(self, other):
        if not isinstance(other, BankSection):
            return NotImplemented
        return self.bank_id == other.bank_id and np.array_equal(self.events, other.events)

    __hash__ = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceSection:
    """The events of one hardware event source in one pulse: ``source_id``,
    ``intra_pulse_time_100ns``, ``tof_offset_100ns`` (31 bits; the frame-skew offset that was
    added, or should be added when ``tof_corrected`` is False) and its ``banks``."""

    source_id: int
    intra_pulse_time_100ns: int = 0
    tof_offset_100ns: int = 0
    tof_corrected: bool = True
    banks: tuple[BankSection, ...] = ()


def _pulse_preamble(packet) -> bytes:
    flags = packet.flags
    if packet.packet_type.version == 0:
        if packet.veto_flags:
            raise ValueError("a v0 event packet has no veto_flags")
        _check_uint("flags", flags)
    else:
        flags = (_check_uint("veto_flags", packet.veto_flags, 12) << 20) | _check_uint(
            "flags", flags, 20
        )
    return _PREAMBLE.pack(
        _check_uint("pulse_charge_10pc", packet.pulse_charge_10pc),
        _check_uint("pulse_energy_ev", packet.pulse_energy_ev),
        _check_uint("cycle", packet.cycle),
        flags,
    )


def _decode_pulse_preamble(version: int, payload: bytes) -> dict:
    charge, energy, cycle, flags = _PREAMBLE.unpack_from(payload)
    veto = 0
    if version:
        veto, flags = flags >> 20, flags & 0xFFFFF
    return {
        "pulse_charge_10pc": charge,
        "pulse_energy_ev": energy,
        "cycle": cycle,
        "flags": flags,
        "veto_flags": veto,
        "version": version,
    }


def _cor_word(tof_corrected: bool, tof_offset_100ns: int) -> int:
    return (int(bool(tof_corrected)) << 31) | _check_uint("tof_offset_100ns", tof_offset_100ns, 31)


@dataclass(frozen=True, slots=True, kw_only=True)
class BankedEvent(Packet):
    """Banked event data (0x4000.0 / .1), one packet per pulse; ``timestamp_ns`` is the pulse
    time.

    ``pulse_charge_10pc`` (units of 10 pC), ``pulse_energy_ev``, ``cycle`` (accelerator cycle),
    ``flags`` (:class:`BankedEventFlag` bits; 32 bits in v0, 20 in v1), ``veto_flags`` (v1, 12
    bits, for the previous pulse) and ``sources``.
    """

    pulse_charge_10pc: int = 0
    pulse_energy_ev: int = 0
    cycle: int = 0
    flags: int = 0
    veto_flags: int = 0
    sources: tuple[SourceSection, ...] = ()
    version: int = 1

    TYPES: ClassVar = (PacketType.BANKED_EVENT_V0, PacketType.BANKED_EVENT_V1)

    @property
    def packet_type(self) -> PacketType:
        return _version_of(type(self), self.version, self.TYPES)

    @property
    def banks(self) -> tuple[BankSection, ...]:
        """All bank sections of all sources, in wire order."""
        return tuple(bank for source in self.sources for bank in source.banks)

    @property
    def event_count(self) -> int:
        """Number of events in the packet (all banks, error and unmapped banks included)."""
        return sum(len(bank.events) for source in self.sources for bank in source.banks)

    def event_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The whole packet's events as three flat (N,) uint32 arrays ``(bank_id, tof_100ns,
        pixel_id)`` in wire order, built with one vectorised copy per bank and no per-event
        Python code. ``tof_100ns`` and ``pixel_id`` are the two columns of one new (N, 2)
        array (strided views; ``np.ascontiguousarray`` when a contiguous copy is needed).

        Times of flight are as on the wire: when a source's ``tof_corrected`` is False its
        ``tof_offset_100ns`` has not been added.
        """
        banks = self.banks
        if not banks:
            events = np.empty((0, 2), EVENT_DTYPE)
            return np.empty(0, EVENT_DTYPE), events[:, 0], events[:, 1]
        events = np.concatenate([bank.events for bank in banks])
        bank_id = np.repeat(
            np.array([bank.bank_id for bank in banks], EVENT_DTYPE),
            [len(bank.events) for bank in banks],
        )
        return bank_id, events[:, 0], events[:, 1]

    def _payload(self) -> bytes:
        parts = [_pulse_preamble(self)]
        for source in self.sources:
            parts.append(
                _SOURCE_HEADER.pack(
                    _check_uint("source_id", source.source_id),
                    _check_uint("intra_pulse_time_100ns", source.intra_pulse_time_100ns),
                    _cor_word(source.tof_corrected, source.tof_offset_100ns),
                    len(source.banks),
                )
            )
            for bank in source.banks:
                parts.append(
                    _BANK_HEADER.pack(_check_uint("bank_id", bank.bank_id), len(bank.events))
                )
                parts.append(bank.events.tobytes())
        return b"".join(parts)

    @classmethod
    def _decode(cls, packet_type, timestamp_ns, payload, ctx):
        _at_least(ctx, payload, _PREAMBLE.size)
        preamble = _decode_pulse_preamble(packet_type.version, payload)
        end = len(payload)
        position = _PREAMBLE.size
        sources = []
        # Every header before an event is 8 or 16 bytes and every event 8, so events always
        # start at a multiple of 8: one (M, 2) view serves all banks by slicing (the hot loop).
        pairs = np.frombuffer(payload, EVENT_DTYPE, (end // 8) * 2).reshape(-1, 2)
        unpack_bank = _BANK_HEADER.unpack_from
        trusted = BankSection._trusted
        while position < end:
            if end - position < _SOURCE_HEADER.size:
                raise ctx.length(
                    f"{end - position} bytes left at payload byte {position}, "
                    f"too few for a {_SOURCE_HEADER.size}-byte source section header"
                )
            source_id, intra, cor, bank_count = _SOURCE_HEADER.unpack_from(payload, position)
            position += _SOURCE_HEADER.size
            if bank_count * _BANK_HEADER.size > end - position:
                raise ctx.length(
                    f"source section {len(sources)} declares {bank_count} banks "
                    f"but only {end - position} bytes remain"
                )
            banks = []
            for _ in range(bank_count):
                if end - position < _BANK_HEADER.size:
                    raise ctx.length(
                        f"bank section header at payload byte {position} runs past the payload"
                    )
                bank_id, count = unpack_bank(payload, position)
                position += _BANK_HEADER.size
                stop = position + 8 * count
                if stop > end:
                    raise ctx.length(
                        f"bank {bank_id} declares {count} events ({count * 8} bytes) "
                        f"but only {end - position} bytes remain"
                    )
                banks.append(trusted(bank_id, pairs[position >> 3 : stop >> 3]))
                position = stop
            sources.append(
                _build(
                    SourceSection,
                    source_id=source_id,
                    intra_pulse_time_100ns=intra,
                    tof_offset_100ns=cor & 0x7FFFFFFF,
                    tof_corrected=bool(cor >> 31),
                    banks=tuple(banks),
                )
            )
        return _build(cls, timestamp_ns=timestamp_ns, sources=tuple(sources), **preamble)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class MonitorSection:
    """One beam monitor's events in one pulse.

    ``monitor_id`` (10 bits), ``source_id``, ``tof_offset_100ns`` / ``tof_corrected`` as for
    :class:`SourceSection`, ``events``: (N,) uint32 raw words, bit 31 rising edge, bits 30..21
    cycle, bits 20..0 time of flight in 100 ns (at most 22 bits of count). Compared by value.
    """

    monitor_id: int
    source_id: int = 0
    tof_offset_100ns: int = 0
    tof_corrected: bool = True
    events: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0, EVENT_DTYPE))

    def __post_init__(self):
        events = _as_words(self.events, "events")
        if events.ndim != 1:
            raise ValueError(f"monitor events must be 1-D, not {events.shape}")
        object.__setattr__(self, "events", events)

    @classmethod
    def from_arrays(
        cls,
        monitor_id: int,
        tof_100ns,
        *,
        cycle=0,
        rising_edge=False,
        source_id: int = 0,
        tof_offset_100ns: int = 0,
        tof_corrected: bool = True,
    ) -> MonitorSection:
        """Pack times of flight (100 ns, < 2**21), cycles (< 2**10) and rising-edge flags
        (scalars broadcast) into event words."""
        tof = np.asarray(tof_100ns, dtype=np.int64)
        cycles = np.broadcast_to(np.asarray(cycle, dtype=np.int64), tof.shape)
        rising = np.broadcast_to(np.asarray(rising_edge, dtype=np.int64), tof.shape)
        if tof.size and (tof.min() < 0 or tof.max() >= 1 << 21):
            raise ValueError("monitor tof_100ns must be in [0, 2**21)")
        if cycles.size and (cycles.min() < 0 or cycles.max() >= 1 << 10):
            raise ValueError("monitor cycle must be in [0, 2**10)")
        words = (rising.astype(bool).astype(np.int64) << 31) | (cycles << 21) | tof
        return cls(
            monitor_id=monitor_id,
            source_id=source_id,
            tof_offset_100ns=tof_offset_100ns,
            tof_corrected=tof_corrected,
            events=words.astype(EVENT_DTYPE),
        )

    @property
    def tof_100ns(self) -> np.ndarray:
        """(N,) time of flight in units of 100 ns."""
        return self.events & 0x1FFFFF

    @property
    def cycle(self) -> np.ndarray:
        """(N,) 10-bit cycle of each event."""
        return (self.events >> 21) & 0x3FF

    @property
    def rising_edge(self) -> np.ndarray:
        """(N,) bool: the event is from the discriminator's rising edge."""
        return (self.events >> 31).astype(bool)

    def __eq__(self, other):
        if not isinstance(other, MonitorSection):
            return NotImplemented
        return (
            self.monitor_id == other.monitor_id
            and self.source_id == other.source_id
            and self.tof_offset_100ns == other.tof_offset_100ns
            and self.tof_corrected == other.tof_corrected
            and np.array_equal(self.events, other.events)
        )

    __hash__ = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BeamMonitorEvent(Packet):
    """Beam monitor event data (0x4001.0 / .1), one packet per pulse: the same preamble as
    :class:`BankedEvent`, then one :class:`MonitorSection` per monitor with events."""

    pulse_charge_10pc: int = 0
    pulse_energy_ev: int = 0
    cycle: int = 0
    flags: int = 0
    veto_flags: int = 0
    monitors: tuple[MonitorSection, ...] = ()
    version: int = 1

    TYPES: ClassVar = (PacketType.BEAM_MONITOR_EVENT_V0, PacketType.BEAM_MONITOR_EVENT_V1)

    @property
    def packet_type(self) -> PacketType:
        return _version_of(type(self), self.version, self.TYPES)

    @property
    def event_count(self) -> int:
        """Number of monitor events in the packet."""
        return sum(len(monitor.events) for monitor in self.monitors)

    def event_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(monitor_id, tof_100ns)``: two flat (N,) uint32 arrays in wire order."""
        if not self.monitors:
            return np.empty(0, EVENT_DTYPE), np.empty(0, EVENT_DTYPE)
        ids = np.repeat(
            np.array([m.monitor_id for m in self.monitors], EVENT_DTYPE),
            [len(m.events) for m in self.monitors],
        )
        words = np.concatenate([m.events for m in self.monitors])
        return ids, words & np.uint32(0x1FFFFF)

    def _payload(self) -> bytes:
        parts = [_pulse_preamble(self)]
        for monitor in self.monitors:
            count = _check_uint("monitor event count", len(monitor.events), 22)
            parts.append(
                _MONITOR_HEADER.pack(
                    (_check_uint("monitor_id", monitor.monitor_id, 10) << 22) | count,
                    _check_uint("source_id", monitor.source_id),
                    _cor_word(monitor.tof_corrected, monitor.tof_offset_100ns),
                )
            )
            parts.append(monitor.events.tobytes())
        return b"".join(parts)

    @classmethod
    def _decode(cls, packet_type, timestamp_ns, payload, ctx):
        _at_least(ctx, payload, _PREAMBLE.size)
        preamble = _decode_pulse_preamble(packet_type.version, payload)
        end = len(payload)
        position = _PREAMBLE.size
        monitors = []
        while position < end:
            if end - position < _MONITOR_HEADER.size:
                raise ctx.length(
                    f"{end - position} bytes left at payload byte {position}, "
                    f"too few for a {_MONITOR_HEADER.size}-byte monitor section header"
                )
            id_count, source_id, cor = _MONITOR_HEADER.unpack_from(payload, position)
            position += _MONITOR_HEADER.size
            monitor_id, count = id_count >> 22, id_count & 0x3FFFFF
            if count * 4 > end - position:
                raise ctx.length(
                    f"monitor {monitor_id} declares {count} events ({count * 4} bytes) "
                    f"but only {end - position} bytes remain"
                )
            events = np.frombuffer(payload, EVENT_DTYPE, count, position)
            position += count * 4
            monitors.append(
                _build(
                    MonitorSection,
                    monitor_id=monitor_id,
                    source_id=source_id,
                    tof_offset_100ns=cor & 0x7FFFFFFF,
                    tof_corrected=bool(cor >> 31),
                    events=events,
                )
            )
        return _build(cls, timestamp_ns=timestamp_ns, monitors=tuple(monitors), **preamble)


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(Packet):
    """Heartbeat (0x4009.0), empty payload: the SMS is alive but has nothing to send."""

    TYPES: ClassVar = (PacketType.HEARTBEAT_V0,)

    def _payload(self) -> bytes:
        return b""

    @classmethod
    def _decode(cls, _packet_type, timestamp_ns, payload, ctx):
        _exact(ctx, payload, 0)
        return cls(timestamp_ns=timestamp_ns)


@dataclass(frozen=True, slots=True, kw_only=True)
class DataDone(Packet):
    """Data done (0x400C.0), empty payload: the end of a stream of saved data."""

    TYPES: ClassVar = (PacketType.DATA_DONE_V0,)

    def _payload(self) -> bytes:
        return b""

    @classmethod
    def _decode(cls, _packet_type, timestamp_ns, payload, ctx):
        _exact(ctx, payload, 0)
        return cls(timestamp_ns=timestamp_ns)


RTDL_FRAME_COUNT = 25
"""Number of (FNA, frame data) words at the end of an RTDL packet (payload is 120 bytes)."""
_RTDL_RING_PERIOD_FNA = 4  # ADARAPackets.cc: word 4's top byte must be 4, "Missing ring period"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rtdl(Packet):
    """Real Time Data Link (0x0001.0 / .1), the accelerator's per-pulse timing record; payload
    exactly 30 words.

    Word 0: ``data_flags`` (v1, 5 bits), ``flavor`` (3 bits), ``pulse_charge_10pc`` (24 bits);
    word 1: ``bad_veto``, ``bad_cycle``, ``timing_status`` (8 bits), ``veto_flags`` (12),
    ``cycle`` (10); word 2: ``intra_pulse_time_100ns``; word 3: ``tof_corrected`` |
    ``tof_offset_100ns``; word 4: 4 (ring-period marker) | ``ring_period_ps`` (24 bits);
    words 5..29: ``frames``, 25 ``(fna, frame_data)`` pairs (8 and 24 bits).
    """

    data_flags: int = 0
    flavor: int = 0
    pulse_charge_10pc: int = 0
    bad_veto: bool = False
    bad_cycle: bool = False
    timing_status: int = 0
    veto_flags: int = 0
    cycle: int = 0
    intra_pulse_time_100ns: int = 0
    tof_corrected: bool = False
    tof_offset_100ns: int = 0
    ring_period_ps: int = 0
    frames: tuple[tuple[int, int], ...] = ((0, 0),) * RTDL_FRAME_COUNT
    version: int = 1

    TYPES: ClassVar = (PacketType.RTDL_V0, PacketType.RTDL_V1)

    @property
    def packet_type(self) -> PacketType:
        return _version_of(type(self), self.version, self.TYPES)

    def _payload(self) -> bytes:
        if self.packet_type.version == 0 and self.data_flags:
            raise ValueError("a v0 RTDL has no data_flags")
        if len(self.frames) != RTDL_FRAME_COUNT:
            raise ValueError(f"an RTDL carries {RTDL_FRAME_COUNT} frames, not {len(self.frames)}")
        words = [
            (_check_uint("data_flags", self.data_flags, 5) << 27)
            | (_check_uint("flavor", self.flavor, 3) << 24)
            | _check_uint("pulse_charge_10pc", self.pulse_charge_10pc, 24),
            (int(bool(self.bad_veto)) << 31)
            | (int(bool(self.bad_cycle)) << 30)
            | (_check_uint("timing_status", self.timing_status, 8) << 22)
            | (_check_uint("veto_flags", self.veto_flags, 12) << 10)
            | _check_uint("cycle", self.cycle, 10),
            _check_uint("intra_pulse_time_100ns", self.intra_pulse_time_100ns),
            _cor_word(self.tof_corrected, self.tof_offset_100ns),
            (_RTDL_RING_PERIOD_FNA << 24) | _check_uint("ring_period_ps", self.ring_period_ps, 24),
        ]
        words += [
            (_check_uint("fna", fna, 8) << 24) | _check_uint("frame_data", data, 24)
            for fna, data in self.frames
        ]
        return struct.pack("<30I", *words)

    @classmethod
    def _decode(cls, packet_type, timestamp_ns, payload, ctx):
        _exact(ctx, payload, 120)
        w = struct.unpack("<30I", payload)
        if w[4] >> 24 != _RTDL_RING_PERIOD_FNA:
            raise ctx.field(f"word 4 FNA is {w[4] >> 24}, not 4: missing ring period")
        data_flags = (w[0] >> 27) if packet_type.version else 0
        return cls(
            timestamp_ns=timestamp_ns,
            data_flags=data_flags,
            flavor=(w[0] >> 24) & 0x7,
            pulse_charge_10pc=w[0] & 0xFFFFFF,
            bad_veto=bool(w[1] >> 31),
            bad_cycle=bool((w[1] >> 30) & 1),
            timing_status=(w[1] >> 22) & 0xFF,
            veto_flags=(w[1] >> 10) & 0xFFF,
            cycle=w[1] & 0x3FF,
            intra_pulse_time_100ns=w[2],
            tof_corrected=bool(w[3] >> 31),
            tof_offset_100ns=w[3] & 0x7FFFFFFF,
            ring_period_ps=w[4] & 0xFFFFFF,
            frames=tuple((word >> 24, word & 0xFFFFFF) for word in w[5:]),
            version=packet_type.version,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamAnnotation(Packet):
    """Stream annotation (0x4007.0): ``marker_type`` (scan start/stop, pause, resume, comment),
    ``reset_hint``, ``scan_index`` and a ``comment`` (at most 65535 UTF-8 bytes)."""

    marker_type: MarkerType = MarkerType.GENERIC
    reset_hint: bool = False
    scan_index: int = 0
    comment: str = ""

    TYPES: ClassVar = (PacketType.STREAM_ANNOTATION_V0,)

    def _payload(self) -> bytes:
        raw = _text_bytes(self.comment)
        word = (
            (int(bool(self.reset_hint)) << 31)
            | (_check_uint("marker_type", self.marker_type, 15) << 16)
            | _check_uint("len(comment)", len(raw), 16)
        )
        return struct.pack("<II", word, _check_uint("scan_index", self.scan_index)) + _pad(raw)

    @classmethod
    def _decode(cls, _packet_type, timestamp_ns, payload, ctx):
        _at_least(ctx, payload, 8)
        word, scan_index = struct.unpack_from("<II", payload)
        return cls(
            timestamp_ns=timestamp_ns,
            marker_type=_enum(ctx, MarkerType, (word >> 16) & 0x7FFF, "marker type"),
            reset_hint=bool(word >> 31),
            scan_index=scan_index,
            comment=_sized_text(ctx, payload, 8, word & 0xFFFF, "the comment"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Sync(Packet):
    """Synchronization (0x4008.0): marks a place in an SMS data file: ``signature`` (16 bytes,
    :data:`SYNC_SIGNATURE`), ``file_offset`` (u64 bytes) and a ``comment``."""

    file_offset: int = 0
    comment: str = ""
    signature: bytes = SYNC_SIGNATURE

    TYPES: ClassVar = (PacketType.SYNC_V0,)

    def _payload(self) -> bytes:
        if len(self.signature) != 16:
            raise ValueError(f"the sync signature is 16 bytes, not {len(self.signature)}")
        raw = _text_bytes(self.comment)
        return (
            self.signature
            + struct.pack("<QI", _check_uint("file_offset", self.file_offset, 64), len(raw))
            + _pad(raw)
        )

    @classmethod
    def _decode(cls, _packet_type, timestamp_ns, payload, ctx):
        _at_least(ctx, payload, 28)
        file_offset, size = struct.unpack_from("<QI", payload, 16)
        return cls(
            timestamp_ns=timestamp_ns,
            signature=bytes(payload[:16]),
            file_offset=file_offset,
            comment=_sized_text(ctx, payload, 28, size, "the comment"),
        )


PACKET_CLASSES: tuple[type[Packet], ...] = (
    ClientHello,
    RunStatus,
    RunInfo,
    Geometry,
    BeamlineInfo,
    DeviceDescriptor,
    VariableU32,
    VariableDouble,
    VariableString,
    BankedEvent,
    BeamMonitorEvent,
    Heartbeat,
    DataDone,
    Rtdl,
    StreamAnnotation,
    Sync,
)
"""Every packet class this module encodes and decodes."""

_CLASS_OF: dict[int, type[Packet]] = {t: cls for cls in PACKET_CLASSES for t in cls.TYPES}

_PACKET_TYPES: dict[int, PacketType] = {t.value: t for t in PacketType}

DECODABLE: frozenset[PacketType] = frozenset(PacketType(t) for t in _CLASS_OF)
"""The packet types :func:`decode` understands; the stream parser skips the others."""


# ---------------------------------------------------------------------------------- codec


def encode(packet: Packet) -> bytes:
    """The wire bytes of ``packet``: 16-byte header (EPICS time) and payload padded to 4 bytes.

    Raises ValueError when a field does not fit its wire width (e.g. a timestamp before 1990
    or after 2126, a name longer than 255 bytes, a v0 packet given v1-only fields).
    """
    payload = packet._payload()
    seconds, nanoseconds = _unix_ns_to_epics("timestamp_ns", packet.timestamp_ns)
    return _HEADER.pack(len(payload), packet.packet_type, seconds, nanoseconds) + payload


def decode_header(data: bytes | memoryview, offset: int | None = 0) -> Header:
    """Decode the 16-byte header at the start of ``data``.

    ``offset`` (the stream offset of ``data[0]``) only appears in errors. Raises
    TruncatedPacketError when fewer than 16 bytes are given and BadPayloadLengthError when the
    payload length is not a multiple of 4. The timestamp's nanosecond word is taken as is, even
    when it is 10**9 or more (Mantid's client hello sends such values).
    """
    if len(data) < HEADER_SIZE:
        raise TruncatedPacketError(f"only {len(data)} of the {HEADER_SIZE} header bytes")
    payload_length, format_word, seconds, nanoseconds = _HEADER.unpack_from(data)
    packet_type = _PACKET_TYPES.get(format_word, format_word)
    if payload_length % 4:
        raise BadPayloadLengthError(
            f"payload length {payload_length} is not a multiple of 4",
            packet_type=format_word,
            offset=offset,
        )
    return _build(
        Header,
        payload_length=payload_length,
        packet_type=packet_type,
        timestamp_ns=seconds * _NS_PER_S + nanoseconds + _EPICS_EPOCH_NS,
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
        header.packet_type, header.timestamp_ns, payload, _Ctx(header.packet_type, offset)
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
