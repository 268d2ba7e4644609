"""The fast event path (worker/listeners/pulse_events.py) against the one it replaced."""

from __future__ import annotations

import numpy as np
import pytest
import scipp as sc

from livereduce.adara import packets
from livereduce.adara.parser import StreamParser
from livereduce.adara.playlist import build_run_stream
from livereduce.adara.runfile import RunFileError, read_run_file
from livereduce.worker.listeners import pulse_events
from livereduce.worker.listeners.base import make_events
from livereduce.worker.listeners.pulse_events import PulseEvents, tof_to_us

PIECE = 64 * 1024


class OldEvents:
    """The listener's event buffer before the fast path, kept as the reference: lists of
    per-bank arrays, one concatenate per field, tof via float64 / 10."""

    def __init__(self) -> None:
        self.pulse_ns: list[int] = []
        self.counts: list[int] = []
        self.ids: list[np.ndarray] = []
        self.tofs: list[np.ndarray] = []

    def add_pulse(self, pulse_ns: int, ids: list[np.ndarray], tofs: list[np.ndarray]) -> None:
        self.pulse_ns.append(pulse_ns)
        self.counts.append(sum(len(a) for a in ids))
        self.ids.extend(ids)
        self.tofs.extend(tofs)

    def to_events(self) -> sc.DataArray:
        ids = np.concatenate(self.ids) if self.ids else np.empty(0, np.uint32)
        tofs = np.concatenate(self.tofs) if self.tofs else np.empty(0, np.uint32)
        return make_events(
            np.asarray(self.pulse_ns, dtype=np.int64),
            np.asarray(self.counts, dtype=np.int64),
            ids.astype(np.int32),
            (tofs.astype(np.float64) / 10.0).astype(np.float32),
        )


def old_banked(old: OldEvents, packet: packets.BankedEvent) -> None:
    ids, tofs = [], []
    for source in packet.sources:
        offset = 0 if source.tof_corrected else source.tof_offset_100ns
        for bank in source.banks:
            if bank.bank_id >= packets.ERROR_BANK_ID or not len(bank.events):
                continue
            ids.append(bank.pixel_id)
            tofs.append(bank.tof_100ns + np.uint32(offset) if offset else bank.tof_100ns)
    old.add_pulse(packet.timestamp_ns, ids, tofs)


class Pair:
    """The old and the new buffers of one chunk: detector events and monitors."""

    def __init__(self, capacity: int = pulse_events.FIRST_CAPACITY) -> None:
        self.old, self.new = OldEvents(), PulseEvents(capacity)
        self.old_monitors: dict[int, OldEvents] = {}
        self.new_monitors: dict[int, PulseEvents] = {}

    def add(self, packet: packets.Packet) -> None:
        if isinstance(packet, packets.BankedEvent):
            old_banked(self.old, packet)
            dropped = self.new.add_banked(packet)
            assert dropped.error_bank + dropped.unmapped_bank == sum(
                len(b.events) for b in packet.banks if b.bank_id >= packets.ERROR_BANK_ID
            )
            assert dropped.not_kept == 0
        elif isinstance(packet, packets.BeamMonitorEvent):
            for monitor in packet.monitors:
                tof = monitor.tof_100ns
                ids = np.full(len(tof), monitor.monitor_id, dtype=np.uint32)
                self.old_monitors.setdefault(monitor.monitor_id, OldEvents()).add_pulse(
                    packet.timestamp_ns, [ids], [tof]
                )
                new = self.new_monitors.setdefault(monitor.monitor_id, PulseEvents())
                new.add_pulse(packet.timestamp_ns)
                new.add_monitor_events(monitor.monitor_id, tof)

    def assert_identical(self) -> int:
        """Assert old == new; returns the detector events compared."""
        new = self.new.to_events()
        assert sc.identical(new, self.old.to_events())
        assert self.old_monitors.keys() == self.new_monitors.keys()
        for key, old in self.old_monitors.items():
            assert sc.identical(self.new_monitors[key].to_events(), old.to_events())
        return int(new.bins.size().sum().value)


def real_runs(shared_data):
    runs = []
    for path in sorted(shared_data.glob("*.nxs*")):
        try:
            runs.append(read_run_file(path))
        except RunFileError:
            continue  # not an SNS layout (SANS2D): the replay cannot stream it either
    return runs


@pytest.mark.slow
def test_the_new_chunk_is_identical_to_the_old_on_every_real_run(shared_data):
    runs = real_runs(shared_data)
    assert len(runs) >= 5
    for run in runs:
        stream = build_run_stream(run)
        data = b"".join([*stream.prologue, *stream.items])
        parser = StreamParser()
        chunks = [Pair()]
        pulses = 0
        for start in range(0, len(data), PIECE):
            for packet in parser.feed(data[start : start + PIECE]):
                chunks[-1].add(packet)
                if isinstance(packet, packets.BankedEvent):
                    pulses += 1
                    if pulses % 3000 == 0:  # chunks of a few thousand pulses, as the engine
                        chunks.append(Pair())
        parser.close()
        events = sum(chunk.assert_identical() for chunk in chunks)
        assert events == run.detector_event_count, run.path.name
        assert len(chunks) > 1


def banked(sources, timestamp_ns: int = 1_700_000_000 * 10**9) -> packets.BankedEvent:
    return packets.decode(
        packets.encode(packets.BankedEvent(timestamp_ns=timestamp_ns, sources=sources))
    )


def test_offsets_error_banks_large_tofs_and_growth_match_the_old_path():
    rng = np.random.default_rng(1)

    def bank(bank_id: int, n: int, high: int = 2**32) -> packets.BankSection:
        return packets.BankSection.from_arrays(
            bank_id,
            rng.integers(0, high, n, dtype=np.uint32),
            rng.integers(0, 2**32, n, dtype=np.uint32),
        )

    pair = Pair(capacity=3)
    for pulse in range(7):
        sources = (
            packets.SourceSection(
                source_id=1,
                tof_offset_100ns=1234567,
                tof_corrected=False,
                banks=(bank(1, pulse), bank(packets.ERROR_BANK_ID, 2), bank(2, 0)),
            ),
            packets.SourceSection(
                source_id=2,
                tof_offset_100ns=99,
                tof_corrected=True,
                banks=(bank(0xFFFFFFFF, 3), bank(7, 2 * pulse + 1, high=2**24)),
            ),
        )
        pair.add(banked(sources, 1_700_000_000 * 10**9 + pulse * 16_666_667))
    assert pair.new.events == sum(range(7)) + sum(2 * p + 1 for p in range(7)) == 70
    assert pair.new.capacity == 96  # grew from 3, doubling, keeping what it held
    assert pair.assert_identical() == 70


def test_empty_buffers_give_empty_events_like_the_old_path():
    assert sc.identical(PulseEvents().to_events(), OldEvents().to_events())
    pair = Pair()
    pair.add(banked(()))
    assert pair.assert_identical() == 0
    assert pair.new.to_events().sizes == {"event_time_zero": 1}


def test_tof_conversion_is_the_float64_result_for_every_value_below_2_24_and_above():
    tof = np.arange(1 << 24, dtype=np.uint32)
    out = np.empty(len(tof), np.float32)
    tof_to_us(tof, out)
    np.testing.assert_array_equal(out, (tof.astype(np.float64) / 10).astype(np.float32))
    # a float32 multiplication by 0.1 would differ: the conversion must not be that
    assert not np.array_equal(out, tof.astype(np.float32) * np.float32(0.1))
    large = np.array([1 << 24, (1 << 24) + 1, 2**32 - 1, 123456789], dtype=np.uint32)
    out = np.empty(4, np.float32)
    tof_to_us(large, out)
    np.testing.assert_array_equal(out, (large.astype(np.float64) / 10).astype(np.float32))
    # over 2**31 only (negative as int32, so below 2**24 by the maximum alone)
    above = np.array([2**31 + 5, 3, 2**32 - 1], dtype=np.uint32)
    out = np.empty(3, np.float32)
    tof_to_us([above[:1], above[1:]], out)
    np.testing.assert_array_equal(out, (above.astype(np.float64) / 10).astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        tof_to_us(large, np.empty(3, np.float32))


def test_events_before_a_pulse_are_refused_and_memory_is_counted():
    events = PulseEvents()
    with pytest.raises(RuntimeError, match="before any pulse"):
        events.add_events(np.zeros((1, 2), np.uint32))
    assert events.nbytes == 0
    events.add_pulse(5)
    events.add_events(np.zeros((10, 2), np.uint32))
    assert events.nbytes == 12 * 10 + pulse_events.PULSE_BYTES
    assert (events.events, events.pulses) == (10, 1)


def test_a_packet_screened_as_one_gives_what_each_bank_screened_alone_gives():
    rng = np.random.default_rng(2)
    ids = [rng.integers(0, 3000, n, dtype=np.uint32) for n in (500, 0, 700, 300)]
    ids[2][::7] |= np.uint32(0x8000_0000)  # the error bit on some events of one bank
    tofs = [rng.integers(0, 166_667, len(i), dtype=np.uint32) for i in ids]
    banks = tuple(
        packets.BankSection.from_arrays(bank + 1, tofs[bank], ids[bank]) for bank in range(4)
    )
    packet = banked((packets.SourceSection(source_id=1, banks=banks),))
    seen: list[int] = []

    def screen(pixel_id: np.ndarray) -> np.ndarray | None:
        seen.append(len(pixel_id))
        invalid = pixel_id >= 2000
        return invalid if invalid.any() else None

    new = PulseEvents()
    assert new.add_banked(packet, screen) == (0, 0, 0)
    assert seen == [1500]  # one screen for the packet's 1500 events, not one per bank
    keep = np.concatenate(ids) < 2000
    old = OldEvents()
    old.add_pulse(packet.timestamp_ns, [np.concatenate(ids)[keep]], [np.concatenate(tofs)[keep]])
    assert new.events == int(keep.sum()) < 1500
    assert sc.identical(new.to_events(), old.to_events())
    paused = PulseEvents()
    assert paused.add_banked(packet, screen, keep=False) == (0, 0, int(keep.sum()))
    assert paused.events == paused.pulses == 0


def test_buffers_joined_with_conversions_waiting_equal_the_old_path():
    rng = np.random.default_rng(3)

    def packet(pulse: int, high: int) -> packets.BankedEvent:
        n = 50 + pulse
        bank = packets.BankSection.from_arrays(
            1, rng.integers(0, high, n, dtype=np.uint32), rng.integers(0, 9, n, dtype=np.uint32)
        )
        return banked((packets.SourceSection(source_id=1, banks=(bank,)),), 10**18 + pulse)

    first, later, old = PulseEvents(capacity=8), PulseEvents(capacity=8), OldEvents()
    # waiting divisions in both, a value of 2**24 or more in the middle of the later one
    for pulse, high in enumerate((2**24, 2**24, 2**32, 2**24)):
        buffer = first if pulse < 2 else later
        buffer.add_banked(packet(pulse, high))
    rng = np.random.default_rng(3)
    for pulse, high in enumerate((2**24, 2**24, 2**32, 2**24)):
        old_banked(old, packet(pulse, high))
    first.extend(later)
    assert first.events == 50 + 51 + 52 + 53
    assert sc.identical(first.to_events(), old.to_events())
    assert sc.identical(first.to_events(), old.to_events())  # a second call changes nothing
