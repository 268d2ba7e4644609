"""The worker process as the supervisor holds it: spawn, read its reports, signal, reap.

:func:`spawn` starts ``python -m livereduce.worker`` with a fresh report pipe (protocol.py), hands
it the configuration on stdin, and starts the thread that turns the pipe's bytes into
:mod:`livereduce.supervisor.events` on the supervisor's queue. :class:`Worker` keeps what the
supervisor holds of the process. Nothing here decides about restarts or logs: the supervisor does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from livereduce.config import Config
from livereduce.protocol import STACK_FD_ENV, ReportReader, Resume, WorkerExit
from livereduce.supervisor.events import BadReport, Event, ReportsClosed, WorkerReport

SUPERVISOR_ONLY_ENV = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})


@dataclass(slots=True)
class Ended:
    """How a worker process ended: its Popen-style return code (a
    :class:`~livereduce.protocol.WorkerExit` value, or minus the killing signal's number),
    its peak resident memory in bytes (the kernel's ru_maxrss) and what faulthandler wrote."""

    status: int
    peak_rss_bytes: int | None
    stack: str


@dataclass(slots=True)
class Worker:
    """One worker process, the file its faulthandler writes to, and whether its report pipe
    has closed (then its exit status follows closely)."""

    process: subprocess.Popen[bytes]
    stack_file: IO[bytes]
    reports_closed: bool = False

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.process.pid

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig``; a worker that already exited (not yet reaped) is no error."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    def kill_group(self) -> None:
        """SIGKILL the worker and every process of its group (programs its scripts started:
        over months of restarts they would pile up, out of the memory guard's sight). The
        group id cannot be reused while a member lives, so this hits no stranger."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def poll(self) -> Ended | None:
        """Reap the worker if it has ended (wait4, for its peak memory), else None. Once it
        ended, what is left of its process group is killed."""
        if self.process.returncode is not None:
            return None
        try:
            pid, wait_status, usage = os.wait4(self.process.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere (Popen.__del__): no figures left
            pid, wait_status, usage = self.process.pid, 0, None
        if pid == 0:
            return None
        status = os.waitstatus_to_exitcode(wait_status)
        self.process.returncode = status
        self.kill_group()
        self.stack_file.seek(0)
        stack = self.stack_file.read(1 << 20).decode(errors="replace")
        self.stack_file.close()
        peak = usage.ru_maxrss * 1024 if usage is not None else None  # Linux: KiB
        return Ended(status=status, peak_rss_bytes=peak, stack=stack)


def worker_command(report_fd: int) -> list[str]:
    """The worker program's argv (protocol.py): this Python, ``-m livereduce.worker``."""
    return [sys.executable, "-m", "livereduce.worker", "--report-fd", str(report_fd)]


def worker_environment(stack_fd: int) -> dict[str, str]:
    """The supervisor's environment less systemd's notify and watchdog variables (only the
    supervisor, the unit's main process, talks to systemd), plus the faulthandler fd."""
    env = {k: v for k, v in os.environ.items() if k not in SUPERVISOR_ONLY_ENV}
    env[STACK_FD_ENV] = str(stack_fd)
    return env


def spawn(
    config: Config,
    *,
    command: Callable[[int], list[str]],
    put: Callable[[Event], None],
    clock: Callable[[], float],
    resume: Resume | None = None,
) -> Worker:
    """Start a worker for ``config``.

    ``command`` builds the argv from the report pipe's write fd; the reader thread puts the
    worker's reports on ``put``, stamped with ``clock`` (monotonic seconds). The configuration
    goes to the worker's stdin as ``{"path": str|null, "raw": {...}, "resume": {...}|null}``
    (protocol.py). Raises OSError when the program cannot be started; no fd is left open then.
    """
    # Unnamed (unlinked at once), so nothing is left behind whatever happens to either process.
    stack_file = tempfile.TemporaryFile(prefix="livereduce-stack-")  # noqa: SIM115 - Worker owns it
    read_fd, write_fd = os.pipe()
    os.set_inheritable(write_fd, True)
    try:
        process = subprocess.Popen(
            command(write_fd),
            stdin=subprocess.PIPE,
            pass_fds=(write_fd, stack_file.fileno()),
            env=worker_environment(stack_file.fileno()),
            # Its own process group: programs a script starts go with the worker (see poll),
            # and a terminal's Ctrl-C or `timeout` reaches the supervisor, which decides.
            process_group=0,
        )
    except OSError:
        os.close(read_fd)
        stack_file.close()
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
        "resume": resume.to_json() if resume is not None else None,
    }
    if process.stdin is not None:  # always set by stdin=PIPE
        try:
            process.stdin.write(json.dumps(assignment).encode())
            process.stdin.close()
        except BrokenPipeError:
            pass  # the worker died at once; reaping tells why
    return Worker(process=process, stack_file=stack_file)


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
