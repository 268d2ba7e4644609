"""Watching the processing scripts and the configuration file.

Every way a file gets replaced is caught (the predecessor missed saves by rename, see
upstream-livereduce.md §2.4, §7.4): the watches are on **folders**, never on files, with
IN_CLOSE_WRITE (saved in place), IN_MODIFY (a write in progress), IN_MOVED_TO / IN_MOVED_FROM
(rename over, as editors, rsync and config management save), IN_CREATE, IN_DELETE, and the
folder itself going away (IN_DELETE_SELF, IN_MOVE_SELF). Besides the folders that hold the
files, the folder holding each symbolic link on the way to them is watched, so a symlink swap
(``/etc/livereduce/current -> v2``) is seen; after every change the watches are brought back in
line with what the paths resolve to now.

inotify only tells that *something* happened. What counts is the content: once the files have
been quiet for ``debounce_s`` (and no writer still has one open: IN_MODIFY without its
IN_CLOSE_WRITE), their md5 is compared with the one last acted on. A touch or an identical
rewrite changes nothing and is logged as such; a changed, created or deleted script gives one
:class:`ScriptsChanged`, a changed configuration file one :class:`ConfigChanged`. A periodic
content check every ``poll_interval_s`` catches what inotify cannot see (edits made on another
host of a network filesystem, or inotify unavailable); it acts only on content that stayed the
same for ``debounce_s``, so a half-written file is never reported.

The watcher runs in its own thread and only calls ``emit`` (which puts the event on the
supervisor's queue); it never restarts anything itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

with warnings.catch_warnings():
    # pyinotify imports asyncore (deprecated since 3.6, gone in 3.12 where pyasyncore provides it)
    warnings.simplefilter("ignore", DeprecationWarning)
    import pyinotify

log = logging.getLogger(__name__)

DEBOUNCE_S = 1.0
"""Quiet time after the last event before the content is compared: editors finish a save
(write + rename, backup copies) well within it, and one save gives one restart."""

MAX_OPEN_WRITER_S = 30.0
"""A file still open for writing after this long is taken as it is: a writer that never closes
must not hold restarts back forever."""

STOP_CHECK_S = 0.25
"""Longest the watcher thread blocks before looking at its stop flag."""

INOTIFY_ENV = "LIVEREDUCE_INOTIFY"
"""Set to 0 to disable inotify and rely on the periodic content check alone."""

_FILE_EVENTS = (
    pyinotify.IN_CLOSE_WRITE
    | pyinotify.IN_MODIFY
    | pyinotify.IN_MOVED_TO
    | pyinotify.IN_MOVED_FROM
    | pyinotify.IN_CREATE
    | pyinotify.IN_DELETE
    | pyinotify.IN_ATTRIB
)
_SELF_EVENTS = pyinotify.IN_DELETE_SELF | pyinotify.IN_MOVE_SELF | pyinotify.IN_IGNORED
WATCH_MASK = _FILE_EVENTS | pyinotify.IN_DELETE_SELF | pyinotify.IN_MOVE_SELF


@dataclass(frozen=True, slots=True, kw_only=True)
class ScriptsChanged:
    """Processing scripts changed content, appeared or disappeared.

    ``paths``: the scripts that changed; ``detected_by``: 'inotify', 'poll' or a signal name;
    ``saved_at``: Unix time of the save: when the first event of the burst was seen (for the
    periodic check, the file's mtime when it falls inside the last interval), to measure
    save -> first chunk.
    """

    paths: tuple[Path, ...]
    detected_by: str
    saved_at: float

    def describe(self) -> str:
        """The changed files and how the change was seen, for the log."""
        names = ", ".join(p.name for p in self.paths)
        return f"{names} changed (seen by {self.detected_by})"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigChanged:
    """The configuration file's content changed (or it appeared or disappeared)."""

    path: Path
    detected_by: str
    old_md5: str | None
    new_md5: str | None

    def describe(self) -> str:
        """What changed, for the log."""
        return (
            f"configuration file {self.path} changed (md5 {self.old_md5 or 'missing'} -> "
            f"{self.new_md5 or 'missing'}, seen by {self.detected_by})"
        )


WatchEvent = ScriptsChanged | ConfigChanged


def file_md5(path: Path) -> str | None:
    """md5 hex digest of the file's bytes, None when it does not exist.

    Raises OSError when it exists but cannot be read (EIO or ESTALE of a network filesystem,
    permissions): that is not a change of content.
    """
    try:
        return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _symlink_parents(path: Path) -> set[Path]:
    """Folders holding a symbolic link on the way to ``path`` (their entries get swapped)."""
    parents = set()
    for ancestor in [path, *path.parents]:
        if ancestor.is_symlink():
            parents.add(ancestor.parent)
    return parents


def _prefixes(path: Path) -> set[Path]:
    return {path, *path.parents}


class _Handler(pyinotify.ProcessEvent):
    def __init__(self, watcher: Watcher) -> None:
        super().__init__()
        self._watcher = watcher

    def process_default(self, event: pyinotify.Event) -> None:
        self._watcher._on_inotify(event)


class Watcher:
    """Watches ``scripts`` and ``config`` (None: no configuration file) and calls ``emit`` with
    a :class:`ScriptsChanged` or :class:`ConfigChanged` for each settled content change.

    ``use_inotify`` False (or ``LIVEREDUCE_INOTIFY=0``, or inotify failing to start) leaves the
    periodic check every ``poll_interval_s`` alone. ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        scripts: Iterable[Path],
        config: Path | None,
        emit: Callable[[WatchEvent], None],
        *,
        poll_interval_s: float,
        debounce_s: float = DEBOUNCE_S,
        use_inotify: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scripts = tuple(Path(p).absolute() for p in scripts)
        self.config = Path(config).absolute() if config is not None else None
        self._emit = emit
        self.poll_interval_s = poll_interval_s
        self.debounce_s = debounce_s
        if use_inotify is None:
            use_inotify = os.environ.get(INOTIFY_ENV, "1") != "0"
        self.use_inotify = use_inotify
        self._clock = clock
        self._lock = threading.Lock()
        self._unreadable: set[Path] = set()
        self._known: dict[Path, str | None] = {}
        self._known = self._snapshot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._manager: pyinotify.WatchManager | None = None
        self._notifier: pyinotify.Notifier | None = None
        self._watches: dict[Path, tuple[int, tuple[int, int]]] = {}
        self._last_activity_s: float | None = None
        self._pending_snapshot: dict[Path, str | None] | None = None
        self._pending_source = ""
        self._first_seen = 0.0
        self._touched: set[Path] = set()
        self._open_writers: set[Path] = set()
        self._refresh_needed = False
        self._relevant_paths: set[Path] = set()
        self.inotify_active = False

    @property
    def files(self) -> tuple[Path, ...]:
        """Every watched file: the scripts, then the configuration file if there is one."""
        return self.scripts + ((self.config,) if self.config is not None else ())

    def _snapshot(self) -> dict[Path, str | None]:
        snapshot = {}
        for path in self.files:
            try:
                snapshot[path] = file_md5(path)
                self._unreadable.discard(path)
            except OSError as error:
                # Unreadable for now (a network filesystem hiccup): taken as unchanged.
                if path not in self._unreadable:
                    log.warning("file_unreadable: %s: %s; taken as unchanged", path, error)
                self._unreadable.add(path)
                snapshot[path] = self._known.get(path)
        return snapshot

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Set up inotify (falling back to polling alone, with a warning, when it fails) and
        start the watcher thread."""
        if self.use_inotify:
            try:
                # pyinotify logs to stderr through its own handler; route it to our log, and
                # keep its "path of this watch cannot be trusted" error (a folder we re-watch
                # anyway) out of the journal.
                pyinotify.log.handlers.clear()
                pyinotify.log.propagate = True
                pyinotify.log.setLevel(logging.CRITICAL)
                self._manager = pyinotify.WatchManager()
                self._notifier = pyinotify.Notifier(self._manager, _Handler(self))
                self._refresh_watches()
                self.inotify_active = bool(self._watches)
            except (OSError, pyinotify.PyinotifyError) as error:
                log.warning("inotify_unavailable: %s: relying on the periodic content check", error)
                self._close_inotify()
        how = "inotify and " if self.inotify_active else ""
        log.info(
            "watching: %s by %sa content check every %g s",
            ", ".join(str(p) for p in self.files),
            how,
            self.poll_interval_s,
        )
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (within STOP_CHECK_S) and close inotify."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * STOP_CHECK_S + 1)
        self._close_inotify()

    def _close_inotify(self) -> None:
        if self._notifier is not None:
            with contextlib.suppress(OSError):
                self._notifier.stop()
        self._notifier = None
        self._manager = None
        self._watches.clear()
        self.inotify_active = False

    def resync(self) -> None:
        """Take the files as they are now as known (after a restart for another reason, e.g.
        SIGHUP, which already loads them), so they do not cause a second restart."""
        with self._lock:
            self._known = self._snapshot()

    # -- watches ------------------------------------------------------------------------------

    def _wanted_folders(self) -> set[Path]:
        folders: set[Path] = set()
        for path in self.files:
            folders.add(path.parent)
            folders.add(path.resolve().parent)
            folders |= _symlink_parents(path)
        return folders

    def _relevant(self) -> set[Path]:
        relevant: set[Path] = set()
        for path in self.files:
            relevant |= _prefixes(path) | _prefixes(path.resolve())
        return relevant

    def _refresh_watches(self) -> None:
        """Watch every wanted folder that exists, re-watching any that was replaced."""
        if self._manager is None:
            return
        wanted = self._wanted_folders()
        for folder, (wd, _) in list(self._watches.items()):
            if folder not in wanted or self._identity(folder) != self._watches[folder][1]:
                if wd in self._manager.watches:
                    self._manager.rm_watch(wd, quiet=True)
                del self._watches[folder]
        for folder in sorted(wanted - self._watches.keys()):
            identity = self._identity(folder)
            if identity is None:
                continue
            result = self._manager.add_watch(str(folder), WATCH_MASK, quiet=True)
            wd = result.get(str(folder), -1)
            if wd < 0:
                log.warning("inotify_watch_failed: %s; the periodic check covers it", folder)
                continue
            self._watches[folder] = (wd, identity)
        self._relevant_paths = self._relevant()

    @staticmethod
    def _identity(folder: Path) -> tuple[int, int] | None:
        try:
            info = folder.stat()
        except OSError:
            return None
        return (info.st_dev, info.st_ino)

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        next_poll_s = self._clock() + self.poll_interval_s
        while not self._stop.is_set():
            try:
                now = self._clock()
                timeout = min(STOP_CHECK_S, max(next_poll_s - now, 0.0))
                if self._last_activity_s is not None:
                    quiet_s = MAX_OPEN_WRITER_S if self._open_writers else self.debounce_s
                    timeout = min(timeout, max(self._last_activity_s + quiet_s - now, 0.0))
                self._wait(timeout)
                now = self._clock()
                if self._refresh_needed and self._manager is not None:
                    self._refresh_needed = False
                    self._refresh_watches()
                if now >= next_poll_s:
                    next_poll_s = now + self.poll_interval_s
                    self._poll(now)
                if self._settled(now):
                    self._settle(now)
            except Exception:
                log.exception("watcher_error: watching goes on")
                self._stop.wait(1.0)

    def _wait(self, timeout_s: float) -> None:
        if self._notifier is None:
            self._stop.wait(timeout_s)
            return
        if self._notifier.check_events(timeout=int(timeout_s * 1000)):
            self._notifier.read_events()
            self._notifier.process_events()

    def _on_inotify(self, event: pyinotify.Event) -> None:
        if event.mask & pyinotify.IN_Q_OVERFLOW:
            # Events were lost: compare everything once the files are quiet.
            self._refresh_needed = True
            self._activity("inotify", None)
            return
        path = Path(event.pathname)
        if event.mask & _SELF_EVENTS:
            self._refresh_needed = True
            self._activity("inotify", path)
            return
        if path not in self._relevant_paths:
            return
        if event.mask & pyinotify.IN_MODIFY:
            self._open_writers.add(path)
        elif event.mask & (
            pyinotify.IN_CLOSE_WRITE | pyinotify.IN_DELETE | pyinotify.IN_MOVED_FROM
        ):
            self._open_writers.discard(path)
        if event.mask & (pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO | pyinotify.IN_DELETE):
            self._refresh_needed = True  # a swapped symlink or a replaced folder
        self._activity("inotify", path)

    def _activity(self, source: str, path: Path | None) -> None:
        if self._last_activity_s is None:
            self._pending_source = source
            self._first_seen = time.time()
        self._last_activity_s = self._clock()
        self._pending_snapshot = self._snapshot()
        if path is not None:
            self._touched.add(path)

    def _poll(self, now: float) -> None:
        if self._last_activity_s is not None:
            return  # a change is already being settled
        with self._lock:
            changed = self._snapshot() != self._known
        if changed:
            self._activity("poll", None)
            self._last_activity_s = now

    def _settled(self, now: float) -> bool:
        if self._last_activity_s is None:
            return False
        quiet_s = now - self._last_activity_s
        if quiet_s < self.debounce_s:
            return False
        return not (self._open_writers and quiet_s < MAX_OPEN_WRITER_S)

    def _settle(self, now: float) -> None:
        snapshot = self._snapshot()
        if snapshot != self._pending_snapshot:
            # Still changing (seen by comparing content: no event told us): wait again.
            self._pending_snapshot = snapshot
            self._last_activity_s = now
            return
        source, touched = self._pending_source, self._touched
        self._last_activity_s = None
        self._pending_snapshot = None
        self._touched = set()
        self._open_writers.clear()
        with self._lock:
            known, self._known = self._known, snapshot
        changed = [path for path in self.files if snapshot[path] != known[path]]
        if not changed:
            names = sorted(p.name for p in touched if p in self.files)
            if names:
                log.info(
                    "content_unchanged: %s: touch or identical rewrite, nothing to do",
                    ", ".join(names),
                )
            return
        scripts = tuple(p for p in changed if p in self.scripts)
        if scripts:
            saved_at = self._first_seen
            if source == "poll":
                # The periodic check sees a save up to one interval late; the file's mtime says
                # when it happened, trusted only inside that interval (copies keep old mtimes,
                # and a network filesystem's clock may be off).
                mtimes = [m for m in map(_mtime, scripts) if m is not None]
                if mtimes and saved_at - self.poll_interval_s <= max(mtimes) <= saved_at:
                    saved_at = max(mtimes)
            self._emit(ScriptsChanged(paths=scripts, detected_by=source, saved_at=saved_at))
        if self.config is not None and self.config in changed:
            self._emit(
                ConfigChanged(
                    path=self.config,
                    detected_by=source,
                    old_md5=known[self.config],
                    new_md5=snapshot[self.config],
                )
            )
