"""A stop request that a signal handler can raise safely and a loop can sleep on.

The handler only sets a flag; the wake-up comes from ``signal.set_wakeup_fd``, which the
interpreter writes to from C as soon as the signal arrives (STYLE.md §1), so a loop sleeping in
:meth:`StopToken.wait` returns at once instead of at the end of its timeout.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time


class StopToken:
    """Set by SIGTERM/SIGINT (after :meth:`install`) or by :meth:`request`.

    ``requested`` is True once a stop was asked for; ``reason`` says why.
    """

    def __init__(self) -> None:
        self.requested = False
        self.reason = ""
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)

    def install(
        self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
    ) -> None:
        """Route ``signals`` to this token. Main thread only (a CPython rule for handlers)."""
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in signals:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.requested = True
        self.reason = signal.Signals(signum).name

    def request(self, reason: str) -> None:
        """Ask for a stop from code (any thread)."""
        self.requested = True
        self.reason = reason
        with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
            os.write(self._write_fd, b"\0")

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s`` seconds, returning early on a stop request or a signal.
        Returns ``requested``."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while not self.requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            readable, _, _ = select.select([self._read_fd], [], [], remaining)
            if readable:
                try:
                    while os.read(self._read_fd, 512):
                        pass
                except BlockingIOError:
                    pass
        return self.requested

    @property
    def fileno(self) -> int:
        """The read end of the wake-up pipe, for loops that poll sockets as well."""
        return self._read_fd
