"""The supervisor: keeps exactly one worker process running the live reduction.

Everything that happens reaches the supervisor as an event on one queue: signals (the handlers
only put the signal number there), script and configuration changes (the watcher thread),
worker reports (one reader thread per worker), and the timed wake-ups of the queue's ``get``.
The main loop takes the events one at a time and then runs one tick in a fixed order (STYLE.md
§1-2): handle the events, check the heartbeat, check the memory, reap the worker, start one if
none runs and it is time, tell systemd, write the status file. So no two restarts can race.

Worker exits are mapped to actions by their :class:`~livereduce.protocol.WorkerExit` status
(STYLE.md §4): a run that ended with ``run_transition`` Stop leaves the supervisor up and idle
until a script change or SIGHUP; a boot failure backs off hard; a crash backs off with a growing
delay; every restart is logged with its reason and counted in the status file. The process exit
statuses are :class:`DaemonExit` (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

from livereduce import __version__, notify
from livereduce.config import Config, ConfigError, load_config
from livereduce.memory import MemoryExceeded, MemoryGuard, resident_bytes
from livereduce.protocol import Progress, ReportReader, WorkerExit, WorkerState
from livereduce.status import write_status
from livereduce.watch import ConfigChanged, ScriptsChanged, Watcher

log = logging.getLogger(__name__)

STABLE_AFTER_S = 60.0
"""A worker that has run this long without trouble counts as started: the backoffs reset
(supervisor's ``startsecs``, STYLE.md §4)."""

HUNG_STOP_GRACE_S = 5.0
"""SIGTERM -> SIGKILL grace for a worker whose heartbeat stopped: it is stuck, a long wait only
delays the replacement."""

STATUS_REFRESH_S = 2.0
"""The status file is rewritten at least this often (and on every report, at most every
STATUS_MIN_INTERVAL_S), so its ``updated`` field shows the supervisor is alive."""
STATUS_MIN_INTERVAL_S = 0.2
NOTIFY_STATUS_MIN_INTERVAL_S = 1.0
"""STATUS= to systemd at most once a second: it is for people reading ``systemctl status``."""

MAX_WAIT_S = 1.0
"""The loop ticks at least once a second (reaping, deadlines) even when nothing happens."""

RATE_WINDOW_S = 10.0
"""events/s is measured over the reports of the last 10 seconds."""

SUPERVISOR_ONLY_ENV = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})

HISTORY_LENGTH = 20
"""Restarts kept (with time, reason and detail) in the status file."""


class DaemonExit(IntEnum):
    """Exit status of the ``livereduce`` process (documented in docs/operations.md)."""

    OK = 0  # stopped by SIGTERM/SIGINT, or the configuration changed (systemd starts it anew)
    INTERNAL_ERROR = 1  # a fault in the supervisor itself; the traceback is in the log
    CONFIG_ERROR = 2  # the configuration cannot be used; one message on stderr
    QUIT = 131  # SIGQUIT: the state was logged, then the process quit (128 + SIGQUIT)


class RestartReason(StrEnum):
    """Why the worker was restarted (status file ``restart_history``)."""

    SCRIPTS_CHANGED = "scripts_changed"
    SIGHUP = "sighup"
    MEMORY = "memory_exceeded"
    HEARTBEAT = "heartbeat_timeout"
    CRASHED = "worker_crashed"
    ENGINE_FAILURE = "engine_failure"
    BOOT_FAILURE = "boot_failure"
    EXITED = "worker_exited"


class State(StrEnum):
    """The supervisor's state as the status file shows it."""

    STARTING = "starting"
    CONNECTING = "connecting"
    RUNNING = "running"
    WAITING_FOR_RUN = "waiting_for_run"
    RUN_ENDED = "run_ended"
    RESTARTING = "restarting"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class SignalReceived:
    """A signal arrived (queued by the handler, handled by the loop)."""

    signum: int


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """A report (heartbeat) from the worker ``pid``, read at monotonic ``received_s``."""

    pid: int
    progress: Progress
    received_s: float


@dataclass(frozen=True, slots=True)
class ReportsClosed:
    """The worker ``pid`` closed its report pipe (it exited, or is about to)."""

    pid: int


@dataclass(frozen=True, slots=True)
class BadReport:
    """The worker ``pid`` wrote something that is not a report."""

    pid: int
    message: str


Event = SignalReceived | WorkerReport | ReportsClosed | BadReport | ScriptsChanged | ConfigChanged


class Backoff:
    """Delays before restarting after repeated failures: ``first_s`` for the first, then
    ``base_s`` doubling up to ``max_s``; :meth:`reset` once a worker ran stably."""

    def __init__(self, *, first_s: float, base_s: float, max_s: float) -> None:
        self.first_s = first_s
        self.base_s = base_s
        self.max_s = max_s
        self.failures = 0

    def next_delay_s(self) -> float:
        """The delay for this failure (and count it)."""
        if self.failures == 0:
            delay = self.first_s
        else:
            delay = min(self.base_s * 2 ** (self.failures - 1), self.max_s)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """Forget earlier failures."""
        self.failures = 0


def _default_backoffs() -> dict[RestartReason, Backoff]:
    crash = {"first_s": 1.0, "base_s": 2.0, "max_s": 60.0}
    return {
        RestartReason.MEMORY: Backoff(first_s=0.0, base_s=2.0, max_s=300.0),
        RestartReason.HEARTBEAT: Backoff(first_s=0.0, base_s=5.0, max_s=300.0),
        RestartReason.CRASHED: Backoff(**crash),
        RestartReason.ENGINE_FAILURE: Backoff(**crash),
        RestartReason.EXITED: Backoff(**crash),
        RestartReason.BOOT_FAILURE: Backoff(first_s=5.0, base_s=10.0, max_s=600.0),
    }


@dataclass(slots=True)
class Worker:
    """One worker process, its report reader thread, and what the supervisor knows of it."""

    process: subprocess.Popen[bytes]
    started_s: float
    last_beat_s: float
    progress: Progress | None = None
    stop_reason: str = ""
    stop_requested_s: float = 0.0
    kill_at_s: float | None = None
    killed: bool = False
    reports_closed: bool = False
    stable: bool = False
    rates: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=256))

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.process.pid

    def events_per_s(self) -> float:
        """Events received per second over the last RATE_WINDOW_S of reports."""
        if len(self.rates) < 2:
            return 0.0
        (t0, e0), (t1, e1) = self.rates[0], self.rates[-1]
        return (e1 - e0) / (t1 - t0) if t1 > t0 else 0.0


def worker_command(report_fd: int) -> list[str]:
    """The worker program's argv (protocol.py): this Python, ``-m livereduce.worker``."""
    return [sys.executable, "-m", "livereduce.worker", "--report-fd", str(report_fd)]


def worker_environment() -> dict[str, str]:
    """The supervisor's environment less systemd's notify and watchdog variables: only the
    supervisor (the unit's main process) talks to systemd."""
    return {k: v for k, v in os.environ.items() if k not in SUPERVISOR_ONLY_ENV}


def _read_reports(
    pid: int, fd: int, put: Callable[[Event], None], clock: Callable[[], float]
) -> None:
    reader = ReportReader()
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while data := pipe.read(65536):
            try:
                for progress in reader.feed(data):
                    put(WorkerReport(pid, progress, clock()))
            except ValueError as error:
                put(BadReport(pid, str(error)))
    put(ReportsClosed(pid))


def syntax_errors(paths: Sequence[Path]) -> list[str]:
    """``file:line: message`` for each script in ``paths`` that does not compile (missing
    files are skipped): checked before a restart so a broken save is reported at once."""
    problems = []
    for path in paths:
        try:
            source = path.read_bytes()
        except OSError:
            continue
        try:
            compile(source, str(path), "exec")
        except SyntaxError as error:
            text = (error.text or "").strip()
            problems.append(f"{path}:{error.lineno}: {error.msg}" + (f": {text}" if text else ""))
        except ValueError as error:  # e.g. NUL bytes in the file
            problems.append(f"{path}: {error}")
    return problems


class Supervisor:
    """Runs and watches the worker for ``config`` until a stop signal or a config change.

    Nothing happens at construction; :meth:`run` installs the signal handlers, starts the
    watcher and the first worker, and returns the process exit status (:class:`DaemonExit`).
    ``clock`` is monotonic seconds; ``command`` builds the worker's argv from the report fd.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        command: Callable[[int], list[str]] = worker_command,
    ) -> None:
        self.config = config
        self._clock = clock
        self._command = command
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.worker: Worker | None = None
        self.want_worker = True
        self.next_start_s = 0.0
        self.exit_status: DaemonExit | None = None
        self.state = State.STARTING
        self.backoffs = _default_backoffs()
        self.memory = MemoryGuard(config.system_mem_limit_perc, config.mem_check_interval_sec)
        self.watcher: Watcher | None = None
        self.restart_count = 0
        self.restart_history: deque[dict[str, Any]] = deque(maxlen=HISTORY_LENGTH)
        self.last_progress: Progress | None = None
        self.backoff_reason = ""
        self._pending_change: tuple[ScriptsChanged, float] | None = None
        self.last_reload_latency_s: float | None = None
        self._ready_sent = False
        self._watchdog_interval_s = notify.watchdog_interval_s()
        self._next_watchdog_s = 0.0
        self._last_status_write_s = -1e9
        self._status_dirty = True
        self._status_error = ""
        self._last_notify_status_s = -1e9
        self._last_notify_text = ""

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until stopped; returns the process exit status."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, self._on_signal)
        self._start_watcher()
        problems = syntax_errors([p for p in self.config.existing_scripts() if p is not None])
        for problem in problems:
            log.error("script_syntax_error: %s", problem)
        notify.status("starting the worker")
        try:
            while self.exit_status is None or self.worker is not None:
                self._wait_and_handle()
                self.tick()
        finally:
            if self.watcher is not None:
                self.watcher.stop()
            if self.worker is not None:  # only after an internal error: leave no child behind
                self._signal_worker(self.worker, signal.SIGKILL)
                self.worker.process.wait()
                self.worker = None
            self.state = State.STOPPED
            self._write_status(self._clock(), force=True)
        log.info(
            "supervisor_exit: status %d (%s)",
            self.exit_status,
            self.exit_status.name,
        )
        return int(self.exit_status)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._events.put(SignalReceived(signum))  # SimpleQueue.put is reentrant; nothing else here

    def _start_watcher(self) -> None:
        scripts = [self.config.proc_script]
        if self.config.post_process:
            scripts.append(self.config.post_proc_script)
        self.watcher = Watcher(
            scripts,
            self.config.path,
            self._events.put,
            poll_interval_s=self.config.poll_interval_sec,
        )
        self.watcher.start()

    def _wait_and_handle(self) -> None:
        timeout = max(self._next_wakeup_s() - self._clock(), 0.0)
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            try:
                self.handle(event)
            except Exception:
                # One event that cannot be handled must not take the supervision down.
                log.exception("event_failed: %r", event)
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return

    def _next_wakeup_s(self) -> float:
        now = self._clock()
        deadlines = [now + MAX_WAIT_S, self._last_status_write_s + STATUS_REFRESH_S]
        if self._status_dirty:
            deadlines.append(self._last_status_write_s + STATUS_MIN_INTERVAL_S)
        worker = self.worker
        if worker is not None:
            if worker.kill_at_s is not None:
                deadlines.append(worker.kill_at_s)
            if worker.reports_closed:
                deadlines.append(now + 0.05)  # the exit status follows the pipe's EOF closely
            if not worker.stop_reason:
                deadlines.append(worker.last_beat_s + self.config.heartbeat_timeout)
            if self.memory.enabled:
                deadlines.append(self.memory.next_check_s)
        elif self.want_worker and self.exit_status is None:
            deadlines.append(self.next_start_s)
        if self._watchdog_interval_s is not None:
            deadlines.append(self._next_watchdog_s)
        return min(deadlines)

    def tick(self) -> None:
        """One pass of the fixed order: heartbeat, memory, reap, kill deadline, start,
        keep-alive, status. Each step is safe to repeat."""
        now = self._clock()
        self._check_heartbeat(now)
        self._check_memory(now)
        self._reap(now)
        self._enforce_kill_deadline(now)
        self._converge(now)
        self._keepalive(now)
        self._publish(now)

    # -- events ------------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        """Act on one event (dispatch by type)."""
        match event:
            case SignalReceived(signum):
                self._handle_signal(signal.Signals(signum))
            case WorkerReport():
                self._handle_report(event)
            case ReportsClosed(pid):
                if self.worker is not None and self.worker.pid == pid:
                    self.worker.reports_closed = True
            case BadReport(pid, message):
                log.warning("worker_report_invalid: pid %d: %s", pid, message)
            case ScriptsChanged():
                self._handle_scripts_changed(event)
            case ConfigChanged():
                self._handle_config_changed(event)

    def _handle_signal(self, sig: signal.Signals) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            if self.exit_status is not None:
                if self.worker is not None and not self.worker.killed:
                    log.warning(
                        "stop_signal_repeated: %s while stopping: killing worker pid %d now",
                        sig.name,
                        self.worker.pid,
                    )
                    self._kill(self.worker)
                return
            self._shutdown(DaemonExit.OK, f"received {sig.name}")
        elif sig is signal.SIGHUP:
            if self.exit_status is not None:
                return
            log.info(
                "reload_requested: SIGHUP: re-reading the processing scripts, restarting the worker"
            )
            notify.reloading("reloading the processing scripts (SIGHUP)")
            self._ready_sent = False
            if self.watcher is not None:
                self.watcher.resync()
            self._restart(RestartReason.SIGHUP, "SIGHUP", delay_s=0.0)
        elif sig is signal.SIGQUIT:
            state = json.dumps(self.status(), sort_keys=True)
            log.warning("quit_requested: SIGQUIT: state at exit: %s", state)
            if self.exit_status is None:
                self._shutdown(DaemonExit.QUIT, "received SIGQUIT")

    def _shutdown(self, status: DaemonExit, reason: str) -> None:
        self.exit_status = status
        self.want_worker = False
        self.state = State.STOPPING
        log.info("supervisor_stopping: %s (stop_timeout %g s)", reason, self.config.stop_timeout)
        notify.stopping(f"stopping: {reason}")
        if self.worker is not None:
            self._stop_worker(self.worker, reason, grace_s=self.config.stop_timeout)

    def _handle_report(self, event: WorkerReport) -> None:
        worker = self.worker
        if worker is None or worker.pid != event.pid:
            return  # a report still in the pipe of a worker already replaced
        progress = event.progress
        previous = worker.progress
        worker.progress = progress
        self.last_progress = progress
        worker.last_beat_s = event.received_s
        worker.rates.append((event.received_s, progress.events))
        while worker.rates and event.received_s - worker.rates[0][0] > RATE_WINDOW_S:
            worker.rates.popleft()
        self._status_dirty = True
        if previous is None or previous.state != progress.state:
            detail = f" ({progress.detail})" if progress.detail else ""
            log.info("worker_state: pid %d: %s%s", worker.pid, progress.state, detail)
        if not worker.stable and event.received_s - worker.started_s >= STABLE_AFTER_S:
            worker.stable = True
            for backoff in self.backoffs.values():
                backoff.reset()
        if progress.chunks >= 1 and self._pending_change is not None:
            change, requested_s = self._pending_change
            if worker.started_s >= requested_s:
                self._pending_change = None
                self.last_reload_latency_s = time.time() - change.saved_at
                log.info(
                    "scripts_picked_up: %s: %.2f s from the save to the first chunk of worker pid "
                    "%d",
                    ", ".join(p.name for p in change.paths),
                    self.last_reload_latency_s,
                    worker.pid,
                )
        if not self._ready_sent and (
            progress.chunks >= 1
            or progress.state in (WorkerState.WAITING_FOR_RUN, WorkerState.RUN_ENDED)
        ):
            self._ready_sent = True
            notify.ready(self._status_line())
            self._last_notify_status_s = self._clock()

    def _handle_scripts_changed(self, event: ScriptsChanged) -> None:
        if self.exit_status is not None:
            return
        existing = [p for p in self.config.existing_scripts() if p is not None]
        if not existing:
            # Both scripts gone at once is what an unmounted network filesystem looks like; a
            # worker without scripts would publish unreduced data as if all were well.
            log.error(
                "scripts_missing: %s; no processing script exists in %s; the worker is left "
                "as it is until one appears",
                event.describe(),
                self.config.script_dir,
            )
            return
        problems = syntax_errors(existing)
        if problems:
            for problem in problems:
                log.error("script_syntax_error: %s", problem)
            if self.worker is not None and not self.worker.stop_reason:
                log.error(
                    "scripts_not_reloaded: worker pid %d is not restarted for a script that "
                    "does not compile; saving a fixed script restarts it",
                    self.worker.pid,
                )
                return
        self._pending_change = (event, self._clock())
        for backoff in self.backoffs.values():
            backoff.reset()
        self._restart(RestartReason.SCRIPTS_CHANGED, event.describe(), delay_s=0.0)

    def _handle_config_changed(self, event: ConfigChanged) -> None:
        if self.exit_status is not None:
            return
        try:
            load_config(event.path)
        except ConfigError as error:
            # A half-edited or deleted file: exiting now would leave systemd starting a process
            # that fails (exit 2) until the start limit; the settings in force are still good.
            log.error(
                "config_change_rejected: %s, but it cannot be used: %s; running on with the "
                "configuration read at start",
                event.describe(),
                error,
            )
            return
        log.warning("config_changed: %s: exiting for systemd to start it anew", event.describe())
        self._shutdown(DaemonExit.OK, "configuration changed")

    # -- restarts ----------------------------------------------------------------------------

    def _restart(
        self, reason: RestartReason, detail: str, *, delay_s: float, grace_s: float | None = None
    ) -> None:
        """Count and log a restart; stop the current worker (if any) and start the next one
        ``delay_s`` from now."""
        now = self._clock()
        self.restart_count += 1
        self.restart_history.append({"time": time.time(), "reason": str(reason), "detail": detail})
        when = f"in {delay_s:.1f} s" if delay_s > 0 else "now"
        log.warning(
            "worker_restart: %s: %s; start %s; restart #%d",
            reason,
            detail,
            when,
            self.restart_count,
        )
        self.want_worker = True
        self.next_start_s = now + delay_s
        self.backoff_reason = str(reason) if delay_s > 0 else ""
        self.state = State.RESTARTING
        self._status_dirty = True
        if self.worker is not None and not self.worker.stop_reason:
            grace = self.config.stop_timeout if grace_s is None else grace_s
            self._stop_worker(self.worker, f"{reason}: {detail}", grace_s=grace)

    def _stop_worker(self, worker: Worker, reason: str, *, grace_s: float) -> None:
        worker.stop_reason = reason
        worker.stop_requested_s = self._clock()
        worker.kill_at_s = self._clock() + grace_s
        log.info("worker_stopping: pid %d (SIGTERM, SIGKILL after %g s)", worker.pid, grace_s)
        self._signal_worker(worker, signal.SIGTERM)

    def _kill(self, worker: Worker) -> None:
        worker.killed = True
        worker.kill_at_s = None
        self._signal_worker(worker, signal.SIGKILL)

    @staticmethod
    def _signal_worker(worker: Worker, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(sig)

    def _failure_restart(
        self, reason: RestartReason, detail: str, *, grace_s: float | None = None
    ) -> None:
        delay = self.backoffs[reason].next_delay_s()
        if delay > 0:
            log.warning(
                "restart_backoff: %s repeats (%d in a row without a stable worker): waiting %.1f s "
                "before the next start",
                reason,
                self.backoffs[reason].failures,
                delay,
            )
        self._restart(reason, detail, delay_s=delay, grace_s=grace_s)

    # -- tick steps -------------------------------------------------------------------------

    def _check_heartbeat(self, now: float) -> None:
        worker = self.worker
        if worker is None or worker.stop_reason:
            return
        silent_s = now - worker.last_beat_s
        if silent_s > self.config.heartbeat_timeout:
            detail = (
                f"no heartbeat from worker pid {worker.pid} for {silent_s:.1f} s "
                f"(heartbeat_timeout {self.config.heartbeat_timeout:g} s)"
            )
            log.error("heartbeat_timeout: %s: is a processing script stuck?", detail)
            grace = min(self.config.stop_timeout, HUNG_STOP_GRACE_S)
            self._failure_restart(RestartReason.HEARTBEAT, detail, grace_s=grace)

    def _check_memory(self, now: float) -> None:
        if not self.memory.due(now):
            return
        worker = self.worker
        pid = worker.pid if worker is not None and not worker.stop_reason else None
        excess: MemoryExceeded | None = self.memory.check(pid, now)
        if excess is not None:
            log.error("memory_exceeded: %s", excess.describe())
            self._failure_restart(RestartReason.MEMORY, excess.describe())

    def _reap(self, now: float) -> None:
        worker = self.worker
        if worker is None:
            return
        status = worker.process.poll()
        if status is None:
            return
        self.worker = None
        self._status_dirty = True
        uptime = now - worker.started_s
        if worker.stop_reason:
            log.info(
                "worker_ended: pid %d ended with %s after %.1f s (%s)",
                worker.pid,
                _describe_exit(status),
                uptime,
                worker.stop_reason,
            )
            if self.exit_status is None and self.next_start_s > now:
                self.state = State.BACKOFF
            return
        last_state = worker.progress.state if worker.progress is not None else None
        if status == WorkerExit.STOPPED and last_state is WorkerState.RUN_ENDED:
            log.info(
                "run_ended: worker pid %d: run_transition Stop; staying up until a script "
                "change or SIGHUP",
                worker.pid,
            )
            self.want_worker = False
            self.state = State.RUN_ENDED
            return
        reason, level = _classify_exit(status)
        detail = (
            f"worker pid {worker.pid} ended on its own with {_describe_exit(status)} "
            f"after {uptime:.1f} s"
        )
        if status == -signal.SIGKILL:
            detail += " (killed by SIGKILL: out of memory? see the kernel log)"
        log.log(level, "worker_exited: %s", detail)
        self._failure_restart(reason, detail)
        self.state = State.BACKOFF if self.next_start_s > now else State.RESTARTING

    def _enforce_kill_deadline(self, now: float) -> None:
        worker = self.worker
        if worker is not None and worker.kill_at_s is not None and now >= worker.kill_at_s:
            log.error(
                "worker_killed: pid %d did not stop within %.1f s: SIGKILL",
                worker.pid,
                now - worker.stop_requested_s,
            )
            self._kill(worker)

    def _converge(self, now: float) -> None:
        if self.worker is not None or not self.want_worker or self.exit_status is not None:
            return
        if now < self.next_start_s:
            self.state = State.BACKOFF
            return
        self._spawn(now)

    def _spawn(self, now: float) -> None:
        read_fd, write_fd = os.pipe()
        os.set_inheritable(write_fd, True)
        try:
            process = subprocess.Popen(
                self._command(write_fd),
                stdin=subprocess.PIPE,
                pass_fds=(write_fd,),
                env=worker_environment(),
            )
        except OSError:
            os.close(read_fd)
            log.exception("worker_spawn_failed: cannot start the worker program")
            self._failure_restart(
                RestartReason.BOOT_FAILURE, "the worker program could not be started"
            )
            return
        finally:
            os.close(write_fd)
        worker = Worker(process=process, started_s=now, last_beat_s=now)
        self.worker = worker
        self.state = State.STARTING
        self.backoff_reason = ""
        self._status_dirty = True
        threading.Thread(
            target=_read_reports,
            args=(process.pid, read_fd, self._events.put, self._clock),
            name=f"reports-{process.pid}",
            daemon=True,
        ).start()
        assignment = {
            "path": str(self.config.path) if self.config.path else None,
            "raw": dict(self.config.raw),
        }
        if process.stdin is not None:  # always set by stdin=PIPE
            try:
                process.stdin.write(json.dumps(assignment).encode())
                process.stdin.close()
            except BrokenPipeError:
                pass  # the worker died at once; reaping tells why
        log.info("worker_started: pid %d", process.pid)

    def _keepalive(self, now: float) -> None:
        if self._watchdog_interval_s is None or now < self._next_watchdog_s:
            return
        self._next_watchdog_s = now + self._watchdog_interval_s
        worker = self.worker
        hung = (
            worker is not None
            and not worker.stop_reason
            and now - worker.last_beat_s
            > min(self.config.heartbeat_timeout, self._watchdog_interval_s)
        )
        if hung:
            return  # no progress: systemd's watchdog may act before the heartbeat timeout does
        notify.watchdog()

    def _publish(self, now: float) -> None:
        self._update_state()
        text = self._status_line()
        if (
            text != self._last_notify_text
            and now - self._last_notify_status_s >= NOTIFY_STATUS_MIN_INTERVAL_S
        ):
            notify.status(text)
            self._last_notify_text = text
            self._last_notify_status_s = now
        self._write_status(now)

    def _update_state(self) -> None:
        if self.exit_status is not None:
            self.state = State.STOPPING
            return
        worker = self.worker
        if worker is None or worker.stop_reason or worker.progress is None:
            return
        mapping = {
            WorkerState.STARTING: State.STARTING,
            WorkerState.CONNECTING: State.CONNECTING,
            WorkerState.WAITING_FOR_RUN: State.WAITING_FOR_RUN,
            WorkerState.RUNNING: State.RUNNING,
            WorkerState.RUN_ENDED: State.RUN_ENDED,
            WorkerState.ERROR: State.RUNNING,
        }
        self.state = mapping[worker.progress.state]

    # -- status ---------------------------------------------------------------------------------

    def _status_line(self) -> str:
        progress = self.worker.progress if self.worker is not None else None
        if self.state is State.BACKOFF:
            wait = max(self.next_start_s - self._clock(), 0.0)
            reason = self.backoff_reason or "a failure"
            return f"backoff after {reason}: next worker start in {wait:.0f} s"
        if self.state is State.RUN_ENDED:
            return "run ended (run_transition Stop): waiting for a script change or SIGHUP"
        if progress is None:
            return str(self.state)
        rate = self.worker.events_per_s() if self.worker is not None else 0.0
        run = f"run {progress.run_number}" if progress.run_number else "no run"
        text = (
            f"{progress.state}: {run}, {progress.chunks} chunks, {progress.events} events, "
            f"{rate:.0f} events/s"
        )
        if progress.state is not WorkerState.RUNNING and progress.detail:
            text += f" ({progress.detail})"
        return text

    def status(self) -> dict[str, Any]:
        """The status file's content (status.FIELDS)."""
        worker = self.worker
        progress = worker.progress if worker is not None else self.last_progress
        rss = None
        if worker is not None:
            rss = self.memory.last_rss
            if rss is None:
                with contextlib.suppress(Exception):
                    rss = resident_bytes(worker.pid)
        limit = self.memory.limit.limit_bytes if self.memory.limit is not None else None
        return {
            "state": str(self.state),
            "detail": self._status_line(),
            "instrument": self.config.instrument.name,
            "engine": progress.engine if progress else "",
            "run_number": progress.run_number if progress else None,
            "run_title": progress.run_title if progress else "",
            "chunks": progress.chunks if progress else 0,
            "events": progress.events if progress else 0,
            "events_per_s": worker.events_per_s() if worker is not None else 0.0,
            "last_chunk_time": progress.last_chunk_time if progress else None,
            "errors": progress.errors if progress else 0,
            "last_error": progress.last_error if progress else "",
            "worker_pid": worker.pid if worker is not None else None,
            "worker_rss_bytes": rss,
            "memory_limit_bytes": limit,
            "restarts": self.restart_count,
            "restart_history": list(self.restart_history),
            "last_reload_latency_s": self.last_reload_latency_s,
            "supervisor_pid": os.getpid(),
            "version": __version__,
            "config": str(self.config.path) if self.config.path else None,
            "updated": time.time(),
        }

    def _write_status(self, now: float, *, force: bool = False) -> None:
        since = now - self._last_status_write_s
        if (
            not force
            and since < STATUS_REFRESH_S
            and not (self._status_dirty and since >= STATUS_MIN_INTERVAL_S)
        ):
            return
        try:
            write_status(self.config.status_file, self.status())
            self._status_error = ""
        except OSError as error:
            if str(error) != self._status_error:  # once per distinct error, not every 2 s
                log.error("status_file_error: cannot write %s: %s", self.config.status_file, error)
            self._status_error = str(error)
        self._last_status_write_s = now
        self._status_dirty = False


def _describe_exit(status: int) -> str:
    if status < 0:
        return f"signal {signal.Signals(-status).name}"
    with contextlib.suppress(ValueError):
        return f"exit status {status} ({WorkerExit(status).name})"
    return f"exit status {status}"


def _classify_exit(status: int) -> tuple[RestartReason, int]:
    """Restart reason and log level for a worker exit the supervisor did not ask for."""
    if status == WorkerExit.BOOT_FAILURE:
        return RestartReason.BOOT_FAILURE, logging.ERROR
    if status == WorkerExit.ENGINE_FAILURE:
        return RestartReason.ENGINE_FAILURE, logging.ERROR
    if status == WorkerExit.STOPPED:
        return RestartReason.EXITED, logging.WARNING
    return RestartReason.CRASHED, logging.ERROR


def run_daemon(config: Config) -> int:
    """Run the supervisor for ``config``; returns the process exit status. An unexpected
    error in the supervisor is logged with its traceback and gives INTERNAL_ERROR."""
    try:
        return Supervisor(config).run()
    except Exception:
        log.exception("supervisor_failed: internal error")
        return int(DaemonExit.INTERNAL_ERROR)
