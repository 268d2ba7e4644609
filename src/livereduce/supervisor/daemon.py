"""The supervisor's loop: keeps exactly one worker process running the live reduction.

Everything that happens reaches the supervisor as an event on one queue: signals (the handlers
only put the signal number there), script and configuration changes (the watcher thread),
worker reports (one reader thread per worker), and the timed wake-ups of the queue's ``get``.
The loop takes the events one at a time, turns what needs a look at the disk or the process
into facts (a script's syntax, the worker's exit status and memory), hands each to the state
machine (machine.py: every decision is made there) and carries out the actions it answers with:
start a worker, signal it, tell systemd, exit. So no two restarts can race, and the decisions
are tested without processes. The process exit statuses are :class:`DaemonExit`
(docs/operations.md).

The parts it uses each have one job: events.py (what comes off the queue, and what the machine
is told), machine.py (the decisions), actions.py (what it is asked to do), worker_process.py
(spawn, reports, signals, reaping), memory.py (the memory guard), lock.py (one daemon per
output folder), publish.py (when the status file and STATUS= are written).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from livereduce.config import Config, ConfigError, load_config
from livereduce.scriptfile import ScriptCompileError, compile_script
from livereduce.supervisor import notify
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
from livereduce.supervisor.events import (
    ConfigSaved,
    Event,
    Exited,
    MachineEvent,
    MemoryOver,
    ReportsClosed,
    ScriptsSaved,
    SignalReceived,
    SpawnFailed,
    Started,
    Tick,
)
from livereduce.supervisor.handover import HANDOVER_REFRESH_S, read_handover, write_handover
from livereduce.supervisor.lock import OutputLock, OutputLocked
from livereduce.supervisor.machine import Machine
from livereduce.supervisor.memory import MemoryGuard, resident_bytes
from livereduce.supervisor.publish import StatusPublisher
from livereduce.supervisor.watch import ConfigChanged, ScriptsChanged, Watcher, file_md5
from livereduce.supervisor.worker_process import Worker, spawn, worker_command
from livereduce.worker.engine import check_engine

__all__ = ["DaemonExit", "Supervisor", "run_daemon", "syntax_errors"]

log = logging.getLogger(__name__)

MAX_WAIT_S = 1.0
"""The loop ticks at least once a second (reaping, deadlines) even when nothing happens."""

REAP_POLL_S = 0.05
"""How soon to look again for the exit status once a worker closed its report pipe."""


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
            compile_script(source, path)
        except ScriptCompileError as error:
            problems.append(str(error))
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
        self.machine = Machine(
            config,
            clock=clock,
            wall=time.time,
            scripts_exist=lambda: bool(self._existing_scripts()),
            watchdog_interval_s=notify.watchdog_interval_s(),
        )
        self.memory = MemoryGuard(config.system_mem_limit_perc, config.mem_check_interval_sec)
        self.watcher: Watcher | None = None
        self.publisher = StatusPublisher(config.status_file)
        self.machine.resume = self._handed_over = read_handover(config.output_dir)
        self._handover_written_s = -HANDOVER_REFRESH_S  # a taken-over file is refreshed at once
        if self._handed_over is not None:
            log.info(
                "resume_taken_over: the previous supervisor left run %d unfinished: handed to "
                "the first worker",
                self._handed_over.run_number,
            )
        self._config_md5: str | None = None
        self.exit_status: DaemonExit | None = None
        """Set by the machine's Exit action: the loop ends."""

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until stopped; returns the process exit status."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, self._on_signal)
        self._start_watcher()
        for problem in syntax_errors(self._existing_scripts()):
            log.error("script_syntax_error: %s", problem)
        notify.status("starting the worker")
        try:
            while self.exit_status is None:
                self._wait_and_handle()
                self._tick()
        finally:
            if self.watcher is not None:
                self.watcher.stop()
            if self.worker is not None:  # only after an internal error: leave no child behind
                self.worker.kill_group()
                with contextlib.suppress(ChildProcessError):
                    self.worker.process.wait()
                self.worker = None
            self._write_status(self._clock(), force=True)
        log.info("supervisor_exit: status %d (%s)", self.exit_status, self.exit_status.name)
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

    def _wait_and_handle(self) -> None:
        timeout = max(self._next_wakeup_s() - self._clock(), 0.0)
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            try:
                self._handle(event)
            except Exception:
                # One event that cannot be handled must not take the supervision down.
                log.exception("event_failed: %r", event)
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return

    def _next_wakeup_s(self) -> float:
        now = self._clock()
        deadlines = [
            now + MAX_WAIT_S,
            self.publisher.next_write_s(),
            self.machine.next_deadline_s(),
        ]
        if self.worker is not None:
            if self.worker.reports_closed:
                deadlines.append(now + REAP_POLL_S)  # the exit status follows the EOF closely
            if self.memory.enabled:
                deadlines.append(self.memory.next_check_s)
        return min(deadlines)

    def _tick(self) -> None:
        """Reap, check the memory, tick the machine, publish."""
        worker = self.worker
        if worker is not None:
            ended = worker.poll()
            if ended is not None:
                self.worker = None
                self._step(
                    Exited(
                        pid=worker.pid,
                        status=ended.status,
                        peak_rss_bytes=ended.peak_rss_bytes,
                        stack=ended.stack,
                    )
                )
        now = self._clock()
        if self.memory.due(now):
            pid = self.worker.pid if self.worker is not None else None
            excess = self.memory.check(pid, now)
            if excess is not None:
                self._step(MemoryOver(excess))
        self._step(Tick())
        self._publish(self._clock())

    def _handle(self, event: Event) -> None:
        """Turn one queued event into the machine's (looking at the disk where needed)."""
        match event:
            case ReportsClosed(pid):
                if self.worker is not None and self.worker.pid == pid:
                    self.worker.reports_closed = True
            case ScriptsChanged():
                existing = self._existing_scripts()
                problems = tuple(syntax_errors(existing))
                self._step(ScriptsSaved(change=event, exists=bool(existing), problems=problems))
            case ConfigChanged():
                self._step(self._config_saved(event))
            case _:
                self._step(event)

    def _config_saved(self, event: ConfigChanged) -> ConfigSaved:
        if event.new_md5 == self._config_md5:
            return ConfigSaved(change=event, restored=True)
        try:
            # what the next start checks, so that an accepted change never fails that start
            check_engine(load_config(event.path))
        except ConfigError as error:
            return ConfigSaved(change=event, error=str(error))
        return ConfigSaved(change=event)

    # -- carrying out the machine's actions --------------------------------------------------

    def _step(self, event: MachineEvent) -> None:
        """Step the machine and carry out its actions (which may step it again)."""
        for action in self.machine.step(event):
            self._act(action)

    def _act(self, action: Action) -> None:
        match action:
            case Start(resume):
                try:
                    self.worker = spawn(
                        self.config,
                        command=self._command,
                        put=self._events.put,
                        clock=self._clock,
                        resume=resume,
                    )
                except OSError as error:
                    self._step(SpawnFailed(str(error)))
                    return
                self._step(Started(self.worker.pid))
            case SendSignal(pid, signum):
                if self.worker is not None and self.worker.pid == pid:
                    self.worker.send(signum)
            case KillGroup(pid):
                if self.worker is not None and self.worker.pid == pid:
                    self.worker.kill_group()
            case Notify(kind, text):
                self._notify(kind, text)
            case ResyncWatcher():
                if self.watcher is not None:
                    self.watcher.resync()
            case Exit(status):
                self.exit_status = status

    def _notify(self, kind: NotifyKind, text: str) -> None:
        now = self._clock()
        match kind:
            case NotifyKind.READY:
                self.publisher.notify_ready(text, now)
            case NotifyKind.RELOADING:
                notify.reloading(text)
            case NotifyKind.STOPPING:
                notify.stopping(text)
            case NotifyKind.WATCHDOG:
                notify.watchdog()

    # -- status ---------------------------------------------------------------------------------

    def _publish(self, now: float) -> None:
        if self.machine.dirty:
            self.machine.dirty = False
            self.publisher.dirty = True
        self.publisher.notify_status(self.machine.status_line(), now)
        self._write_status(now)

    def status(self) -> dict[str, Any]:
        """The status file's content (status.FIELDS)."""
        status = self.machine.status()
        rss = None
        if self.worker is not None:
            rss = self.memory.last_rss
            if rss is None:
                with contextlib.suppress(Exception):
                    rss = resident_bytes(self.worker.pid)
        status["worker_rss_bytes"] = rss
        limit = self.memory.limit
        status["memory_limit_bytes"] = limit.limit_bytes if limit is not None else None
        return status

    def _write_status(self, now: float, *, force: bool = False) -> None:
        error = self.publisher.write(now, self.status, force=force)
        if error is not None:
            log.error("status_file_error: cannot write %s: %s", self.config.status_file, error)
        resume = self.machine.resume
        refresh = resume is not None and now - self._handover_written_s >= HANDOVER_REFRESH_S
        if resume != self._handed_over or refresh:
            failed_before = resume == self._handed_over
            self._handed_over, self._handover_written_s = resume, now
            try:
                write_handover(self.config.output_dir, resume)
            except OSError as error:
                if not failed_before:  # logged once per change, not at every refresh
                    log.error("resume_write_failed: the next supervisor will not get it: %s", error)


def run_daemon(config: Config) -> int:
    """Run the supervisor for ``config``; returns the process exit status. Another daemon
    holding ``output_dir``, or an ``output_dir`` that cannot be created or written, gives
    CONFIG_ERROR (2) with one line in the log and on stderr; an unexpected error in the
    supervisor is logged with its traceback and gives INTERNAL_ERROR."""
    try:
        lock = OutputLock.acquire(config.output_dir)
    except OutputLocked as error:
        log.error("output_locked: %s", error)
        return int(DaemonExit.CONFIG_ERROR)
    except OSError as error:
        problem = f"{config.output_dir} cannot be created or written: {error}"
        log.error("output_dir_unusable: %s", ConfigError(config.path, "output_dir", problem))
        return int(DaemonExit.CONFIG_ERROR)
    try:
        with lock:
            return Supervisor(config).run()
    except Exception:
        log.exception("supervisor_failed: internal error")
        return int(DaemonExit.INTERNAL_ERROR)
