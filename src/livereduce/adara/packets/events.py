"""Per-pulse event packets: banked event data (neutron events by detector bank) and beam
monitor event data. Both share one layout: a pulse preamble, then sections that each carry
their events; decoding makes each section's events a read-only numpy view on the packet's
bytes, with no per-event Python code.

Layouts: ADARA protocol document §Banked Event and §Beam Monitor Event, ADARA
``common/ADARAPackets.{h,cc}`` (ADARA 1.10.4).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np

from livereduce.adara.codes import PacketType
from livereduce.adara.errors import BadPayloadLengthError
from livereduce.adara.packets.sections import (
    EVENT_DTYPE,
    BankSection,
    MonitorSection,
    SourceSection,
)
from livereduce.adara.packets.wire import (
    Payload,
    PayloadContext,
    VersionedPacket,
    at_least,
    build,
    check_uint,
    cor_word,
)

_PREAMBLE = struct.Struct("<IIII")  # pulse charge, pulse energy, cycle, flags (banked/monitor)
_SOURCE_HEADER = struct.Struct("<IIII")  # source id, intra-pulse time, COR|TOF offset, banks
_BANK_HEADER = struct.Struct("<II")  # bank id, event count
_MONITOR_HEADER = struct.Struct("<III")  # monitor id|event count, source id, COR|TOF offset


@dataclass(frozen=True, slots=True, kw_only=True)
class _PulsePacket(VersionedPacket):
    """The part banked event and beam monitor packets share: the pulse preamble (four words:
    charge, energy, cycle, flags; v1 puts ``veto_flags`` in the top 12 bits of ``flags``) and
    a tuple of sections, each with an ``events`` array, in the field named ``_SECTIONS``."""

    pulse_charge_10pc: int = 0
    pulse_energy_ev: int = 0
    cycle: int = 0
    flags: int = 0
    veto_flags: int = 0

    _SECTIONS: ClassVar[str] = ""

    def _event_sections(self) -> Sequence[BankSection | MonitorSection]:
        """The sections that hold events, in wire order."""
        raise NotImplementedError

    def _section_payloads(self) -> Iterator[bytes]:
        """The wire bytes after the preamble, as an iterable of pieces."""
        raise NotImplementedError

    @classmethod
    def _decode_sections(cls, payload: Payload, ctx: PayloadContext) -> tuple[object, ...]:
        """The sections after the preamble; BadPayloadLengthError when they overrun."""
        raise NotImplementedError

    @property
    def event_count(self) -> int:
        """Number of events in the packet (of a banked event: all banks, error and unmapped
        banks included)."""
        return sum(len(section.events) for section in self._event_sections())

    def _payload(self) -> bytes:
        return b"".join([self._preamble(), *self._section_payloads()])

    def _preamble(self) -> bytes:
        flags = self.flags
        if self.packet_type.version == 0:
            if self.veto_flags:
                raise ValueError("a v0 event packet has no veto_flags")
            check_uint("flags", flags)
        else:
            flags = (check_uint("veto_flags", self.veto_flags, 12) << 20) | check_uint(
                "flags", flags, 20
            )
        return _PREAMBLE.pack(
            check_uint("pulse_charge_10pc", self.pulse_charge_10pc),
            check_uint("pulse_energy_ev", self.pulse_energy_ev),
            check_uint("cycle", self.cycle),
            flags,
        )

    @classmethod
    def _decode(
        cls, packet_type: PacketType, timestamp_ns: int, payload: Payload, ctx: PayloadContext
    ) -> Self:
        at_least(ctx, payload, _PREAMBLE.size)
        charge, energy, cycle, flags = _PREAMBLE.unpack_from(payload)
        veto = 0
        if packet_type.version:
            veto, flags = flags >> 20, flags & 0xFFFFF
        return build(
            cls,
            timestamp_ns=timestamp_ns,
            pulse_charge_10pc=charge,
            pulse_energy_ev=energy,
            cycle=cycle,
            flags=flags,
            veto_flags=veto,
            version=packet_type.version,
            **{cls._SECTIONS: cls._decode_sections(payload, ctx)},
        )


def _short_header(
    ctx: PayloadContext, what: str, header: struct.Struct, position: int, left: int
) -> BadPayloadLengthError:
    """The error for a ``what`` section header at payload byte ``position`` with only
    ``left`` bytes after it."""
    return ctx.length(
        f"{left} bytes left at payload byte {position}, "
        f"too few for a {header.size}-byte {what} section header"
    )


def _overrun(
    ctx: PayloadContext, what: str, count: int, size: int, left: int
) -> BadPayloadLengthError:
    """The error for a section that declares ``count`` events of ``size`` bytes each when
    only ``left`` bytes remain."""
    return ctx.length(
        f"{what} declares {count} events ({count * size} bytes) but only {left} bytes remain"
    )


def _flatten(
    sections: Sequence[BankSection | MonitorSection], labels: list[int], empty: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(label, events)``: every section's label repeated once per event, and all events
    concatenated in wire order (one vectorised copy per section); ``empty`` when there are
    no sections."""
    if not sections:
        return np.empty(0, EVENT_DTYPE), empty
    events = np.concatenate([section.events for section in sections])
    label = np.repeat(np.array(labels, EVENT_DTYPE), [len(section.events) for section in sections])
    return label, events


@dataclass(frozen=True, slots=True, kw_only=True)
class BankedEvent(_PulsePacket):
    """Banked event data (0x4000.0 / .1), one packet per pulse; ``timestamp_ns`` is the pulse
    time.

    ``pulse_charge_10pc`` (units of 10 pC), ``pulse_energy_ev``, ``cycle`` (accelerator cycle),
    ``flags`` (:class:`BankedEventFlag` bits; 32 bits in v0, 20 in v1), ``veto_flags`` (v1, 12
    bits, for the previous pulse) and ``sources``.
    """

    sources: tuple[SourceSection, ...] = ()
    version: int = 1

    TYPES: ClassVar = (PacketType.BANKED_EVENT_V0, PacketType.BANKED_EVENT_V1)
    _SECTIONS: ClassVar = "sources"

    @property
    def banks(self) -> tuple[BankSection, ...]:
        """All bank sections of all sources, in wire order."""
        return tuple(bank for source in self.sources for bank in source.banks)

    def _event_sections(self) -> Sequence[BankSection]:
        return self.banks

    def event_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The whole packet's events as three flat (N,) uint32 arrays ``(bank_id, tof_100ns,
        pixel_id)`` in wire order, built with one vectorised copy per bank and no per-event
        Python code. ``tof_100ns`` and ``pixel_id`` are the two columns of one new (N, 2)
        array (strided views; ``np.ascontiguousarray`` when a contiguous copy is needed).

        Times of flight are as on the wire: when a source's ``tof_corrected`` is False its
        ``tof_offset_100ns`` has not been added.
        """
        banks = self.banks
        bank_id, events = _flatten(
            banks, [bank.bank_id for bank in banks], np.empty((0, 2), EVENT_DTYPE)
        )
        return bank_id, events[:, 0], events[:, 1]

    def _section_payloads(self) -> Iterator[bytes]:
        for source in self.sources:
            yield _SOURCE_HEADER.pack(
                check_uint("source_id", source.source_id),
                check_uint("intra_pulse_time_100ns", source.intra_pulse_time_100ns),
                cor_word(source.tof_corrected, source.tof_offset_100ns),
                len(source.banks),
            )
            for bank in source.banks:
                yield _BANK_HEADER.pack(check_uint("bank_id", bank.bank_id), len(bank.events))
                yield bank.events.tobytes()

    @classmethod
    def _decode_sections(cls, payload: Payload, ctx: PayloadContext) -> tuple[SourceSection, ...]:
        end = len(payload)
        position = _PREAMBLE.size
        sources: list[SourceSection] = []
        # Every header before an event is 8 or 16 bytes and every event 8, so events always
        # start at a multiple of 8: one (M, 2) view serves all banks by slicing (the hot loop).
        pairs = np.frombuffer(payload, EVENT_DTYPE, (end // 8) * 2).reshape(-1, 2)
        unpack_bank = _BANK_HEADER.unpack_from
        trusted = BankSection._trusted
        while position < end:
            if end - position < _SOURCE_HEADER.size:
                raise _short_header(ctx, "source", _SOURCE_HEADER, position, end - position)
            source_id, intra, cor, bank_count = _SOURCE_HEADER.unpack_from(payload, position)
            position += _SOURCE_HEADER.size
            if bank_count * _BANK_HEADER.size > end - position:
                raise ctx.length(
                    f"source section {len(sources)} declares {bank_count} banks "
                    f"but only {end - position} bytes remain"
                )
            banks: list[BankSection] = []
            for _ in range(bank_count):
                if end - position < _BANK_HEADER.size:
                    raise ctx.length(
                        f"bank section header at payload byte {position} runs past the payload"
                    )
                bank_id, count = unpack_bank(payload, position)
                position += _BANK_HEADER.size
                stop = position + 8 * count
                if stop > end:
                    raise _overrun(ctx, f"bank {bank_id}", count, 8, end - position)
                banks.append(trusted(bank_id, pairs[position >> 3 : stop >> 3]))
                position = stop
            sources.append(SourceSection._trusted(source_id, intra, cor, tuple(banks)))
        return tuple(sources)


@dataclass(frozen=True, slots=True, kw_only=True)
class BeamMonitorEvent(_PulsePacket):
    """Beam monitor event data (0x4001.0 / .1), one packet per pulse: the same preamble as
    :class:`BankedEvent`, then one :class:`MonitorSection` per monitor with events."""

    monitors: tuple[MonitorSection, ...] = ()
    version: int = 1

    TYPES: ClassVar = (PacketType.BEAM_MONITOR_EVENT_V0, PacketType.BEAM_MONITOR_EVENT_V1)
    _SECTIONS: ClassVar = "monitors"

    def _event_sections(self) -> Sequence[MonitorSection]:
        return self.monitors

    def event_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(monitor_id, tof_100ns)``: two flat (N,) uint32 arrays in wire order."""
        monitors = self.monitors
        ids, words = _flatten(monitors, [m.monitor_id for m in monitors], np.empty(0, EVENT_DTYPE))
        return ids, words & np.uint32(0x1FFFFF)

    def _section_payloads(self) -> Iterator[bytes]:
        for monitor in self.monitors:
            count = check_uint("monitor event count", len(monitor.events), 22)
            yield _MONITOR_HEADER.pack(
                (check_uint("monitor_id", monitor.monitor_id, 10) << 22) | count,
                check_uint("source_id", monitor.source_id),
                cor_word(monitor.tof_corrected, monitor.tof_offset_100ns),
            )
            yield monitor.events.tobytes()

    @classmethod
    def _decode_sections(cls, payload: Payload, ctx: PayloadContext) -> tuple[MonitorSection, ...]:
        end = len(payload)
        position = _PREAMBLE.size
        monitors: list[MonitorSection] = []
        while position < end:
            if end - position < _MONITOR_HEADER.size:
                raise _short_header(ctx, "monitor", _MONITOR_HEADER, position, end - position)
            id_count, source_id, cor = _MONITOR_HEADER.unpack_from(payload, position)
            position += _MONITOR_HEADER.size
            monitor_id, count = id_count >> 22, id_count & 0x3FFFFF
            if count * 4 > end - position:
                raise _overrun(ctx, f"monitor {monitor_id}", count, 4, end - position)
            events = np.frombuffer(payload, EVENT_DTYPE, count, position)
            position += count * 4
            monitors.append(MonitorSection._trusted(monitor_id, source_id, cor, events))
        return tuple(monitors)
