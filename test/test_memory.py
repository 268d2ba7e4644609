"""The memory guard: the limit from physical memory and the cgroup, and readings of real
processes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from livereduce.supervisor.memory import (
    MemoryGuard,
    cgroup_memory_limit,
    memory_limit,
    resident_bytes,
)

MIB = 2**20

HOLDER = textwrap.dedent(
    """
    import sys, time
    block = bytearray(int(sys.argv[1]) * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page so it is resident
    print("ready", flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def holder():
    """Start a Python process holding N MiB of resident memory; killed in teardown."""
    processes = []

    def start(mib: int, *, parent: bool = False) -> subprocess.Popen:
        code = HOLDER
        args = [str(mib)]
        if parent:  # a parent that starts the holder as its child, like a script starting a tool
            code = (
                "import subprocess, sys, time\n"
                "child = subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]],"
                " stdout=subprocess.PIPE, text=True)\n"
                "print(child.stdout.readline(), end='', flush=True)\n"
                "time.sleep(60)\n"
            )
            args = [HOLDER, str(mib)]
        process = subprocess.Popen(
            [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True
        )
        processes.append(process)
        assert process.stdout.readline().strip() == "ready"
        return process

    yield start
    for process in processes:
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        process.kill()
        process.wait()
        process.stdout.close()


def write_tree(tmp_path, files):
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cgroup_v2_takes_the_tightest_limit_up_the_tree(tmp_path):
    root = tmp_path / "cg"
    write_tree(
        root,
        {
            "system.slice/livereduce.service/memory.max": "max\n",
            "system.slice/memory.max": f"{3 * 2**30}\n",
            "memory.max": f"{8 * 2**30}\n",
        },
    )
    (tmp_path / "self").write_text("0::/system.slice/livereduce.service\n")
    assert cgroup_memory_limit(proc_cgroup=tmp_path / "self", root=root) == 3 * 2**30
    (root / "system.slice/livereduce.service/memory.max").write_text(f"{2**30}\n")
    assert cgroup_memory_limit(proc_cgroup=tmp_path / "self", root=root) == 2**30


def test_cgroup_v1_and_hybrid(tmp_path):
    root = tmp_path / "cg"
    write_tree(
        root,
        {
            "memory/lr/memory.limit_in_bytes": f"{2**30}\n",
            "memory/memory.limit_in_bytes": "9223372036854771712\n",  # v1's "no limit"
        },
    )
    (tmp_path / "self").write_text("12:cpu,cpuacct:/lr\n4:memory:/lr\n0::/\n")
    assert cgroup_memory_limit(proc_cgroup=tmp_path / "self", root=root) == 2**30
    (root / "memory/lr/memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup_memory_limit(proc_cgroup=tmp_path / "self", root=root) is None


def test_no_cgroup_information(tmp_path):
    assert cgroup_memory_limit(proc_cgroup=tmp_path / "absent", root=tmp_path) is None
    (tmp_path / "self").write_text("0::/a/b\n")
    assert cgroup_memory_limit(proc_cgroup=tmp_path / "self", root=tmp_path / "none") is None


def test_limit_is_a_percentage_of_the_smaller_base():
    by_cgroup = memory_limit(50, physical_bytes=16 * 2**30, cgroup_bytes=2 * 2**30)
    assert (by_cgroup.limit_bytes, by_cgroup.source) == (2**30, "cgroup memory limit")
    by_ram = memory_limit(25, physical_bytes=4 * 2**30, cgroup_bytes=64 * 2**30)
    assert (by_ram.limit_bytes, by_ram.source) == (2**30, "physical memory")


def test_limit_here_is_no_more_than_physical_memory():
    limit = memory_limit(100)
    assert 0 < limit.limit_bytes <= psutil.virtual_memory().total


def test_resident_bytes_counts_children(holder):
    parent = holder(80, parent=True)
    assert resident_bytes(parent.pid) > 80 * MIB


def test_guard_reports_a_process_over_its_limit(holder):
    process = holder(120)
    guard = MemoryGuard(10, 0.5, physical_bytes=1000 * MIB, cgroup_bytes=None)  # limit 100 MiB
    assert guard.due(0.0)
    excess = guard.check(process.pid, now_s=0.0)
    assert excess is not None
    assert excess.pid == process.pid
    assert excess.rss_bytes > 120 * MIB
    assert excess.limit.limit_bytes == 100 * MIB
    assert f"worker pid {process.pid} uses" in excess.describe()
    assert "above the limit of 100.0 MiB (10% of 1000.0 MiB physical memory)" in excess.describe()
    assert not guard.due(0.4)
    assert guard.due(0.5)
    roomy = MemoryGuard(50, 0.5, physical_bytes=1000 * MIB, cgroup_bytes=None)
    assert roomy.check(process.pid, now_s=0.0) is None
    assert roomy.last_rss > 120 * MIB


def test_guard_survives_errors_and_keeps_checking(holder, caplog):
    guard = MemoryGuard(10, 1.0, physical_bytes=1000 * MIB, cgroup_bytes=None)
    assert guard.check(-5, now_s=0.0) is None  # psutil refuses the pid: logged, not raised
    assert "memory_check_failed: worker pid -5" in caplog.text
    assert guard.next_check_s == 1.0
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert guard.check(int(gone.stdout), now_s=1.0) is None  # a worker that just ended
    assert guard.check(holder(120).pid, now_s=2.0) is not None


def test_zero_percent_disables_the_guard(holder):
    guard = MemoryGuard(0, 1.0)
    assert not guard.enabled
    assert not guard.due(100.0)
    assert guard.check(holder(50).pid, now_s=0.0) is None
    assert guard.limit is None


def test_guard_counts_the_children_and_skips_one_that_ended(holder):
    parent = holder(80, parent=True)
    guard = MemoryGuard(20, 0.1, physical_bytes=1000 * MIB, cgroup_bytes=None)  # 200 MiB
    assert guard.check(parent.pid, now_s=0.0) is None
    assert guard.last_rss > 80 * MIB
    (child,) = psutil.Process(parent.pid).children()
    child.kill()
    # Its parent does not reap it: it stays a zombie, with no memory and no memory_info.
    deadline = time.monotonic() + 10
    while child.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert guard.check(parent.pid, now_s=0.1) is None  # listed 0.1 s ago, ended since
    assert guard.last_rss < 80 * MIB


def test_a_new_memory_max_takes_effect_within_a_second(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    root = tmp_path / "cg"
    write_tree(root, {"livereduce.service/memory.max": f"{10 * 2**30}\n"})
    (tmp_path / "self").write_text("0::/livereduce.service\n")
    guard = MemoryGuard(
        50,
        0.1,
        physical_bytes=64 * 2**30,
        proc_cgroup=tmp_path / "self",
        cgroup_root=root,
    )
    assert guard.check(os.getpid(), now_s=0.0) is None
    assert guard.limit.limit_bytes == 5 * 2**30
    (root / "livereduce.service/memory.max").write_text(f"{20 * 2**30}\n")
    guard.check(os.getpid(), now_s=0.5)
    assert guard.limit.limit_bytes == 5 * 2**30  # read again once a second, not every 0.1 s
    guard.check(os.getpid(), now_s=1.0)
    assert guard.limit.limit_bytes == 10 * 2**30
    assert "memory_limit_changed: now 10240.0 MiB (50% of 20480.0 MiB cgroup memory limit)" in (
        caplog.text
    )
