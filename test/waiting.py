"""Waiting in tests for an event (a state, a file, a line), never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_S = 0.01
"""How often the predicate is asked: short, since it is cheap and the test waits on it."""


def wait_for(predicate: Callable[[], T], what: str, timeout_s: float = 30.0) -> T:
    """Ask ``predicate`` every :data:`POLL_S` until it returns something truthy, and return
    that; AssertionError naming ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(POLL_S)
