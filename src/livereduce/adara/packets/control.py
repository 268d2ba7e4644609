"""Stream control packets: client hello, run status, heartbeat, data done, stream annotation
and sync. Layouts: ADARA ``common/ADARAPackets.{h,cc}`` (ADARA 1.10.4) and the protocol
document; the header and field conventions are in :mod:`livereduce.adara.packets.wire`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from livereduce.adara.codes import MarkerType, PacketType, RunStatusCode
from livereduce.adara.packets.wire import (
    WORD,
    Packet,
    Payload,
    PayloadContext,
    VersionedPacket,
    at_least,
    check_uint,
    enum_field,
    epics_to_unix_ns,
    exact,
    length_prefixed,
    length_prefixed_text,
    pad,
    sized_text,
    text_bytes,
    unix_ns_to_epics,
)

START_NOW = 0
"""Client hello start time: join the stream at the current position (Mantid "FromNow")."""
START_OF_RUN = 1
"""Client hello start time: replay the current run from its first pulse (Mantid
"FromStartOfRun")."""


def describe_start_time(start_time_ns: int) -> str:
    """A client hello's start time in words, for logs: "live data", "the start of the run"
    or "data from Unix time N s"."""
    if start_time_ns == START_NOW:
        return "live data"
    if start_time_ns == START_OF_RUN:
        return "the start of the run"
    return f"data from Unix time {start_time_ns / 1e9:.0f} s"


SYNC_SIGNATURE = b"SNSADARAORNL\x00\x00\xf0\x7f"
"""The 16-byte signature that opens a sync packet (protocol §Synchronization)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientHello(VersionedPacket):
    """Client hello (0x4006.0 / .1): the client's first packet; the SMS sends nothing before it.

    ``start_time_ns``: :data:`START_NOW`, :data:`START_OF_RUN`, or a Unix time in ns (sent as
    whole EPICS seconds). ``client_flags`` (v1 only): 0 pause agnostic, 1 no pause data,
    2 send pause data.
    """

    start_time_ns: int = START_NOW
    client_flags: int = 0
    version: int = 1

    TYPES: ClassVar = (PacketType.CLIENT_HELLO_V0, PacketType.CLIENT_HELLO_V1)

    def _payload(self) -> bytes:
        if self.start_time_ns in (START_NOW, START_OF_RUN):
            start = self.start_time_ns
        else:
            start, nanoseconds = unix_ns_to_epics("start_time_ns", self.start_time_ns)
            if nanoseconds or start in (START_NOW, START_OF_RUN):
                raise ValueError(f"start_time_ns={self.start_time_ns} is not a whole EPICS second")
        if self.packet_type.version == 0:
            if self.client_flags:
                raise ValueError("a v0 client hello has no client_flags")
            return WORD.pack(start)
        return struct.pack("<II", start, check_uint("client_flags", self.client_flags))

    @classmethod
    def _decode(
        cls, packet_type: PacketType, timestamp_ns: int, payload: Payload, ctx: PayloadContext
    ) -> Self:
        version = packet_type.version
        exact(ctx, payload, 4 if version == 0 else 8)
        (start,) = WORD.unpack_from(payload)
        flags = WORD.unpack_from(payload, 4)[0] if version else 0
        start_ns = start if start in (START_NOW, START_OF_RUN) else epics_to_unix_ns(start)
        return cls(
            timestamp_ns=timestamp_ns, start_time_ns=start_ns, client_flags=flags, version=version
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStatus(VersionedPacket):
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

    def _payload(self) -> bytes:
        start, nanoseconds = unix_ns_to_epics("run_start_ns", self.run_start_ns)
        if nanoseconds:
            raise ValueError(f"run_start_ns={self.run_start_ns} is not a whole second")
        words = [
            check_uint("run_number", self.run_number),
            start,
            (check_uint("status", self.status, 8) << 24)
            | check_uint("file_number", self.file_number, 24),
        ]
        extra = (self.paused, self.pause_file_number, self.addendum, self.addendum_file_number)
        if self.packet_type.version == 0:
            if any(extra):
                raise ValueError("a v0 run status has no pause or addendum fields")
        else:
            words.append(
                (check_uint("paused", self.paused, 8) << 24)
                | check_uint("pause_file_number", self.pause_file_number, 24)
            )
            words.append(
                (check_uint("addendum", self.addendum, 8) << 24)
                | check_uint("addendum_file_number", self.addendum_file_number, 24)
            )
        return struct.pack(f"<{len(words)}I", *words)

    @classmethod
    def _decode(
        cls, packet_type: PacketType, timestamp_ns: int, payload: Payload, ctx: PayloadContext
    ) -> Self:
        version = packet_type.version
        exact(ctx, payload, 12 if version == 0 else 20)
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
            run_start_ns=epics_to_unix_ns(words[1]),
            status=enum_field(ctx, RunStatusCode, words[2] >> 24, "run status"),
            file_number=words[2] & 0xFFFFFF,
            version=version,
            **extra,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class _EmptyPacket(Packet):
    """A packet whose payload is empty; only its type and time say anything."""

    def _payload(self) -> bytes:
        return b""

    @classmethod
    def _decode(
        cls, _packet_type: PacketType, timestamp_ns: int, payload: Payload, ctx: PayloadContext
    ) -> Self:
        exact(ctx, payload, 0)
        return cls(timestamp_ns=timestamp_ns)


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(_EmptyPacket):
    """Heartbeat (0x4009.0), empty payload: the SMS is alive but has nothing to send."""

    TYPES: ClassVar = (PacketType.HEARTBEAT_V0,)


@dataclass(frozen=True, slots=True, kw_only=True)
class DataDone(_EmptyPacket):
    """Data done (0x400C.0), empty payload: the end of a stream of saved data."""

    TYPES: ClassVar = (PacketType.DATA_DONE_V0,)


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
        raw = text_bytes(self.comment)
        word = (
            (int(bool(self.reset_hint)) << 31)
            | (check_uint("marker_type", self.marker_type, 15) << 16)
            | check_uint("len(comment)", len(raw), 16)
        )
        return struct.pack("<II", word, check_uint("scan_index", self.scan_index)) + pad(raw)

    @classmethod
    def _decode(
        cls, _packet_type: PacketType, timestamp_ns: int, payload: Payload, ctx: PayloadContext
    ) -> Self:
        at_least(ctx, payload, 8)
        word, scan_index = struct.unpack_from("<II", payload)
        return cls(
            timestamp_ns=timestamp_ns,
            marker_type=enum_field(ctx, MarkerType, (word >> 16) & 0x7FFF, "marker type"),
            reset_hint=bool(word >> 31),
            scan_index=scan_index,
            comment=sized_text(ctx, payload, 8, word & 0xFFFF, "the comment"),
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
        comment = length_prefixed(self.comment)
        offset = struct.pack("<Q", check_uint("file_offset", self.file_offset, 64))
        return self.signature + offset + comment

    @classmethod
    def _decode(
        cls, _packet_type: PacketType, timestamp_ns: int, payload: Payload, ctx: PayloadContext
    ) -> Self:
        comment = length_prefixed_text(ctx, payload, 24, "the comment")
        return cls(
            timestamp_ns=timestamp_ns,
            signature=bytes(payload[:16]),
            file_offset=struct.unpack_from("<Q", payload, 16)[0],
            comment=comment,
        )
