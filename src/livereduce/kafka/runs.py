"""Runs from run control, keyed to data time.

ESS's file-writer topic announces a run with a pl72 (``start_time``) and ends it with a 6s4t
(``stop_time``). A run's events are those whose pulse time (ev44 ``reference_time``) lies in
``[start_ns, stop_ns)``, whatever order the messages arrive in across partitions and topics. A
run whose 6s4t never came ends at the next run's start. :class:`RunTable` keeps what run control
said, sorted by start time; it never looks at offsets or watermarks.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace

from livereduce.kafka.wire import RunStart, RunStop

MAX_EARLY_STOPS = 100
"""6s4t messages kept while their pl72 has not come."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaRun:
    """One run: ``start`` (its pl72) and ``stop_ns`` (its 6s4t's stop time; None while it
    runs). ``stop_explicit`` says the 6s4t came (False: the stop is the next run's start)."""

    start: RunStart
    stop_ns: int | None = None
    stop_explicit: bool = False

    @property
    def number(self) -> int:
        """The run number (``run_name`` as an integer, 0 when it is not one)."""
        return self.start.run_number

    @property
    def start_ns(self) -> int:
        """The run's start, Unix ns."""
        return self.start.start_ns


class RunTable:
    """Every run run control announced, sorted by start time. ``ignored`` counts run-control
    messages that said nothing new (a repeated pl72); a 6s4t that comes before its run's pl72
    is kept and applied when the pl72 arrives."""

    def __init__(self) -> None:
        self._runs: list[KafkaRun] = []
        self._early_stops: dict[str, RunStop] = {}
        self.ignored = 0

    def __len__(self) -> int:
        return len(self._runs)

    @property
    def runs(self) -> tuple[KafkaRun, ...]:
        """The runs, earliest start first."""
        return tuple(self._runs)

    def add(self, message: RunStart | RunStop) -> KafkaRun | None:
        """Record a pl72 or 6s4t; returns the run it changed, None when it changed nothing."""
        if isinstance(message, RunStart):
            return self._add_start(message)
        return self._add_stop(message)

    def _add_start(self, start: RunStart) -> KafkaRun | None:
        if any(run.start.run_name == start.run_name for run in self._runs):
            self.ignored += 1
            return None
        starts = [run.start_ns for run in self._runs]
        at = bisect.bisect_right(starts, start.start_ns)
        stop = self._runs[at].start_ns if at < len(self._runs) else None
        run = KafkaRun(start=start, stop_ns=stop)
        self._runs.insert(at, run)
        if at > 0:
            before = self._runs[at - 1]
            if not before.stop_explicit or (
                before.stop_ns is not None and before.stop_ns > start.start_ns
            ):
                # A missing stop ends the run at the next start; so does a stop past it.
                self._runs[at - 1] = replace(before, stop_ns=start.start_ns)
        early = self._early_stops.pop(start.run_name, None)
        return self._add_stop(early) if early is not None else run

    def _add_stop(self, stop: RunStop) -> KafkaRun | None:
        for index, run in enumerate(self._runs):
            if run.start.run_name == stop.run_name:
                limit = self._runs[index + 1].start_ns if index + 1 < len(self._runs) else None
                stop_ns = stop.stop_ns if limit is None else min(stop.stop_ns, limit)
                changed = replace(run, stop_ns=stop_ns, stop_explicit=True)
                self._runs[index] = changed
                return changed
        # A 6s4t ahead of its pl72 (run control over several partitions): kept until it comes,
        # the oldest forgotten beyond a bound (stops of runs that never started).
        self._early_stops[stop.run_name] = stop
        while len(self._early_stops) > MAX_EARLY_STOPS:
            del self._early_stops[next(iter(self._early_stops))]
            self.ignored += 1
        return None

    def get(self, run_name: str) -> KafkaRun | None:
        """The run named ``run_name`` as it stands now."""
        return next((run for run in self._runs if run.start.run_name == run_name), None)

    def latest(self) -> KafkaRun | None:
        """The run that started last, if any."""
        return self._runs[-1] if self._runs else None

    def by_number(self, number: int) -> KafkaRun | None:
        """The run with run number ``number``, if announced."""
        return next((run for run in self._runs if run.number == number), None)

    def after(self, run: KafkaRun) -> KafkaRun | None:
        """The run that started next after ``run``."""
        for index, known in enumerate(self._runs):
            if known.start.run_name == run.start.run_name:
                return self._runs[index + 1] if index + 1 < len(self._runs) else None
        return None
