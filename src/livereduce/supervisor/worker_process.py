"""The worker process as the supervisor holds it: spawn, read its reports, signal, reap.

:func:`spawn` starts ``python -m livereduce.worker`` with a fresh report pipe (protocol.py), hands
it the configuration on stdin, and starts the thread that turns the pipe's bytes into
:mod:`livereduce.supervisor.events` on the supervisor's queue. :class:`Worker` keeps what the
supervisor knows of the process. Nothing here decides about restarts or logs: the supervisor does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from livereduce.config import Config
from livereduce.protocol import Progress, ReportReader, WorkerExit
from livereduce.supervisor.events import BadReport, Event, ReportsClosed, WorkerReport

RATE_WINDOW_S = 10.0
"""events/s is measured over the reports of the last 10 seconds."""

SUPERVISOR_ONLY_ENV = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})


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
    group_killed: bool = False
    reports_closed: bool = False
    stable: bool = False
    rates: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=256))

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.process.pid

    def record(self, progress: Progress, received_s: float) -> Progress | None:
        """Take in a report read at monotonic ``received_s``: it is the latest progress and a
        heartbeat. Returns the progress it replaces."""
        previous = self.progress
        self.progress = progress
        self.last_beat_s = received_s
        self.rates.append((received_s, progress.events))
        while self.rates and received_s - self.rates[0][0] > RATE_WINDOW_S:
            self.rates.popleft()
        return previous

    def events_per_s(self) -> float:
        """Events received per second over the last RATE_WINDOW_S of reports."""
        if len(self.rates) < 2:
            return 0.0
        (t0, e0), (t1, e1) = self.rates[0], self.rates[-1]
        return (e1 - e0) / (t1 - t0) if t1 > t0 else 0.0

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig``; a worker that already exited (not yet reaped) is no error."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)

    def stop(
        self,
        reason: str,
        *,
        now_s: float,
        grace_s: float,
        signum: signal.Signals = signal.SIGTERM,
    ) -> None:
        """Ask the worker to stop (``signum``: SIGTERM, or SIGABRT to have a stuck worker dump
        its stack) for ``reason``; it is due for SIGKILL ``grace_s`` after monotonic ``now_s``."""
        self.stop_reason = reason
        self.stop_requested_s = now_s
        self.kill_at_s = now_s + grace_s
        self.send(signum)

    def kill(self) -> None:
        """SIGKILL, once; the kill deadline is then spent."""
        self.killed = True
        self.kill_at_s = None
        self.send(signal.SIGKILL)

    def poll(self) -> int | None:
        """The exit status (reaping the process) once it ended, else None: a
        :class:`~livereduce.protocol.WorkerExit` value, or minus the killing signal's number.
        Once it ended, what is left of its process group (programs its scripts started) is
        killed: over months of restarts they would pile up, out of the memory guard's sight."""
        status = self.process.poll()
        if status is not None and not self.group_killed:
            self.group_killed = True
            # The group id cannot be reused while a member lives, so this hits no stranger.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        return status


def worker_command(report_fd: int) -> list[str]:
    """The worker program's argv (protocol.py): this Python, ``-m livereduce.worker``."""
    return [sys.executable, "-m", "livereduce.worker", "--report-fd", str(report_fd)]


def worker_environment() -> dict[str, str]:
    """The supervisor's environment less systemd's notify and watchdog variables: only the
    supervisor (the unit's main process) talks to systemd."""
    return {k: v for k, v in os.environ.items() if k not in SUPERVISOR_ONLY_ENV}


def spawn(
    config: Config,
    *,
    command: Callable[[int], list[str]],
    put: Callable[[Event], None],
    clock: Callable[[], float],
    now_s: float,
) -> Worker:
    """Start a worker for ``config`` at monotonic ``now_s``.

    ``command`` builds the argv from the report pipe's write fd; the reader thread puts the
    worker's reports on ``put``, stamped with ``clock`` (monotonic seconds). The configuration
    goes to the worker's stdin as ``{"path": str|null, "raw": {...}}`` (protocol.py). Raises
    OSError when the program cannot be started; no fd is left open then.
    """
    read_fd, write_fd = os.pipe()
    os.set_inheritable(write_fd, True)
    try:
        process = subprocess.Popen(
            command(write_fd),
            stdin=subprocess.PIPE,
            pass_fds=(write_fd,),
            env=worker_environment(),
            # Its own process group: programs a script starts go with the worker (see poll),
            # and a terminal's Ctrl-C or `timeout` reaches the supervisor, which decides.
            process_group=0,
        )
    except OSError:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    threading.Thread(
        target=_read_reports,
        args=(process.pid, read_fd, put, clock),
        name=f"reports-{process.pid}",
        daemon=True,
    ).start()
    assignment = {
        "path": str(config.path) if config.path else None,
        "raw": dict(config.raw),
    }
    if process.stdin is not None:  # always set by stdin=PIPE
        try:
            process.stdin.write(json.dumps(assignment).encode())
            process.stdin.close()
        except BrokenPipeError:
            pass  # the worker died at once; reaping tells why
    return Worker(process=process, started_s=now_s, last_beat_s=now_s)


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


def describe_exit(status: int) -> str:
    """``status`` (a Popen return code) in words for the log: the signal's name, or the exit
    status with its :class:`~livereduce.protocol.WorkerExit` name when it has one."""
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:  # real-time signals have no name in the enum
            return f"signal {-status}"
    with contextlib.suppress(ValueError):
        return f"exit status {status} ({WorkerExit(status).name})"
    return f"exit status {status}"
