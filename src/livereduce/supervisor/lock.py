"""One daemon per output folder: an exclusive ``flock`` on ``<output_dir>/.livereduce.lock``.

Two daemons writing one ``output_dir`` would overwrite each other's result files and alternate
in one status file, silently. The first takes the lock at start and writes its pid into the
file; a second finds it taken and exits (status 2) naming that pid. The kernel releases the lock
when the process ends however it ends, so a killed daemon never leaves a stale lock (the file
itself stays; its content is only the pid for the message).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK_NAME = ".livereduce.lock"


class OutputLocked(Exception):
    """Another process holds the output folder's lock; ``str()`` names the file and its pid."""


class OutputLock:
    """The held lock of one output folder; release with :meth:`release` or as a context."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, output_dir: Path) -> OutputLock:
        """Take the lock of ``output_dir`` (created if missing). Raises OutputLocked when
        another process holds it, OSError when the folder or file cannot be made."""
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / LOCK_NAME
        # O_NOFOLLOW: a symlink planted in a shared folder must not make us truncate its target.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputLocked(
                f"another livereduce (pid {holder}) already writes to {output_dir} "
                f"(it holds {path}); this one exits"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Let the lock go (closing the fd releases the flock)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
