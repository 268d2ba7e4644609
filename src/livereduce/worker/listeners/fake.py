"""A synthetic event stream: Mantid's FakeEventDataListener (mantid-live-data.md §3.6) with
realistic pulses.

Events arrive in 60 Hz pulses (the SNS accelerator's repetition rate), a Poisson number per
pulse with mean ``event_rate / 60``. Pixel IDs are uniform over ``pixel_count`` pixels; times of
flight follow a moderator-like spectrum inside one 16.7 ms frame. To sustain well over 2e7
events/s the events are not drawn one by one: a pool of random events is drawn once at start and
each chunk copies windows of it starting at random offsets into the chunk, so a chunk costs one
memory copy per event field and no per-event Python work.

``listener_options`` (all optional): ``event_rate`` (events/s, default 100000), ``pixel_count``
(default 1024), ``run_length_sec`` (0 = one endless run, default 0; otherwise a run ends after
that many seconds and the next begins with the run number plus one), ``run_number`` (first run,
default 1), ``seed`` (random seed, default 0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import scipp as sc

from livereduce.config import Config, ConfigError, StartFrom
from livereduce.worker.listeners.base import Chunk, ListenerBase, NotYet, RunInfo

PULSE_RATE_HZ = 60
"""SNS accelerator repetition rate; one pulse every 1/60 s."""
PULSE_PERIOD_NS = 1_000_000_000 // PULSE_RATE_HZ
FRAME_US = 1e6 / PULSE_RATE_HZ
"""Times of flight stay inside one frame (16,667 µs)."""
POOL_EVENTS = 1 << 22
"""Size of the pre-drawn event pool (4M events, 32 MiB): large enough that windows at random
offsets do not repeat visibly, small enough to draw in well under a second."""


class FakeListener(ListenerBase):
    """Synthetic events at ``event_rate`` events/s over ``pixel_count`` pixels.

    ``clock_ns`` gives the wall time in Unix ns (the data's timestamps); tests and the bench
    pass a clock they advance by hand. Each :meth:`extract_data` returns the pulses whose time
    has come since the previous call; a chunk never spans two runs.
    """

    def __init__(
        self,
        *,
        event_rate: float = 100_000.0,
        pixel_count: int = 1024,
        run_length_sec: float = 0.0,
        run_number: int = 1,
        seed: int = 0,
        instrument: str = "FAKE",
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if pixel_count < 1:
            raise ValueError(f"pixel_count must be at least 1, got {pixel_count}")
        self.name = f"fake {event_rate:g} events/s over {pixel_count} pixels"
        self._events_per_pulse = event_rate / PULSE_RATE_HZ
        self._pixel_count = int(pixel_count)
        self._run_pulses = math.ceil(run_length_sec * PULSE_RATE_HZ) if run_length_sec > 0 else 0
        self._run_number = int(run_number)
        self._instrument = instrument
        self._clock_ns = clock_ns
        self._rng = np.random.default_rng(int(seed))
        self._pool_id: np.ndarray | None = None
        self._pool_tof: np.ndarray | None = None
        self._run_start_ns = 0
        self._next_pulse = 0
        self._begins = True
        self._started = False

    def start(self, start_from: StartFrom) -> None:
        """Begin a run now. ``start_from`` makes no difference: the fake run starts here."""
        del start_from
        self._draw_pool()
        self._run_start_ns = self._clock_ns()
        self._next_pulse = 0
        self._begins = True
        self._started = True

    def _draw_pool(self) -> None:
        rng = self._rng
        ids = rng.integers(0, self._pixel_count, POOL_EVENTS, dtype=np.int32)
        # A gamma-shaped moderator spectrum peaking near a third of the frame.
        tof = rng.gamma(4.0, FRAME_US / 12.0, POOL_EVENTS).astype(np.float32)
        np.minimum(tof, np.float32(FRAME_US - 1.0), out=tof)
        # Doubled so that any window of up to POOL_EVENTS events is one contiguous slice.
        self._pool_id = np.concatenate([ids, ids])
        self._pool_tof = np.concatenate([tof, tof])

    def _events(self, pulses_ns: np.ndarray, per_pulse: np.ndarray) -> sc.DataArray:
        """The layout of :func:`~livereduce.worker.listeners.base.make_events`, built in place: each
        event field is copied once, from pool windows straight into scipp's memory."""
        n = int(per_pulse.sum())
        if self._pool_id is None or self._pool_tof is None:
            raise NotYet("the fake listener was not started")
        offsets = self._rng.integers(0, POOL_EVENTS, max(math.ceil(n / POOL_EVENTS), 1))
        event_id = sc.empty(dims=["event"], shape=[n], dtype="int32", unit=None)
        tof = sc.empty(dims=["event"], shape=[n], dtype="float32", unit="us")
        for target, pool in ((event_id.values, self._pool_id), (tof.values, self._pool_tof)):
            for i, offset in enumerate(offsets):
                begin = i * POOL_EVENTS
                stop = min(begin + POOL_EVENTS, n)
                target[begin:stop] = pool[offset : offset + stop - begin]
        table = sc.DataArray(
            sc.ones(dims=["event"], shape=[n], dtype="float32", unit="counts"),
            coords={"event_id": event_id, "event_time_offset": tof},
        )
        end = np.cumsum(per_pulse)
        binned = sc.bins(
            begin=sc.array(dims=["event_time_zero"], values=end - per_pulse, unit=None),
            end=sc.array(dims=["event_time_zero"], values=end, unit=None),
            dim="event",
            data=table,
        )
        times = sc.array(
            dims=["event_time_zero"], values=pulses_ns.astype("datetime64[ns]"), unit="ns"
        )
        return sc.DataArray(binned, coords={"event_time_zero": times})

    def extract_data(self) -> Chunk:
        """The pulses since the previous call (at most up to the end of the current run).

        Raises NotYet before :meth:`start`."""
        if not self._started:
            raise NotYet("the fake listener was not started")
        available = (self._clock_ns() - self._run_start_ns) // PULSE_PERIOD_NS
        last = available if not self._run_pulses else min(available, self._run_pulses)
        first = self._next_pulse
        count = max(last - first, 0)
        pulses_ns = (
            self._run_start_ns + (first + np.arange(count, dtype=np.int64)) * PULSE_PERIOD_NS
        )
        per_pulse = self._rng.poisson(self._events_per_pulse, count).astype(np.int64)
        events = self._events(pulses_ns, per_pulse)
        run = RunInfo(
            number=self._run_number,
            title=f"fake run {self._run_number}",
            start_time=datetime.fromtimestamp(self._run_start_ns / 1e9, tz=UTC),
            instrument=self._instrument,
        )
        ends = bool(self._run_pulses) and last >= self._run_pulses
        chunk = Chunk(events=events, run=run, begins_run=self._begins and count > 0, ends_run=ends)
        self._begins = self._begins and count == 0
        self._next_pulse = max(last, first)
        if ends:
            self._run_start_ns += self._run_pulses * PULSE_PERIOD_NS
            self._run_number += 1
            self._next_pulse = 0
            self._begins = True
        return chunk

    def close(self) -> None:
        """Forget the pool (nothing else to release). Safe to call twice."""
        self._pool_id = self._pool_tof = None
        self._started = False


def from_config(config: Config) -> FakeListener:
    """The fake listener with ``config.listener_options``; raises ConfigError on a bad value."""
    options: Mapping[str, Any] = config.listener_options
    pixel_count = options.get("pixel_count", 1024)
    if pixel_count < 1 or int(pixel_count) != pixel_count:
        raise ConfigError(
            config.path,
            "listener_options.pixel_count",
            f"expected a whole number >= 1, got {pixel_count!r}",
        )
    return FakeListener(
        event_rate=float(options.get("event_rate", 100_000.0)),
        pixel_count=int(pixel_count),
        run_length_sec=float(options.get("run_length_sec", 0.0)),
        run_number=int(options.get("run_number", 1)),
        seed=int(options.get("seed", 0)),
        instrument=config.instrument.name,
    )
