"""The memory guard: the worker's resident memory against its limit.

The limit is ``system_mem_limit_perc`` percent of the smaller of the machine's physical memory
and the memory limit of the cgroup the service runs in (systemd's ``MemoryMax=``; cgroup v2
``memory.max``, v1 ``memory.limit_in_bytes``, the tightest along the path to the root). The
predecessor compared against physical memory only, so under a ``MemoryMax`` the kernel's OOM
killer came first (upstream-livereduce.md §2.6, §7.6). ``system_mem_limit_perc`` 0 disables the
guard.

The supervisor calls :meth:`MemoryGuard.check` from its tick every ``mem_check_interval_sec``
(default 0.1 s: a script allocating 1 GB/s then gains at most 100 MB between two checks, and the
worker is killed at once, so it peaks within 1.3x of any limit of 400 MB or more); the guard
never raises: an error inside is logged and the next check runs as usual.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

CHILDREN_REFRESH_S = 1.0
"""How often the guard lists the worker's descendants again: listing walks all of /proc (about
10 ms with a thousand processes), too slow for every check; the resident memory of the worker
and of the descendants already known is read at every check."""

LIMIT_REFRESH_S = 1.0
"""How often the guard reads the limit again (physical memory and the cgroup files): a
``systemctl set-property MemoryMax=`` takes effect within a second, and a check at 0.1 s costs
the reading of the worker's memory alone."""

UNLIMITED_V1 = 1 << 60
"""cgroup v1 reports "no limit" as a page-rounded LONG_MAX; anything this large means none."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryLimit:
    """The worker's limit: ``limit_bytes`` = ``percent`` % of ``base_bytes``, the smaller of
    physical memory and the cgroup limit; ``source`` says which one it is."""

    limit_bytes: int
    base_bytes: int
    percent: float
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryExceeded:
    """The worker ``pid`` uses ``rss_bytes`` (with its children) above ``limit.limit_bytes``."""

    pid: int
    rss_bytes: int
    limit: MemoryLimit

    def describe(self) -> str:
        """The figures, in MiB, for the log and the restart reason."""
        return (
            f"worker pid {self.pid} uses {self.rss_bytes / 2**20:.1f} MiB, above the limit of "
            f"{self.limit.limit_bytes / 2**20:.1f} MiB ({self.limit.percent:g}% of "
            f"{self.limit.base_bytes / 2**20:.1f} MiB {self.limit.source})"
        )


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None  # cgroup v2 writes "max" for no limit
    value = int(text)
    return value if value < UNLIMITED_V1 else None


def _ancestors(root: Path, relative: str) -> list[Path]:
    # From the service's own cgroup up to the mount root: a limit on a parent slice binds too.
    path = root / relative.lstrip("/")
    chain = [path, *path.parents]
    return [p for p in chain if p == root or root in p.parents]


def cgroup_memory_limit(
    *, proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """The tightest memory limit (bytes) of this process's cgroup and its parents, cgroup v2
    (``memory.max`` under ``root``) and v1 (``memory.limit_in_bytes`` under ``root/memory``);
    None when there is none or it cannot be read. Format of ``proc_cgroup``: cgroups(7)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    candidates: list[Path] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, relative = parts
        if controllers == "":
            candidates += [p / "memory.max" for p in _ancestors(root, relative)]
        elif "memory" in controllers.split(","):
            v1_root = root / "memory"
            candidates += [p / "memory.limit_in_bytes" for p in _ancestors(v1_root, relative)]
    limits = [value for value in map(_read_limit, candidates) if value is not None]
    return min(limits) if limits else None


def memory_limit(
    percent: float,
    *,
    physical_bytes: int | None = None,
    cgroup_bytes: int | None = None,
    proc_cgroup: Path = Path("/proc/self/cgroup"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
) -> MemoryLimit:
    """The limit for ``percent`` (0 < percent <= 100). ``physical_bytes`` defaults to psutil's
    total memory; ``cgroup_bytes`` to :func:`cgroup_memory_limit`."""
    physical = psutil.virtual_memory().total if physical_bytes is None else physical_bytes
    cgroup = (
        cgroup_memory_limit(proc_cgroup=proc_cgroup, root=cgroup_root)
        if cgroup_bytes is None
        else cgroup_bytes
    )
    if cgroup is not None and cgroup < physical:
        base, source = cgroup, "cgroup memory limit"
    else:
        base, source = physical, "physical memory"
    return MemoryLimit(
        limit_bytes=int(base * percent / 100), base_bytes=base, percent=percent, source=source
    )


def resident_bytes(pid: int) -> int:
    """Resident memory of ``pid`` plus all its descendants (a script may start programs).
    Raises psutil.NoSuchProcess when ``pid`` is gone."""
    process = psutil.Process(pid)
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue  # a child that ended between listing and reading
    return total


class MemoryGuard:
    """Checks the worker's memory every ``interval_s`` against ``percent`` % of the base.

    ``percent`` 0 disables it (``enabled`` False, :meth:`check` returns None). ``last_rss``
    holds the last reading, ``limit`` the limit in force (read again every LIMIT_REFRESH_S, so
    a ``systemctl set-property MemoryMax=`` takes effect).
    """

    def __init__(self, percent: float, interval_s: float, **limit_args: object) -> None:
        self.percent = percent
        self.interval_s = interval_s
        self.enabled = percent > 0
        self._limit_args = limit_args
        self.limit: MemoryLimit | None = None
        self.last_rss: int | None = None
        self.next_check_s = 0.0
        self._process: psutil.Process | None = None
        self._children: list[psutil.Process] = []
        self._children_at_s = float("-inf")
        self._limit_at_s = float("-inf")
        if self.enabled:
            self.limit = memory_limit(percent, **limit_args)  # type: ignore[arg-type]

    def due(self, now_s: float) -> bool:
        """Whether a check is due at monotonic time ``now_s``."""
        return self.enabled and now_s >= self.next_check_s

    def check(self, pid: int | None, now_s: float) -> MemoryExceeded | None:
        """Read the memory of ``pid`` (None: no worker) and return the excess, if any.
        Schedules the next check ``interval_s`` after ``now_s``; never raises."""
        self.next_check_s = now_s + self.interval_s
        if not self.enabled or pid is None:
            self.last_rss = None
            return None
        try:
            limit = self._current_limit(now_s)
            if self.limit is not None and limit.limit_bytes != self.limit.limit_bytes:
                log.info(
                    "memory_limit_changed: now %.1f MiB (%g%% of %.1f MiB %s)",
                    limit.limit_bytes / 2**20,
                    limit.percent,
                    limit.base_bytes / 2**20,
                    limit.source,
                )
            self.limit = limit
            self.last_rss = self._resident(pid, now_s)
        except psutil.NoSuchProcess:
            self.last_rss = None
            return None
        except Exception:
            log.exception(
                "memory_check_failed: worker pid %d; checking again in %g s", pid, self.interval_s
            )
            return None
        if self.last_rss > limit.limit_bytes:
            return MemoryExceeded(pid=pid, rss_bytes=self.last_rss, limit=limit)
        return None

    def _current_limit(self, now_s: float) -> MemoryLimit:
        if self.limit is None or now_s - self._limit_at_s >= LIMIT_REFRESH_S:
            self._limit_at_s = now_s
            return memory_limit(self.percent, **self._limit_args)  # type: ignore[arg-type]
        return self.limit

    def _resident(self, pid: int, now_s: float) -> int:
        """:func:`resident_bytes`, with the list of descendants refreshed only every
        CHILDREN_REFRESH_S. Raises psutil.NoSuchProcess when ``pid`` is gone."""
        if self._process is None or self._process.pid != pid:
            self._process = psutil.Process(pid)
            self._children_at_s = float("-inf")
        if now_s - self._children_at_s >= CHILDREN_REFRESH_S:
            self._children = self._process.children(recursive=True)
            self._children_at_s = now_s
        total = self._process.memory_info().rss
        for child in self._children:
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue  # a child that ended since it was listed
        return total
