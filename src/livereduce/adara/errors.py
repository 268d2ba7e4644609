"""ADARA protocol errors: one base class and one subclass per kind of malformed packet.

Every error names the packet type (format word ``type_id << 8 | version``, with its name when
known), the offset of the packet's first byte in the stream, and what is wrong. The stream
parser raises them; nothing else in :mod:`livereduce.adara` raises another exception type on
bad input bytes.
"""

from __future__ import annotations

from livereduce.adara.codes import PacketType


class AdaraProtocolError(Exception):
    """Base of all ADARA wire-format errors.

    Attributes: ``packet_type`` (format word, or None when the header itself was not read),
    ``offset`` (stream offset of the packet's first byte, or None when unknown) and ``problem``
    (what is wrong, in words).
    """

    def __init__(
        self, problem: str, *, packet_type: int | None = None, offset: int | None = None
    ) -> None:
        self.problem = problem
        self.packet_type = packet_type
        self.offset = offset
        super().__init__(self._message())

    def _message(self) -> str:
        where = "unknown offset" if self.offset is None else f"stream offset {self.offset}"
        return f"ADARA packet {describe_packet_type(self.packet_type)} at {where}: {self.problem}"

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (_rebuild, (type(self), self.problem, self.packet_type, self.offset))


def _rebuild(
    cls: type[AdaraProtocolError], problem: str, packet_type: int | None, offset: int | None
) -> AdaraProtocolError:
    return cls(problem, packet_type=packet_type, offset=offset)


class BadPayloadLengthError(AdaraProtocolError):
    """The payload length is not a multiple of 4, differs from the fixed length of the packet
    type, or disagrees with the lengths and counts declared inside the payload."""


class OversizePacketError(AdaraProtocolError):
    """The header declares a payload longer than the parser's maximum; the parser rejects it
    before reading or allocating the payload."""


class TruncatedPacketError(AdaraProtocolError):
    """The bytes end inside a packet (header or payload incomplete)."""


class BadFieldError(AdaraProtocolError):
    """A field holds a value the format does not allow (an unknown run status, an EPICS alarm
    status outside the defined set, a missing RTDL ring-period marker, ...)."""


class UnknownPacketTypeError(AdaraProtocolError):
    """:func:`livereduce.adara.packets.decode` was given a packet type it has no layout for.
    The stream parser never raises it: it skips and counts such packets instead."""


def describe_packet_type(packet_type: int | None) -> str:
    """``0x400001 (BANKED_EVENT_V1)`` for a known format word, ``0x123456`` for an unknown one,
    ``(header unread)`` for None."""
    if packet_type is None:
        return "(header unread)"
    try:
        return f"0x{packet_type:06x} ({PacketType(packet_type).name})"
    except ValueError:
        return f"0x{packet_type:06x}"
