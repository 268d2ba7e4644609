"""What the worker tells the supervisor, and how the worker ends.

The worker writes one JSON object per line (a :class:`Progress` report) to a pipe whose write
end it gets as ``--report-fd``. Each report is also its heartbeat: the supervisor records the
monotonic time it read it. The worker reports from inside its processing loop (after every
chunk, and while it waits for data at least every ``HEARTBEAT_INTERVAL_S``), never from a side
thread, so a hung processing script stops the heartbeats (STYLE.md §3).

The worker program is ``python -m livereduce.worker --report-fd N``; it reads the configuration
as a JSON object ``{"path": str | null, "raw": {...}, "resume": {...} | null}`` on its standard
input (a missing ``resume`` means null). ``resume`` is the :class:`Resume` the previous worker
last reported (nothing is lost across restarts): the next worker asks the stream for data from
that run's start, completes and keeps that run, then goes on with the current one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from enum import IntEnum, StrEnum
from typing import Any

HEARTBEAT_INTERVAL_S = 2.0
"""Upper bound between two reports while the loop waits: well under half of the shortest
heartbeat timeout a configuration can reach in practice (STYLE.md §3: beat at <= timeout/2)."""

STACK_FD_ENV = "LIVEREDUCE_STACK_FD"
"""Environment variable naming the fd the worker points faulthandler at: the supervisor reads
that file after a hung worker was aborted and logs the stack in ``livereduce.log``."""

MAX_REPORT_BYTES = 1 << 16
"""A report line longer than this is a bug in the worker; the supervisor drops it."""


class WorkerExit(IntEnum):
    """Exit status of the worker process; the supervisor maps each to an action."""

    STOPPED = 0  # asked to stop (SIGTERM), or the run ended with run_transition Stop
    CRASHED = 1  # an unexpected exception escaped the engine
    BOOT_FAILURE = 3  # cannot start: engine unavailable, listener misconfigured
    ENGINE_FAILURE = 4  # the engine failed while running (e.g. MonitorLiveData ended in error)


class WorkerState(StrEnum):
    """What the worker is doing, as shown in the status file and sd_notify STATUS=."""

    STARTING = "starting"
    CONNECTING = "connecting"
    WAITING_FOR_RUN = "waiting_for_run"
    RUNNING = "running"
    NO_DATA = "no_data"  # in a run and connected, but nothing new arrives (beam off, paused)
    RUN_ENDED = "run_ended"  # run_transition Stop: the run is over and monitoring stopped
    ERROR = "error"


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume:
    """The oldest run a worker has seen but not yet finished (its ``result_<run>`` not written).

    ``run_number`` is the facility's run number; ``start_ns`` the run's start as Unix time in
    nanoseconds (ADARA: the run status packet's run start; Kafka: pl72 ``start_time``).
    """

    run_number: int
    start_ns: int

    def to_json(self) -> dict[str, int]:
        """The JSON object the supervisor hands the next worker."""
        return {"run_number": self.run_number, "start_ns": self.start_ns}

    @classmethod
    def from_json(cls, data: object) -> Resume | None:
        """``None`` for ``null``; raises ValueError for anything but a :meth:`to_json` object."""
        if data is None:
            return None
        if not isinstance(data, dict):
            raise ValueError(f"resume is not an object: {data!r}")
        try:
            return cls(run_number=int(data["run_number"]), start_ns=int(data["start_ns"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"resume is not a run and a start time: {data!r}: {error}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """One report: the worker's state and counters since it started.

    ``chunks`` and ``events`` count chunks processed and detector events received;
    ``last_chunk_time`` is wall time (Unix seconds) of the last processed chunk;
    ``errors`` counts chunks lost to script errors and stream faults; ``detail`` says in words
    what the worker is doing or waiting for (it ends up in the journal and sd_notify STATUS=).

    ``results_written`` counts the result files the worker wrote (None: its engine does not
    count them); with ``chunks`` and ``errors`` it tells the supervisor whether the worker is
    ``failing``.

    ``unfinished_run`` / ``unfinished_run_start_ns`` are the :class:`Resume` to hand the next
    worker (``None`` between runs, once every run seen was written). ``in_script`` names the
    user script running now (e.g. ``reduce_HYS_live_post_proc.py``, empty between scripts) and
    ``in_script_since`` is when it started (wall time, Unix seconds): a report with ``in_script``
    set is sent just before the script starts, and the supervisor then allows that script's
    ``script_timeout_sec`` before it counts the worker as hung (``Config.script_timeout``). The
    Mantid engine names a whole chunk ``LoadLiveData`` (``config.MANTID_CHUNK``: both scripts in
    one go); at each listener "not ready" retry it sends one with ``in_script`` empty (that
    attempt ended), then one naming ``LoadLiveData`` again with a new ``in_script_since``.

    ``plots_published`` / ``publish_errors`` count uploads to the live data server that
    succeeded / failed (timeouts, refused connections, answers other than 200);
    ``last_publish_error`` says the last failure in words. Publishing never stops the loop.

    ``input_counts``: what the listener received but left out or could not read since the
    worker started, by kind (``error_events``, ``unmapped_events``, ``out_of_range_events``,
    ``duplicate_pulses``, ``paused_events``, ``malformed_packets``, ``skipped_bytes``,
    ``framing_failures``, ...; docs/adara.md). Stream faults among them also count in
    ``errors``.

    ``streams`` (Kafka listener): per event topic, ``lag`` (messages between the high watermark
    and the position, summed over this instance's partitions), ``events_per_s`` (received
    over the last extraction) and ``malformed`` (messages dropped as unreadable, since start).
    """

    state: WorkerState
    pid: int = field(default_factory=os.getpid)
    engine: str = ""
    detail: str = ""
    instrument: str = ""
    run_number: int | None = None
    run_title: str = ""
    chunks: int = 0
    events: int = 0
    last_chunk_time: float | None = None
    results_written: int | None = None
    errors: int = 0
    last_error: str = ""
    unfinished_run: int | None = None
    unfinished_run_start_ns: int | None = None
    in_script: str = ""
    in_script_since: float | None = None
    plots_published: int = 0
    publish_errors: int = 0
    last_publish_error: str = ""
    input_counts: dict[str, int] = field(default_factory=dict)
    streams: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def resume(self) -> Resume | None:
        """The run the next worker must complete first, if any."""
        if self.unfinished_run is None or self.unfinished_run_start_ns is None:
            return None
        return Resume(run_number=self.unfinished_run, start_ns=self.unfinished_run_start_ns)

    def with_(self, **changes: Any) -> Progress:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)

    def to_line(self) -> bytes:
        """The report as one JSON line (UTF-8, newline-terminated)."""
        return (json.dumps(asdict(self), separators=(",", ":")) + "\n").encode()

    @classmethod
    def from_line(cls, line: bytes) -> Progress:
        """Parse one line written by :meth:`to_line`. Raises ValueError if it is not one."""
        try:
            data = json.loads(line)
            data["state"] = WorkerState(data["state"])
            return cls(**data)
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"not a worker report: {line[:200]!r}: {error}") from None


class ReportWriter:
    """Worker side: writes reports to the pipe fd. A supervisor that went away shows up as
    BrokenPipeError, which the worker treats as a request to stop."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def send(self, progress: Progress) -> None:
        """Write one report (blocking; a report is far below PIPE_BUF, so it is atomic)."""
        os.write(self._fd, progress.to_line())


class ReportReader:
    """Supervisor side: splits bytes read from the non-blocking pipe into reports."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> Iterator[Progress]:
        """Yield every complete report in ``data`` (plus what was pending); malformed lines
        raise ValueError after the good ones before them were yielded."""
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        if len(self._pending) > MAX_REPORT_BYTES:
            self._pending = b""
            raise ValueError("worker report line too long; dropped")
        for line in lines:
            if line.strip():
                yield Progress.from_line(line)
