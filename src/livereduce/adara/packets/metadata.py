"""Run and instrument metadata packets: run information, geometry, beamline info, device
descriptors and variable values (process variables). Layouts: ADARA
``common/ADARAPackets.{h,cc}`` (ADARA 1.10.4); field conventions in
:mod:`livereduce.adara.packets.wire`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np

from livereduce.adara.codes import PacketType, VariableSeverity, VariableStatus
from livereduce.adara.packets.wire import (
    WORD,
    Packet,
    Payload,
    PayloadContext,
    VersionedPacket,
    at_least,
    check_uint,
    enum_or_raw,
    exact,
    length_prefixed,
    length_prefixed_text,
    pad,
    sized_text,
    text,
    text_bytes,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class _XmlPacket(Packet):
    """A payload of one u32 length and that many bytes of XML text."""

    xml: str = field(repr=False)

    def _payload(self) -> bytes:
        return length_prefixed(self.xml)

    @classmethod
    def _decode(
        cls, _packet_type: PacketType, timestamp_ns: int, payload: Payload, ctx: PayloadContext
    ) -> Self:
        return cls(timestamp_ns=timestamp_ns, xml=length_prefixed_text(ctx, payload, 0, "the XML"))


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
class BeamlineInfo(VersionedPacket):
    """Beamline info (0x400B.0 / .1): ``beamline_id`` (e.g. "BL14B"), ``short_name`` (e.g.
    "HYS"), ``long_name`` (e.g. "HYSPEC", the name Mantid loads the instrument by), each at
    most 255 UTF-8 bytes; ``target_station`` (v1; 0 means unspecified, i.e. station 1)."""

    beamline_id: str
    short_name: str
    long_name: str
    target_station: int = 1
    version: int = 1

    TYPES: ClassVar = (PacketType.BEAMLINE_INFO_V0, PacketType.BEAMLINE_INFO_V1)

    def _payload(self) -> bytes:
        parts = [text_bytes(s) for s in (self.beamline_id, self.short_name, self.long_name)]
        for name, raw in zip(("beamline_id", "short_name", "long_name"), parts, strict=True):
            check_uint(f"len({name})", len(raw), 8)
        station = check_uint("target_station", self.target_station, 8)
        if self.packet_type.version == 0 and station:
            raise ValueError("a v0 beamline info has no target_station (use 0)")
        sizes = (station << 24) | (len(parts[0]) << 16) | (len(parts[1]) << 8) | len(parts[2])
        return WORD.pack(sizes) + pad(b"".join(parts))

    @classmethod
    def _decode(
        cls, packet_type: PacketType, timestamp_ns: int, payload: Payload, ctx: PayloadContext
    ) -> Self:
        at_least(ctx, payload, 4)
        (sizes,) = WORD.unpack_from(payload)
        id_len, short_len, long_len = (sizes >> 16) & 0xFF, (sizes >> 8) & 0xFF, sizes & 0xFF
        names = sized_text(ctx, payload, 4, id_len + short_len + long_len, "the beamline names")
        raw = text_bytes(names)
        return cls(
            timestamp_ns=timestamp_ns,
            beamline_id=text(raw[:id_len]),
            short_name=text(raw[id_len : id_len + short_len]),
            long_name=text(raw[id_len + short_len :]),
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
        xml = length_prefixed(self.xml)
        return WORD.pack(check_uint("device_id", self.device_id)) + xml

    @classmethod
    def _decode(
        cls, _packet_type: PacketType, timestamp_ns: int, payload: Payload, ctx: PayloadContext
    ) -> Self:
        xml = length_prefixed_text(ctx, payload, 4, "the descriptor XML")
        return cls(timestamp_ns=timestamp_ns, device_id=WORD.unpack_from(payload)[0], xml=xml)


@dataclass(frozen=True, slots=True, kw_only=True)
class _VariableValue(Packet):
    """Common part of variable value packets: word 0 device id, word 1 variable id, word 2
    status (high 16 bits) and severity (low 16 bits). A status or severity this module does not
    know (a newer EPICS alarm code) is kept as its raw int."""

    device_id: int
    variable_id: int
    status: VariableStatus | int = VariableStatus.OK
    severity: VariableSeverity | int = VariableSeverity.OK

    def _prefix(self) -> bytes:
        return struct.pack(
            "<III",
            check_uint("device_id", self.device_id),
            check_uint("variable_id", self.variable_id),
            (check_uint("status", self.status, 16) << 16)
            | check_uint("severity", self.severity, 16),
        )

    @classmethod
    def _decode(
        cls, _packet_type: PacketType, timestamp_ns: int, payload: Payload, ctx: PayloadContext
    ) -> Self:
        value = cls._decode_value(payload, ctx)  # checks the payload's size first
        device_id, variable_id, alarm = struct.unpack_from("<III", payload)
        return cls(
            timestamp_ns=timestamp_ns,
            device_id=device_id,
            variable_id=variable_id,
            status=enum_or_raw(VariableStatus, alarm >> 16),
            severity=enum_or_raw(VariableSeverity, alarm & 0xFFFF),
            value=value,  # type: ignore[call-arg]  # each subclass declares its value field
        )

    @classmethod
    def _decode_value(cls, payload: Payload, ctx: PayloadContext) -> Any:
        """The value after the three prefix words; BadPayloadLengthError when it does not fit."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class VariableU32(_VariableValue):
    """Variable value, u32 (0x8001.0): ``value`` of process variable (device_id,
    variable_id) at ``timestamp_ns``."""

    value: int

    TYPES: ClassVar = (PacketType.VARIABLE_U32_V0,)

    def _payload(self) -> bytes:
        return self._prefix() + WORD.pack(check_uint("value", self.value))

    @classmethod
    def _decode_value(cls, payload: Payload, ctx: PayloadContext) -> int:
        exact(ctx, payload, 16)
        return WORD.unpack_from(payload, 12)[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class VariableDouble(_VariableValue):
    """Variable value, double (0x8002.0)."""

    value: float

    TYPES: ClassVar = (PacketType.VARIABLE_DOUBLE_V0,)

    def _payload(self) -> bytes:
        return self._prefix() + struct.pack("<d", self.value)

    @classmethod
    def _decode_value(cls, payload: Payload, ctx: PayloadContext) -> float:
        exact(ctx, payload, 20)
        return struct.unpack_from("<d", payload, 12)[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class VariableString(_VariableValue):
    """Variable value, string (0x8003.0): word 3 the byte length, then the UTF-8 text."""

    value: str

    TYPES: ClassVar = (PacketType.VARIABLE_STRING_V0,)

    def _payload(self) -> bytes:
        return self._prefix() + length_prefixed(self.value)

    @classmethod
    def _decode_value(cls, payload: Payload, ctx: PayloadContext) -> str:
        at_least(ctx, payload, 16)
        return length_prefixed_text(ctx, payload, 12, "the string value")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class _VariableArray(_VariableValue):
    """Common part of array variable values: word 3 the element count, then the elements
    (ADARAPackets.h ``VariableU32ArrayPkt`` / ``VariableDoubleArrayPkt``). ``value`` is a
    read-only (N,) numpy array. Compared by value."""

    value: np.ndarray = field(default_factory=lambda: np.empty(0))

    _DTYPE: ClassVar[np.dtype] = np.dtype("<u4")

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", np.asarray(self.value, dtype=self._DTYPE))

    def _payload(self) -> bytes:
        count = WORD.pack(check_uint("len(value)", len(self.value)))
        return self._prefix() + count + self.value.astype(self._DTYPE).tobytes()

    @classmethod
    def _decode_value(cls, payload: Payload, ctx: PayloadContext) -> np.ndarray:
        at_least(ctx, payload, 16)
        (count,) = WORD.unpack_from(payload, 12)
        size = cls._DTYPE.itemsize
        if count * size > len(payload) - 16:
            raise ctx.length(
                f"the array declares {count} elements ({count * size} bytes) but the payload "
                f"holds {len(payload) - 16}"
            )
        return np.frombuffer(payload, cls._DTYPE, count, 16)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _VariableArray)
        return (
            self.timestamp_ns == other.timestamp_ns
            and (self.device_id, self.variable_id) == (other.device_id, other.variable_id)
            and (self.status, self.severity) == (other.status, other.severity)
            and np.array_equal(self.value, other.value)
        )

    __hash__ = None  # type: ignore[assignment]  # holds arrays: compared by value, not hashed


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class VariableU32Array(_VariableArray):
    """Variable value, u32 array (0x8004.0): ``value`` is an (N,) uint32 array."""

    TYPES: ClassVar = (PacketType.VARIABLE_U32_ARRAY_V0,)
    _DTYPE: ClassVar[np.dtype] = np.dtype("<u4")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class VariableDoubleArray(_VariableArray):
    """Variable value, double array (0x8005.0): ``value`` is an (N,) float64 array."""

    TYPES: ClassVar = (PacketType.VARIABLE_DOUBLE_ARRAY_V0,)
    _DTYPE: ClassVar[np.dtype] = np.dtype("<f8")
