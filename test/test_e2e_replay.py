"""End to end: the daemon (``python scripts/livereduce.py CONFIG``) fed by livereduce-replay.

Real SNS runs streamed over ADARA into the real supervisor, worker and embedded engine; the
result files are compared with the NeXus files read offline with scippnexus.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipp as sc
import scippnexus as snx

from livereduce.adara.replay import ReplayServer
from test_adara_replay import file_events
from waiting import wait_for

pytestmark = pytest.mark.slow  # real daemons, brokers or servers: seconds each

REPO = Path(__file__).resolve().parents[1]
TOF_RESOLUTION_US = 0.1
"""ADARA carries times of flight in 100 ns units."""
PULSE_RESOLUTION_NS = 1000
"""The file stores pulse times as float64 seconds: compare them to the microsecond."""


def offline_events(path: Path) -> sc.DataArray:
    with snx.File(path) as f:
        entry = f["entry"]
        banks = [entry[k][()] for k in entry if k.startswith("bank") and k[4].isdigit()]
    return sc.concat(banks, "bank").bins.concat("bank")


def triples(events: sc.DataArray) -> np.ndarray:
    """(pulse time µs, pixel, tof in 100 ns) of every event, sorted."""
    sizes = events.bins.size().values
    pulses = np.repeat(
        events.coords["event_time_zero"].values.astype(np.int64) // PULSE_RESOLUTION_NS, sizes
    )
    flat = events.bins.constituents
    begin, end = flat["begin"].values, flat["end"].values
    index = np.concatenate([np.arange(b, e) for b, e in zip(begin, end, strict=True)])
    table = flat["data"]
    tof = np.round(table.coords["event_time_offset"].values[index] / TOF_RESOLUTION_US).astype(
        np.int64
    )
    rows = np.stack([pulses, table.coords["event_id"].values[index].astype(np.int64), tof], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


class Daemon:
    """The daemon as a real process; stopped (SIGTERM, then SIGKILL) in teardown."""

    def __init__(self, folder: Path, settings: dict, proc: str, post: str | None = None) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "reduce_HYS_live_proc.py").write_text(proc)
        if post is not None:
            (folder / "reduce_HYS_live_post_proc.py").write_text(post)
        config = {
            "instrument": "HYSPEC",
            "listener": "adara",
            "engine": "embedded",
            "script_dir": ".",
            "update_every": 0.3,
            "output_dir": "out",
            "status_file": "out/status.json",
            "log_file": "out/livereduce.log",
            "heartbeat_timeout_sec": 30,
            **settings,
        }
        (folder / "livereduce.conf").write_text(json.dumps(config))
        self.out = folder / "out"
        self.stderr = (folder / "stderr.txt").open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "scripts" / "livereduce.py"),
                str(folder / "livereduce.conf"),
            ],
            stdout=self.stderr,
            stderr=self.stderr,
        )

    def status(self) -> dict:
        try:
            return json.loads((self.out / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait_for(self, predicate: Callable[[dict], bool], timeout_s: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status()
            if status and predicate(status):
                return status
            assert self.process.poll() is None, self.log()
            time.sleep(0.1)
        raise AssertionError(f"timed out; status {self.status()}\n{self.log()}")

    def log(self) -> str:
        path = self.out / "livereduce.log"
        return path.read_text() if path.exists() else (self.folder / "stderr.txt").read_text()

    def terminate(self) -> float:
        """SIGTERM; returns the seconds until the daemon exited with status 0."""
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(15) == 0, self.log()
        return time.monotonic() - began

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.stderr.close()


@pytest.fixture
def daemons():
    started: list[Daemon] = []
    servers: list[ReplayServer] = []

    def start(folder: Path, settings: dict, proc: str, post: str | None = None) -> Daemon:
        daemon = Daemon(folder, settings, proc, post)
        started.append(daemon)
        return daemon

    start.servers = servers
    yield start
    for daemon in started:
        daemon.close()
    for server in servers:
        server.stop()


def serve(daemons, files: list[Path], port: int = 0, speed: float = 0) -> ReplayServer:
    server = ReplayServer(files, port=port, speed=speed).start()
    daemons.servers.append(server)
    return server


def finished(events: int) -> Callable[[dict], bool]:
    return lambda s: s.get("events") == events and s.get("state") == "waiting_for_run"


def worker_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize(("name", "count"), [("HYS_178921", 26938), ("REF_L_184977", 100304)])
def test_events_arrive_exactly_and_sigterm_stops(tmp_path, shared_data, daemons, name, count):
    path = shared_data / f"{name}.nxs.h5"
    server = serve(daemons, [path])
    daemon = daemons(
        tmp_path,
        {"address": f"127.0.0.1:{server.port}", "preserve_events": True},
        "output = input\n",
    )
    status = daemon.wait_for(finished(count))
    assert status["run_number"] == int(name.split("_")[-1])
    assert status["chunks"] >= 1
    assert status["errors"] == 0
    # the pseudo-bank events the file holds are counted, not accumulated
    banks = file_events(path, banks="all")["bank"]
    pseudo = {
        "error_events": int(np.count_nonzero(banks == 0xFFFFFFFE)),
        "unmapped_events": int(np.count_nonzero(banks == 0xFFFFFFFF)),
    }
    assert status["input_counts"] == {k: v for k, v in pseudo.items() if v}
    worker = status["worker_pid"]
    result = sc.io.load_hdf5(daemon.out / "result.h5")
    offline = offline_events(path)
    assert result.bins.size().sum().value == count
    pixel_ids = offline.bins.concat().value.coords["event_id"].values
    pixels = np.bincount(pixel_ids)
    result_ids = result.bins.concat().value.coords["event_id"].values
    assert np.array_equal(np.bincount(result_ids, minlength=len(pixels)), pixels)
    assert np.array_equal(triples(result), triples(offline))
    assert daemon.terminate() < 5
    assert worker_gone(worker)


def test_histogram_equals_offline(tmp_path, shared_data, daemons):
    path = shared_data / "HYS_178921.nxs.h5"
    server = serve(daemons, [path])
    proc = (
        "import scipp as sc\n"
        "edges = sc.linspace('event_time_offset', 0.0, 40000.0, 401, unit='us')\n"
        "output = input.bins.concat().hist(event_time_offset=edges)\n"
    )
    daemon = daemons(
        tmp_path, {"address": f"127.0.0.1:{server.port}", "preserve_events": False}, proc
    )
    daemon.wait_for(finished(26938))
    result = sc.io.load_hdf5(daemon.out / "result.h5")
    edges = sc.linspace("event_time_offset", 0.0, 40000.0, 401, unit="us")
    offline = offline_events(path).bins.concat().hist(event_time_offset=edges)
    assert result.sum().value == 26938
    assert np.array_equal(result.values, offline.values)
    daemon.terminate()


RUNS = (178921, 178922, 178923)


def test_back_to_back_runs_rename_and_restart(tmp_path, shared_data, daemons):
    paths = [shared_data / f"HYS_{run}.nxs.h5" for run in RUNS]
    counts = {
        run: offline_events(p).bins.size().sum().value for run, p in zip(RUNS, paths, strict=True)
    }
    seen_file = tmp_path / "restart" / "seen.jsonl"
    post = (
        "import json\n"
        f"with open({str(seen_file)!r}, 'a') as f:\n"
        "    f.write(json.dumps([run.number, int(input.bins.size().sum().value)]) + '\\n')\n"
        "output = input\n"
    )
    rename_server = serve(daemons, paths)
    restart_server = serve(daemons, paths[1:])  # two runs show a transition
    rename = daemons(
        tmp_path / "rename",
        {"address": f"127.0.0.1:{rename_server.port}", "run_transition": "Rename"},
        "output = input\n",
    )
    restart = daemons(
        tmp_path / "restart",
        {"address": f"127.0.0.1:{restart_server.port}", "run_transition": "Restart"},
        "output = input\n",
        post,
    )
    total = sum(counts.values())
    rename.wait_for(finished(total), timeout_s=45)
    restart.wait_for(finished(total - counts[RUNS[0]]), timeout_s=45)
    for run, path in zip(RUNS, paths, strict=True):
        kept = sc.io.load_hdf5(rename.out / f"result_{run}.h5")
        assert np.array_equal(triples(kept), triples(offline_events(path))), run
    seen = [json.loads(line) for line in seen_file.read_text().splitlines()]
    assert {run for run, _ in seen} == set(RUNS[1:])
    for run, events in seen:
        assert events <= counts[run], (run, events)  # never more than the current run holds
    assert [events for run, events in seen if run == RUNS[-1]][-1] == counts[RUNS[-1]]
    rename.terminate()
    restart.terminate()


def test_replay_server_restarted_mid_run(tmp_path, shared_data, daemons):
    path = shared_data / "HYS_178921.nxs.h5"
    server = serve(daemons, [path], speed=60)  # the 232 s run in about 4 s
    port = server.port
    daemon = daemons(
        tmp_path,
        {"address": f"127.0.0.1:{port}", "listener_options": {"reconnect_max_sec": 0.5}},
        "output = input\n",
    )
    daemon.wait_for(lambda s: s.get("chunks", 0) >= 2 and s.get("events", 0) > 0)
    server.stop()
    # the SMS stays down until the daemon has failed to reach it twice
    wait_for(lambda: "reconnection attempt 2 in" in daemon.log(), "two reconnection attempts")
    serve(daemons, [path], port=port, speed=60)
    daemon.wait_for(
        lambda s: s.get("state") == "waiting_for_run" and s.get("run_number") == 178921,
        timeout_s=40,
    )
    result = sc.io.load_hdf5(daemon.out / "result.h5")
    assert np.array_equal(triples(result), triples(offline_events(path)))
    assert daemon.process.poll() is None
    daemon.terminate()


def test_script_error_then_sigterm_during_a_run(tmp_path, shared_data, daemons):
    server = serve(daemons, [shared_data / "HYS_178921.nxs.h5"], speed=20)  # a 12 s run
    proc = (
        "workspaces['n'] = workspaces.get('n', 0) + 1\n"
        "if workspaces['n'] == 2:\n"
        "    raise RuntimeError('bad chunk')\n"
        "output = input\n"
    )
    daemon = daemons(tmp_path, {"address": f"127.0.0.1:{server.port}"}, proc)
    status = daemon.wait_for(lambda s: s.get("chunks", 0) >= 3)
    assert status["errors"] == 1
    assert "reduce_HYS_live_proc.py:3: RuntimeError: bad chunk" in status["last_error"]
    assert status["state"] == "running"
    assert status["run_number"] == 178921
    log = daemon.log()
    assert "chunk_lost" in log
    assert 'reduce_HYS_live_proc.py", line 3' in log
    worker = status["worker_pid"]
    assert daemon.terminate() < 5
    assert worker_gone(worker)


# ------------------------------------------------------------------ restarts near a run's end

BEFORE_END_S = 1.5
"""A worker replaced this long (wall time) before its run ends: its successor starts after the
run ended at the SMS, so only a resume completes it."""
RESUME_SPEED = 120.0
"""178921 (232 s) replays in about 1.9 s."""


def wait_until_near_the_end(server: ReplayServer, run_index: int, before_s: float) -> None:
    """Return once the replay's live position is ``before_s`` wall seconds before the end of
    timeline run ``run_index`` (polled state of the server, no fixed sleep)."""
    timeline = server.timeline
    stream = timeline.stream(run_index)
    target_s = float(stream.offsets_s[-1]) - before_s * timeline.speed
    deadline = time.monotonic() + 60
    while True:
        live = timeline.live()
        if live.n > run_index or (live.n == run_index and stream.offsets_s[live.i] >= target_s):
            return
        assert time.monotonic() < deadline, f"the replay did not reach the end: {live}"
        time.sleep(0.02)


def worker_config(tmp_path: Path, port: int) -> dict:
    (tmp_path / "reduce_HYS_live_proc.py").write_text("output = input\n")
    return {
        "instrument": "HYSPEC",
        "listener": "adara",
        "address": f"127.0.0.1:{port}",
        "engine": "embedded",
        "script_dir": ".",
        "output_dir": "out",
        "log_file": "out/livereduce.log",
        "update_every": 0.3,
        "run_transition": "Rename",
        "preserve_events": True,
    }


def assert_runs_equal_their_files(out: Path, paths: list[Path]) -> None:
    for path in paths:
        run = int(path.name.split("_")[1].split(".")[0])
        kept = sc.io.load_hdf5(out / f"result_{run}.h5")
        assert np.array_equal(triples(kept), triples(offline_events(path))), run


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["replaced", "killed"])
def test_a_worker_ended_near_a_run_end_hands_the_run_to_its_successor(
    tmp_path, shared_data, daemons, how
):
    from test_worker import Worker  # noqa: PLC0415 - the worker as a real process

    paths = [shared_data / f"HYS_{run}.nxs.h5" for run in RUNS[:2]]
    server = serve(daemons, paths, speed=RESUME_SPEED)
    raw = worker_config(tmp_path, server.port)
    first = Worker(tmp_path, raw)
    try:
        first.wait_for(lambda p: p.unfinished_run == RUNS[0] and p.events > 0, timeout_s=30)
        wait_until_near_the_end(server, 0, BEFORE_END_S)
        first.process.send_signal(how)
        first.process.wait(15)
        first.poll_reports()
        resume = first.reports[-1].resume
    finally:
        first.close()
    assert resume is not None
    assert resume.run_number == RUNS[0]
    assert not (tmp_path / "out" / f"result_{RUNS[0]}.h5").exists()
    wait_until_near_the_end(server, 0, 0.0)  # the successor starts once the run ended at the SMS
    message = {"path": str(tmp_path / "livereduce.conf"), "raw": raw, "resume": resume.to_json()}
    second = Worker(tmp_path, json.dumps(message))
    try:
        second.wait_for(lambda p: p.unfinished_run is None and p.chunks > 0, timeout_s=60)
        second.wait_for(lambda p: (tmp_path / "out" / f"result_{RUNS[1]}.h5").exists(), 60)
    finally:
        second.close()
    assert_runs_equal_their_files(tmp_path / "out", paths)


@pytest.mark.parametrize("how", ["script saved", "worker killed"])
def test_a_restart_near_a_run_end_loses_no_run(tmp_path, shared_data, daemons, how):
    paths = [shared_data / f"HYS_{run}.nxs.h5" for run in RUNS[:2]]
    server = serve(daemons, paths, speed=RESUME_SPEED)
    daemon = daemons(
        tmp_path,
        {
            "address": f"127.0.0.1:{server.port}",
            "run_transition": "Rename",
            "preserve_events": True,
        },
        "output = input\n",
    )
    status = daemon.wait_for(lambda s: s.get("run_number") == RUNS[0] and s.get("events", 0) > 0)
    wait_until_near_the_end(server, 0, BEFORE_END_S)
    if how == "script saved":
        (tmp_path / "reduce_HYS_live_proc.py").write_text("output = input  # saved\n")
    else:
        os.kill(status["worker_pid"], signal.SIGKILL)
    daemon.wait_for(
        lambda s: (
            (daemon.out / f"result_{RUNS[1]}.h5").exists()
            and s.get("worker_pid") != status["worker_pid"]
        ),
        timeout_s=60,
    )
    assert_runs_equal_their_files(daemon.out, paths)
    daemon.terminate()


def test_paused_events_are_left_out_end_to_end(tmp_path, shared_data, daemons):
    from test_listener_adara import SMALL, _with_pause_and_scan  # noqa: PLC0415

    path = tmp_path / SMALL
    pause_ns, resume_ns = _with_pause_and_scan(shared_data / SMALL, path)
    offline = offline_events(path)
    pulses = offline.coords["event_time_zero"].values.astype(np.int64)
    keys = np.maximum.accumulate(pulses)
    sizes = offline.bins.size().values
    paused = int(sizes[(keys >= pause_ns) & (keys < resume_ns)].sum())
    total = int(sizes.sum())
    assert 0 < paused < total
    server = serve(daemons, [path])
    seen = tmp_path / "logs.json"
    post = (
        "import json, pathlib\n"
        "logs = [run.logs[name].values.tolist() for name in ('pause', 'scan_index')]\n"
        f"pathlib.Path({str(seen)!r}).write_text(json.dumps(logs))\n"
        "output = input\n"
    )
    daemon = daemons(
        tmp_path / "daemon",
        {"address": f"127.0.0.1:{server.port}", "preserve_events": True},
        "output = input\n",
        post,
    )
    status = daemon.wait_for(finished(total - paused))
    assert status["input_counts"]["paused_events"] == paused
    result = sc.io.load_hdf5(daemon.out / "result.h5")
    assert result.bins.size().sum().value == total - paused
    assert json.loads(seen.read_text()) == [[0, 1, 0], [0, 5, 0]]
    daemon.terminate()
