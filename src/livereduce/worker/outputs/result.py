"""Writes the output workspace to ``<output_dir>/<output_workspace>.h5`` (scipp HDF5).

A reader never sees half a file: the workspace is written to a temporary name in the same folder
and renamed over the old file (an atomic rename on POSIX).

Accumulated events (:func:`~livereduce.worker.outputs.appendable.appendable`: the raw chunk
layout kept with ``preserve_events``) are written incrementally: the writer keeps two working
files (temporaries next to the result, :func:`livereduce.atomic.temporary_for`), written in
turn; each one gets the pulses
added since it was last written appended to its resizable datasets (when the output only grew:
no post-processing script, accumulation method Add or Append, no replace since), and is then
published as ``<name>.h5`` by a hard link renamed over it. After a whole write (the first of
a run) the other working file becomes a copy of it (copied in the kernel), so that the second
write appends too instead of being whole as well. So a write costs what changed,
``<name>.h5`` is always a complete file, and the file a write modifies was published two
writes earlier (a reader that keeps ``<name>.h5`` open across two more writes may see it
change; open it, read, close). Everything else (histograms) is written whole.

Writing is skipped when nothing
changed, and it is kept from becoming the bottleneck: after a write that took ``w`` seconds the
next unforced write waits until ``w / WRITE_SHARE`` seconds have passed since that write began,
so writing takes at most ``WRITE_SHARE`` of the time however large the accumulation grows. A
deferred output is written as soon as that time comes (:meth:`OutputWriter.due_in`; the
engine's loop waits for it as for the next chunk), not one ``update_every`` later with the next
chunk. Run ends and stops force a write, so finished runs are always complete on disk.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import h5py

from livereduce.atomic import link_atomically, remove_stale_temporaries, write_atomically
from livereduce.worker.engine.accumulation import SCIPP_ERRORS
from livereduce.worker.outputs.appendable import AppendableFile, appendable

_NO_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV})
"""What ``link`` fails with on a filesystem without hard links."""

WRITE_SHARE = 0.25
"""Largest share of wall time spent writing the output file; the rest is left for chunks."""

RETRY_AFTER_FAILURE_S = 5.0
"""After a failed write the waiting output is due again (:meth:`OutputWriter.due_in`) no
sooner than this (seconds), so that the loop does not retry a full or read-only disk in a
tight loop between chunks; the next chunk's output is tried as usual."""

log = logging.getLogger(__name__)


class OutputWriter:
    """Writes one output workspace; ``clock`` is monotonic seconds (injected by tests)."""

    def __init__(
        self, output_dir: Path, name: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = Path(output_dir) / f"{name}.h5"
        self._name = name
        self._clock = clock
        self._written_version: object = None
        self._next_allowed = 0.0
        self._retry_at = 0.0
        self.last_write_s = 0.0
        self.pending = False
        self.failure = ""
        self._metadata: dict[str, object] = {}
        self.output_grows = False
        """Set by the engine: each output extends the previous one unless :meth:`replaced`
        is called (then the result file may grow by appending)."""
        self.appended = False
        """Whether the latest write appended to a working file (False: written whole)."""
        self._replaced = True
        self._working = [AppendableFile(self.path), AppendableFile(self.path)]
        self._turn = 0
        self._links = True
        self._remove_stale_temporaries()

    def due_in(self) -> float | None:
        """Seconds until the write budget lets the pending output be written (0 or less: now),
        RETRY_AFTER_FAILURE_S at least after a failed write; None when nothing is pending. The
        engine writes it then, without waiting for a chunk."""
        if not self.pending:
            return None
        return max(self._next_allowed, self._retry_at) - self._clock()

    def replaced(self) -> None:
        """The accumulation was replaced: the next output does not extend what was written."""
        self._replaced = True

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files a killed worker left (``.<name>*.h5.*.tmp``, ours and old:
        :func:`livereduce.atomic.remove_stale_temporaries`): a worker killed during a write
        leaves one the size of the accumulation, and over months of restarts they would fill
        the disk."""
        remove_stale_temporaries(self.path.parent, f".{self._name}*.h5.*.tmp")

    def write(
        self,
        workspace: Any,
        version: object,
        *,
        force: bool = False,
        metadata: Mapping[str, object] | None = None,
    ) -> bool:
        """Write ``workspace`` unless ``version`` is already on disk or (unless ``force``) the
        write budget is spent; then ``pending`` says a newer version waits. Returns True when
        the file was written. ``metadata``: attributes set on the file's root group (the
        latest given is kept for later writes). A failed write is logged and described in
        ``failure`` (empty after any call that did not fail); the previous file stays, and the
        output is ``pending``, due no sooner than RETRY_AFTER_FAILURE_S later."""
        if metadata is not None:
            self._metadata = dict(metadata)
        self.failure = ""
        if workspace is None or version == self._written_version:
            self.pending = False
            return False
        if not force and self._clock() < self._next_allowed:
            self.pending = True
            return False
        began = self._clock()
        if not self._save(workspace, self.path):
            self.pending = True  # still waits: tried again with the next output, or when due
            self._retry_at = self._clock() + RETRY_AFTER_FAILURE_S
            return False
        self._replaced = False
        self.last_write_s = self._clock() - began
        self._next_allowed = began + self.last_write_s / WRITE_SHARE
        self._written_version = version
        self.pending = False
        return True

    def _save(self, workspace: Any, target: Path) -> bool:
        self.appended = False
        try:
            if self._links and appendable(workspace):
                self._save_appending(workspace, target)
            else:
                self._forget_working()
                write_atomically(target, self._save_with_metadata(workspace))
        except (OSError, *SCIPP_ERRORS) as error:
            self.failure = f"cannot write {target}: {error}"
            log.error("output_write_failed: %s", self.failure)
            return False
        return True

    def _save_appending(self, workspace: Any, target: Path) -> None:
        """Write ``workspace`` into the working file whose turn it is (appending when the
        output only grew), set the metadata, and publish it as ``target`` by a hard link.
        Raises OSError and h5py's errors."""
        working = self._working[self._turn]
        extends = self.output_grows and not self._replaced
        if not extends:
            self._working[1 - self._turn].forget()
        target.parent.mkdir(parents=True, exist_ok=True)
        self.appended = working.write(workspace, extends=extends)
        written = working.path
        if written is None:
            raise OSError(f"the working file for {target} was not written")
        if self._metadata:
            _set_metadata(written, self._metadata)
        try:
            link_atomically(written, target)
        except OSError as error:
            if error.errno not in _NO_LINKS:
                raise
            log.warning("output_links_unsupported: %s; writing whole files", error)
            self._links = False
            self._forget_working()
            write_atomically(target, self._save_with_metadata(workspace))
            return
        self._turn = 1 - self._turn
        if self.output_grows and not self.appended:
            self._copy_to_next(working)

    def _copy_to_next(self, written: AppendableFile) -> None:
        """After a whole write, the other working file becomes its copy (the bytes copied in
        the kernel, cheaper than writing them again): the next write appends to it instead of
        being whole too. A copy that fails only costs that: the next write is whole."""
        try:
            self._working[self._turn].copy_of(written)
        except OSError as error:
            log.warning("output_copy_failed: %s; the next write is whole", error)

    def close(self) -> None:
        """Delete the working files (``<name>.h5`` keeps its own link); a later write starts
        afresh, whole."""
        self._forget_working()

    def _forget_working(self) -> None:
        """Drop the working files: the next appendable write starts a new one (a new inode,
        so a file kept or published from them is never modified again)."""
        for working in self._working:
            working.forget()

    def _save_with_metadata(self, workspace: Any) -> Callable[[Path], None]:
        """Writes ``workspace`` with scipp's HDF5 writer, then the metadata as root attributes."""

        def save(path: Path) -> None:
            workspace.save_hdf5(path)
            if self._metadata:
                _set_metadata(path, self._metadata)

        return save

    def keep_run(self, run_number: int, *, partial: bool = False) -> Path | None:
        """Keep the file as it is now as ``<name>_<run_number>.h5`` (Mantid's Rename clone), or
        ``<name>_<run_number>_partial.h5`` for a ``partial`` run (its start was missed), so
        that a partial result never replaces a complete one. A hard link: the next write
        renames a new file over ``<name>.h5`` and leaves this one alone. Returns the kept path,
        None when there is no file or it could not be kept (then ``failure`` says why)."""
        suffix = "_partial" if partial else ""
        kept = self.path.with_name(f"{self._name}_{run_number}{suffix}.h5")
        if not self.path.is_file():
            return None
        self._forget_working()  # the kept file shares an inode with one of them
        try:
            link_atomically(self.path, kept)
        except OSError as error:
            self.failure = f"cannot keep {self.path} as {kept}: {error}"
            log.error("output_keep_failed: %s", self.failure)
            return None
        return kept


def _set_metadata(path: Path, metadata: Mapping[str, object]) -> None:
    """``metadata`` as root attributes of the HDF5 file at ``path``."""
    with h5py.File(path, "r+") as h5:
        h5.attrs.update(metadata)
