"""The crash-loop policy: why a worker is restarted and how long to wait before the next start.

A worker exit the supervisor did not ask for gets a :class:`RestartReason` and a log level
(:func:`classify_exit`); each reason that can repeat has its own :class:`Backoff`, so a boot
failure backs off hard while a memory restart starts at once the first time (STYLE.md §4,
docs/operations.md). The delays start over once a worker ran :data:`STABLE_AFTER_S` without
trouble, or when the user saves the scripts.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from livereduce.delays import doubling_delay_s
from livereduce.protocol import WorkerExit

STABLE_AFTER_S = 60.0
"""A worker that has run this long without trouble counts as started: the backoffs reset
(supervisor's ``startsecs``, STYLE.md §4)."""


class RestartReason(StrEnum):
    """Why the worker was restarted (status file ``restart_history``)."""

    SCRIPTS_CHANGED = "scripts_changed"
    SIGHUP = "sighup"
    MEMORY = "memory_exceeded"
    HEARTBEAT = "heartbeat_timeout"
    SCRIPT_TIMEOUT = "script_timeout"
    CRASHED = "worker_crashed"
    ENGINE_FAILURE = "engine_failure"
    BOOT_FAILURE = "boot_failure"
    EXITED = "worker_exited"


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
            delay = doubling_delay_s(self.failures, self.base_s, self.max_s)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """Forget earlier failures."""
        self.failures = 0


class Backoffs:
    """One :class:`Backoff` per failure reason, with the delays of docs/operations.md.

    Raises KeyError for a reason that is not a failure (a script save or SIGHUP restarts at
    once and never backs off).
    """

    def __init__(self) -> None:
        crash = {"first_s": 1.0, "base_s": 2.0, "max_s": 60.0}
        self._by_reason = {
            RestartReason.MEMORY: Backoff(first_s=0.0, base_s=2.0, max_s=300.0),
            RestartReason.HEARTBEAT: Backoff(first_s=0.0, base_s=5.0, max_s=300.0),
            RestartReason.SCRIPT_TIMEOUT: Backoff(first_s=0.0, base_s=5.0, max_s=300.0),
            RestartReason.CRASHED: Backoff(**crash),
            RestartReason.ENGINE_FAILURE: Backoff(**crash),
            RestartReason.EXITED: Backoff(**crash),
            RestartReason.BOOT_FAILURE: Backoff(first_s=5.0, base_s=10.0, max_s=600.0),
        }

    def __getitem__(self, reason: RestartReason) -> Backoff:
        return self._by_reason[reason]

    def reset(self) -> None:
        """Forget the earlier failures of every reason."""
        for backoff in self._by_reason.values():
            backoff.reset()


def classify_exit(status: int, *, progressed: bool = False) -> tuple[RestartReason, int]:
    """Restart reason and log level for a worker exit the supervisor did not ask for.

    ``status`` is a Popen return code: a :class:`~livereduce.protocol.WorkerExit` value, or
    minus the number of the signal that killed the worker. ``progressed``: the worker had
    reported that it was connected (or ran a script); its exit status may then come from a
    script's ``os._exit``/``sys.exit``, so any status is a crash, never a boot failure.
    """
    if progressed:
        return RestartReason.CRASHED, logging.ERROR
    if status == WorkerExit.BOOT_FAILURE:
        return RestartReason.BOOT_FAILURE, logging.ERROR
    if status == WorkerExit.ENGINE_FAILURE:
        return RestartReason.ENGINE_FAILURE, logging.ERROR
    if status == WorkerExit.STOPPED:
        return RestartReason.EXITED, logging.WARNING
    return RestartReason.CRASHED, logging.ERROR
