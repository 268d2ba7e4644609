"""The ADARA wire format's building blocks: the header layout, EPICS time, and the checks and
codecs for single fields that every packet module uses.

Package-internal: code outside :mod:`livereduce.adara.packets` imports from the package, which
re-exports the public names (``HEADER_FORMAT``, ``HEADER_SIZE``, ``EPICS_EPOCH_OFFSET_S``,
``Header``, ``Packet``).

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
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, ClassVar, Self, TypeVar

from livereduce.adara.codes import PacketType
from livereduce.adara.errors import BadFieldError, BadPayloadLengthError

HEADER_FORMAT = "<IIII"
"""payload length, format word, EPICS seconds, nanoseconds (ADARA.h ``struct Header``)."""
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)
HEADER = struct.Struct(HEADER_FORMAT)
"""The compiled :data:`HEADER_FORMAT`."""

EPICS_EPOCH_OFFSET_S = 631_152_000
"""Seconds from the Unix epoch to the EPICS epoch 1990-01-01 UTC (ADARA.h EPICS_EPOCH_OFFSET)."""
NS_PER_S = 1_000_000_000
EPICS_EPOCH_NS = EPICS_EPOCH_OFFSET_S * NS_PER_S
"""The EPICS epoch in Unix nanoseconds."""
U32_MAX = 0xFFFF_FFFF

T = TypeVar("T")
E = TypeVar("E", bound=IntEnum)

Payload = bytes | memoryview
"""What decoders read: the payload's bytes, or a memoryview on them (read-only)."""

WORD = struct.Struct("<I")
"""One little-endian u32 word, the unit of every ADARA field."""

COR_OFFSET_MASK = 0x7FFF_FFFF
"""The ``tof_offset_100ns`` bits of a :func:`cor_word`; a larger word has ``tof_corrected``."""


class PayloadContext:
    """Where a payload came from (format word, stream offset or None), for error messages."""

    __slots__ = ("offset", "packet_type")

    def __init__(self, packet_type: int, offset: int | None) -> None:
        self.packet_type = packet_type
        self.offset = offset

    def length(self, problem: str) -> BadPayloadLengthError:
        """The error for a payload whose size does not fit its layout."""
        return BadPayloadLengthError(problem, packet_type=self.packet_type, offset=self.offset)

    def field(self, problem: str) -> BadFieldError:
        """The error for a field value the protocol does not define."""
        return BadFieldError(problem, packet_type=self.packet_type, offset=self.offset)


# ------------------------------------------------------------------------- encoding fields


def check_uint(name: str, value: int, bits: int = 32) -> int:
    """``value`` unchanged; ValueError naming ``name`` when it does not fit ``bits`` unsigned
    bits."""
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name}={value} does not fit in {bits} unsigned bits")
    return value


def pad(data: bytes) -> bytes:
    """``data`` padded with zero bytes to a multiple of 4 bytes."""
    return data + b"\x00" * (-len(data) % 4)


def text_bytes(text: str) -> bytes:
    """UTF-8 bytes of ``text``; undecodable bytes kept by ``surrogateescape`` come back out."""
    return text.encode("utf-8", "surrogateescape")


def text(raw: bytes) -> str:
    """``raw`` as UTF-8 text, bytes that are not UTF-8 kept with ``surrogateescape``."""
    return raw.decode("utf-8", "surrogateescape")


def length_prefixed(value: str) -> bytes:
    """A u32 byte length, then ``value`` as UTF-8 padded to 4 bytes (the protocol's string)."""
    raw = text_bytes(value)
    return WORD.pack(len(raw)) + pad(raw)


def cor_word(tof_corrected: bool, tof_offset_100ns: int) -> int:
    """The "COR | TOF offset" word: bit 31 set when the offset (31 bits, 100 ns) was added."""
    return (int(bool(tof_corrected)) << 31) | check_uint("tof_offset_100ns", tof_offset_100ns, 31)


def epics_to_unix_ns(seconds: int, nanoseconds: int = 0) -> int:
    """EPICS seconds (since 1990-01-01 UTC) and nanoseconds as Unix nanoseconds."""
    return seconds * NS_PER_S + nanoseconds + EPICS_EPOCH_NS


def unix_ns_to_epics(name: str, unix_ns: int) -> tuple[int, int]:
    """Unix nanoseconds as (EPICS seconds, nanoseconds); ValueError naming ``name`` outside the
    u32 seconds range."""
    seconds, nanoseconds = divmod(unix_ns - EPICS_EPOCH_NS, NS_PER_S)
    if not 0 <= seconds <= U32_MAX:
        raise ValueError(
            f"{name}={unix_ns} ns is outside the EPICS u32 range (1990-01-01 .. 2126-02-07 UTC)"
        )
    return seconds, nanoseconds


# ------------------------------------------------------------------------- decoding fields


def exact(ctx: PayloadContext, payload: Payload, expected: int) -> None:
    """BadPayloadLengthError unless ``payload`` is exactly ``expected`` bytes."""
    if len(payload) != expected:
        raise ctx.length(f"payload is {len(payload)} bytes, this type has exactly {expected}")


def at_least(ctx: PayloadContext, payload: Payload, minimum: int) -> None:
    """BadPayloadLengthError when ``payload`` is shorter than ``minimum`` bytes."""
    if len(payload) < minimum:
        raise ctx.length(f"payload is {len(payload)} bytes, this type needs at least {minimum}")


def sized_text(ctx: PayloadContext, payload: Payload, start: int, size: int, what: str) -> str:
    """The ``size`` bytes of text at ``start``; BadPayloadLengthError naming ``what`` when the
    payload ends before them."""
    available = len(payload) - start
    if size > available:
        raise ctx.length(f"{what} declares {size} bytes but the payload holds {available}")
    return text(bytes(payload[start : start + size]))


def length_prefixed_text(ctx: PayloadContext, payload: Payload, start: int, what: str) -> str:
    """Decode :func:`length_prefixed` text whose length word is at byte ``start``;
    BadPayloadLengthError when the word or the text runs past the payload."""
    at_least(ctx, payload, start + 4)
    (size,) = WORD.unpack_from(payload, start)
    return sized_text(ctx, payload, start + 4, size, what)


def enum_field(ctx: PayloadContext, enum: type[E], value: int, what: str) -> E:
    """``enum(value)``; BadFieldError naming ``what`` when ``value`` is not one of its codes."""
    try:
        return enum(value)
    except ValueError:
        raise ctx.field(f"{what} {value} is not a defined {enum.__name__}") from None


def enum_or_raw(enum: type[E], value: int) -> E | int:
    """``enum(value)``, or ``value`` itself when it is not one of the codes: a value a newer
    ADARA defines is kept as its raw number rather than costing the packet."""
    try:
        return enum(value)
    except ValueError:
        return value


def build(cls: type[T], **fields: object) -> T:
    """An instance of the frozen dataclass ``cls`` from already-validated decoded ``fields``,
    without running ``__init__`` / ``__post_init__``: about twice as fast, which matters for
    the per-pulse packets (the decode hot path).

    Checked: every field of ``cls`` must be given (TypeError naming the missing ones
    otherwise), so a field added to a packet class without its decoder fails the first
    decode instead of leaving an unset slot; an unknown name fails on its slot."""
    if len(fields) != _field_count(cls):
        missing = sorted(set(field_names(cls)) - set(fields))
        raise TypeError(f"{cls.__name__} decoded without its fields {missing}")
    instance = object.__new__(cls)
    for name, value in fields.items():
        _setattr(instance, name, value)
    return instance


def field_names(cls: type) -> tuple[str, ...]:
    """The dataclass fields of ``cls``, in definition order."""
    return tuple(f.name for f in dataclasses.fields(cls))


def check_trusted(cls: type, names: tuple[str, ...]) -> None:
    """TypeError unless ``names`` are exactly the dataclass fields of ``cls``: called at import
    for the hand-written fast constructors (``_trusted``) so that they cannot miss a field."""
    if set(names) != set(field_names(cls)):
        raise TypeError(
            f"{cls.__name__}._trusted sets {sorted(names)}, the class has "
            f"{sorted(field_names(cls))}"
        )


_FIELD_COUNTS: dict[type, int] = {}


def _field_count(cls: type) -> int:
    count = _FIELD_COUNTS.get(cls)
    if count is None:
        count = _FIELD_COUNTS[cls] = len(dataclasses.fields(cls))
    return count


_setattr = object.__setattr__


# ------------------------------------------------------------------------- packet bases


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
    time for event packets).

    A subclass lists its format words in ``TYPES`` and implements ``_payload() -> bytes`` and
    the classmethod ``_decode(packet_type, timestamp_ns, payload, ctx)``, which
    :mod:`livereduce.adara.packets.codec` calls.
    """

    timestamp_ns: int

    TYPES: ClassVar[tuple[PacketType, ...]] = ()

    @property
    def packet_type(self) -> PacketType:
        """The format word this packet is encoded with."""
        return self.TYPES[0]

    def _payload(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def _decode(
        cls, packet_type: PacketType, timestamp_ns: int, payload: Payload, ctx: PayloadContext
    ) -> Self:
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionedPacket(Packet):
    """A packet with more than one layout: ``TYPES`` lists its format words and the subclass
    declares ``version: int`` as its last field (last, so that ``repr`` shows it last), which
    picks the format word. ValueError from ``packet_type`` for a version it does not have."""

    if TYPE_CHECKING:
        version: int

    @property
    def packet_type(self) -> PacketType:
        """The format word of ``self.version``."""
        for packet_type in self.TYPES:
            if packet_type.version == self.version:
                return packet_type
        raise ValueError(f"{type(self).__name__} has no version {self.version}")
