"""The supervisor with the real worker, real files, real signals and real processes.

Each test starts ``scripts/livereduce.py CONFIG`` with the ``fake`` listener, a processing
script that appends ``<worker pid> <version>`` to a marker file on every chunk (so the test sees
which worker ran which script version), a status file, a log file and an sd_notify socket.
Readiness and progress are read from the status file and the notify socket, never from sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import psutil
import pytest
import scipp as sc

from livereduce.adara.replay import ReplayServer
from livereduce.config import config_from_mapping
from livereduce.protocol import Resume
from livereduce.supervisor.backoff import Backoff
from livereduce.supervisor.events import ReportsClosed
from livereduce.supervisor.memory import memory_limit
from livereduce.supervisor.watch import DEBOUNCE_S
from livereduce.supervisor.worker_process import spawn

pytestmark = pytest.mark.slow  # real daemons, brokers or servers: seconds each

REPO = Path(__file__).resolve().parents[1]
UPDATE_EVERY_S = 0.2
SO_TIMESTAMP = 29
"""Linux's SO_TIMESTAMP (asm-generic/socket.h); the socket module does not export it."""
STOP_TIMEOUT_S = 2.0

PROC = """\
import os
with open({marker!r}, "a") as marker:
    marker.write(f"{{os.getpid()}} {version}\\n")
{extra}
output = input
"""


def proc_script(marker: Path, version: str, extra: str = "") -> str:
    """A processing script that records which worker ran which version."""
    return PROC.format(marker=str(marker), version=version, extra=extra)


def _kernel_time(ancillary: list[tuple[int, int, bytes]]) -> float:
    """Wall time the kernel queued a datagram (SO_TIMESTAMP, a struct timeval): independent of
    when the test got round to reading it."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMP:
            seconds, microseconds = struct.unpack("qq", data[:16])
            return seconds + microseconds / 1e6
    return time.time()


class Daemon:
    """One livereduce process under test, with everything it writes kept in ``tmp_path``."""

    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.dir = tmp_path
        self.scripts = tmp_path / "scripts"
        self.scripts.mkdir()
        self.proc = self.scripts / "reduce_HYS_live_proc.py"
        self.post = self.scripts / "reduce_HYS_live_post_proc.py"
        self.marker = tmp_path / "marker.txt"
        self.status_file = tmp_path / "status.json"
        self.log_file = tmp_path / "livereduce.log"
        self.conf = tmp_path / "livereduce.conf"
        self.raw = {
            "instrument": "HYSPEC",
            "listener": "fake",
            "listener_options": {"event_rate": 6000, "pixel_count": 64},
            "script_dir": str(self.scripts),
            "update_every": UPDATE_EVERY_S,
            "output_dir": str(tmp_path / "out"),
            "status_file": str(self.status_file),
            "log_file": str(self.log_file),
            "poll_interval_sec": 30,
            "heartbeat_timeout_sec": 10,
            "stop_timeout": STOP_TIMEOUT_S,
            "system_mem_limit_perc": 0,
            **config,
        }
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(tmp_path / "notify.sock"))
        self.notify.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        self.notify.setblocking(False)
        self.notifications: list[str] = []
        self.received_at: list[float] = []  # wall time each notification was sent
        self.process: subprocess.Popen | None = None
        self.stderr = tmp_path / "stderr.txt"

    def start(self, *, env: dict[str, str] | None = None, version: str = "v1") -> Daemon:
        if not self.proc.exists():
            self.proc.write_text(proc_script(self.marker, version))
        self.conf.write_text(json.dumps(self.raw, indent=1))
        environment = {**os.environ, "NOTIFY_SOCKET": str(self.dir / "notify.sock"), **(env or {})}
        with self.stderr.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "scripts" / "livereduce.py"), str(self.conf)],
                cwd=self.dir,
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        return self

    # -- observing --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def log(self) -> str:
        try:
            return self.log_file.read_text()
        except OSError:
            return ""

    def messages(self) -> list[str]:
        while True:
            try:
                data, ancillary, _, _ = self.notify.recvmsg(4096, 64)
            except BlockingIOError:
                return self.notifications
            self.notifications.append(data.decode())
            self.received_at.append(_kernel_time(ancillary))

    def seen(self) -> list[tuple[int, str]]:
        """(worker pid, version) for every chunk a processing script ran on."""
        try:
            lines = self.marker.read_text().splitlines()
        except OSError:
            return []
        return [(int(pid), version) for pid, version in (line.split() for line in lines)]

    def wait_for(self, check: Callable[[dict[str, Any]], Any], what: str, timeout_s: float = 40.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.messages()  # keep the notify queue drained, as systemd does
            result = check(self.status())
            if result:
                return result
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"timed out waiting for {what}; status: {self.status()}\n"
            f"log tail:\n{self.log()[-3000:]}\nstderr:\n{self.stderr.read_text()[-2000:]}"
        )

    def running(self, *, after_pid: int | None = None, version: str | None = None) -> int:
        """Wait until a worker (other than ``after_pid``) has processed a chunk (with the
        processing script ``version``); returns its pid."""

        def check(status: dict[str, Any]) -> int | None:
            pid = status.get("worker_pid")
            if pid is None or pid == after_pid or status.get("chunks", 0) < 1:
                return None
            if version is not None and (pid, version) not in self.seen():
                return None
            return pid

        return self.wait_for(check, f"a worker other than {after_pid} running {version}")

    def restarts(self) -> int:
        return self.status().get("restarts", 0)

    def send(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def exit_status(self, timeout_s: float) -> int:
        return self.process.wait(timeout=timeout_s)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with_children = [self.process.pid]
            with contextlib.suppress(psutil.Error):
                with_children += [c.pid for c in psutil.Process(self.process.pid).children(True)]
            for pid in with_children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.notify.close()


@pytest.fixture
def daemon(tmp_path):
    made: list[Daemon] = []

    def make(**config: Any) -> Daemon:
        made.append(Daemon(tmp_path, **config))
        return made[-1]

    yield make
    for instance in made:
        instance.close()


def replace_file(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def restart_reasons(status: dict[str, Any]) -> list[str]:
    return [entry["reason"] for entry in status.get("restart_history", [])]


# -- script changes --------------------------------------------------------------------------


def test_each_kind_of_script_save_restarts_once_with_the_scripts_that_exist(daemon):
    lr = daemon().start()
    first = lr.running(version="v1")
    assert any(m.startswith("READY=1") for m in lr.messages())

    lr.proc.write_text(proc_script(lr.marker, "v2"))  # saved in place
    second = lr.running(after_pid=first, version="v2")
    assert lr.restarts() == 1

    replace_file(lr.proc, proc_script(lr.marker, "v3"))  # rename over (editor, rsync)
    third = lr.running(after_pid=second, version="v3")
    assert lr.restarts() == 2

    lr.post.write_text(
        f"with open({str(lr.marker)!r}, 'a') as m:\n    m.write('0 post\\n')\noutput = input\n"
    )
    fourth = lr.running(after_pid=third)
    lr.wait_for(
        lambda _: lr.marker.read_text().count("0 post") >= 1, "the new post-processing script"
    )
    assert lr.restarts() == 3

    lr.post.unlink()  # deleted: the next worker runs without it
    fifth = lr.running(after_pid=fourth, version="v3")
    assert lr.restarts() == 4

    kept = lr.proc.read_text()
    lr.proc.unlink()  # no script left (an unmounted network filesystem): the worker stays
    lr.wait_for(lambda _: "scripts_missing: " in lr.log(), "scripts_missing")
    assert lr.restarts() == 4
    assert lr.status()["worker_pid"] == fifth
    lr.proc.write_text(kept)  # back with the same content: restarted once more, as a change
    fifth = lr.running(after_pid=fifth, version="v3")
    assert lr.restarts() == 5
    posts = lr.marker.read_text().count("0 post")

    unchanged = lr.log().count("content_unchanged: reduce_HYS_live_proc.py")
    lr.proc.touch()  # neither a touch nor identical bytes restart anything
    replace_file(lr.proc, lr.proc.read_text())
    lr.wait_for(
        lambda _: lr.log().count("content_unchanged: reduce_HYS_live_proc.py") > unchanged,
        "the watcher's verdict on the touch and the identical rewrite",
    )
    assert lr.restarts() == 5
    assert lr.status()["worker_pid"] == fifth
    assert lr.marker.read_text().count("0 post") == posts

    status = lr.status()
    assert restart_reasons(status) == ["scripts_changed"] * 5
    assert status["last_reload_latency_s"] > 0
    log = lr.log()
    assert log.count("scripts_picked_up: ") == 5
    assert "s from the save to the first chunk of worker pid" in log
    assert "content_unchanged: reduce_HYS_live_proc.py" in log
    # Each restart started from the beginning: no worker ran an older version after a newer one.
    versions = [version for pid, version in lr.seen() if pid in (second, third, fifth)]
    assert versions == sorted(versions)


def test_without_inotify_the_periodic_check_picks_up_an_edit(daemon):
    poll_s = 1.0
    lr = daemon(poll_interval_sec=poll_s).start(env={"LIVEREDUCE_INOTIFY": "0"})
    first = lr.running(version="v1")
    assert "by a content check every 1 s" in lr.log()
    saved = time.time()
    lr.proc.write_text(proc_script(lr.marker, "v2"))
    lr.running(after_pid=first, version="v2")
    status = lr.status()
    assert status["restarts"] == 1
    # Seen within one poll interval plus the debounce that proves the content settled; the
    # new worker's start-up and first chunk come on top (logged as last_reload_latency_s).
    detected = status["restart_history"][0]["time"] - saved
    assert detected <= poll_s + 2 * DEBOUNCE_S + 0.5
    assert detected < status["last_reload_latency_s"] <= time.time() - saved + 0.05  # coarse mtime
    assert "seen by poll" in lr.log()


def test_vim_double_save_and_a_syntax_error(daemon):
    lr = daemon().start()
    pid = lr.running(version="v1")
    for version in ("v2", "v3"):  # vim, backupcopy=no: rename away, write anew, drop backup
        backup = lr.proc.with_name(lr.proc.name + "~")
        os.rename(lr.proc, backup)
        lr.proc.write_text(proc_script(lr.marker, version))
        backup.unlink()
        pid = lr.running(after_pid=pid, version=version)
    assert restart_reasons(lr.status()) == ["scripts_changed"] * 2

    broken = proc_script(lr.marker, "v4").replace("output = input", "output = (input")
    lr.proc.write_text(broken)
    lr.wait_for(lambda _: "script_syntax_error" in lr.log(), "the syntax error in the log")
    line = broken.splitlines().index("output = (input") + 1
    assert f"script_syntax_error: {lr.proc}:{line}: '(' was never closed" in lr.log()
    problem = lr.wait_for(lambda s: s.get("scripts_problem"), "the problem in the status")
    assert problem.startswith("saved script not loaded, the worker runs the previous version: ")
    assert f"{lr.proc}:{line}: '(' was never closed" in problem
    lr.wait_for(lambda _: "scripts_not_reloaded: worker pid" in lr.log(), "the worker kept")
    assert lr.restarts() == 2  # the broken save restarted nothing
    assert lr.status()["worker_pid"] == pid

    lr.proc.write_text(proc_script(lr.marker, "v5"))  # still watching: the fix is picked up
    lr.running(after_pid=pid, version="v5")
    assert lr.status()["scripts_problem"] == ""


def test_a_script_written_in_pieces_restarts_once_after_the_last_write(daemon):
    lr = daemon().start()
    first = lr.running(version="v1")
    full = proc_script(lr.marker, "v2", extra="import math")
    cut = full.index("output = input")
    with lr.proc.open("w") as handle:  # pauses longer than the debounce, the file kept open
        for piece in (full[:cut], full[cut:]):
            handle.write(piece)
            handle.flush()
            last_write = time.time()
            time.sleep(1.5 * DEBOUNCE_S)
    second = lr.running(after_pid=first, version="v2")
    history = lr.status()["restart_history"]
    (restart,) = [entry for entry in history if entry["reason"] == "scripts_changed"]
    assert restart["time"] >= last_write
    assert lr.status()["errors"] == 0
    # The first piece alone records "v2" but assigns no output: had any worker loaded it, it
    # would have recorded v2 and lost that chunk.
    half_loaded = [pid for pid, version in lr.seen() if version == "v2" and pid != second]
    assert half_loaded == []


# -- configuration ---------------------------------------------------------------------------


def test_config_change_exits_0_and_identical_rewrite_does_nothing(daemon):
    lr = daemon().start()
    pid = lr.running()
    text = lr.conf.read_text()
    lr.conf.write_text(text)
    lr.wait_for(lambda _: "content_unchanged: livereduce.conf" in lr.log(), "the identical rewrite")
    assert lr.restarts() == 0

    lr.conf.write_text("{not json")  # a half-edited file: keep running on the old settings
    lr.wait_for(lambda _: "config_change_rejected" in lr.log(), "the rejected config change")
    assert lr.process.poll() is None
    lr.conf.write_text(text)  # the typo fixed: the configuration in use again, nothing to do
    lr.wait_for(lambda _: "config_restored" in lr.log(), "the restored config")
    assert lr.restarts() == 0
    assert lr.status()["worker_pid"] == pid

    replace_file(lr.conf, json.dumps({**lr.raw, "update_every": 0.3}))
    assert lr.exit_status(timeout_s=20) == 0
    log = lr.log()
    assert "config_changed: configuration file" in log
    assert "exiting for systemd to start it anew" in log
    assert not alive(pid)


# -- memory ----------------------------------------------------------------------------------


def test_a_script_allocating_1_gb_per_s_peaks_below_1_3_times_the_limit(daemon, tmp_path):
    """100 MB every 0.1 s while a marker file exists (the first worker removes it, so the next
    one processes chunks as usual): the kernel's figure for the killed worker's peak RSS
    (wait4's ru_maxrss, in the log) stays within 1.3x the limit."""
    limit_bytes = 400 * 2**20
    percent = 100 * limit_bytes / memory_limit(100).base_bytes
    hog = tmp_path / "hog"
    hog.touch()
    grow = (
        "import time, pathlib\n"
        f"if pathlib.Path({str(hog)!r}).exists():\n"
        f"    pathlib.Path({str(hog)!r}).unlink()\n"
        "    held = []\n"
        "    while True:\n"
        "        held.append(bytearray(100 * 10**6))\n"
        "        time.sleep(0.1)\n"
    )
    lr = daemon(system_mem_limit_perc=percent)  # mem_check_interval_sec at its default
    lr.proc.write_text(proc_script(lr.marker, "v1", extra=grow))
    lr.start()
    status = lr.wait_for(lambda s: s.get("restarts", 0) >= 1 and s, "the memory kill")
    assert restart_reasons(status) == ["memory_exceeded"]
    first = status["restart_history"][0]["detail"].split()[2]
    lr.wait_for(lambda _: f"worker_ended: pid {first} ended with" in lr.log(), "the reaped worker")
    line = next(x for x in lr.log().splitlines() if f"worker_ended: pid {first} ended" in x)
    assert "signal SIGKILL" in line
    peak_mib = float(re.search(r"peak RSS ([\d.]+) MiB", line).group(1))
    assert peak_mib <= 1.3 * limit_bytes / 2**20, line
    assert f"memory_exceeded: worker pid {first} uses" in lr.log()
    second = lr.running(after_pid=int(first))  # the service processes chunks again
    lr.wait_for(lambda s: s.get("worker_pid") == second and s["chunks"] >= 3, "chunks again")
    assert lr.status()["errors"] == 1
    assert lr.status()["last_error"].startswith(f"worker pid {first} uses")


# -- hangs, deaths and signals ----------------------------------------------------------------


def test_hung_script_is_replaced_and_sigterm_still_ends_in_time(daemon):
    # The worker announces each script (in_script), so a hang is the script past its limit.
    # A long heartbeat timeout: a worker slow to boot on a busy machine is no hang here.
    lr = daemon(heartbeat_timeout_sec=10.0, script_timeout_sec=0.5)
    lr.proc.write_text(proc_script(lr.marker, "hang", extra="import time\ntime.sleep(3600)"))
    lr.start(env={"WATCHDOG_USEC": "600000"})  # WATCHDOG=1 every 0.3 s while progressing
    first = lr.wait_for(lambda _: lr.seen() and lr.seen()[0][0], "the first hang")
    hung_at = time.time()
    status = lr.wait_for(lambda s: s.get("restarts", 0) >= 1 and s, "a script_timeout restart")
    assert restart_reasons(status)[0] == "script_timeout"
    # systemd's keep-alive stops once the script is past its limit (issue 5)
    pings = [t for t, m in zip(lr.received_at, lr.notifications, strict=True) if m == "WATCHDOG=1"]
    assert any(t < hung_at for t in pings)
    restart_at = status["restart_history"][0]["time"]
    assert not [t for t in pings if hung_at + 0.5 + 0.6 < t < restart_at - 0.1]
    lr.wait_for(lambda _: not alive(first), "the hung worker gone")
    second = lr.wait_for(
        lambda _: any(pid != first for pid, _ in lr.seen()) and lr.seen()[-1][0],
        "the replacement worker hanging",
    )
    assert "script_timeout: reduce_HYS_live_proc.py ran for" in lr.log()
    # the stuck worker was asked with SIGABRT, and its stack shows the line it hung in
    assert f"worker_stopping: pid {first} (SIGABRT, SIGKILL after" in lr.log()
    lr.wait_for(lambda _: f"worker_stack: pid {first}" in lr.log(), "the stack in the log")
    dump = lr.log().split(f"worker_stack: pid {first}, where it was:", 1)[1]
    assert "Fatal Python error: Aborted" in dump
    assert f'File "{lr.proc}", line' in dump
    asked = time.monotonic()
    lr.send(signal.SIGTERM)
    assert lr.exit_status(timeout_s=STOP_TIMEOUT_S + 5) == 0
    assert time.monotonic() - asked < STOP_TIMEOUT_S + 5
    assert not alive(second)
    # The worker abandons the script in its sleep and ends by itself (issue 15.3): no SIGKILL.
    assert "worker_killed: pid" not in lr.log()
    assert f"worker_ended: pid {second} ended with exit status 0 (STOPPED)" in lr.log()


def test_a_slow_post_processing_within_its_limit_is_waited_for(daemon, tmp_path):
    """4 s of post-processing with heartbeat_timeout_sec 2: the worker reports the script it is
    in, so that is progress (its limit is the default 600 s), not a hang."""
    slow = tmp_path / "slow-done"
    lr = daemon(heartbeat_timeout_sec=2.0)
    lr.post.write_text(
        "import pathlib, time\n"
        f"done = pathlib.Path({str(slow)!r})\n"
        "if not done.exists():\n"
        "    time.sleep(4)\n"
        "    done.touch()\n"
        "output = input\n"
    )
    lr.start()
    pid = lr.wait_for(lambda _: slow.exists() and lr.seen() and lr.seen()[0][0], "the slow one")
    chunks = len(lr.seen())
    lr.wait_for(lambda _: len(lr.seen()) >= chunks + 3, "chunks after it")
    status = lr.status()
    assert status["restarts"] == 0
    assert status["worker_pid"] == pid
    assert "heartbeat_timeout: " not in lr.log()
    assert "script_timeout: " not in lr.log()


def test_programs_a_script_started_go_with_its_worker(daemon, tmp_path):
    children = tmp_path / "children.txt"
    start_child = (
        "import subprocess\n"
        "if 'child' not in workspaces:\n"
        "    workspaces['child'] = subprocess.Popen(['sleep', '300'])\n"
        f"    open({str(children)!r}, 'a').write(f'{{workspaces[\"child\"].pid}}\\n')\n"
    )
    lr = daemon()
    lr.proc.write_text(proc_script(lr.marker, "v1", extra=start_child))
    lr.start()
    first = lr.running(version="v1")
    (child,) = map(int, children.read_text().split())
    assert alive(child)
    lr.send(signal.SIGHUP)
    lr.running(after_pid=first, version="v1")
    lr.wait_for(lambda _: not alive(child), "the first worker's child gone")
    lr.send(signal.SIGTERM)
    assert lr.exit_status(timeout_s=STOP_TIMEOUT_S + 5) == 0
    assert [pid for pid in map(int, children.read_text().split()) if alive(pid)] == []


def test_no_worker_is_started_while_no_script_exists(daemon):
    lr = daemon()
    lr.start()
    first = lr.running(version="v1")
    text = lr.proc.read_text()
    lr.proc.unlink()  # as an unmounted network filesystem looks: the running worker stays
    lr.wait_for(lambda _: "scripts_missing" in lr.log(), "the missing scripts in the log")
    assert alive(first)
    os.kill(first, signal.SIGKILL)
    status = lr.wait_for(
        lambda s: s.get("state") == "held" and "until one appears" in s["scripts_problem"] and s,
        "the supervisor holding without scripts",
    )
    assert status["worker_pid"] is None
    assert "worker_held: no processing script in" in lr.log()
    lr.proc.write_text(text)
    lr.running(after_pid=first, version="v1")
    assert lr.status()["scripts_problem"] == ""


def test_lifecycle_signals_rotation_and_notify(daemon):
    lr = daemon().start(env={"WATCHDOG_USEC": "1000000"})
    first = lr.running()
    assert any(m.startswith("READY=1") for m in lr.messages())
    lr.wait_for(lambda _: lr.messages().count("WATCHDOG=1") >= 2, "WATCHDOG=1 keep-alives")
    assert "NOTIFY_SOCKET" not in psutil.Process(first).environ()  # only the main PID notifies
    lr.wait_for(
        lambda _: any("STATUS=running: run 1, " in m for m in lr.messages()), "STATUS= running"
    )

    os.kill(first, signal.SIGKILL)  # the worker dies: restarted
    second = lr.running(after_pid=first)
    status = lr.status()
    assert restart_reasons(status) == ["worker_crashed"]
    assert "SIGKILL" in status["restart_history"][0]["detail"]

    rotated = lr.log_file.with_name("livereduce.log.1")
    os.rename(lr.log_file, rotated)  # as logrotate does (no copytruncate)
    lr.send(signal.SIGHUP)
    third = lr.running(after_pid=second)
    assert lr.process.poll() is None
    assert restart_reasons(lr.status())[-1] == "sighup"
    new_log = lr.log()
    assert "reload_requested: SIGHUP" in new_log
    assert f"worker_started: pid {third}" in new_log
    assert f"worker[{third}]" in new_log  # the worker appends to the new file too
    assert "reload_requested" not in rotated.read_text()
    messages = lr.messages()
    reloading = next(i for i, m in enumerate(messages) if m.startswith("RELOADING=1"))
    assert any(m.startswith("READY=1") for m in messages[reloading:])

    lr.send(signal.SIGTERM)
    assert lr.exit_status(timeout_s=STOP_TIMEOUT_S + 5) == 0
    assert not alive(third)
    assert any(m.startswith("STOPPING=1") for m in lr.messages())
    assert lr.status()["state"] == "stopped"
    assert "supervisor_exit: status 0 (OK)" in lr.log()


def test_sigint_stops_the_worker_and_exits_0(daemon):
    lr = daemon().start()
    pid = lr.running()
    lr.send(signal.SIGINT)
    assert lr.exit_status(timeout_s=STOP_TIMEOUT_S + 5) == 0
    assert not alive(pid)


def test_sigquit_logs_the_state_and_quits(daemon):
    lr = daemon().start()
    pid = lr.running()
    lr.send(signal.SIGQUIT)
    assert lr.exit_status(timeout_s=STOP_TIMEOUT_S + 5) == 131
    assert not alive(pid)
    log = lr.log()
    state = json.loads(log.split("quit_requested: SIGQUIT: state at exit: ", 1)[1].splitlines()[0])
    assert state["worker_pid"] == pid
    assert state["chunks"] >= 1


def test_run_ended_with_stop_stays_up_until_a_script_change(daemon):
    lr = daemon(
        run_transition="Stop",
        listener_options={"event_rate": 6000, "pixel_count": 64, "run_length_sec": 1.0},
    ).start()
    status = lr.wait_for(
        lambda s: s.get("state") == "run_ended" and s.get("worker_pid") is None and s, "run_ended"
    )
    first = lr.seen()[0][0]
    assert f"run_ended: worker pid {first}: run_transition Stop" in lr.log()
    assert status["restarts"] == 0
    assert lr.process.poll() is None
    lr.proc.write_text(proc_script(lr.marker, "v2"))
    lr.wait_for(lambda _: any(p != first and v == "v2" for p, v in lr.seen()), "a new worker")


def test_boot_failure_backs_off_instead_of_looping(daemon):
    # A listener option only the worker can judge: every worker fails to boot.
    lr = daemon(listener_options={"event_rate": 6000, "pixel_count": 0}).start()
    status = lr.wait_for(
        lambda s: s.get("state") == "backoff" and s, "the backoff after the boot failure"
    )
    assert status["restarts"] == 1
    assert restart_reasons(status) == ["boot_failure"]
    assert status["state"] == "backoff"
    assert status["detail"].startswith("backoff after boot_failure: next worker start in ")
    assert "worker_exited: worker pid" in lr.log()
    assert "(BOOT_FAILURE)" in lr.log()
    assert lr.process.poll() is None
    lr.send(signal.SIGTERM)
    assert lr.exit_status(timeout_s=10) == 0


def test_backoff_grows_to_its_cap_and_resets():
    backoff = Backoff(first_s=1.0, base_s=2.0, max_s=10.0)
    assert [backoff.next_delay_s() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    backoff.reset()
    assert backoff.next_delay_s() == 1.0


def test_worker_killed_mid_run_replays_the_run_and_the_result_equals_the_file(daemon, shared_data):
    with ReplayServer([shared_data / "HYS_178921.nxs.h5"], port=0, speed=25.0) as server:
        lr = daemon(
            listener="adara",
            address=f"127.0.0.1:{server.port}",
            listener_options={},
            update_every=0.5,
        ).start()
        first = lr.running()
        lr.wait_for(lambda s: s.get("events", 0) > 2000, "part of the run")
        os.kill(first, signal.SIGKILL)
        second = lr.running(after_pid=first)
        status = lr.wait_for(
            lambda s: s.get("worker_pid") == second and s.get("state") == "waiting_for_run" and s,
            "the end of the run",
            timeout_s=60,
        )
    assert restart_reasons(status) == ["worker_crashed"]
    result = sc.io.load_hdf5(lr.dir / "out" / "result.h5")
    assert result.bins.size().sum().value == 26_938
    with h5py.File(shared_data / "HYS_178921.nxs.h5") as run:
        entry = run["entry"]
        expected = np.concatenate(
            [entry[name]["event_id"][()] for name in entry if name.endswith("_events")]
        )
    got = result.bins.concat().value.coords["event_id"].values
    assert np.array_equal(np.bincount(got), np.bincount(expected))


# -- bounded: stop, exit statuses, one daemon per output ---------------------------------------


def test_sigterm_ends_a_worker_that_ignores_it_and_exits_0(daemon, tmp_path):
    """The grace is 4 s (stop_timeout 20 is only an outer bound), then SIGKILL for the group."""
    inside = tmp_path / "inside"
    stubborn = (
        "import signal, time, pathlib\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"pathlib.Path({str(inside)!r}).touch()\n"
        "time.sleep(3600)\n"
    )
    lr = daemon(stop_timeout=20)
    lr.proc.write_text(proc_script(lr.marker, "v1", extra=stubborn))
    lr.start()
    lr.wait_for(lambda _: inside.exists(), "the script ignoring SIGTERM")
    pid = lr.seen()[0][0]
    lr.send(signal.SIGTERM)
    assert lr.exit_status(timeout_s=30) == 0
    assert not alive(pid)
    log = lr.log()
    assert f"worker_stopping: pid {pid} (SIGTERM, SIGKILL after 4 s)" in log
    assert f"worker_killed: pid {pid} did not stop 4." in log
    assert "supervisor_exit: status 0 (OK)" in log


def test_a_script_exit_status_3_after_progress_is_a_crash_not_a_boot_failure(daemon, tmp_path):
    once = tmp_path / "once"
    exit_3 = (
        "import os, pathlib\n"
        f"if not pathlib.Path({str(once)!r}).exists():\n"
        f"    pathlib.Path({str(once)!r}).touch()\n"
        "    os._exit(3)\n"
    )
    lr = daemon()
    lr.proc.write_text(proc_script(lr.marker, "v1", extra=exit_3))
    lr.start()
    first = lr.wait_for(lambda _: once.exists() and lr.seen() and lr.seen()[0][0], "the exit")
    lr.running(after_pid=first)
    status = lr.status()
    assert restart_reasons(status) == ["worker_crashed"]
    assert "exit status 3 (BOOT_FAILURE)" in status["restart_history"][0]["detail"]
    assert "boot_failure" not in lr.log()


def test_a_second_daemon_on_the_same_output_exits_2_naming_the_first(daemon, tmp_path):
    lr = daemon().start()
    lr.running()
    second = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "livereduce.py"), str(lr.conf)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 2
    assert f"another livereduce (pid {lr.process.pid}) already writes to {tmp_path / 'out'}" in (
        second.stderr
    )
    assert lr.process.poll() is None


def test_ready_comes_when_the_worker_is_connected_not_after_the_first_chunk(daemon):
    lr = daemon(update_every=30).start()  # the first chunk would come after 30 s
    lr.wait_for(lambda _: any(m.startswith("READY=1") for m in lr.messages()), "READY=1")
    ready = next(m for m in lr.messages() if m.startswith("READY=1"))
    assert ready.split("STATUS=", 1)[1].startswith(("waiting_for_run: ", "running: ", "no_data: "))
    assert lr.status().get("chunks", 0) == 0
    lr.send(signal.SIGTERM)
    assert lr.exit_status(timeout_s=30) == 0


def test_spawn_hands_over_config_resume_and_stack_file_and_poll_reaps_with_the_peak(
    tmp_path, monkeypatch
):
    """worker_process with a stand-in program: what the worker gets on stdin and in its
    environment, and what the supervisor gets back when it ends."""
    seen = tmp_path / "seen.json"
    stand_in = (
        "import json, os, sys\n"
        "message = json.load(sys.stdin)\n"
        "fd = int(os.environ['LIVEREDUCE_STACK_FD'])\n"
        "os.write(fd, b'Fatal Python error: Aborted\\n')\n"
        "message['notify'] = os.environ.get('NOTIFY_SOCKET')\n"
        "block = bytearray(64 * 2**20)\n"
        f"open({str(seen)!r}, 'w').write(json.dumps(message))\n"
        "os._exit(3)\n"
    )
    (tmp_path / "reduce_FAKE_live_proc.py").write_text("output = input\n")
    config = config_from_mapping(
        {"instrument": "FAKE", "listener": "fake", "script_dir": "."}, tmp_path / "lr.conf"
    )
    events: queue.SimpleQueue = queue.SimpleQueue()
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nowhere"))
    worker = spawn(
        config,
        command=lambda fd: [sys.executable, "-c", stand_in],
        put=events.put,
        clock=time.monotonic,
        resume=Resume(run_number=178921, start_ns=1_700_000_000_000_000_000),
    )
    assert events.get(timeout=30) == ReportsClosed(worker.pid)  # it wrote no report
    deadline = time.monotonic() + 30
    while (ended := worker.poll()) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ended is not None
    assert ended.status == 3
    assert ended.stack == "Fatal Python error: Aborted\n"
    assert ended.peak_rss_bytes > 64 * 2**20
    assert worker.poll() is None  # reaped once
    message = json.loads(seen.read_text())
    assert message["resume"] == {"run_number": 178921, "start_ns": 1_700_000_000_000_000_000}
    assert message["path"] == str(tmp_path / "lr.conf")
    assert message["raw"]["instrument"] == "FAKE"
    assert message["notify"] is None  # only the supervisor talks to systemd
