"""What the supervisor's state machine asks its loop to do (machine.py decides, daemon.py
carries out), and the exit statuses of the ``livereduce`` process."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from livereduce.protocol import Resume


class DaemonExit(IntEnum):
    """Exit status of the ``livereduce`` process (documented in docs/operations.md)."""

    OK = 0  # stopped by SIGTERM/SIGINT, or the configuration changed (systemd starts it anew)
    INTERNAL_ERROR = 1  # a fault in the supervisor itself; the traceback is in the log
    CONFIG_ERROR = 2  # the configuration cannot be used, or another daemon holds output_dir
    QUIT = 131  # SIGQUIT: the state was logged, then the process quit (128 + SIGQUIT)


@dataclass(frozen=True, slots=True)
class Start:
    """Start a worker, handing it ``resume`` (protocol.py); answer with Started or
    SpawnFailed."""

    resume: Resume | None


@dataclass(frozen=True, slots=True)
class SendSignal:
    """Send ``signum`` to the worker ``pid`` (SIGTERM: stop; SIGABRT: dump the stack, abort)."""

    pid: int
    signum: signal.Signals


@dataclass(frozen=True, slots=True)
class KillGroup:
    """SIGKILL the worker ``pid`` and every process of its group (programs its scripts ran)."""

    pid: int


class NotifyKind(StrEnum):
    """The sd_notify messages the machine decides (STATUS= is published by the loop)."""

    READY = "ready"
    RELOADING = "reloading"
    STOPPING = "stopping"
    WATCHDOG = "watchdog"


@dataclass(frozen=True, slots=True)
class Notify:
    """Tell systemd ``kind`` (with STATUS= ``text`` where given)."""

    kind: NotifyKind
    text: str = ""


@dataclass(frozen=True, slots=True)
class ResyncWatcher:
    """Take the scripts' current content as the one acted on (SIGHUP re-reads them)."""


@dataclass(frozen=True, slots=True)
class Exit:
    """The supervisor is done: exit with ``status``."""

    status: DaemonExit


Action = Start | SendSignal | KillGroup | Notify | ResyncWatcher | Exit
