"""A stop request that a signal handler can raise safely and a loop can sleep on.

The handler sets a flag (and raises only inside abandonable work, below); the wake-up comes
from ``signal.set_wakeup_fd``, which the interpreter writes to from C as soon as the signal
arrives (STYLE.md §1), so a loop sleeping in :meth:`StopToken.wait` returns at once instead of at
the end of its timeout.

A stop must take seconds whatever the worker is doing (issue 15.3). Three things make it so:

* work that may be abandoned (a user script, the accumulation, an output write: writes are
  atomic by rename, so an interrupted one leaves the previous file intact) runs inside
  :meth:`StopToken.abandonable`; a stop signal that arrives there raises :class:`StopRequested`
  in the main thread at once, which unwinds a script in a 20 s ``time.sleep`` as well. When it
  lands where Python ignores exceptions (a ``__del__`` or weakref callback run by the garbage
  collector in the middle of an HDF5 write), it is raised again ``STOP_RETRY_S`` later (SIGALRM);
* between the phases of a step the engine calls :meth:`StopToken.check`;
* once a stop was asked for, a watcher thread ends the process with status 0 (STOPPED) after
  ``exit_after_s`` seconds if it is still there (a script that swallows StopRequested, a listener
  that does not let go). That thread needs the GIL: C code that holds it (a long scipp or HDF5
  call) delays it until the call returns, and then the supervisor's SIGKILL is the bound.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

STOP_EXIT_AFTER_S = 3.0
"""Seconds after a stop request at which the worker ends itself with status 0 if it has not
returned by then: inside the 5 s a stop may take (issue 15.3), with room for the supervisor."""

FAREWELL_WAIT_S = 0.5
"""How long the stop deadline waits for its log line to be written before it ends the process."""

STOP_RETRY_S = 0.01
"""Delay before StopRequested is raised again when Python ignored it (see the module text)."""


class StopRequested(BaseException):
    """Raised in the main thread to abandon work when a stop was asked for; ``phase`` names
    the work abandoned (e.g. ``the processing script``). A BaseException so that a script's
    ``except Exception`` does not swallow it."""

    def __init__(self, reason: str, phase: str = "") -> None:
        super().__init__(reason, phase)
        self.reason = reason
        self.phase = phase


class StopToken:
    """Set by SIGTERM/SIGINT (after :meth:`install`) or by :meth:`request`.

    ``requested`` is True once a stop was asked for; ``reason`` says why.
    """

    def __init__(self) -> None:
        self.requested = False
        self.reason = ""
        self.abandoning = ""
        """The work that a stop signal abandons now (empty: none)."""
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._exit_read_fd: int | None = None
        self._exit_write_fd: int | None = None

    def install(
        self,
        signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
        *,
        exit_after_s: float | None = STOP_EXIT_AFTER_S,
    ) -> None:
        """Route ``signals`` to this token. Main thread only (a CPython rule for handlers).

        With ``exit_after_s``, a daemon thread ends the process (``os._exit(0)``) that many
        seconds after the first stop request if it still runs then."""
        if exit_after_s is not None:
            self._exit_read_fd, self._exit_write_fd = os.pipe()
            threading.Thread(
                target=self._exit_when_late,
                args=(self._exit_read_fd, exit_after_s),
                name="stop deadline",
                daemon=True,
            ).start()
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in signals:
            signal.signal(signum, self._handle)
        self._unraisablehook = sys.unraisablehook
        sys.unraisablehook = self._ignored

    def _ignored(self, unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, StopRequested):
            self._unraisablehook(unraisable)
            return
        # SIGALRM is taken only now, when stopping: a script's own alarm keeps its meaning.
        with contextlib.suppress(ValueError):  # not the main thread: the deadline still holds
            signal.signal(signal.SIGALRM, self._raise_again)
            signal.setitimer(signal.ITIMER_REAL, STOP_RETRY_S)

    def _raise_again(self, _signum: int, _frame: object) -> None:
        if self.requested and self.abandoning:
            raise StopRequested(self.reason, self.abandoning)

    def _handle(self, signum: int, _frame: object) -> None:
        self._set(signal.Signals(signum).name)
        if self.abandoning:
            raise StopRequested(self.reason, self.abandoning)

    def _set(self, reason: str) -> None:
        first = not self.requested
        self.requested = True
        self.reason = reason
        if first and self._exit_write_fd is not None:
            with contextlib.suppress(OSError):  # os.write takes no Python lock: handler-safe
                os.write(self._exit_write_fd, b"\0")

    def request(self, reason: str) -> None:
        """Ask for a stop from code (any thread)."""
        self._set(reason)
        with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
            os.write(self._write_fd, b"\0")

    def check(self) -> None:
        """Raise StopRequested if a stop was asked for (between the phases of a step)."""
        if self.requested:
            raise StopRequested(self.reason, self.abandoning)

    @contextlib.contextmanager
    def abandonable(self, phase: str) -> Iterator[None]:
        """Run the block as work a stop abandons: a stop signal arriving inside raises
        StopRequested (``phase`` names the work). A stop asked for before does not: the engine
        checks for it between phases, and writes the last output inside this block at a stop
        (which a second signal then abandons). Main thread only; not nested."""
        self.abandoning = phase
        try:
            yield
        finally:
            self.abandoning = ""

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

    def _exit_when_late(self, read_fd: int, exit_after_s: float) -> None:
        os.read(read_fd, 1)  # blocks (without the GIL) until the first stop request
        time.sleep(exit_after_s)
        # Logging takes the handlers' locks, which the stuck main thread may hold: say why in
        # a thread of its own, and end the process whether or not that returns.
        farewell = threading.Thread(
            target=self._say_late, args=(exit_after_s,), name="stop farewell", daemon=True
        )
        farewell.start()
        farewell.join(FAREWELL_WAIT_S)
        os._exit(0)

    def _say_late(self, exit_after_s: float) -> None:
        log.warning(
            "stop_deadline: still running %.1f s after the stop request (%s)%s: exiting now",
            exit_after_s,
            self.reason,
            f", in {self.abandoning}" if self.abandoning else "",
        )
        _flush_logs()


def _flush_logs() -> None:
    """Flush and close the log handlers and the standard streams (best effort)."""
    with contextlib.suppress(Exception):
        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def exit_now(status: int) -> None:
    """End the process with ``status`` at once, after flushing the log and standard streams.

    The worker ends this way, not through the interpreter's shutdown: Mantid's own exit hook
    calls ``AlgorithmManager.shutdown()`` holding the GIL and waits for algorithms that may
    never end (upstream-livereduce.md §2.5), and a non-daemon thread a script started would
    keep the interpreter waiting in its shutdown for ever."""
    _flush_logs()
    os._exit(status)
