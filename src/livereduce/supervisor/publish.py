"""When the supervisor tells the outside what it does: the status file and systemd's STATUS=.

:class:`StatusPublisher` throttles both. The status file is rewritten at least every
:data:`STATUS_REFRESH_S` (its ``updated`` field is the supervisor's sign of life) and, after a
change, within :data:`STATUS_MIN_INTERVAL_S`; STATUS= goes out when its text changed, at most
every :data:`NOTIFY_STATUS_MIN_INTERVAL_S`. What the status says is the supervisor's business
(daemon.py); times are monotonic seconds passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from livereduce.supervisor import notify
from livereduce.supervisor.status import WRITE_EVERY_S, write_status

STATUS_REFRESH_S = WRITE_EVERY_S
"""The status file is rewritten at least this often (and on every report, at most every
STATUS_MIN_INTERVAL_S), so its ``updated`` field shows the supervisor is alive."""
STATUS_MIN_INTERVAL_S = 0.2
NOTIFY_STATUS_MIN_INTERVAL_S = 1.0
"""STATUS= to systemd at most once a second: it is for people reading ``systemctl status``."""

_LONG_AGO_S = -1e9
"""'Never' as a monotonic time: the first write and STATUS= are due at once."""


class StatusPublisher:
    """Writes ``status_file`` and sends STATUS= no more often than the intervals above.

    Set :attr:`dirty` when something the status shows has changed.
    """

    def __init__(self, status_file: Path) -> None:
        self.status_file = status_file
        self.dirty = True
        self._last_write_s = _LONG_AGO_S
        self._error = ""
        self._last_notify_s = _LONG_AGO_S
        self._last_notify_text = ""

    def next_write_s(self) -> float:
        """The monotonic time the next status file write is due."""
        due = self._last_write_s + STATUS_REFRESH_S
        if self.dirty:
            due = min(due, self._last_write_s + STATUS_MIN_INTERVAL_S)
        return due

    def notify_status(self, text: str, now_s: float) -> None:
        """Send STATUS= ``text`` unless it is the text sent last, or one was sent less than
        NOTIFY_STATUS_MIN_INTERVAL_S ago."""
        if (
            text != self._last_notify_text
            and now_s - self._last_notify_s >= NOTIFY_STATUS_MIN_INTERVAL_S
        ):
            notify.status(text)
            self._last_notify_text = text
            self._last_notify_s = now_s

    def notify_ready(self, text: str, now_s: float) -> None:
        """Send READY=1 with STATUS= ``text``; it counts as a STATUS= for the throttle."""
        notify.ready(text)
        self._last_notify_s = now_s

    def write(
        self, now_s: float, content: Callable[[], Mapping[str, Any]], *, force: bool = False
    ) -> OSError | None:
        """Write ``content()`` to the status file if a write is due (or ``force``).

        Returns the OSError of a failed write when it differs from the previous failure, so
        that it is logged once, not every STATUS_REFRESH_S; None otherwise. A failed write
        counts as a write for the throttle.
        """
        since = now_s - self._last_write_s
        if (
            not force
            and since < STATUS_REFRESH_S
            and not (self.dirty and since >= STATUS_MIN_INTERVAL_S)
        ):
            return None
        new_error = None
        try:
            write_status(self.status_file, content())
            self._error = ""
        except OSError as error:
            if str(error) != self._error:
                new_error = error
            self._error = str(error)
        self._last_write_s = now_s
        self.dirty = False
        return new_error
