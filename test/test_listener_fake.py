"""The fake listener: 60 Hz pulses, Poisson event counts, pixel and time-of-flight ranges, runs."""

from __future__ import annotations

import numpy as np
import pytest

from livereduce.config import ConfigError, StartFrom, config_from_mapping
from livereduce.worker.listeners import create_listener
from livereduce.worker.listeners.base import NotYet
from livereduce.worker.listeners.fake import FRAME_US, PULSE_PERIOD_NS, FakeListener

T0 = 1_700_000_000 * 10**9


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def started(**options) -> tuple[FakeListener, Clock]:
    clock = Clock()
    listener = FakeListener(clock_ns=clock, **options)
    listener.start(StartFrom.START_OF_RUN)
    return listener, clock


def test_pulses_and_events():
    listener, clock = started(event_rate=60_000, pixel_count=500)
    clock.now += 2 * 10**9
    chunk = listener.extract_data()
    times = chunk.events.coords["event_time_zero"].values.astype(np.int64)
    assert len(times) == 120
    assert set(np.diff(times)) == {PULSE_PERIOD_NS}
    assert times[0] == T0
    # 120 pulses x Poisson(1000): mean 120,000, sigma ~346
    assert abs(chunk.event_count - 120_000) < 2_000
    table = chunk.events.bins.constituents["data"]
    ids = table.coords["event_id"].values
    tof = table.coords["event_time_offset"].values
    assert ids.min() >= 0
    assert ids.max() == 499
    assert tof.min() >= 0
    assert tof.max() < FRAME_US
    assert chunk.run.number == 1
    assert chunk.begins_run
    assert not chunk.ends_run


def test_next_chunk_continues_where_the_last_stopped():
    listener, clock = started(event_rate=600)
    clock.now += 10**9
    first = listener.extract_data()
    assert listener.extract_data().event_count == 0
    clock.now += 10**9
    second = listener.extract_data()
    gap = second.events.coords["event_time_zero"][0] - first.events.coords["event_time_zero"][-1]
    assert gap.value == PULSE_PERIOD_NS
    assert not second.begins_run


def test_runs_end_and_the_next_begins():
    listener, clock = started(event_rate=6000, run_length_sec=1.5, run_number=10)
    clock.now += 2 * 10**9
    first = listener.extract_data()
    assert (
        first.run.number,
        first.begins_run,
        first.ends_run,
        first.events.sizes["event_time_zero"],
    ) == (10, True, True, 90)
    second = listener.extract_data()
    assert (
        second.run.number,
        second.begins_run,
        second.ends_run,
        second.events.sizes["event_time_zero"],
    ) == (11, True, False, 30)
    assert (
        second.events.coords["event_time_zero"].values[0].astype(np.int64)
        == T0 + 90 * PULSE_PERIOD_NS
    )


def test_same_seed_same_events():
    a, clock_a = started(event_rate=10_000, seed=5)
    b, clock_b = started(event_rate=10_000, seed=5)
    clock_a.now += 10**9
    clock_b.now += 10**9
    ta = a.extract_data().events.bins.constituents["data"]
    tb = b.extract_data().events.bins.constituents["data"]
    assert np.array_equal(ta.coords["event_id"].values, tb.coords["event_id"].values)


def test_not_started_is_not_yet():
    with pytest.raises(NotYet):
        FakeListener().extract_data()


def test_from_config(tmp_path):
    raw = {
        "instrument": "FAKE",
        "listener": "fake",
        "listener_options": {"event_rate": 1234, "pixel_count": 7},
    }
    listener = create_listener(config_from_mapping(raw, tmp_path / "c.conf", check_scripts=False))
    assert listener.name == "fake 1234 events/s over 7 pixels"
    raw["listener_options"]["pixel_count"] = 0.5
    with pytest.raises(ConfigError, match=r"listener_options\.pixel_count"):
        create_listener(config_from_mapping(raw, tmp_path / "c.conf", check_scripts=False))
