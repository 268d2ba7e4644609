"""The Real Time Data Link packet: the accelerator's per-pulse timing record. Layout: ADARA
``common/ADARAPackets.{h,cc}`` (ADARA 1.10.4) and the protocol document §RTDL.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from livereduce.adara.codes import PacketType
from livereduce.adara.packets.wire import (
    COR_OFFSET_MASK,
    Payload,
    PayloadContext,
    VersionedPacket,
    check_uint,
    cor_word,
    exact,
)

RTDL_FRAME_COUNT = 25
"""Number of (FNA, frame data) words at the end of an RTDL packet (payload is 120 bytes)."""
_RTDL_RING_PERIOD_FNA = 4  # ADARAPackets.cc: word 4's top byte is 4, else "Missing ring period"

log = logging.getLogger("livereduce.adara.packets")
_warned_missing_ring_period = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Rtdl(VersionedPacket):
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

    def _payload(self) -> bytes:
        if self.packet_type.version == 0 and self.data_flags:
            raise ValueError("a v0 RTDL has no data_flags")
        if len(self.frames) != RTDL_FRAME_COUNT:
            raise ValueError(f"an RTDL carries {RTDL_FRAME_COUNT} frames, not {len(self.frames)}")
        words = [
            (check_uint("data_flags", self.data_flags, 5) << 27)
            | (check_uint("flavor", self.flavor, 3) << 24)
            | check_uint("pulse_charge_10pc", self.pulse_charge_10pc, 24),
            (int(bool(self.bad_veto)) << 31)
            | (int(bool(self.bad_cycle)) << 30)
            | (check_uint("timing_status", self.timing_status, 8) << 22)
            | (check_uint("veto_flags", self.veto_flags, 12) << 10)
            | check_uint("cycle", self.cycle, 10),
            check_uint("intra_pulse_time_100ns", self.intra_pulse_time_100ns),
            cor_word(self.tof_corrected, self.tof_offset_100ns),
            (_RTDL_RING_PERIOD_FNA << 24) | check_uint("ring_period_ps", self.ring_period_ps, 24),
        ]
        words += [
            (check_uint("fna", fna, 8) << 24) | check_uint("frame_data", data, 24)
            for fna, data in self.frames
        ]
        return struct.pack("<30I", *words)

    @classmethod
    def _decode(
        cls, packet_type: PacketType, timestamp_ns: int, payload: Payload, ctx: PayloadContext
    ) -> Self:
        exact(ctx, payload, 120)
        w = struct.unpack("<30I", payload)
        if w[4] >> 24 != _RTDL_RING_PERIOD_FNA:
            # ADARA logs a missing ring period and keeps the packet: so do we, once
            global _warned_missing_ring_period
            if not _warned_missing_ring_period:
                _warned_missing_ring_period = True
                log.warning(
                    "RTDL packet at stream offset %s: word 4 FNA is %d, not 4 (missing ring "
                    "period); kept, ring_period_ps read from its low 24 bits",
                    ctx.offset,
                    w[4] >> 24,
                )
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
            tof_corrected=w[3] > COR_OFFSET_MASK,
            tof_offset_100ns=w[3] & COR_OFFSET_MASK,
            ring_period_ps=w[4] & 0xFFFFFF,
            frames=tuple((word >> 24, word & 0xFFFFFF) for word in w[5:]),
            version=packet_type.version,
        )
