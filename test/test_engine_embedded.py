"""The embedded engine, one step() at a time: accumulation methods, preserve_events, run
transitions, script failures, the output file, and the loop's stop and heartbeats."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipp as sc
import scippnexus as snx

from livereduce.config import Config, StartFrom, config_from_mapping
from livereduce.protocol import HEARTBEAT_INTERVAL_S, Progress, WorkerExit, WorkerState
from livereduce.worker.engine.embedded import EmbeddedEngine, to_histogram
from livereduce.worker.engine.scripts import READ_ONLY_HINT
from livereduce.worker.listeners.base import (
    Chunk,
    ListenerBase,
    ListenerError,
    NotYet,
    RunInfo,
    make_events,
)
from livereduce.worker.listeners.nexus import NexusListener
from livereduce.worker.outputs.result import OutputWriter
from livereduce.worker.stop import StopToken

HIST = """
import scipp as sc
edges = sc.linspace("event_time_offset", 0.0, 40000.0, 51, unit="us")
output = input.bins.concat().hist(event_time_offset=edges)
"""


def events(run_pulse0: int, pulses: int, per_pulse: int, seed: int) -> sc.DataArray:
    rng = np.random.default_rng(seed)
    n = pulses * per_pulse
    return make_events(
        (run_pulse0 + np.arange(pulses)) * 16_666_667,
        np.full(pulses, per_pulse),
        rng.integers(0, 50, n),
        rng.random(n).astype(np.float32) * 16_000,
    )


class ChunkList(ListenerBase):
    """A listener that gives prepared chunks, then NotYet."""

    name = "chunk list"

    def __init__(self, chunks: list[Chunk | Exception]) -> None:
        self.chunks = list(chunks)
        self.started: StartFrom | None = None
        self.closed = False
        self.waiting_for_run = False

    def start(self, start_from: StartFrom) -> None:
        self.started = start_from

    def extract_data(self) -> Chunk:
        if not self.chunks:
            raise NotYet("nothing more", waiting_for_run=self.waiting_for_run)
        item = self.chunks.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.closed = True


def run_chunks(
    run: int, count: int, *, pulse0: int = 0, ends: bool = True, seed: int = 0
) -> list[Chunk]:
    info = RunInfo(number=run, title=f"run {run}", instrument="TEST")
    return [
        Chunk(
            events=events(pulse0 + 10 * i, 10, 7, seed + i),
            run=info,
            begins_run=i == 0,
            ends_run=ends and i == count - 1,
        )
        for i in range(count)
    ]


def make_config(
    tmp_path: Path, proc: str | None = "output = input\n", post: str | None = None, **raw: Any
) -> Config:
    scripts = tmp_path / "scripts"
    scripts.mkdir(exist_ok=True)
    if proc is not None:
        (scripts / "reduce_TEST_live_proc.py").write_text(proc)
    if post is not None:
        (scripts / "reduce_TEST_live_post_proc.py").write_text(post)
    settings = {
        "instrument": "TEST",
        "listener": "fake",
        "engine": "embedded",
        "script_dir": "scripts",
        "output_dir": "out",
        "update_every": 0.05,
        **raw,
    }
    return config_from_mapping(settings, tmp_path / "livereduce.conf", check_scripts=False)


def drive(config: Config, chunks: list[Chunk | Exception]) -> EmbeddedEngine:
    engine = EmbeddedEngine(config, ChunkList(chunks))
    engine.listener.start(config.start_from)
    for _ in range(len(chunks)):
        engine.step()
    engine.flush()
    return engine


def load(path: Path) -> Any:
    return sc.io.load_hdf5(path)


def test_add_with_events_keeps_every_event_in_order(tmp_path):
    chunks = run_chunks(5, 4, ends=False)
    engine = drive(make_config(tmp_path), chunks)
    expected = sc.concat([c.events for c in chunks], "event_time_zero")
    assert sc.identical(engine.accumulation.value(), expected)
    assert sc.identical(load(tmp_path / "out" / "result.h5"), expected)
    assert engine.progress.chunks == 4
    assert engine.progress.events == 4 * 70
    assert engine.progress.run_number == 5
    assert engine.progress.state is WorkerState.RUNNING


def test_add_growing_buffer_survives_reallocation(tmp_path):
    big = [
        Chunk(events=events(1000 * i, 1000, 40, i), run=RunInfo(number=1), begins_run=i == 0)
        for i in range(5)
    ]  # 200,000 events: more than the first buffer's capacity
    engine = drive(make_config(tmp_path), big)
    assert sc.identical(
        engine.accumulation.value(), sc.concat([c.events for c in big], "event_time_zero")
    )


def test_histogram_proc_add_equals_the_sum(tmp_path):
    chunks = run_chunks(1, 3, ends=False)
    drive(make_config(tmp_path, HIST, preserve_events=False), chunks)
    edges = sc.linspace("event_time_offset", 0.0, 40000.0, 51, unit="us")
    expected = (
        sc.concat([c.events for c in chunks], "event_time_zero")
        .bins.concat()
        .hist(event_time_offset=edges)
    )
    result = load(tmp_path / "out" / "result.h5")
    assert result.dtype == sc.DType.float64  # accumulated in double, as Mantid does
    assert sc.identical(result.data, expected.data.astype("float64"))
    assert result.sum().value == 210


def test_preserve_events_false_turns_events_into_bin_sums(tmp_path):
    chunks = run_chunks(1, 2, ends=False)
    engine = drive(make_config(tmp_path, preserve_events=False), chunks)
    result = engine.accumulation.value()
    assert result.bins is None
    assert result.sizes == {"event_time_zero": 20}
    assert result.values.tolist() == [7.0] * 20


def test_to_histogram_recurses_into_groups():
    binned = events(0, 3, 2, 0)
    group = to_histogram(sc.DataGroup({"a": binned, "b": sc.scalar(1.0)}))
    assert group["a"].values.tolist() == [2.0, 2.0, 2.0]
    assert group["b"].value == 1.0


def test_replace_keeps_only_the_last_chunk(tmp_path):
    chunks = run_chunks(1, 3, ends=False)
    engine = drive(make_config(tmp_path, accum_method="Replace"), chunks)
    assert sc.identical(engine.accumulation.value(), chunks[-1].events)


def test_append_joins_2d_data_along_the_first_dimension(tmp_path):
    proc = (
        "import scipp as sc\n"
        "edges = sc.linspace('event_time_offset', 0.0, 16000.0, 3, unit='us')\n"
        "output = input.hist(event_time_offset=edges).rename_dims(event_time_zero='pulse')\n"
    )
    engine = drive(make_config(tmp_path, proc, accum_method="Append"), run_chunks(1, 3, ends=False))
    assert engine.accumulation.value().sizes == {"pulse": 30, "event_time_offset": 2}
    assert engine.accumulation.value().sum().value == 210


def test_append_of_1d_histograms_adds_a_spectrum_per_chunk(tmp_path):
    engine = drive(make_config(tmp_path, HIST, accum_method="Append"), run_chunks(1, 3, ends=False))
    result = load(tmp_path / "out" / "result.h5")
    assert engine.progress.errors == 0
    assert result.sizes == {"spectrum": 3, "event_time_offset": 50}
    assert result.sum(dim="event_time_offset").values.tolist() == [70.0, 70.0, 70.0]
    assert result.coords["event_time_offset"].dims == ("event_time_offset",)


def test_append_of_a_chunk_of_other_sizes_is_one_line_error(tmp_path, caplog):
    proc = (
        "import scipp as sc\n"
        "workspaces['n'] = workspaces.get('n', 0) + 1\n"
        "bins = 10 * workspaces['n']\n"
        "output = input.bins.concat().hist(event_time_offset=bins)\n"
    )
    engine = drive(make_config(tmp_path, proc, accum_method="Append"), run_chunks(1, 2, ends=False))
    assert engine.progress.errors == 1
    assert "\n" not in engine.progress.last_error
    assert "Append adds 1-D chunks as spectra" in engine.progress.last_error
    assert engine.accumulation.value().sizes == {"spectrum": 1, "event_time_offset": 10}


def test_script_failure_loses_that_chunk_only(tmp_path):
    proc = (
        "workspaces['n'] = workspaces.get('n', 0) + 1\n"
        "if workspaces['n'] == 2:\n"
        "    raise ValueError('bad chunk')\n"
        "output = input\n"
    )
    chunks = run_chunks(1, 3, ends=False)
    engine = drive(make_config(tmp_path, proc), chunks)
    expected = sc.concat([chunks[0].events, chunks[2].events], "event_time_zero")
    assert sc.identical(engine.accumulation.value(), expected)
    assert engine.progress.errors == 1
    assert engine.progress.chunks == 2
    assert "reduce_TEST_live_proc.py:3: ValueError: bad chunk" in engine.progress.last_error


def test_script_failure_is_logged_with_file_and_line(tmp_path, caplog):
    drive(make_config(tmp_path, "output = input\nx = 1 / 0\n"), run_chunks(1, 1, ends=False))
    text = caplog.text
    assert "chunk_lost" in text
    assert "reduce_TEST_live_proc.py:2: ZeroDivisionError" in text
    assert 'reduce_TEST_live_proc.py", line 2' in text


def test_accumulation_mismatch_loses_the_chunk_keeps_the_accumulation(tmp_path):
    proc = (
        "import scipp as sc\n"
        "n = workspaces['n'] = workspaces.get('n', 0) + 1\n"
        "edges = sc.linspace('event_time_offset', 0.0, 2e4, 11 if n != 2 else 21, unit='us')\n"
        "output = input.bins.concat().hist(event_time_offset=edges)\n"
    )
    engine = drive(make_config(tmp_path, proc, preserve_events=False), run_chunks(1, 3, ends=False))
    assert engine.progress.errors == 1
    assert "cannot Add" in engine.progress.last_error
    assert engine.accumulation.value().sum().value == 140


def test_post_processing_runs_on_the_accumulation(tmp_path):
    post = (
        "output = input.bins.size().sum()\nworkspaces.setdefault('seen', []).append(output.value)\n"
    )
    engine = drive(make_config(tmp_path, post=post), run_chunks(1, 3, ends=False))
    assert engine.workspaces["seen"] == [70, 140, 210]
    assert load(tmp_path / "out" / "result.h5").value == 210


def test_post_processing_failure_keeps_the_last_output(tmp_path):
    post = (
        "n = input.bins.size().sum().value\n"
        "if n > 100:\n"
        "    raise RuntimeError('too many')\n"
        "output = input.bins.size().sum()\n"
    )
    engine = drive(make_config(tmp_path, post=post), run_chunks(1, 2, ends=False))
    assert load(tmp_path / "out" / "result.h5").value == 70
    assert engine.progress.errors == 1
    assert engine.progress.chunks == 2


def test_output_write_failure_is_an_error_in_the_status(tmp_path):
    (tmp_path / "blocker").write_text("a file where the output folder should be")
    config = make_config(tmp_path, output_dir="blocker/out")
    engine = drive(config, run_chunks(1, 2, ends=False))
    assert engine.progress.chunks == 2
    assert engine.progress.errors == 2
    assert engine.progress.last_error.startswith(
        f"cannot write {tmp_path / 'blocker' / 'out' / 'result.h5'}: "
    )


def test_old_temporaries_of_the_output_are_removed_young_ones_kept(tmp_path):
    old = time.time() - 3600
    for name in (".result.h5.k3j2.tmp", ".result_7.h5.x9.tmp", ".other.h5.k3j2.tmp"):
        (tmp_path / name).write_bytes(b"x" * 1000)
        os.utime(tmp_path / name, (old, old))
    (tmp_path / ".result.h5.young.tmp").write_bytes(b"x")  # another host writing it now
    OutputWriter(tmp_path, "result")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.h5.k3j2.tmp",
        ".result.h5.young.tmp",
    ]


def test_run_script_globals(tmp_path):
    chunk = Chunk(
        events=events(0, 2, 1, 0),
        run=RunInfo(number=42, title="sample", instrument="TEST"),
        logs={
            "temp": sc.DataArray(
                sc.array(dims=["time"], values=[1.5], unit="K"),
                coords={"time": sc.datetimes(dims=["time"], values=[0], unit="ns")},
            )
        },
        begins_run=True,
    )
    proc = (
        "workspaces['run'] = (run.number, run.title, run.logs['temp'].values.tolist())\n"
        "output = input\n"
    )
    engine = drive(make_config(tmp_path, proc), [chunk])
    assert engine.workspaces["run"] == (42, "sample", [1.5])


def test_log_values_of_a_chunk_without_events_are_kept(tmp_path):
    def temperature(kelvin: float, t_ns: int) -> dict[str, sc.DataArray]:
        return {
            "temp": sc.DataArray(
                sc.array(dims=["time"], values=[kelvin], unit="K"),
                coords={"time": sc.datetimes(dims=["time"], values=[t_ns], unit="ns")},
            )
        }

    first, _, third = run_chunks(42, 3, ends=False)
    beam_off = Chunk(events=events(0, 0, 0, 0), run=first.run, logs=temperature(10.0, 2))
    chunks = [
        dataclasses.replace(first, logs=temperature(300.0, 1)),
        beam_off,
        third,
    ]
    proc = "workspaces['temp'] = run.logs['temp'].values.tolist()\noutput = input\n"
    engine = drive(make_config(tmp_path, proc), chunks)
    assert engine.workspaces["temp"] == [300.0, 10.0]


@pytest.mark.parametrize("role", ["proc", "post"])
def test_a_script_that_edits_run_logs_in_place_fails_and_the_logs_stay(tmp_path, role):
    def charge(t_ns: int) -> dict[str, sc.DataArray]:
        return {
            "proton_charge": sc.DataArray(
                sc.array(dims=["time"], values=[1e10], unit="pC"),
                coords={"time": sc.datetimes(dims=["time"], values=[t_ns], unit="ns")},
            )
        }

    chunks = [dataclasses.replace(c, logs=charge(i)) for i, c in enumerate(run_chunks(1, 3))]
    edit = (  # a pC -> C conversion in place, as a script might write it
        "workspaces.setdefault('sums', []).append(float(run.logs['proton_charge'].sum().value))\n"
        "charge = run.logs['proton_charge']\n"
        "charge *= 1e-12\n"
        "output = input\n"
    )
    scripts = {"proc": edit, "post": None} if role == "proc" else {"post": edit}
    engine = drive(make_config(tmp_path, **scripts), chunks)
    assert engine.workspaces["sums"] == [1e10, 2e10, 3e10]
    assert engine.progress.errors == 3
    assert engine.progress.last_error.endswith(f"({READ_ONLY_HINT})")


def test_rename_keeps_each_finished_run(tmp_path):
    first, second = run_chunks(7, 2), run_chunks(8, 3, pulse0=100, seed=10)
    engine = drive(make_config(tmp_path, run_transition="Rename"), first + second)
    out = tmp_path / "out"
    assert sc.identical(
        load(out / "result_7.h5"), sc.concat([c.events for c in first], "event_time_zero")
    )
    assert sc.identical(
        load(out / "result_8.h5"), sc.concat([c.events for c in second], "event_time_zero")
    )
    assert sc.identical(load(out / "result.h5"), load(out / "result_8.h5"))
    assert engine.progress.chunks == 5


def test_restart_holds_only_the_current_run(tmp_path):
    first, second = run_chunks(7, 2), run_chunks(8, 2, pulse0=100, seed=10)
    engine = drive(make_config(tmp_path), [*first, second[0]])
    assert sc.identical(engine.accumulation.value(), second[0].events)
    assert not (tmp_path / "out" / "result_7.h5").exists()


def test_new_run_without_end_counts_as_the_end(tmp_path):
    first, second = run_chunks(7, 2, ends=False), run_chunks(8, 1, pulse0=100, ends=False)
    drive(make_config(tmp_path, run_transition="Rename"), first + second)
    kept = load(tmp_path / "out" / "result_7.h5")
    assert kept.bins.size().sum().value == 140


def test_stop_ends_the_loop_after_the_run(tmp_path):
    config = make_config(tmp_path, run_transition="Stop")
    listener = ChunkList(run_chunks(3, 2) + run_chunks(4, 1, pulse0=100))
    engine = EmbeddedEngine(config, listener)
    reports: list[Progress] = []
    assert engine.run(StopToken(), reports.append) is WorkerExit.STOPPED
    assert reports[-1].state is WorkerState.RUN_ENDED
    assert reports[-1].run_number == 3
    assert len(listener.chunks) == 1  # the next run was never read
    assert load(tmp_path / "out" / "result.h5").bins.size().sum().value == 140
    assert listener.closed


def test_data_reset_replaces_the_accumulation(tmp_path):
    chunks = run_chunks(1, 3, ends=False)
    reset = Chunk(events=chunks[2].events, run=chunks[2].run, data_reset=True)
    engine = drive(make_config(tmp_path), [chunks[0], chunks[1], reset])
    assert sc.identical(engine.accumulation.value(), chunks[2].events)
    assert engine.progress.events == 70  # the replayed run is not counted twice


@pytest.mark.parametrize(("heard", "state"), [(False, "connecting"), (True, "waiting_for_run")])
def test_before_any_data_the_listener_says_whether_a_run_is_awaited(tmp_path, heard, state):
    listener = ChunkList([])
    listener.waiting_for_run = heard
    engine = EmbeddedEngine(make_config(tmp_path), listener)
    listener.start(StartFrom.START_OF_RUN)
    engine.step()
    assert engine.progress.state == state


def test_a_listener_that_lost_its_server_mid_run_is_reported(tmp_path):
    chunks = run_chunks(1, 1, ends=False)
    reconnecting = "the SMS closed the connection; reconnecting (attempt 2 in 1.0 s)"
    empty = Chunk(events=events(0, 0, 0, 0), run=chunks[0].run)
    lost = dataclasses.replace(empty, connected=False, activity=reconnecting)
    listener = ChunkList([chunks[0], lost])
    engine = EmbeddedEngine(make_config(tmp_path), listener)
    listener.start(StartFrom.START_OF_RUN)
    engine.step()
    engine.step()
    assert engine.progress.state is WorkerState.CONNECTING
    assert engine.progress.detail == reconnecting
    listener.chunks.append(empty)  # connected again, the beam still off
    engine.step()
    assert engine.progress.state is WorkerState.NO_DATA


def test_empty_chunks_are_not_processed(tmp_path):
    empty = Chunk(events=events(0, 0, 0, 0), run=RunInfo(number=1))
    engine = drive(make_config(tmp_path, "raise RuntimeError('must not run')\n"), [empty, empty])
    assert engine.progress.errors == 0
    assert engine.progress.chunks == 0
    assert not (tmp_path / "out" / "result.h5").exists()


def test_output_written_only_when_changed(tmp_path):
    writer = OutputWriter(
        tmp_path, "result", clock=lambda: 0.0
    )  # no time passes: no write budget limit
    data = sc.arange("x", 3.0)
    assert writer.write(data, 1)
    inode = (tmp_path / "result.h5").stat().st_ino
    assert not writer.write(data, 1)
    assert (tmp_path / "result.h5").stat().st_ino == inode
    assert writer.write(data * 2, 2)
    assert (tmp_path / "result.h5").stat().st_ino != inode
    assert not list(tmp_path.glob(".*tmp"))


def test_output_write_share_is_bounded(tmp_path):
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # every clock reading is one second later: each write "takes" 1 s
        return now[0]

    writer = OutputWriter(tmp_path, "result", clock=clock)
    assert writer.write(sc.scalar(1.0), 1)
    assert not writer.write(sc.scalar(2.0), 2)  # too soon: 4 s must pass after a 1 s write
    assert writer.pending
    assert writer.write(sc.scalar(2.0), 2, force=True)
    assert load(tmp_path / "result.h5").value == 2.0


def test_unwritable_output_is_logged_and_the_loop_goes_on(tmp_path, caplog):
    (tmp_path / "out").write_text("a file where the folder should be")
    engine = drive(make_config(tmp_path), run_chunks(1, 2, ends=False))
    assert engine.progress.chunks == 2
    assert "output_write_failed" in caplog.text


def test_nexus_histogram_equals_offline(tmp_path, shared_data):
    path = shared_data / "HYS_178921.nxs.h5"
    config = make_config(tmp_path, HIST, preserve_events=False)
    engine = EmbeddedEngine(config, NexusListener(path, chunks=5))
    engine.listener.start(StartFrom.START_OF_RUN)
    for _ in range(6):
        engine.step()
    engine.flush()
    edges = sc.linspace("event_time_offset", 0.0, 40000.0, 51, unit="us")
    with snx.File(path) as f:
        banks = [f["entry"][k][()] for k in f["entry"] if k.startswith("bank") and k[4].isdigit()]
    offline = (
        sc.concat([b.bins.concat() for b in banks], "bank")
        .bins.concat()
        .hist(event_time_offset=edges)
    )
    result = load(tmp_path / "out" / "result.h5")
    assert result.sum().value == 26938
    assert sc.identical(result.data, offline.data.astype("float64"))
    assert engine.progress.state is WorkerState.WAITING_FOR_RUN
    assert "read completely" in engine.progress.detail


def test_run_reports_heartbeats_while_waiting_and_stops(tmp_path):
    config = make_config(tmp_path)
    listener = ChunkList([])
    engine = EmbeddedEngine(config, listener)
    stop = StopToken()
    reports: list[Progress] = []
    timer = threading.Timer(HEARTBEAT_INTERVAL_S * 1.6, stop.request, args=("test",))
    timer.start()
    try:
        assert engine.run(stop, reports.append) is WorkerExit.STOPPED
    finally:
        timer.cancel()
    assert listener.started is StartFrom.START_OF_RUN
    assert listener.closed
    assert reports[-1].state is WorkerState.CONNECTING
    assert reports[-1].detail == "nothing more"
    assert len(reports) >= 3


def test_listener_error_is_an_engine_failure(tmp_path):
    engine = EmbeddedEngine(
        make_config(tmp_path), ChunkList([ListenerError("socket gone for good")])
    )
    reports: list[Progress] = []
    assert engine.run(StopToken(), reports.append) is WorkerExit.ENGINE_FAILURE
    assert reports[-1].state is WorkerState.ERROR
    assert "socket gone for good" in reports[-1].last_error


@pytest.mark.parametrize("method", ["Add", "Append"])
def test_monitors_reach_post_processing(tmp_path, method):
    chunks = run_chunks(1, 2, ends=False)
    chunks = [
        Chunk(
            events=c.events,
            monitors={"monitor1": events(0, 10, 2, 3)},
            run=c.run,
            begins_run=c.begins_run,
        )
        for c in chunks
    ]
    post = "workspaces['m'] = monitors['monitor1'].bins.size().sum().value\noutput = input\n"
    engine = drive(make_config(tmp_path, post=post, accum_method=method), chunks)
    assert engine.workspaces["m"] == 40


def test_a_monitor_first_seen_mid_run_is_accumulated_whole(tmp_path):
    # beam after NEW_RUN: the first chunk has no monitor events, a second monitor comes later
    seen = [{}, {"monitor2": 4}, {"monitor2": 4}, {"monitor1": 6, "monitor2": 4}, {}]
    chunks = [
        Chunk(
            events=c.events,
            monitors={name: events(0, 2, size, 3 + i) for name, size in seen[i].items()},
            run=c.run,
            begins_run=c.begins_run,
        )
        for i, c in enumerate(run_chunks(1, len(seen), ends=False))
    ]
    post = (
        "workspaces.setdefault('m', []).append("
        "{name: int(m.bins.size().sum().value) for name, m in monitors.items()})\n"
        "output = input\n"
    )
    engine = drive(make_config(tmp_path, post=post), chunks)
    totals = [{}, {"monitor2": 8}, {"monitor2": 16}, {"monitor1": 12, "monitor2": 24}]
    assert engine.workspaces["m"] == [*totals, totals[-1]]


def test_add_merges_event_lists_of_equal_bins(tmp_path):
    proc = (
        "import scipp as sc\n"
        "output = input.bins.concat().group(sc.arange('event_id', 50, unit=None, dtype='int32'))\n"
    )
    chunks = run_chunks(1, 3, ends=False)
    engine = drive(make_config(tmp_path, proc), chunks)
    result = engine.accumulation.value()
    pixels = sc.arange("event_id", 50, unit=None, dtype="int32")
    expected = sc.concat([c.events for c in chunks], "event_time_zero").bins.concat().group(pixels)
    assert result.sizes == {"event_id": 50}
    assert sc.identical(result.bins.size(), expected.bins.size())
    assert sc.identical(
        result.bins.concat().value.coords["event_time_offset"].sum(),
        expected.bins.concat().value.coords["event_time_offset"].sum(),
    )


def test_data_group_items_accumulate_and_plain_values_keep_the_latest(tmp_path):
    proc = (
        "import scipp as sc\n"
        "workspaces['n'] = workspaces.get('n', 0) + 1\n"
        "output = sc.DataGroup({'counts': input.bins.size().sum(), 'chunk': workspaces['n']})\n"
    )
    engine = drive(make_config(tmp_path, proc), run_chunks(1, 3, ends=False))
    result = engine.accumulation.value()
    assert result["counts"].value == 210
    assert result["chunk"] == 3


def test_append_with_events_joins_pulses(tmp_path):
    chunks = run_chunks(1, 2, ends=False)
    engine = drive(make_config(tmp_path, accum_method="Append"), chunks)
    assert sc.identical(
        engine.accumulation.value(), sc.concat([c.events for c in chunks], "event_time_zero")
    )


IN_PLACE_EDITS = {
    "event coord": "input.bins.coords['event_time_offset'] *= 0.0",
    "event weights": "input.bins.data *= 0.0",
    "numpy of an event coord": "input.values[0].coords['event_time_offset'].values[:] = 0",
    "the event table": "input.bins.constituents['data'].coords['event_id'].values[:] = 0",
    "bin indices": "input.bins.constituents['begin'].values[:] = 0",
    "pulse times": "input.coords['event_time_zero'].values[:] = 0",
    "a new coord": "input.coords['x'] = sc.scalar(1.0)",
    "a mask": "input.masks['m'] = sc.zeros(sizes=input.sizes, dtype=bool)",
    "monitor weights": "monitors['monitor1'].bins.data *= 0.0",
}


@pytest.mark.parametrize("edit", IN_PLACE_EDITS.values(), ids=IN_PLACE_EDITS.keys())
def test_post_processing_that_edits_input_in_place_fails_and_leaves_the_accumulation(
    tmp_path, edit
):
    post = (
        "import scipp as sc\n"
        "workspaces.setdefault('m', []).append(monitors['monitor1'].bins.sum().sum().value)\n"
        "if input.sizes['event_time_zero'] > 10:\n"
        f"    {edit}\n"
        "output = input\n"
    )
    chunks = [
        Chunk(events=c.events, monitors={"monitor1": events(0, 2, 2, 3)}, run=c.run)
        for c in run_chunks(1, 3, ends=False)
    ]
    engine = drive(make_config(tmp_path, post=post), chunks)
    expected = sc.concat([c.events for c in chunks], "event_time_zero")
    assert sc.identical(engine.accumulation.value(), expected)
    assert engine.workspaces["m"] == [4.0, 8.0, 12.0]
    assert engine.progress.errors == 2  # chunks 2 and 3: the first output stays the file
    script = tmp_path / "scripts" / "reduce_TEST_live_post_proc.py"
    assert engine.progress.last_error.startswith(f"{script}:4: ")
    assert engine.progress.last_error.endswith(f"({READ_ONLY_HINT})")
    assert sc.identical(load(tmp_path / "out" / "result.h5"), chunks[0].events)


def test_post_processing_may_change_a_copy_of_its_input(tmp_path):
    post = "output = input.copy()\noutput.bins.coords['event_time_offset'] *= 0.0\n"
    chunks = run_chunks(1, 3, ends=False)
    engine = drive(make_config(tmp_path, post=post), chunks)
    assert engine.progress.errors == 0
    assert sc.identical(
        engine.accumulation.value(), sc.concat([c.events for c in chunks], "event_time_zero")
    )
    assert load(tmp_path / "out" / "result.h5").bins.coords["event_time_offset"].max().value == 0


def test_a_histogram_accumulation_is_read_only_for_post_processing(tmp_path):
    edges = "sc.linspace('event_time_offset', 0.0, 1e5, 11, unit='us')"
    proc = f"import scipp as sc\noutput = input.hist(event_time_offset={edges})\n"
    post = "input.values[0] = 1e9\noutput = input\n"
    config = make_config(tmp_path, proc, post=post, preserve_events=False)
    engine = drive(config, run_chunks(1, 3, ends=False))
    assert engine.progress.errors == 3
    assert engine.accumulation.value().sum().value == 210
    assert not (tmp_path / "out" / "result.h5").exists()


@pytest.mark.parametrize("role", ["processing", "post-processing"])
def test_an_output_that_cannot_be_saved_is_refused_at_the_first_chunk(tmp_path, role):
    script = (
        "import scipp as sc\noutput = sc.DataGroup({'counts': sc.scalar(1.0), 'meta': {'a': 1}})\n"
    )
    config = (
        make_config(tmp_path, script)
        if role == "processing"
        else make_config(tmp_path, post=script)
    )
    engine = drive(config, run_chunks(1, 2, ends=False))
    assert engine.progress.errors == 2
    assert engine.progress.last_error.startswith(
        "output['meta']: a dict cannot be saved in the result file"
    )
    assert not (tmp_path / "out" / "result.h5").exists()
