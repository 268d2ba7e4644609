"""Files replaced whole, never seen half-written: the one way livereduce writes its result,
status and kept-run files.

A file is written to a temporary in its own folder and renamed over the target (an atomic
rename on POSIX). The temporary's name is unpredictable (``.<target name>.<random>.tmp``) and
it is created exclusively (``O_CREAT | O_EXCL``, which also refuses to follow a symlink planted
under that name), so nobody sharing the folder can make us write through a link. Temporaries a
killed process left behind are removed by their name pattern and their age, only in the folder
being written and only when they belong to our user: in a folder shared between hosts a
temporary that another machine's livereduce is writing now is young, and stays.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

STALE_AFTER_S = 600.0
"""A temporary this old (by its modification time) is abandoned: the slowest write measured
(the whole accumulation of 10^8 events rewritten) takes a few seconds, so ten minutes never
removes one that is being written."""

_DEFAULT_UMASK = 0o022


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` would set it for all
    threads for a moment); Linux's /proc/self/status, else the usual 022."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _DEFAULT_UMASK


def temporary_for(target: Path) -> Path:
    """A new empty file next to ``target``, created exclusively under an unpredictable name
    ``.<target name>.<random>.tmp``, with the permissions a plain create would give (0666
    less the umask, not mkstemp's 0600). Raises OSError when the folder is not writable."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(name)


def write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """Create ``target``'s folder if needed, ``write(temporary)``, then rename the temporary
    over ``target``; the temporary is removed when anything fails. Raises what ``write``
    raises, and OSError."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_for(target)
    _rename_over(temporary, target, lambda: write(temporary))


_COPY_PIECE = 1 << 30
"""Bytes per ``copy_file_range`` call (it may copy less; the loop goes on)."""


def copy_into(source: Path, target: Path) -> None:
    """Copy the bytes of ``source`` into ``target``, an existing file (made by
    :func:`temporary_for`), opened without following a symlink planted there. The copy runs in
    the kernel (``os.copy_file_range``: no pass through Python, and shared extents where the
    filesystem can, e.g. XFS or btrfs), with a plain read-and-write copy where the kernel
    refuses. Raises OSError."""
    with source.open("rb") as src:
        fd = os.open(target, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
        with os.fdopen(fd, "wb") as dst:
            size = os.fstat(src.fileno()).st_size
            copied = 0
            try:
                while copied < size:
                    done = os.copy_file_range(
                        src.fileno(), dst.fileno(), min(_COPY_PIECE, size - copied)
                    )
                    if done == 0:
                        break
                    copied += done
            except OSError as error:
                if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
            if copied < size:
                src.seek(copied)
                dst.seek(copied)
                shutil.copyfileobj(src, dst)


def link_atomically(source: Path, target: Path) -> None:
    """Make ``target`` a hard link of ``source``, replacing ``target`` at once (a link under an
    unpredictable name, renamed; ``os.link`` never follows or overwrites what is there).
    Raises OSError."""
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    os.link(source, temporary)
    _rename_over(temporary, target, lambda: None)


def _rename_over(temporary: Path, target: Path, fill: Callable[[], object]) -> None:
    """``fill()`` the temporary, rename it over ``target``; it is removed when either fails."""
    try:
        fill()
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


def remove_stale_temporaries(
    folder: Path, pattern: str, *, older_than_s: float = STALE_AFTER_S, now_s: float | None = None
) -> list[Path]:
    """Delete the regular files in ``folder`` (not below it) matching the glob ``pattern``
    that belong to our user and were last modified more than ``older_than_s`` seconds before
    ``now_s`` (default: now, Unix time). Returns what was removed; never raises."""
    now_s = time.time() if now_s is None else now_s
    removed: list[Path] = []
    try:
        candidates = list(folder.glob(pattern))
    except OSError:
        return removed
    for path in candidates:
        try:
            info = path.lstat()
            if (
                not stat.S_ISREG(info.st_mode)
                or info.st_uid != os.getuid()
                or now_s - info.st_mtime <= older_than_s
            ):
                continue
            path.unlink()
        except OSError:
            continue
        log.info("stale_temporary_removed: %s", path)
        removed.append(path)
    return removed
