"""The events that reach the supervisor's one queue, as typed values (STYLE.md §2, §9).

Signal handlers, the script watcher and the worker's report reader only put these on the queue;
the supervisor's loop (daemon.py) takes them off one at a time and hands them to the state
machine (machine.py), which decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from livereduce.protocol import Progress
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
