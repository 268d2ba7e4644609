"""Run transitions of the embedded engine that issue 9 asks for: finished runs handed on at
once, partial runs kept apart, a data reset replacing the logs too, the listener's input counts
in the report and the result file, and the unfinished run reported for a successor."""

from __future__ import annotations

import dataclasses
import itertools
import json
from datetime import UTC, datetime

import h5py
import scipp as sc

from livereduce.protocol import HEARTBEAT_INTERVAL_S, Progress, Resume, WorkerExit, WorkerState
from livereduce.worker.engine.embedded import EmbeddedEngine
from livereduce.worker.listeners.base import Chunk, NotYet, RunInfo
from livereduce.worker.stop import StopToken
from test_engine_embedded import ChunkList, drive, events, make_config, run_chunks

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class SteppedStop(StopToken):
    """A stop token whose waits advance a fake clock instead of sleeping; it requests the stop
    once ``done()`` is true or the clock passes ``limit_s``."""

    def __init__(self, done, limit_s: float = 60.0) -> None:
        super().__init__()
        self.now = 0.0
        self.done = done
        self.limit_s = limit_s

    def clock(self) -> float:
        return self.now

    def wait(self, timeout_s: float) -> bool:
        self.now += max(timeout_s, 1e-3)
        if self.done() or self.now > self.limit_s:
            self.request("test done")
        return self.requested


def test_six_runs_sent_in_one_burst_are_all_written_within_two_update_intervals(tmp_path):
    config = make_config(tmp_path, run_transition="Rename", update_every=5.0)
    chunks = [c for run in range(1, 7) for c in run_chunks(run, 1, pulse0=100 * run, seed=run)]
    out = tmp_path / "out"
    stop = SteppedStop((out / "result_6.h5").exists)
    written_at: dict[int, float] = {}

    def report(progress: Progress) -> None:
        for run in range(1, 7):
            if run not in written_at and (out / f"result_{run}.h5").exists():
                written_at[run] = stop.now

    engine = EmbeddedEngine(config, ChunkList(chunks), clock=stop.clock)
    assert engine.run(stop, report) is WorkerExit.STOPPED
    assert sorted(written_at) == [1, 2, 3, 4, 5, 6]
    assert max(written_at.values()) - min(written_at.values()) <= 2 * config.update_every


def test_a_partial_run_is_kept_apart_and_never_over_a_complete_result(tmp_path):
    complete = run_chunks(7, 2)
    info = dataclasses.replace(complete[0].run, partial=True)
    partial = [dataclasses.replace(c, run=info, events=events(500, 3, 2, 9)) for c in complete]
    drive(make_config(tmp_path, run_transition="Rename"), complete + partial)
    out = tmp_path / "out"
    kept = sc.io.load_hdf5(out / "result_7.h5")
    assert kept.bins.size().sum().value == 140  # the complete run, untouched
    assert sc.io.load_hdf5(out / "result_7_partial.h5").bins.size().sum().value == 12


def test_a_data_reset_replaces_the_run_logs_with_the_events(tmp_path):
    def charge(values: list[float], t0: int) -> dict[str, sc.DataArray]:
        times = [t0 + k for k in range(len(values))]
        return {
            "proton_charge": sc.DataArray(
                sc.array(dims=["time"], values=values, unit="pC"),
                coords={"time": sc.datetimes(dims=["time"], values=times, unit="ns")},
            )
        }

    first, second = run_chunks(1, 2, ends=False)
    reset = Chunk(
        events=first.events, run=first.run, data_reset=True, logs=charge([1.0, 2.0, 3.0], 0)
    )
    chunks = [
        dataclasses.replace(first, logs=charge([1.0, 2.0], 0)),
        dataclasses.replace(second, logs=charge([3.0], 2)),
        reset,
    ]
    proc = "workspaces['charge'] = run.logs['proton_charge'].values.tolist()\noutput = input\n"
    engine = drive(make_config(tmp_path, proc), chunks)
    assert engine.workspaces["charge"] == [1.0, 2.0, 3.0]  # not 1, 2, 3, 1, 2, 3


def test_input_counts_reach_the_report_and_the_result_file(tmp_path):
    first, second = run_chunks(5, 2)
    chunks = [
        dataclasses.replace(first, input_counts={"error_events": 3, "malformed_packets": 1}),
        dataclasses.replace(second, input_counts={"error_events": 2, "framing_failures": 1}),
    ]
    engine = drive(make_config(tmp_path, run_transition="Rename"), chunks)
    assert engine.progress.input_counts == {
        "error_events": 5,
        "malformed_packets": 1,
        "framing_failures": 1,
    }
    assert engine.progress.errors == 2  # the stream faults
    assert "bad input from the stream" in engine.progress.last_error
    with h5py.File(tmp_path / "out" / "result_5.h5") as h5:
        counts = json.loads(h5.attrs["livereduce_input_counts"])
    assert counts == {"error_events": 5, "framing_failures": 1, "malformed_packets": 1}
    round_trip = Progress.from_line(engine.progress.to_line())
    assert round_trip.input_counts == engine.progress.input_counts


def test_the_oldest_unfinished_run_is_reported_until_its_end_is_handled(tmp_path):
    info = RunInfo(number=9, start_time=START)
    first = Chunk(events=events(0, 2, 2, 1), run=info, begins_run=True)
    last = Chunk(events=events(10, 2, 2, 2), run=info, ends_run=True)
    resume = Resume(run_number=8, start_ns=info.start_ns - 600 * 10**9)
    config = make_config(tmp_path, run_transition="Rename")
    engine = EmbeddedEngine(config, ChunkList([first, last]), resume=resume)
    assert engine.progress.resume == resume  # reported before anything arrived
    engine.listener.start(config.start_from)
    engine.step()
    # the stream began with run 9: run 8 cannot be completed, it is not handed on again
    assert engine.progress.resume == Resume(run_number=9, start_ns=info.start_ns)
    engine.step()
    assert engine.progress.resume is None
    fresh = EmbeddedEngine(config, ChunkList([first, last]))
    fresh.listener.start(config.start_from)
    fresh.step()
    assert fresh.progress.resume == Resume(run_number=9, start_ns=info.start_ns)
    fresh.step()
    assert fresh.progress.resume is None
    assert info.start_ns == int(START.timestamp()) * 10**9


def test_a_run_whose_first_chunk_has_no_events_accumulates_without_error(tmp_path):
    info = RunInfo(number=3)
    first, second = run_chunks(3, 2)
    chunks = [
        Chunk(events=events(0, 0, 0, 0), run=info, begins_run=True),
        dataclasses.replace(first, begins_run=False),
        second,
    ]
    engine = drive(make_config(tmp_path), chunks)
    assert engine.progress.errors == 0
    assert engine.accumulation.value().bins.size().sum().value == 140


def test_a_run_whose_result_cannot_be_kept_stays_unfinished_and_is_counted(tmp_path, monkeypatch):
    # Found live: the output folder made read-only (chattr +i) at the end of run 178922 logged
    # output_keep_failed, then the run was dropped from the unfinished runs: result_178922.h5
    # was never written, the status showed no error and no later worker completed it.
    # Now it stays the unfinished run (the next worker's resume) and counts as an error.
    def refuse(source, target):
        raise PermissionError(1, "Operation not permitted", str(target))

    monkeypatch.setattr("livereduce.worker.outputs.result.link_atomically", refuse)
    info = RunInfo(number=9, start_time=START)
    first = Chunk(events=events(0, 2, 2, 1), run=info, begins_run=True)
    last = Chunk(events=events(10, 2, 2, 2), run=info, ends_run=True)
    engine = drive(make_config(tmp_path, run_transition="Rename"), [first, last])
    assert not (tmp_path / "out" / "result_9.h5").exists()
    assert engine.progress.errors == 1
    assert engine.progress.last_error.startswith("run 9 not kept: cannot keep ")
    assert engine.progress.resume == Resume(run_number=9, start_ns=info.start_ns)


def test_a_worker_that_connects_says_running_within_heartbeats_not_one_update_every(tmp_path):
    """READY=1 follows the first report of a receiving worker: at update_every 30 that report
    must not wait 30 s for the second step (issue 10: systemctl start under 10 s)."""
    config = make_config(tmp_path, update_every=30.0)
    connecting = [NotYet("connecting to the SMS"), NotYet("connecting to the SMS")]
    reports: list[tuple[float, Progress]] = []
    stop = SteppedStop(lambda: any(p.chunks for _, p in reports), limit_s=120.0)
    listener = ChunkList([*connecting, *run_chunks(1, 3)])
    engine = EmbeddedEngine(config, listener, clock=stop.clock)
    assert engine.run(stop, lambda p: reports.append((stop.now, p))) is WorkerExit.STOPPED
    running_at = next(t for t, p in reports if p.state is WorkerState.RUNNING)
    assert running_at == 2 * HEARTBEAT_INTERVAL_S  # two looks while connecting, then data
    before = {p.state for t, p in reports if t < running_at}
    assert before == {WorkerState.CONNECTING}
    # Once data flow, chunks come every update_every again.
    assert len(listener.chunks) == 2


def test_a_write_the_budget_deferred_lands_when_the_budget_allows_not_a_chunk_later(tmp_path):
    config = make_config(tmp_path, update_every=1.0)
    engines: list[EmbeddedEngine] = []
    stop = SteppedStop(lambda: engines[0].progress.chunks == 4 and not engines[0].writer.pending)
    engine = EmbeddedEngine(config, ChunkList(run_chunks(1, 4, ends=False)), clock=stop.clock)
    engines.append(engine)
    written: list[tuple[float, int]] = []
    save = engine.writer._save

    def slow_save(workspace, target):  # every write takes 0.3 s: 1.2 s of budget
        stop.now += 0.3
        written.append((round(stop.now, 2), int(workspace.bins.size().sum().value)))
        return save(workspace, target)

    engine.writer._save = slow_save
    assert engine.run(stop, lambda _progress: None) is WorkerExit.STOPPED
    # chunks are taken at 0, 1, 2 and 3 s; the writes of the last three wait for the budget
    # (1.2 s after the previous write began), then land at once: each chunk is in the file
    # within 1 s of being taken
    assert written == [(0.3, 70), (1.5, 140), (2.7, 210), (3.9, 280)]


def test_a_waiting_output_on_a_failing_disk_is_retried_every_few_seconds_not_in_a_loop(tmp_path):
    config = make_config(tmp_path, update_every=1.0)
    stop = SteppedStop(lambda: False, limit_s=30.0)
    engine = EmbeddedEngine(config, ChunkList(run_chunks(1, 3, ends=False)), clock=stop.clock)
    attempts: list[float] = []

    def full_disk(workspace, target):
        attempts.append(stop.now)
        stop.now += 0.1
        engine.writer.failure = f"cannot write {target}: [Errno 28] No space left on device"
        return False

    engine.writer._save = full_disk
    assert engine.run(stop, lambda _progress: None) is WorkerExit.STOPPED
    # chunks 1-3 (0, 1 and 2 s) are tried as they come; the waiting output then only
    # every RETRY_AFTER_FAILURE_S
    # (the last try is the stop's flush, forced)
    assert [round(t, 1) for t in attempts[:3]] == [0.0, 1.0, 2.0]
    gaps = [b - a for a, b in itertools.pairwise(attempts[2:-1])]
    assert len(gaps) == 5
    assert all(5.0 <= gap <= 5.2 for gap in gaps), gaps
    assert attempts[-1] > stop.limit_s
    assert engine.progress.errors == len(attempts) - 1  # every try but the one at the stop
