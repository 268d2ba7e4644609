"""Exponential backoff: the one doubling rule of the supervisor's restarts, the ADARA
listener's reconnections and the external watchdog's restarts."""

from __future__ import annotations


def doubling_delay_s(step: int, base_s: float, max_s: float) -> float:
    """``base_s`` at ``step`` 1, doubled at each further step, at most ``max_s`` (seconds);
    steps below 1 count as 1."""
    return min(base_s * 2.0 ** max(step - 1, 0), max_s)
