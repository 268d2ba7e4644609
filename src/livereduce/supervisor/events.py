"""The events that reach the supervisor's one queue, as typed values (STYLE.md §2, §9).

Signal handlers, the script watcher and the worker's report reader only put these on the queue;
the supervisor's loop (daemon.py) takes them off one at a time and hands them to the state
machine (machine.py), which decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from livereduce.protocol import Progress
from livereduce.supervisor.memory import MemoryExceeded
from livereduce.supervisor.watch import ConfigChanged, ScriptsChanged


@dataclass(frozen=True, slots=True)
class SignalReceived:
    """A signal arrived (queued by the handler, handled by the loop)."""

    signum: int


@dataclass(frozen=True, slots=True)
class FromWorker:
    """Something the report reader thread of the worker ``pid`` saw on its pipe."""

    pid: int


@dataclass(frozen=True, slots=True)
class WorkerReport(FromWorker):
    """A report (heartbeat) from the worker ``pid``, read at monotonic ``received_s``."""

    progress: Progress
    received_s: float


@dataclass(frozen=True, slots=True)
class ReportsClosed(FromWorker):
    """The worker ``pid`` closed its report pipe (it exited, or is about to)."""


@dataclass(frozen=True, slots=True)
class BadReport(FromWorker):
    """The worker ``pid`` wrote something that is not a report."""

    message: str


Event = SignalReceived | WorkerReport | ReportsClosed | BadReport | ScriptsChanged | ConfigChanged
"""What comes off the queue."""


# -- what the loop makes of them, and of the disk and the worker process, for the machine ----


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: deadlines (kill, heartbeat, script limit, next start, keep-alive, progress
    line) are checked against the machine's clock."""


@dataclass(frozen=True, slots=True)
class Started:
    """The worker asked for by :class:`Start` runs as ``pid``."""

    pid: int


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    """The worker asked for by :class:`Start` could not be started (``error`` in words)."""

    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Exited:
    """The worker ``pid`` ended with Popen return code ``status``; ``peak_rss_bytes`` is its
    peak resident memory (wait4's ru_maxrss, None when unknown), ``stack`` what faulthandler
    wrote (empty when nothing)."""

    pid: int
    status: int
    peak_rss_bytes: int | None = None
    stack: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScriptsSaved:
    """A settled script change, with what the caller found on disk: ``exists`` whether any
    processing script exists, ``problems`` the syntax errors (``file:line: message``)."""

    change: ScriptsChanged
    exists: bool
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigSaved:
    """A settled configuration change: ``restored`` when the content is again the one in use,
    ``error`` why the new content cannot be used (empty when it can)."""

    change: ConfigChanged
    restored: bool = False
    error: str = ""


@dataclass(frozen=True, slots=True)
class MemoryOver:
    """The memory guard found the worker above its limit."""

    excess: MemoryExceeded


MachineEvent = (
    Tick
    | Started
    | SpawnFailed
    | Exited
    | ScriptsSaved
    | ConfigSaved
    | MemoryOver
    | SignalReceived
    | WorkerReport
    | BadReport
)
