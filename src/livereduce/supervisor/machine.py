"""The supervisor's decisions: one state machine, stepped by events, answering with actions.

:class:`Machine` holds everything the supervisor knows (its :class:`State`, what the current
worker reported, the restart history, the backoffs) and :meth:`Machine.step` maps
``(state, event)`` to the new state and a list of :data:`Action` for the caller to carry out
(daemon.py: start or signal a worker, notify systemd, exit). It starts no process, sends no
signal and reads no file; time comes in through the injected clocks, so every decision is
tested by stepping it with a fake clock and a fake worker (test/test_machine.py). Its inputs
are the events of events.py, its outputs the actions of actions.py.

States and their transitions (docs/operations.md):

* ``STARTING``: no worker; one is started at the next :class:`Tick` (``HELD`` instead while no
  processing script exists).
* ``WORKING``: a worker runs. A failure (exit, hang, script time limit, memory) or a change
  (script save, SIGHUP) stops it and goes to ``RESTARTING``; a run that ended with
  ``run_transition`` Stop goes to ``RUN_ENDED``.
* ``RESTARTING``: the worker is being stopped; once it has ended the machine goes to
  ``after_worker`` (``STARTING``, ``BACKOFF`` or ``HELD``).
* ``BACKOFF``: no worker until ``next_start_s`` (a repeating failure).
* ``HELD``: no worker until a script changes (no processing script; a script that ran past its
  time limit three times in a row) or SIGHUP.
* ``RUN_ENDED``: the run ended with ``run_transition`` Stop; no worker until a script change or
  SIGHUP.
* ``STOPPING``: SIGTERM/SIGINT/SIGQUIT or a configuration change; the worker gets SIGTERM and,
  :data:`STOP_GRACE_S` later, SIGKILL for its process group; ``STOPPED`` once it has ended.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from livereduce import __version__
from livereduce.config import Config
from livereduce.protocol import Progress, Resume, WorkerExit, WorkerState
from livereduce.supervisor.actions import (
    Action,
    DaemonExit,
    Exit,
    KillGroup,
    Notify,
    NotifyKind,
    ResyncWatcher,
    SendSignal,
    Start,
)
from livereduce.supervisor.backoff import STABLE_AFTER_S, Backoffs, RestartReason, classify_exit
from livereduce.supervisor.events import (
    BadReport,
    ConfigSaved,
    Exited,
    MachineEvent,
    MemoryOver,
    ScriptsSaved,
    SignalReceived,
    SpawnFailed,
    Started,
    Tick,
    WorkerReport,
)
from livereduce.supervisor.memory import MemoryExceeded
from livereduce.supervisor.watch import ScriptsChanged
from livereduce.supervisor.worker_process import describe_exit

log = logging.getLogger(__name__)

STOP_GRACE_S = 4.0
"""SIGTERM -> SIGKILL of the worker's process group when the service stops or the worker is
replaced (``stop_timeout``, when smaller, bounds it). The worker abandons the work in hand and
ends itself at the latest 3 s after a stop request (``worker.stop.STOP_EXIT_AFTER_S``); a
second later it is killed whatever it does, which keeps ``systemctl stop`` under 5 s. A write
it abandons leaves the previous file intact (atomic rename)."""

HUNG_STOP_GRACE_S = 2.0
"""SIGABRT -> SIGKILL for a hung worker: faulthandler dumps its stack at once, then it aborts."""

BOOT_ALLOWANCE_S = 30.0
"""A new worker has at least this long (or ``heartbeat_timeout_sec`` when longer) for its first
report: importing scipp or Mantid takes seconds to tens of seconds on a loaded machine, and a
short heartbeat timeout must not turn that into a restart loop."""

SCRIPT_TIMEOUTS_TO_HOLD = 3
"""The same script past its time limit this many times in a row is held off until it changes."""

RESUME_LOSSES_TO_GIVE_UP = 3
"""Workers lost in a row (crash, hang, time limit, memory) while completing the same unfinished
run: then that run is given up and the next worker starts with the live stream. A run that
kills every worker (one too big for the memory limit, data that crash a script) would otherwise
be replayed forever, long after it ended."""

FAILING_AFTER_CHUNKS = 5
"""State ``failing`` when the last this many chunks all failed or wrote no result (the output
writer may skip a write to keep within its time budget, never five in a row at any sane load)."""

HISTORY_LENGTH = 20
"""Restarts kept (with time, reason and detail) in the status file."""

RATE_WINDOW_S = 10.0
"""``events_per_s`` is the events received over the last 10 s, divided by the time covered."""

READY_STATES = frozenset(
    {WorkerState.WAITING_FOR_RUN, WorkerState.RUNNING, WorkerState.NO_DATA, WorkerState.RUN_ENDED}
)
"""Worker states that mean it is connected and receiving (or waiting for a run): READY=1 to
systemd, and from then on any exit of the worker is a crash, never a boot failure."""


class State(StrEnum):
    """The supervisor's state (the module docstring gives the transitions)."""

    STARTING = "starting"
    WORKING = "working"
    RESTARTING = "restarting"
    BACKOFF = "backoff"
    HELD = "held"
    RUN_ENDED = "run_ended"
    STOPPING = "stopping"
    STOPPED = "stopped"


# -- the worker as the machine knows it -------------------------------------------------------


@dataclass(slots=True)
class RateWindow:
    """Events per second over the last :data:`RATE_WINDOW_S` (a sliding window that decays to 0
    when nothing arrives): samples are (monotonic s, events received so far)."""

    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, now_s: float, events: int) -> None:
        """Record the worker's event count at ``now_s``; a count below the last one (a run
        replayed from its start after a reconnect replaces its events) starts the window
        over, so the rate is never negative."""
        if self.samples and events < self.samples[-1][1]:
            self.samples.clear()
        self.samples.append((now_s, events))
        self._trim(now_s)

    def _trim(self, now_s: float) -> None:
        # Keep one sample at or before the window's start: the baseline of the rate.
        while len(self.samples) >= 2 and self.samples[1][0] <= now_s - RATE_WINDOW_S:
            self.samples.popleft()

    def rate(self, now_s: float) -> float:
        """Events/s from the oldest sample still inside the window (or the last one before
        it) to ``now_s``: (latest events - that sample's events) / (now - its time)."""
        self._trim(now_s)
        if len(self.samples) < 2:
            return 0.0
        (t0, e0), (_, e1) = self.samples[0], self.samples[-1]
        return (e1 - e0) / (now_s - t0) if now_s > t0 else 0.0


@dataclass(slots=True)
class WorkerView:
    """One worker process as the machine knows it: times are the machine's monotonic clock."""

    pid: int
    started_s: float
    last_beat_s: float
    progress: Progress | None = None
    connected: bool = False
    """It reported a READY_STATES state: any exit from now on is a crash."""
    stable: bool = False
    script: str = ""
    script_since_s: float = 0.0
    signalled: signal.Signals | None = None
    stop_requested_s: float = 0.0
    kill_at_s: float | None = None
    killed: bool = False
    rate: RateWindow = field(default_factory=RateWindow)
    last_good_chunk: int = 0
    last_result_chunk: int = 0

    def failing(self) -> str:
        """Why the worker counts as failing (empty when it does not)."""
        progress = self.progress
        if progress is None:
            return ""
        if progress.chunks - self.last_good_chunk >= FAILING_AFTER_CHUNKS:
            return f"the last {progress.chunks - self.last_good_chunk} chunks all failed"
        if (
            progress.results_written is not None
            and progress.chunks - self.last_result_chunk >= FAILING_AFTER_CHUNKS
        ):
            return f"no result written for {progress.chunks - self.last_result_chunk} chunks"
        return ""


class Machine:
    """The supervisor's state and decisions for ``config``.

    ``clock`` is monotonic seconds, ``wall`` Unix seconds; ``scripts_exist`` tells whether a
    processing script exists now; ``watchdog_interval_s`` is how often systemd wants WATCHDOG=1
    (None: no watchdog). :meth:`step` takes one event and returns the actions to carry out.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float],
        wall: Callable[[], float],
        scripts_exist: Callable[[], bool],
        watchdog_interval_s: float | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._wall = wall
        self._scripts_exist = scripts_exist
        self.watchdog_interval_s = watchdog_interval_s
        self.state = State.STARTING
        self.after_worker = State.STARTING
        """Where RESTARTING goes once the worker has ended."""
        self.next_start_s = 0.0
        self.exit_status: DaemonExit | None = None
        self.worker: WorkerView | None = None
        self.last_progress: Progress | None = None
        self.resume: Resume | None = None
        self.backoffs = Backoffs()
        self.backoff_reason = ""
        self.restart_count = 0
        self.restart_history: deque[dict[str, Any]] = deque(maxlen=HISTORY_LENGTH)
        self.failures = 0
        """Workers lost to hangs, script time limits, memory kills and crashes."""
        self.chunk_errors_before = 0
        """Chunks lost to script errors by the workers that ended."""
        self.last_error = ""
        self.scripts_problem = ""
        """Why the scripts on disk are not the ones running (empty when they are)."""
        self.config_problem = ""
        """Why the configuration file on disk is not the one in force (empty when it is)."""
        self.hold = ""
        """Why no worker runs in HELD (and what releases it)."""
        self.script_timeouts: dict[str, int] = {}
        """Consecutive time-limit kills per script file name."""
        self.resume_losses: tuple[int, int] | None = None
        """(run number, workers lost in a row while completing it)."""
        self.completing: tuple[int, float] | None = None
        """(run, start time) of the current worker when it was handed a run to complete."""
        self.ready_sent = False
        self.next_ping_s = 0.0
        self.next_progress_log_s = clock() + config.progress_every_sec
        self.results_written_at: float | None = None
        """Wall time the supervisor saw ``results_written`` grow last."""
        self.last_peak_rss_bytes: int | None = None
        self.pending_change: tuple[ScriptsChanged, float] | None = None
        self.last_reload_latency_s: float | None = None
        self.dirty = True
        """Something the status shows changed since the caller last published it."""
        self.shown = ""
        self.shown_since = wall()
        """Wall time :meth:`shown_state` last became what it is (the status's ``state_since``)."""

    # -- stepping ----------------------------------------------------------------------------

    def step(self, event: MachineEvent) -> list[Action]:
        """Take one event; returns the actions to carry out, in order."""
        actions: list[Action] = []
        before = self.state
        match event:
            case Tick():
                self._tick(actions)
            case Started(pid):
                now = self._clock()
                self.worker = WorkerView(pid=pid, started_s=now, last_beat_s=now)
                resume = self.resume
                self.completing = (resume.run_number, now) if resume is not None else None
                self.state = State.WORKING
                self.backoff_reason = ""
                log.info("worker_started: pid %d", pid)
            case SpawnFailed(error):
                log.error("worker_spawn_failed: cannot start the worker program: %s", error)
                self._fail(actions, RestartReason.BOOT_FAILURE, f"cannot start the worker: {error}")
            case Exited():
                self._exited(actions, event)
            case WorkerReport():
                self._report(actions, event)
            case BadReport(pid, message):
                log.warning("worker_report_invalid: pid %d: %s", pid, message)
            case ScriptsSaved():
                self._scripts_saved(actions, event)
            case ConfigSaved():
                self._config_saved(actions, event)
            case MemoryOver(excess):
                self._memory_over(actions, excess)
            case SignalReceived(signum):
                self._signal(actions, signal.Signals(signum))
        # A tick that changed nothing leaves the status file to its periodic refresh.
        if not isinstance(event, Tick) or actions or self.state is not before:
            self.dirty = True
        shown = self.shown_state()
        if shown != self.shown:
            self.shown, self.shown_since = shown, self._wall()
        return actions

    def next_deadline_s(self) -> float:
        """The earliest monotonic time a :class:`Tick` has something to do."""
        deadlines = [self.next_progress_log_s]
        worker = self.worker
        if worker is not None:
            if worker.kill_at_s is not None:
                deadlines.append(worker.kill_at_s)
            if self.state is State.WORKING:
                deadlines.append(self._hang_deadline_s(worker))
        elif self.state in (State.STARTING, State.BACKOFF):
            deadlines.append(self.next_start_s)
        if self.watchdog_interval_s is not None:
            deadlines.append(self.next_ping_s)
        return min(deadlines)

    # -- ticks -------------------------------------------------------------------------------

    def _tick(self, actions: list[Action]) -> None:
        now = self._clock()
        worker = self.worker
        if (
            worker is not None
            and worker.kill_at_s is not None
            and now >= worker.kill_at_s
            and not worker.killed
        ):
            log.error(
                "worker_killed: pid %d did not stop %.1f s after %s: SIGKILL to its process group",
                worker.pid,
                now - worker.stop_requested_s,
                worker.signalled.name if worker.signalled else "the request",
            )
            self._kill(actions, worker)
        if self.state is State.WORKING and worker is not None:
            self._check_hang(actions, worker, now)
        if self.state in (State.STARTING, State.BACKOFF) and now >= self.next_start_s:
            if self._scripts_exist():
                actions.append(Start(self.resume))
            else:
                self._hold(
                    actions,
                    f"no processing script in {self.config.script_dir}: no worker runs until one "
                    "appears",
                )
        self._keepalive(actions, now)
        if now >= self.next_progress_log_s:
            self.next_progress_log_s = now + self.config.progress_every_sec
            log.info("progress: %s", self.progress_line())

    def _hang_deadline_s(self, worker: WorkerView) -> float:
        if worker.script:
            return worker.script_since_s + self.config.script_timeout(worker.script)
        if worker.progress is None:  # still importing its engine: no report yet
            return worker.started_s + max(self.config.heartbeat_timeout, BOOT_ALLOWANCE_S)
        return worker.last_beat_s + self.config.heartbeat_timeout

    def _check_hang(self, actions: list[Action], worker: WorkerView, now: float) -> None:
        if now <= self._hang_deadline_s(worker):
            return
        if worker.script:
            limit = self.config.script_timeout(worker.script)
            count = self.script_timeouts.get(worker.script, 0) + 1
            self.script_timeouts[worker.script] = count
            detail = (
                f"{worker.script} ran for {now - worker.script_since_s:.1f} s in worker pid "
                f"{worker.pid}, past its script_timeout_sec of {limit:g} s "
                f"({count} in a row)"
            )
            log.error("script_timeout: %s: SIGABRT (stack in the log), then SIGKILL", detail)
            if count >= SCRIPT_TIMEOUTS_TO_HOLD:
                self._record_failure(detail)
                self._count_restart(
                    RestartReason.SCRIPT_TIMEOUT, detail, "when a script changes (held)"
                )
                hold = (
                    f"{worker.script} ran past its script_timeout_sec ({limit:g} s) {count} "
                    "times in a row: no worker runs until it changes (or SIGHUP)"
                )
                self._stop_worker(actions, worker, signal.SIGABRT, State.HELD)
                self.hold = hold
                log.error("script_held: %s", hold)
                return
            self._fail(actions, RestartReason.SCRIPT_TIMEOUT, detail, signum=signal.SIGABRT)
            return
        silent_s = now - worker.last_beat_s
        detail = (
            f"no heartbeat from worker pid {worker.pid} for {silent_s:.1f} s "
            f"(heartbeat_timeout {self.config.heartbeat_timeout:g} s)"
        )
        if worker.progress is None:
            detail += f", not one report since it started (allowed {BOOT_ALLOWANCE_S:g} s)"
        log.error("heartbeat_timeout: %s: is a processing script stuck?", detail)
        self._fail(actions, RestartReason.HEARTBEAT, detail, signum=signal.SIGABRT)

    def _progressing(self, worker: WorkerView, now: float) -> bool:
        """Whether the worker counts as making progress for systemd's keep-alive: it beat
        recently, or it is in a script within that script's time limit."""
        if worker.script or worker.progress is None:
            return now <= self._hang_deadline_s(worker)
        interval = self.watchdog_interval_s or self.config.heartbeat_timeout
        return now - worker.last_beat_s <= min(self.config.heartbeat_timeout, interval)

    def _keepalive(self, actions: list[Action], now: float) -> None:
        if self.watchdog_interval_s is None or now < self.next_ping_s:
            return
        worker = self.worker
        if (
            self.state is State.WORKING
            and worker is not None
            and not self._progressing(worker, now)
        ):
            # No ping, and the next tick asks again, so that a worker that beats again (or its
            # replacement) is vouched for at once, not an interval later.
            return
        self.next_ping_s = now + self.watchdog_interval_s
        actions.append(Notify(NotifyKind.WATCHDOG))

    # -- reports -----------------------------------------------------------------------------

    def _report(self, actions: list[Action], event: WorkerReport) -> None:
        worker = self.worker
        if worker is None or worker.pid != event.pid:
            return  # a report still in the pipe of a worker already replaced
        progress, now = event.progress, event.received_s
        previous = worker.progress
        worker.progress = progress
        worker.last_beat_s = now
        worker.rate.add(now, progress.events)
        self.last_progress = progress
        self.resume = progress.resume
        if previous is None or previous.state != progress.state:
            detail = f" ({progress.detail})" if progress.detail else ""
            log.info("worker_state: pid %d: %s%s", worker.pid, progress.state, detail)
        self._track_script(worker, progress, now)
        self._track_outcomes(worker, previous, progress)
        if progress.last_error and (previous is None or previous.last_error != progress.last_error):
            self.last_error = progress.last_error
        if not worker.stable and now - worker.started_s >= STABLE_AFTER_S:
            worker.stable = True
            self.backoffs.reset()
        if progress.state in READY_STATES or progress.chunks >= 1 or progress.in_script:
            worker.connected = True
        if progress.chunks >= 1 and self.pending_change is not None:
            change, requested_s = self.pending_change
            if worker.started_s >= requested_s:
                self.pending_change = None
                self.last_reload_latency_s = self._wall() - change.saved_at
                log.info(
                    "scripts_picked_up: %s: %.2f s from the save to the first chunk of worker pid "
                    "%d",
                    ", ".join(p.name for p in change.paths),
                    self.last_reload_latency_s,
                    worker.pid,
                )
        if worker.connected and self.state is State.WORKING:
            self._ready(actions)

    def _track_script(self, worker: WorkerView, progress: Progress, now: float) -> None:
        if worker.script and progress.in_script != worker.script:
            # The script ended within its limit: its run of time-limit kills is broken.
            self.script_timeouts.pop(worker.script, None)
        if progress.in_script and progress.in_script != worker.script:
            worker.script_since_s = now  # the supervisor's clock: the worker's may differ
        worker.script = progress.in_script

    def _track_outcomes(
        self, worker: WorkerView, previous: Progress | None, progress: Progress
    ) -> None:
        chunks_before = previous.chunks if previous is not None else 0
        errors_before = previous.errors if previous is not None else 0
        written_before = previous.results_written if previous is not None else None
        if progress.chunks > chunks_before and progress.errors == errors_before:
            worker.last_good_chunk = progress.chunks
        written = progress.results_written
        if written is not None and written > (written_before or 0):
            worker.last_result_chunk = progress.chunks
            self.results_written_at = self._wall()

    # -- worker ends -------------------------------------------------------------------------

    def _exited(self, actions: list[Action], event: Exited) -> None:
        worker = self.worker
        if worker is None or worker.pid != event.pid:
            return
        now = self._clock()
        uptime = now - worker.started_s
        self.last_peak_rss_bytes = event.peak_rss_bytes
        peak = (
            f", peak RSS {event.peak_rss_bytes / 2**20:.1f} MiB"
            if event.peak_rss_bytes is not None
            else ""
        )
        if event.stack.strip():
            log.error("worker_stack: pid %d, where it was:\n%s", worker.pid, event.stack.rstrip())
        self.chunk_errors_before += worker.progress.errors if worker.progress else 0
        if self.state is not State.WORKING:
            log.info(
                "worker_ended: pid %d ended with %s after %.1f s%s",
                worker.pid,
                describe_exit(event.status),
                uptime,
                peak,
            )
            self._worker_gone(actions)
            return
        last_state = worker.progress.state if worker.progress is not None else None
        if event.status == WorkerExit.STOPPED and last_state is WorkerState.RUN_ENDED:
            log.info(
                "run_ended: worker pid %d: run_transition Stop; staying up until a script "
                "change or SIGHUP",
                worker.pid,
            )
            self.worker = None
            self.state = State.RUN_ENDED
            return
        self.worker = None
        reason, level = classify_exit(event.status, progressed=worker.connected)
        detail = (
            f"worker pid {worker.pid} ended on its own with {describe_exit(event.status)} "
            f"after {uptime:.1f} s{peak}"
        )
        if event.status == -signal.SIGKILL:
            detail += " (killed by SIGKILL: out of memory? see the kernel log)"
        log.log(level, "worker_exited: %s", detail)
        self._fail(actions, reason, detail)

    def _worker_gone(self, actions: list[Action]) -> None:
        """The worker has ended (or never started): go where the state leads."""
        self.worker = None
        if self.state is State.STOPPING:
            self.state = State.STOPPED
            actions.append(Exit(DaemonExit.OK if self.exit_status is None else self.exit_status))
            return
        if self.state in (State.RESTARTING, State.WORKING):
            self.state = self.after_worker
        if self.state is State.STARTING and self.next_start_s > self._clock():
            self.state = State.BACKOFF
        if self.state is State.HELD:
            self._ready(actions)

    # -- restarts ----------------------------------------------------------------------------

    def _grace_for(self, signum: signal.Signals | None) -> float:
        grace = HUNG_STOP_GRACE_S if signum is signal.SIGABRT else STOP_GRACE_S
        return min(grace, self.config.stop_timeout)

    def _stop_worker(
        self, actions: list[Action], worker: WorkerView, signum: signal.Signals, then: State
    ) -> None:
        """Ask the worker to end with ``signum``; SIGKILL follows after the grace; the machine
        goes to ``then`` once it has ended."""
        if then is State.STOPPED:
            self.state = State.STOPPING
        else:
            self.state = State.RESTARTING
            self.after_worker = then
        if worker.signalled is not None:
            return  # already on its way out: the deadline set then holds
        grace = self._grace_for(signum)
        worker.signalled = signum
        worker.stop_requested_s = self._clock()
        worker.kill_at_s = self._clock() + grace
        log.info("worker_stopping: pid %d (%s, SIGKILL after %g s)", worker.pid, signum.name, grace)
        actions.append(SendSignal(worker.pid, signum))

    def _kill(self, actions: list[Action], worker: WorkerView) -> None:
        worker.killed = True
        worker.kill_at_s = None
        actions.append(KillGroup(worker.pid))

    def _count_restart(self, reason: RestartReason, detail: str, when: str) -> None:
        self.restart_count += 1
        self.restart_history.append({"time": self._wall(), "reason": str(reason), "detail": detail})
        # A reload or a save is what the user asked for; only failures are warnings.
        asked = reason in (RestartReason.SIGHUP, RestartReason.SCRIPTS_CHANGED)
        log.log(
            logging.INFO if asked else logging.WARNING,
            "worker_restart: %s: %s; start %s; restart #%d",
            reason,
            detail,
            when,
            self.restart_count,
        )

    def _restart(
        self,
        actions: list[Action],
        reason: RestartReason,
        detail: str,
        *,
        delay_s: float,
        signum: signal.Signals = signal.SIGTERM,
    ) -> None:
        """Count and log a restart; stop the current worker (if any) and start the next one
        ``delay_s`` from now."""
        now = self._clock()
        self._count_restart(reason, detail, f"in {delay_s:.1f} s" if delay_s > 0 else "now")
        self.next_start_s = now + delay_s
        self.backoff_reason = str(reason) if delay_s > 0 else ""
        self.hold = ""
        worker = self.worker
        if worker is not None:
            self._stop_worker(actions, worker, signum, State.STARTING)
        else:
            self.state = State.BACKOFF if delay_s > 0 else State.STARTING

    def _record_failure(self, detail: str) -> None:
        self.failures += 1
        self.last_error = detail

    def _fail(
        self,
        actions: list[Action],
        reason: RestartReason,
        detail: str,
        *,
        signum: signal.Signals = signal.SIGTERM,
    ) -> None:
        """A failure restart: counted in ``errors``, delayed by the reason's backoff."""
        self._record_failure(detail)
        self._count_resume_loss(reason)
        backoff = self.backoffs[reason]
        delay = backoff.next_delay_s()
        if delay > 0:
            log.warning(
                "restart_backoff: %s repeats (%d in a row without a stable worker): waiting %.1f s "
                "before the next start",
                reason,
                backoff.failures,
                delay,
            )
        self._restart(actions, reason, detail, delay_s=delay, signum=signum)

    def _count_resume_loss(self, reason: RestartReason) -> None:
        """One more worker lost while completing the run it was handed; the run is given up
        at :data:`RESUME_LOSSES_TO_GIVE_UP` in a row. A worker that was handed none, that
        never started, or that lasted :data:`STABLE_AFTER_S` (the run let it through: it dies
        of something else) does not count, and the last resets the count."""
        if self.completing is None or reason is RestartReason.BOOT_FAILURE:
            return
        run, started_s = self.completing
        if self._clock() - started_s >= STABLE_AFTER_S:
            self.resume_losses = None
            return
        previous = self.resume_losses
        lost = previous[1] + 1 if previous is not None and previous[0] == run else 1
        self.resume_losses = (run, lost)
        if lost < RESUME_LOSSES_TO_GIVE_UP or self.resume is None or self.resume.run_number != run:
            return
        log.error(
            "resume_given_up: run %d lost %d workers in a row (the last: %s) while they completed "
            "it: the next worker starts with the live stream (start_from %s), that run's result "
            "stays as last written",
            run,
            lost,
            reason,
            self.config.start_from,
        )
        self.resume = None
        self.resume_losses = None

    def _memory_over(self, actions: list[Action], excess: MemoryExceeded) -> None:
        worker = self.worker
        if worker is None or worker.pid != excess.pid or worker.killed:
            return
        if self.state is not State.WORKING:
            # Already on its way out (a reload, a stop): it still must not grow through its grace.
            log.error("memory_exceeded: %s while it stops: SIGKILL at once", excess.describe())
            self._kill(actions, worker)
            return
        log.error(
            "memory_exceeded: %s: SIGKILL at once (waiting only lets it grow)", excess.describe()
        )
        worker.signalled = signal.SIGKILL
        worker.stop_requested_s = self._clock()
        self._kill(actions, worker)
        self._fail(actions, RestartReason.MEMORY, excess.describe())

    def _hold(self, actions: list[Action], problem: str) -> None:
        if self.state is not State.HELD or self.hold != problem:
            log.error("worker_held: %s", problem)
        self.state = State.HELD
        self.hold = problem
        self._ready(actions)

    def _ready(self, actions: list[Action]) -> None:
        """READY=1 once per start or reload: the worker is connected, or the supervisor holds
        (a wait only a person ends: failing systemd's start would only restart into it)."""
        if not self.ready_sent:
            self.ready_sent = True
            actions.append(Notify(NotifyKind.READY, self.status_line()))

    def _release(self, why: str) -> None:
        """Leave HELD or RUN_ENDED: a worker starts at the next tick."""
        log.info("worker_released: %s: starting a worker", why)
        self.state = State.STARTING
        self.next_start_s = self._clock()
        self.hold = ""
        self.scripts_problem = ""
        self.script_timeouts.clear()

    # -- signals and changes -----------------------------------------------------------------

    def _signal(self, actions: list[Action], sig: signal.Signals) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            if self.exit_status is not None:
                worker = self.worker
                if worker is not None and not worker.killed:
                    log.warning(
                        "stop_signal_repeated: %s while stopping: killing worker pid %d now",
                        sig.name,
                        worker.pid,
                    )
                    self._kill(actions, worker)
                return
            self._shutdown(actions, DaemonExit.OK, f"received {sig.name}")
        elif sig is signal.SIGHUP:
            if self.exit_status is not None:
                return
            log.info(
                "reload_requested: SIGHUP: re-reading the processing scripts, restarting the worker"
            )
            actions.append(
                Notify(NotifyKind.RELOADING, "reloading the processing scripts (SIGHUP)")
            )
            actions.append(ResyncWatcher())
            self.ready_sent = False
            self.backoffs.reset()
            self.script_timeouts.clear()
            self.scripts_problem = ""
            self._restart(actions, RestartReason.SIGHUP, "SIGHUP", delay_s=0.0)
        elif sig is signal.SIGQUIT:
            state = json.dumps(self.status(), sort_keys=True)
            log.warning("quit_requested: SIGQUIT: state at exit: %s", state)
            if self.exit_status is None:
                self._shutdown(actions, DaemonExit.QUIT, "received SIGQUIT")

    def _shutdown(self, actions: list[Action], status: DaemonExit, reason: str) -> None:
        self.exit_status = status
        grace = self._grace_for(signal.SIGTERM)
        log.info("supervisor_stopping: %s (worker SIGKILL after %g s)", reason, grace)
        actions.append(Notify(NotifyKind.STOPPING, f"stopping: {reason}"))
        worker = self.worker
        if worker is None:
            self.state = State.STOPPING
            self._worker_gone(actions)
            return
        if worker.kill_at_s is not None:  # already stopping: the stop's bound applies too
            worker.kill_at_s = min(worker.kill_at_s, self._clock() + grace)
        self._stop_worker(actions, worker, signal.SIGTERM, State.STOPPED)

    def _scripts_saved(self, actions: list[Action], event: ScriptsSaved) -> None:
        if self.exit_status is not None:
            return
        change = event.change
        if not event.exists:
            # Both scripts gone at once is what an unmounted network filesystem looks like; a
            # worker without scripts would publish unreduced data as if all were well.
            log.error(
                "scripts_missing: %s; no processing script exists in %s; the worker is left "
                "as it is until one appears",
                change.describe(),
                self.config.script_dir,
            )
            self.scripts_problem = (
                f"no processing script in {self.config.script_dir}: "
                "the worker runs on with the scripts it started with"
            )
            return
        for problem in event.problems:
            log.error("script_syntax_error: %s", problem)
        if event.problems and self.state is State.WORKING and self.worker is not None:
            log.error(
                "scripts_not_reloaded: worker pid %d is not restarted for a script that "
                "does not compile; saving a fixed script restarts it",
                self.worker.pid,
            )
            self.scripts_problem = (
                "saved script not loaded, the worker runs the previous version: "
                + "; ".join(event.problems)
            )
            return
        self.scripts_problem = ""
        self.pending_change = (change, self._clock())
        self.backoffs.reset()
        self.script_timeouts.clear()
        if self.state in (State.HELD, State.RUN_ENDED) and self.worker is None:
            self._count_restart(RestartReason.SCRIPTS_CHANGED, change.describe(), "now")
            self._release(change.describe())
            return
        self._restart(actions, RestartReason.SCRIPTS_CHANGED, change.describe(), delay_s=0.0)

    def _config_saved(self, actions: list[Action], event: ConfigSaved) -> None:
        if self.exit_status is not None:
            return
        change = event.change
        if event.restored:
            self.config_problem = ""
            log.info(
                "config_restored: %s: the content is again the configuration in use; nothing to do",
                change.describe(),
            )
            return
        if event.error:
            # A half-edited or deleted file: exiting now would leave systemd restarting a process
            # that fails (exit 2) every RestartSec; the settings in force are still good.
            log.error(
                "config_change_rejected: %s, but it cannot be used: %s; running on with the "
                "configuration read at start",
                change.describe(),
                event.error,
            )
            self.config_problem = (
                f"the configuration file on disk cannot be used, the one read at start runs on "
                f"(the next start of the service fails): {event.error}"
            )
            return
        log.warning("config_changed: %s: exiting for systemd to start it anew", change.describe())
        self._shutdown(actions, DaemonExit.OK, "configuration changed")

    # -- what it shows -----------------------------------------------------------------------

    def shown_state(self) -> str:
        """The state the status file and STATUS= show: the worker's own while one works
        (``failing`` when :meth:`WorkerView.failing` says so)."""
        worker = self.worker
        if self.state is State.WORKING and worker is not None:
            if worker.failing():
                return "failing"
            if worker.progress is None or worker.progress.state is WorkerState.ERROR:
                return "starting" if worker.progress is None else "running"
            return str(worker.progress.state)
        return str(self.state)

    def events_per_s(self) -> float:
        """The current worker's event rate over the sliding window (0 without a worker)."""
        worker = self.worker
        return worker.rate.rate(self._clock()) if worker is not None else 0.0

    def errors(self) -> int:
        """Chunks lost to script errors plus workers lost to failures, since the start."""
        current = self.worker.progress.errors if self.worker and self.worker.progress else 0
        return self.failures + self.chunk_errors_before + current

    def status_line(self) -> str:
        """One line for STATUS= and the status file's ``detail``."""
        now = self._clock()
        if self.state is State.HELD:
            return self.hold
        if self.state is State.BACKOFF:
            wait = max(self.next_start_s - now, 0.0)
            reason = self.backoff_reason or "a failure"
            return f"backoff after {reason}: next worker start in {math.ceil(wait)} s"
        if self.state is State.RUN_ENDED:
            return "run ended (run_transition Stop): waiting for a script change or SIGHUP"
        worker = self.worker
        progress = worker.progress if worker is not None else None
        if progress is None or self.state is not State.WORKING or worker is None:
            return str(self.state)
        run = f"run {progress.run_number}" if progress.run_number else "no run"
        text = (
            f"{progress.state}: {run}, {progress.chunks} chunks, {progress.events} events, "
            f"{self.events_per_s():.0f} events/s"
        )
        failing = worker.failing()
        if failing:
            text = f"failing ({failing}); " + text
        if worker.script:
            text += f" (in {worker.script} for {now - worker.script_since_s:.0f} s)"
        elif progress.state is not WorkerState.RUNNING and progress.detail:
            text += f" ({progress.detail})"
        return text

    def progress_line(self) -> str:
        """The periodic ``progress:`` log line: run, chunks, events, rate, lag, last result."""
        worker = self.worker
        progress = worker.progress if worker is not None else None
        if progress is None:
            return f"no worker reporting (state {self.shown_state()}: {self.status_line()})"
        wall = self._wall()
        lag = (
            f"lag {wall - progress.last_chunk_time:.1f} s"
            if progress.last_chunk_time is not None
            else "no chunk yet"
        )
        if progress.results_written is None:
            result = "results not counted by this engine"
        elif self.results_written_at is None:
            result = "no result written yet"
        else:
            result = (
                f"last result written {wall - self.results_written_at:.1f} s ago "
                f"({progress.results_written} written)"
            )
        run = f"run {progress.run_number}" if progress.run_number else "no run"
        return (
            f"{self.shown_state()}: {run}, {progress.chunks} chunks, "
            f"{progress.events:,} events, {self.events_per_s():,.0f} events/s, "
            f"{lag}, {result}"
        )

    def status(self) -> dict[str, Any]:
        """The status file's content (status.FIELDS) except the memory figures, which the
        caller reads from the process (``worker_rss_bytes``, ``memory_limit_bytes``)."""
        worker = self.worker
        progress = worker.progress if worker is not None else self.last_progress
        return {
            "state": self.shown_state(),
            "state_since": self.shown_since,
            "detail": self.status_line(),
            "instrument": self.config.instrument.name,
            "engine": progress.engine if progress else "",
            "run_number": progress.run_number if progress else None,
            "run_title": progress.run_title if progress else "",
            "chunks": progress.chunks if progress else 0,
            "events": progress.events if progress else 0,
            "events_per_s": self.events_per_s(),
            "last_chunk_time": progress.last_chunk_time if progress else None,
            "results_written": progress.results_written if progress else None,
            "last_result_time": self.results_written_at,
            "in_script": worker.script if worker is not None else "",
            "errors": self.errors(),
            "last_error": self.last_error,
            "plots_published": progress.plots_published if progress else 0,
            "publish_errors": progress.publish_errors if progress else 0,
            "last_publish_error": progress.last_publish_error if progress else "",
            "input_counts": dict(progress.input_counts) if progress else {},
            "streams": progress.streams if progress else {},
            "worker_pid": worker.pid if worker is not None else None,
            "worker_peak_rss_bytes": self.last_peak_rss_bytes,
            "restarts": self.restart_count,
            "restart_history": list(self.restart_history),
            "last_reload_latency_s": self.last_reload_latency_s,
            "scripts_problem": self.hold or self.scripts_problem,
            "config_problem": self.config_problem,
            "resume": self.resume.to_json() if self.resume is not None else None,
            "supervisor_pid": os.getpid(),
            "version": __version__,
            "config": str(self.config.path) if self.config.path else None,
            "updated": self._wall(),
        }
