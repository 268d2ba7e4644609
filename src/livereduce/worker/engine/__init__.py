"""Engines run the live-data loop inside the worker process.

Both engines honour one contract (:class:`Engine`): run until the stop token is raised or the
run ends with ``run_transition`` Stop, send a :class:`~livereduce.protocol.Progress` report from
inside the loop after every chunk and at least every ``HEARTBEAT_INTERVAL_S`` while waiting,
and return a :class:`~livereduce.protocol.WorkerExit`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Protocol

from livereduce.config import Config, ConfigError, ListenerKind
from livereduce.config import Engine as EngineChoice
from livereduce.protocol import Progress, WorkerExit
from livereduce.worker.stop import StopToken


class EngineUnavailable(Exception):
    """The configured engine cannot run here (``engine: mantid`` without Mantid)."""


class Engine(Protocol):
    """The worker's engine: ``run`` blocks until stopped and returns the worker's exit status."""

    def run(self, stop: StopToken, report: Callable[[Progress], None]) -> WorkerExit:
        """Run the live-data loop. ``report`` is called from the loop (it is the heartbeat)."""


def mantid_available() -> tuple[bool, str]:
    """Whether ``import mantid`` can work in this Python, and why (for the log)."""
    try:
        found = importlib.util.find_spec("mantid") is not None
    except (ImportError, ValueError) as error:
        return False, f"mantid cannot be imported: {error}"
    if not found:
        return False, "no module named 'mantid' in this Python"
    return True, "module 'mantid' found"


def choose_engine(config: Config) -> tuple[EngineChoice, str]:
    """The engine to run for ``config`` and the reason, as logged at start.

    Raises EngineUnavailable for ``engine: mantid`` when Mantid is not importable.
    """
    available, why = mantid_available()
    if config.engine is EngineChoice.EMBEDDED:
        return EngineChoice.EMBEDDED, "engine 'embedded' is configured"
    if config.listener is ListenerKind.KAFKA:
        # Mantid's KafkaEventListener reads ev42 from Facilities.xml topics, never ev44.
        if config.engine is EngineChoice.MANTID:
            raise EngineUnavailable(
                "engine 'mantid' cannot run listener 'kafka' (Mantid's KafkaEventListener "
                "does not read ev44); use engine 'embedded' or 'auto'"
            )
        return EngineChoice.EMBEDDED, "engine 'auto' with listener 'kafka': the embedded engine"
    if config.engine is EngineChoice.MANTID:
        if not available:
            raise EngineUnavailable(f"engine 'mantid' is configured but {why}")
        return EngineChoice.MANTID, f"engine 'mantid' is configured ({why})"
    if available:
        return EngineChoice.MANTID, f"engine 'auto': {why}, using Mantid"
    return EngineChoice.EMBEDDED, f"engine 'auto': {why}, using the embedded scipp engine"


def check_engine(config: Config) -> None:
    """Raise ConfigError (key ``engine``) when the configured engine cannot run in this Python:
    the worker runs with the same interpreter, so ``engine: mantid`` without Mantid could only
    fail at every start (issue 6). Looks for the module only; nothing is imported. Used at
    start and on every change of the configuration file."""
    try:
        choose_engine(config)
    except EngineUnavailable as error:
        raise ConfigError(config.path, "engine", str(error)) from None
