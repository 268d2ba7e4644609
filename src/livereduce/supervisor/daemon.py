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

This module makes the decisions and writes the supervisor's log lines; the parts it uses each
have one job: events.py (what comes off the queue), worker_process.py (spawn, reports, signals,
reaping), backoff.py (restart reasons and delays), publish.py (when the status file and
STATUS= are written).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

from livereduce import __version__
from livereduce.config import Config, ConfigError, load_config
from livereduce.protocol import Progress, WorkerExit, WorkerState
from livereduce.supervisor import notify
from livereduce.supervisor.backoff import STABLE_AFTER_S, Backoffs, RestartReason, classify_exit
from livereduce.supervisor.events import (
    BadReport,
    Event,
    ReportsClosed,
    SignalReceived,
    WorkerReport,
)
from livereduce.supervisor.memory import MemoryExceeded, MemoryGuard, resident_bytes
from livereduce.supervisor.publish import StatusPublisher
from livereduce.supervisor.watch import ConfigChanged, ScriptsChanged, Watcher, file_md5
from livereduce.supervisor.worker_process import Worker, describe_exit, spawn, worker_command

log = logging.getLogger(__name__)

HUNG_STOP_GRACE_S = 5.0
"""SIGTERM -> SIGKILL grace for a worker whose heartbeat stopped: it is stuck, a long wait only
delays the replacement."""

MAX_WAIT_S = 1.0
"""The loop ticks at least once a second (reaping, deadlines) even when nothing happens."""

HISTORY_LENGTH = 20
"""Restarts kept (with time, reason and detail) in the status file."""


class DaemonExit(IntEnum):
    """Exit status of the ``livereduce`` process (documented in docs/operations.md)."""

    OK = 0  # stopped by SIGTERM/SIGINT, or the configuration changed (systemd starts it anew)
    INTERNAL_ERROR = 1  # a fault in the supervisor itself; the traceback is in the log
    CONFIG_ERROR = 2  # the configuration cannot be used; one message on stderr
    QUIT = 131  # SIGQUIT: the state was logged, then the process quit (128 + SIGQUIT)


class State(StrEnum):
    """The supervisor's state as the status file shows it."""

    STARTING = "starting"
    CONNECTING = "connecting"
    RUNNING = "running"
    NO_DATA = "no_data"
    WAITING_FOR_RUN = "waiting_for_run"
    RUN_ENDED = "run_ended"
    RESTARTING = "restarting"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"


STATE_OF_WORKER = {
    WorkerState.STARTING: State.STARTING,
    WorkerState.CONNECTING: State.CONNECTING,
    WorkerState.WAITING_FOR_RUN: State.WAITING_FOR_RUN,
    WorkerState.RUNNING: State.RUNNING,
    WorkerState.NO_DATA: State.NO_DATA,
    WorkerState.RUN_ENDED: State.RUN_ENDED,
    WorkerState.ERROR: State.RUNNING,  # a script error loses one chunk; the reduction goes on
}
"""The supervisor's state while its worker reports ``WorkerState``."""


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
        self.backoffs = Backoffs()
        self.memory = MemoryGuard(config.system_mem_limit_perc, config.mem_check_interval_sec)
        self.watcher: Watcher | None = None
        self.restart_count = 0
        self.restart_history: deque[dict[str, Any]] = deque(maxlen=HISTORY_LENGTH)
        self.last_progress: Progress | None = None
        self.backoff_reason = ""
        self._pending_change: tuple[ScriptsChanged, float] | None = None
        self.last_reload_latency_s: float | None = None
        self.scripts_problem = ""
        """Why the scripts on disk are not the ones running (empty when they are)."""
        self.held_without_scripts = False
        """No worker is started because no processing script exists."""
        self._ready_sent = False
        self._watchdog_interval_s = notify.watchdog_interval_s()
        self._next_watchdog_s = 0.0
        self.publisher = StatusPublisher(config.status_file)

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until stopped; returns the process exit status."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, self._on_signal)
        self._start_watcher()
        self._report_syntax_errors(self._existing_scripts())
        notify.status("starting the worker")
        try:
            while self.exit_status is None or self.worker is not None:
                self._wait_and_handle()
                self.tick()
        finally:
            if self.watcher is not None:
                self.watcher.stop()
            if self.worker is not None:  # only after an internal error: leave no child behind
                self.worker.send(signal.SIGKILL)
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
        # What "changed" means for the configuration: different from the file this process
        # runs with, not from the last (possibly rejected) edit.
        self._config_md5 = file_md5(self.config.path) if self.config.path else None
        self.watcher = Watcher(
            scripts,
            self.config.path,
            self._events.put,
            poll_interval_s=self.config.poll_interval_sec,
        )
        self.watcher.start()

    def _existing_scripts(self) -> list[Path]:
        return [p for p in self.config.existing_scripts() if p is not None]

    @staticmethod
    def _report_syntax_errors(scripts: Sequence[Path]) -> list[str]:
        """Log each script in ``scripts`` that does not compile; returns the problems."""
        problems = syntax_errors(scripts)
        for problem in problems:
            log.error("script_syntax_error: %s", problem)
        return problems

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
        deadlines = [now + MAX_WAIT_S, self.publisher.next_write_s()]
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
                    self.worker.kill()
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
        previous = worker.record(progress, event.received_s)
        self.last_progress = progress
        self.publisher.dirty = True
        if previous is None or previous.state != progress.state:
            detail = f" ({progress.detail})" if progress.detail else ""
            log.info("worker_state: pid %d: %s%s", worker.pid, progress.state, detail)
        if not worker.stable and event.received_s - worker.started_s >= STABLE_AFTER_S:
            worker.stable = True
            self.backoffs.reset()
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
            self.publisher.notify_ready(self._status_line(), self._clock())

    def _handle_scripts_changed(self, event: ScriptsChanged) -> None:
        if self.exit_status is not None:
            return
        existing = self._existing_scripts()
        if not existing:
            # Both scripts gone at once is what an unmounted network filesystem looks like; a
            # worker without scripts would publish unreduced data as if all were well.
            log.error(
                "scripts_missing: %s; no processing script exists in %s; the worker is left "
                "as it is until one appears",
                event.describe(),
                self.config.script_dir,
            )
            self.scripts_problem = (
                f"no processing script in {self.config.script_dir}: "
                "the worker runs on with the scripts it started with"
            )
            return
        problems = self._report_syntax_errors(existing)
        if problems and self.worker is not None and not self.worker.stop_reason:
            log.error(
                "scripts_not_reloaded: worker pid %d is not restarted for a script that "
                "does not compile; saving a fixed script restarts it",
                self.worker.pid,
            )
            self.scripts_problem = (
                "saved script not loaded, the worker runs the previous version: "
                + "; ".join(problems)
            )
            return
        self.scripts_problem = ""
        self._pending_change = (event, self._clock())
        self.backoffs.reset()
        self._restart(RestartReason.SCRIPTS_CHANGED, event.describe(), delay_s=0.0)

    def _handle_config_changed(self, event: ConfigChanged) -> None:
        if self.exit_status is not None:
            return
        if event.new_md5 == self._config_md5:
            log.info(
                "config_restored: %s: the content is again the configuration in use; nothing to do",
                event.describe(),
            )
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
        self.publisher.dirty = True
        if self.worker is not None and not self.worker.stop_reason:
            grace = self.config.stop_timeout if grace_s is None else grace_s
            # A worker that stopped beating is stuck: SIGABRT makes it dump where (faulthandler,
            # into the journal) and die, instead of a SIGTERM it is too stuck to act on.
            signum = signal.SIGABRT if reason is RestartReason.HEARTBEAT else signal.SIGTERM
            self._stop_worker(self.worker, f"{reason}: {detail}", grace_s=grace, signum=signum)

    def _stop_worker(
        self,
        worker: Worker,
        reason: str,
        *,
        grace_s: float,
        signum: signal.Signals = signal.SIGTERM,
    ) -> None:
        log.info(
            "worker_stopping: pid %d (%s, SIGKILL after %g s)", worker.pid, signum.name, grace_s
        )
        worker.stop(reason, now_s=self._clock(), grace_s=grace_s, signum=signum)

    def _failure_restart(
        self, reason: RestartReason, detail: str, *, grace_s: float | None = None
    ) -> None:
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
        status = worker.poll()
        if status is None:
            return
        self.worker = None
        self.publisher.dirty = True
        uptime = now - worker.started_s
        if worker.stop_reason:
            log.info(
                "worker_ended: pid %d ended with %s after %.1f s (%s)",
                worker.pid,
                describe_exit(status),
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
        reason, level = classify_exit(status)
        detail = (
            f"worker pid {worker.pid} ended on its own with {describe_exit(status)} "
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
            worker.kill()

    def _converge(self, now: float) -> None:
        if self.worker is not None or not self.want_worker or self.exit_status is not None:
            return
        if now < self.next_start_s:
            self.state = State.BACKOFF
            return
        if not self._existing_scripts():
            self._hold_without_scripts()
            return
        if self.held_without_scripts:  # a script is back
            self.held_without_scripts = False
            self.scripts_problem = ""
        self._spawn(now)

    def _hold_without_scripts(self) -> None:
        """No worker while no processing script exists (an unmounted network filesystem looks
        like this): it would publish unreduced events as the result. A script that appears
        again is a ScriptsChanged, which restarts as usual."""
        problem = (
            f"no processing script in {self.config.script_dir}: no worker runs until one appears"
        )
        if not self.held_without_scripts:
            log.error("scripts_missing: %s", problem)
            self.held_without_scripts = True
            self.scripts_problem = problem
            self.publisher.dirty = True
        self.state = State.BACKOFF

    def _spawn(self, now: float) -> None:
        try:
            worker = spawn(
                self.config,
                command=self._command,
                put=self._events.put,
                clock=self._clock,
                now_s=now,
            )
        except OSError:
            log.exception("worker_spawn_failed: cannot start the worker program")
            self._failure_restart(
                RestartReason.BOOT_FAILURE, "the worker program could not be started"
            )
            return
        self.worker = worker
        self.state = State.STARTING
        self.backoff_reason = ""
        self.publisher.dirty = True
        log.info("worker_started: pid %d", worker.pid)

    def _keepalive(self, now: float) -> None:
        if self._watchdog_interval_s is None or now < self._next_watchdog_s:
            return
        worker = self.worker
        hung = (
            worker is not None
            and not worker.stop_reason
            and now - worker.last_beat_s
            > min(self.config.heartbeat_timeout, self._watchdog_interval_s)
        )
        if hung:
            # No progress: no ping, and the next tick asks again, so that a worker that beats
            # again (or its replacement) is vouched for at once, not an interval later.
            return
        self._next_watchdog_s = now + self._watchdog_interval_s
        notify.watchdog()

    def _publish(self, now: float) -> None:
        self._update_state()
        self.publisher.notify_status(self._status_line(), now)
        self._write_status(now)

    def _update_state(self) -> None:
        if self.exit_status is not None:
            self.state = State.STOPPING
            return
        worker = self.worker
        if worker is None or worker.stop_reason or worker.progress is None:
            return
        self.state = STATE_OF_WORKER[worker.progress.state]

    # -- status ---------------------------------------------------------------------------------

    def _status_line(self) -> str:
        progress = self.worker.progress if self.worker is not None else None
        if self.held_without_scripts:
            return self.scripts_problem
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
            "streams": progress.streams if progress else {},
            "worker_pid": worker.pid if worker is not None else None,
            "worker_rss_bytes": rss,
            "memory_limit_bytes": limit,
            "restarts": self.restart_count,
            "restart_history": list(self.restart_history),
            "last_reload_latency_s": self.last_reload_latency_s,
            "scripts_problem": self.scripts_problem,
            "supervisor_pid": os.getpid(),
            "version": __version__,
            "config": str(self.config.path) if self.config.path else None,
            "updated": time.time(),
        }

    def _write_status(self, now: float, *, force: bool = False) -> None:
        error = self.publisher.write(now, self.status, force=force)
        if error is not None:
            log.error("status_file_error: cannot write %s: %s", self.config.status_file, error)


def run_daemon(config: Config) -> int:
    """Run the supervisor for ``config``; returns the process exit status. An unexpected
    error in the supervisor is logged with its traceback and gives INTERNAL_ERROR."""
    try:
        return Supervisor(config).run()
    except Exception:
        log.exception("supervisor_failed: internal error")
        return int(DaemonExit.INTERNAL_ERROR)
