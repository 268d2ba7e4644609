"""STAND-IN for tests, not Mantid: ``mantid.utils.logging.log_to_python``."""

from __future__ import annotations

from mantid import _standin


def log_to_python(level: str | None = None, pattern: str | None = None) -> None:
    """Send Mantid's log messages to Python's ``logging.getLogger("Mantid")`` from now on."""
    _standin.record("log_to_python", level=level, pattern=pattern)
    _standin.route_to_python(level)
