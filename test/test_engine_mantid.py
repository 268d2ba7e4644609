"""The Mantid engine against the recording stand-in of Mantid (test/mantid_standin).

The stand-in records every Mantid call as JSON lines; its MonitorLiveData is scripted by
MANTID_STANDIN_* environment variables (test/mantid_standin/README.md). The first tests run
the engine in this process; the last ones run the real daemon (`scripts/livereduce.py CONFIG`)
with the stand-in on PYTHONPATH.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon_process import Daemon
from livereduce.config import MANTID_CHUNK, config_from_mapping
from livereduce.protocol import HEARTBEAT_INTERVAL_S, Progress, WorkerExit, WorkerState
from livereduce.worker.engine.mantid import (
    TICK_S,
    MantidEngine,
    MantidLogTap,
    MonitorWatch,
    OutputUpdates,
    from_config,
)
from livereduce.worker.stop import StopToken

REPO = Path(__file__).resolve().parents[1]
STANDIN = REPO / "test" / "mantid_standin"
ACCUMULATION = re.compile(r"accumulation_[a-z]{5}")


class Calls:
    """The stand-in's record: one dict per Mantid call."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def named(self, call: str) -> list[dict[str, Any]]:
        return [c["args"] for c in self.all() if c["call"] == call]

    def start_live_data(self) -> dict[str, Any]:
        (execute,) = self.named("StartLiveData.execute")
        return execute["properties"]


def _forget_mantid() -> None:
    for name in [n for n in sys.modules if n == "mantid" or n.startswith("mantid.")]:
        del sys.modules[name]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Calls]:
    """A fresh stand-in `mantid` importable in this process, recording to tmp_path."""
    record = tmp_path / "mantid-calls.jsonl"
    monkeypatch.setenv("MANTID_STANDIN_RECORD", str(record))
    monkeypatch.syspath_prepend(str(STANDIN))
    _forget_mantid()
    yield Calls(record)
    _forget_mantid()


def make_config(
    tmp_path: Path, raw: dict[str, Any], scripts: tuple[str, ...] = ("proc", "post_proc")
):
    """A Config from ``raw`` with ``script_dir`` holding the named scripts of its instrument."""
    script_dir = tmp_path / "scripts"
    script_dir.mkdir(exist_ok=True)
    raw = {"script_dir": str(script_dir), **raw}
    if raw.get("listener") == "nexus":  # the configuration insists the event file exists
        event_file = tmp_path / raw["address"]
        event_file.parent.mkdir(parents=True, exist_ok=True)
        event_file.touch()
    short = config_from_mapping(
        raw, tmp_path / "livereduce.conf", check_scripts=False
    ).instrument.short_name
    for kind in scripts:
        (script_dir / f"reduce_{short}_live_{kind}.py").write_text("output = input\n")
    return config_from_mapping(raw, tmp_path / "livereduce.conf")


Reports = list[tuple[float, Progress]]


def scaled_clock(scale: float) -> Callable[[], float]:
    """Monotonic seconds running ``scale`` times faster than real time (for the engine, with
    MANTID_STANDIN_TIME_SCALE for the stand-in: at 100, a 200 s chunk takes 2 real seconds)."""
    origin = time.monotonic()
    return lambda: origin + (time.monotonic() - origin) * scale


def run_engine(
    config,
    until: Callable[[Reports], bool] = lambda _r: False,
    timeout_s: float = 10.0,
    *,
    scale: float = 1.0,
) -> tuple[WorkerExit, Reports, float]:
    """Run the engine in a thread until ``until(reports)`` or it returns by itself; then stop it.
    With ``scale``, the engine runs on :func:`scaled_clock` (and ticks that much more often).
    Returns (exit status, [(engine clock time, report)], seconds from the stop request to
    return)."""
    stop = StopToken()
    reports: Reports = []
    result: dict[str, WorkerExit] = {}
    clock = scaled_clock(scale)
    engine = (
        from_config(config)
        if scale == 1.0
        else MantidEngine(config, tick_s=TICK_S / scale, clock=clock)
    )
    assert isinstance(engine, MantidEngine)

    def target() -> None:
        result["exit"] = engine.run(stop, lambda p: reports.append((clock(), p)))

    thread = threading.Thread(target=target)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while thread.is_alive() and not until(reports) and time.monotonic() < deadline:
        time.sleep(0.02)
    asked = time.monotonic()
    stop.request("test")
    thread.join(timeout=15)
    assert not thread.is_alive(), "the engine did not return after the stop request"
    return result["exit"], reports, time.monotonic() - asked


def first_chunk(reports: Reports) -> bool:
    return any(p.chunks >= 1 for _t, p in reports)


# --- StartLiveData arguments -------------------------------------------------------------


def test_defaults_give_the_predecessors_arguments(calls: Calls, tmp_path: Path) -> None:
    config = make_config(tmp_path, {"instrument": "POWGEN"})
    code, _reports, _ = run_engine(config, first_chunk)
    assert code is WorkerExit.STOPPED
    properties = calls.start_live_data()
    scripts = tmp_path / "scripts"
    assert ACCUMULATION.fullmatch(properties["AccumulationWorkspace"])
    assert properties == {
        "Instrument": "POWGEN",
        "UpdateEvery": 30.0,
        "PreserveEvents": True,
        "AccumulationMethod": "Add",
        "RunTransitionBehavior": "Restart",
        "FromNow": False,
        "FromStartOfRun": True,
        "ProcessingScriptFilename": str(scripts / "reduce_PG3_live_proc.py"),
        "PostProcessingScriptFilename": str(scripts / "reduce_PG3_live_post_proc.py"),
        "AccumulationWorkspace": properties["AccumulationWorkspace"],
        "OutputWorkspace": "result",
    }
    assert next(iter(properties)) == "Instrument"
    assert calls.named("ConfigService.setFacility") == []
    assert calls.named("ConfigService.__setitem__") == [
        {"key": "default.instrument", "value": "POWGEN"}
    ]


@pytest.mark.parametrize(
    ("raw", "scripts", "expected"),
    [
        pytest.param(
            {
                "instrument": "HYSPEC", "update_every": 5, "preserve_events": False,
                "accum_method": "Replace", "start_from": "now", "run_transition": "Rename",
                "output_workspace": "live",
            },
            ("proc",),
            {
                "Instrument": "HYSPEC", "UpdateEvery": 5.0, "PreserveEvents": False,
                "AccumulationMethod": "Replace", "RunTransitionBehavior": "Rename",
                "FromNow": True, "FromStartOfRun": False,
                "ProcessingScriptFilename": "reduce_HYS_live_proc.py", "OutputWorkspace": "live",
            },
            id="proc-only-no-post-processing",
        ),
        pytest.param(
            {"instrument": "NOMAD", "post_process": False},
            ("proc", "post_proc"),
            {
                "Instrument": "NOMAD", "UpdateEvery": 30.0, "PreserveEvents": True,
                "AccumulationMethod": "Add", "RunTransitionBehavior": "Restart", "FromNow": False,
                "FromStartOfRun": True, "ProcessingScriptFilename": "reduce_NOM_live_proc.py",
                "OutputWorkspace": "result",
            },
            id="post-process-false",
        ),
        pytest.param(
            {"instrument": "REF_L", "listener": "adara", "address": "replay.example:31419"},
            ("post_proc",),
            {
                "Instrument": "REF_L", "Listener": "SNSLiveEventDataListener",
                "Address": "replay.example:31419", "UpdateEvery": 30.0, "PreserveEvents": True,
                "AccumulationMethod": "Add", "RunTransitionBehavior": "Restart", "FromNow": False,
                "FromStartOfRun": True,
                "PostProcessingScriptFilename": "reduce_REF_L_live_post_proc.py",
                "AccumulationWorkspace": "accumulation_?", "OutputWorkspace": "result",
            },
            id="listener-and-address-post-only",
        ),
        pytest.param(
            {
                "instrument": "ISIS_Histogram", "address": "localhost:56789",
                "accum_method": "Replace", "periods": [1, 3], "spectra": [2, 4, 6],
                "run_transition": "Stop",
            },
            ("proc",),
            {
                "Instrument": "ISIS_Histogram", "Address": "localhost:56789", "UpdateEvery": 30.0,
                "PreserveEvents": True, "AccumulationMethod": "Replace",
                "RunTransitionBehavior": "Stop", "FromNow": False, "FromStartOfRun": True,
                "ProcessingScriptFilename": "reduce_ISIS_Histogram_live_proc.py",
                "OutputWorkspace": "result", "PeriodList": [1, 3], "SpectraList": [2, 4, 6],
            },
            id="periods-spectra-other-facility",
        ),
        pytest.param(
            {
                "instrument": "POWGEN", "listener": "fake", "address": "127.0.0.1:0",
                "listener_options": {"event_rate": 2000, "run_length_sec": 60},
            },
            ("proc",),
            {
                "Instrument": "POWGEN", "Listener": "FakeEventDataListener",
                "Address": "127.0.0.1:0", "UpdateEvery": 30.0, "PreserveEvents": True,
                "AccumulationMethod": "Add", "RunTransitionBehavior": "Restart", "FromNow": False,
                "FromStartOfRun": True, "ProcessingScriptFilename": "reduce_PG3_live_proc.py",
                "OutputWorkspace": "result",
            },
            id="fake-listener",
        ),
        pytest.param(
            {
                "instrument": "POWGEN", "listener": "nexus", "address": "data/PG3_1.nxs.h5",
                "listener_options": {"chunks": 4},
            },
            ("proc",),
            {
                "Instrument": "POWGEN", "Listener": "FileEventDataListener", "UpdateEvery": 30.0,
                "PreserveEvents": True, "AccumulationMethod": "Add",
                "RunTransitionBehavior": "Restart", "FromNow": False, "FromStartOfRun": True,
                "ProcessingScriptFilename": "reduce_PG3_live_proc.py", "OutputWorkspace": "result",
            },
            id="nexus-listener-file-not-address",
        ),
    ],
)  # fmt: skip
def test_start_live_data_arguments(
    calls: Calls, tmp_path: Path, raw: dict, scripts: tuple[str, ...], expected: dict
) -> None:
    config = make_config(tmp_path, raw, scripts)
    code, _reports, _ = run_engine(config, first_chunk)
    assert code is WorkerExit.STOPPED
    properties = calls.start_live_data()
    for name in ("ProcessingScriptFilename", "PostProcessingScriptFilename"):
        if name in expected:
            expected[name] = str(tmp_path / "scripts" / expected[name])
    if "AccumulationWorkspace" in expected:
        assert ACCUMULATION.fullmatch(properties["AccumulationWorkspace"])
        expected["AccumulationWorkspace"] = properties["AccumulationWorkspace"]
    assert properties == expected
    order = list(properties)
    assert order[0] == "Instrument"
    if "Listener" in expected:
        assert order[1] == "Listener"


def test_script_paths_come_from_the_configuration_not_from_mantid(
    calls: Calls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    import mantid.api  # noqa: PLC0415 - the stand-in, from the calls fixture's path
    import mantid.kernel  # noqa: PLC0415

    info = mantid.kernel.InstrumentInfo("HYSPEC", "HYSPECX", "SNS", "SNSLiveEventDataListener", "")
    others = [i for i in mantid.kernel.INSTRUMENTS if i.name() != "HYSPEC"]
    monkeypatch.setattr(mantid.kernel, "INSTRUMENTS", (*others, info))
    monkeypatch.setattr(mantid.api, "INSTRUMENTS", (*others, info))
    config = make_config(tmp_path, {"instrument": "HYSPEC"}, ("proc",))
    code, _reports, _ = run_engine(config, first_chunk)
    assert code is WorkerExit.STOPPED
    properties = calls.start_live_data()
    assert properties["ProcessingScriptFilename"] == str(config.proc_script)
    assert config.proc_script.name == "reduce_HYS_live_proc.py"
    assert "PostProcessingScriptFilename" not in properties
    assert "Mantid calls HYSPEC 'HYSPECX', livereduce 'HYS'" in caplog.text


def test_no_script_is_a_boot_failure_naming_the_configured_paths(
    calls: Calls, tmp_path: Path
) -> None:
    (tmp_path / "scripts").mkdir()
    config = config_from_mapping(
        {"instrument": "POWGEN", "script_dir": str(tmp_path / "scripts")},
        tmp_path / "livereduce.conf",
        check_scripts=False,  # the scripts were deleted after the supervisor started
    )
    code, reports, _ = run_engine(config)
    assert code is WorkerExit.BOOT_FAILURE
    assert reports[-1][1].last_error == (
        f"no processing script in {tmp_path / 'scripts'}: need at least one non-empty "
        "'reduce_PG3_live_proc.py' or 'reduce_PG3_live_post_proc.py'"
    )
    assert calls.named("AlgorithmManager.create") == []


def test_other_facility_is_switched_to(calls: Calls, tmp_path: Path) -> None:
    config = make_config(tmp_path, {"instrument": "ISIS_Histogram", "address": "localhost:56789"})
    run_engine(config, first_chunk)
    assert calls.named("ConfigService.setFacility") == [{"name": "TEST_LIVE"}]
    names = [c["call"] for c in calls.all()]
    assert names.index("ConfigService.setFacility") < names.index("StartLiveData.execute")


def test_listener_options_become_mantid_settings(
    calls: Calls, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = {
        "instrument": "POWGEN",
        "listener": "fake",
        "listener_options": {"event_rate": 2000, "run_length_sec": 60, "pixel_count": 10},
    }
    run_engine(make_config(tmp_path, raw), first_chunk)
    assert calls.named("ConfigService.__setitem__") == [
        {"key": "default.instrument", "value": "POWGEN"},
        {"key": "fakeeventdatalistener.datarate", "value": "2000"},
        {"key": "fakeeventdatalistener.endrunevery", "value": "60"},
    ]
    assert "listener_options.pixel_count has no Mantid equivalent" in caplog.text


def test_nexus_file_goes_to_the_file_listener_setting(calls: Calls, tmp_path: Path) -> None:
    raw = {"instrument": "POWGEN", "listener": "nexus", "address": "runs/PG3_1.nxs.h5"}
    run_engine(make_config(tmp_path, raw), first_chunk)
    settings = {c["key"]: c["value"] for c in calls.named("ConfigService.__setitem__")}
    assert settings["fileeventdatalistener.filename"] == str(tmp_path / "runs" / "PG3_1.nxs.h5")


def test_spectra_for_a_listener_without_spectra_list_fails_at_start(
    calls: Calls, tmp_path: Path
) -> None:
    config = make_config(tmp_path, {"instrument": "POWGEN", "spectra": [1, 2]})
    code, reports, _ = run_engine(config)
    assert code is WorkerExit.BOOT_FAILURE
    last = reports[-1][1]
    assert last.state is WorkerState.ERROR
    assert "key 'spectra'" in last.last_error
    assert "no SpectraList property" in last.last_error
    assert calls.named("StartLiveData.execute") == []
    assert {"name": "spectra", "value": [1, 2]} not in calls.named("StartLiveData.setProperty")


def test_instrument_unknown_to_mantid_fails_at_start(calls: Calls, tmp_path: Path) -> None:
    code, reports, _ = run_engine(make_config(tmp_path, {"instrument": "CNCS"}))
    assert code is WorkerExit.BOOT_FAILURE
    assert "instrument 'CNCS' is not in Mantid's Facilities.xml" in reports[-1][1].last_error
    assert calls.named("AlgorithmManager.create") == []


# --- watching MonitorLiveData ------------------------------------------------------------


def supervisor_would_kill(config, reports: Reports, now: float) -> list[str]:
    """Where the supervisor's rule (protocol.py, supervisor/machine.py) would count the worker
    as hung: a script is timed from the first report naming it, and allowed
    ``config.script_timeout(in_script)``; after a report with ``in_script`` empty the worker is
    allowed ``config.heartbeat_timeout`` until the next report (or ``now``)."""
    misses = []
    script, since = "", 0.0
    ends = [t for t, _p in reports[1:]] + [now]
    for (at, progress), until in zip(reports, ends, strict=True):
        if progress.in_script and progress.in_script != script:
            since = at
        script = progress.in_script
        limit = config.script_timeout(script) if script else config.heartbeat_timeout
        if until - (since if script else at) > limit:
            misses.append(f"{until - at:.0f} s after {progress.detail!r} (allowed {limit:g} s)")
    return misses


def test_a_stalled_monitor_is_reported_as_in_a_chunk_then_silent(
    calls: Calls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANTID_STANDIN_CHUNK_EVERY_S", "0.2")
    monkeypatch.setenv("MANTID_STANDIN_UPDATES", "2")
    config = make_config(tmp_path, {"instrument": "POWGEN", "update_every": 0.5})

    def silent_in_a_chunk(reports: Reports) -> bool:
        due = [t for t, p in reports if p.detail == "chunk 4 due: MonitorLiveData loads it"]
        return bool(due) and time.monotonic() - due[0] > 1.5

    code, reports, _ = run_engine(config, silent_in_a_chunk)
    assert code is WorkerExit.STOPPED
    assert max(p.chunks for _t, p in reports) == 3  # StartLiveData's chunk + 2 updates
    last_at, last = reports[-1]
    # The chunk that never ends is announced once, like a script; then nothing: the supervisor
    # alone decides, after script_timeout("LoadLiveData").
    assert last.detail == "chunk 4 due: MonitorLiveData loads it"
    assert last.in_script == MANTID_CHUNK
    assert last.state is WorkerState.RUNNING
    stored_at = min(t for t, p in reports if p.chunks == 3)
    # due 0.5 s (update_every) after the third chunk was stored, reported 2 s (the slack) later
    assert 0.5 + 2.0 <= last_at - stored_at <= 0.5 + 2.0 + 0.5
    assert last.in_script_since == pytest.approx(last.last_chunk_time + 0.5, abs=0.3)
    times = [t for t, _p in reports]
    assert max(b - a for a, b in itertools.pairwise(times)) <= HEARTBEAT_INTERVAL_S
    assert calls.named("MonitorLiveData.cancel") == [{}]


def test_chunks_give_running_reports_with_counts(calls: Calls, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MANTID_STANDIN_CHUNK_EVERY_S", "0.4")  # slower than the engine's tick
    config = make_config(tmp_path, {"instrument": "POWGEN", "update_every": 0.5})
    _code, reports, _ = run_engine(config, lambda r: any(p.chunks >= 3 for _t, p in r))
    states = [p.state for _t, p in reports]
    assert states[:2] == [WorkerState.STARTING, WorkerState.CONNECTING]
    chunk_reports = [p for _t, p in reports if p.detail.startswith("chunk ")]
    assert [p.chunks for p in chunk_reports] == [1, 2, 3]
    assert all(p.state is WorkerState.RUNNING and p.last_chunk_time for p in chunk_reports)
    assert all(p.engine == "mantid" and p.instrument == "POWGEN" for _t, p in reports)


def test_monitor_error_ends_the_worker_with_engine_failure(
    calls: Calls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANTID_STANDIN_CHUNK_EVERY_S", "0.2")
    monkeypatch.setenv("MANTID_STANDIN_FAIL_AFTER", "2")
    config = make_config(tmp_path, {"instrument": "POWGEN", "update_every": 30})
    code, reports, _ = run_engine(config)
    assert code is WorkerExit.ENGINE_FAILURE
    last = reports[-1][1]
    assert last.state is WorkerState.ERROR
    assert last.chunks == 2  # StartLiveData's chunk and one update; the failed one is lost
    assert "MonitorLiveData ended with an error" in last.last_error
    assert "stand-in processing script raised on chunk 2" in last.last_error
    assert calls.named("MonitorLiveData.cancel") == []


def test_start_live_data_failure_is_an_engine_failure(
    calls: Calls, tmp_path: Path, monkeypatch
) -> None:
    why = "Unable to connect listener [SNSLiveEventDataListener] to [bl11a-daq1.sns.gov:31415]"
    monkeypatch.setenv("MANTID_STANDIN_START_FAIL", why)
    code, reports, _ = run_engine(make_config(tmp_path, {"instrument": "POWGEN"}))
    assert code is WorkerExit.ENGINE_FAILURE
    assert reports[-1][1].last_error == f"StartLiveData failed: {why}"


def test_listener_not_ready_is_reported_as_waiting(
    calls: Calls, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MANTID_STANDIN_NOT_READY_S", "4")
    config = make_config(tmp_path, {"instrument": "POWGEN", "update_every": 0.5})
    _code, reports, _ = run_engine(config, first_chunk)
    before_chunk = [(t, p) for t, p in reports[2:] if p.chunks == 0]
    # Two reports per warning (the stand-in warns every second for 4 s): that attempt ended,
    # the next one starts; in state waiting_for_run.
    warnings = len(before_chunk) // 2
    assert warnings in (4, 5)
    assert [p.in_script for _t, p in before_chunk] == ["", MANTID_CHUNK] * warnings
    assert all(p.state is WorkerState.WAITING_FOR_RUN for _t, p in before_chunk)
    assert "SNSLiveEventDataListener is not ready to return data" in before_chunk[0][1].detail
    since = [p.in_script_since for _t, p in before_chunk if p.in_script]
    assert since == sorted(since)
    times = [t for t, _p in reports]
    assert max(b - a for a, b in itertools.pairwise(times)) <= 1.0 + 2 * TICK_S


def test_not_ready_at_mantids_real_cadence_does_not_flap(
    calls: Calls, tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    # 100 s without a run, and Mantid's real cadence: one warning every 20 s
    knobs = {"NOT_READY_S": "100", "NOT_READY_EVERY_S": "20"}
    config, reports = run_at_update_every_30(tmp_path, monkeypatch, knobs, 1)
    first_warning = next(i for i, (_t, p) in enumerate(reports) if "not ready" in p.detail)
    until_chunk = [p for _t, p in reports[first_warning:] if p.chunks == 0]
    assert [p.state for p in until_chunk] == [WorkerState.WAITING_FOR_RUN] * len(until_chunk)
    # two per warning (an attempt ended, the next began), 20 s apart, nothing in between
    assert len(until_chunk) in (10, 12)
    assert supervisor_would_kill(config, reports, reports[-1][0]) == []
    assert "heartbeats_stopped" not in caplog.text


SCALE = 40.0
"""Time scale of the tests of Mantid's real timings: 40 s of the stand-in's and the engine's
time take 1 s (a 2 s pause of this machine still fits in the 90 s heartbeat timeout)."""


def run_at_update_every_30(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, knobs: dict[str, str], chunks: int
):
    """The engine at ``update_every`` 30 on the stand-in with ``knobs``, at SCALE, until
    ``chunks`` chunks were stored; returns (config, reports)."""
    monkeypatch.setenv("MANTID_STANDIN_TIME_SCALE", str(SCALE))
    for name, value in knobs.items():
        monkeypatch.setenv(f"MANTID_STANDIN_{name}", value)
    config = make_config(tmp_path, {"instrument": "POWGEN", "update_every": 30})
    _code, reports, _ = run_engine(
        config, lambda r: any(p.chunks >= chunks for _t, p in r), timeout_s=15, scale=SCALE
    )
    return config, reports


def test_a_200_s_first_chunk_at_update_every_30_is_waited_for(
    calls: Calls, tmp_path: Path, monkeypatch
) -> None:
    config, reports = run_at_update_every_30(tmp_path, monkeypatch, {"FIRST_CHUNK_S": "200"}, 2)
    (start_at, start), (stored_at, stored) = reports[1], reports[2]
    assert (start.state, start.in_script) == (WorkerState.CONNECTING, MANTID_CHUNK)
    assert (stored.chunks, stored.in_script, stored.detail) == (1, "", "chunk 1 processed")
    assert stored_at - start_at >= 190  # 200 s, less the start's own scheduling
    # Silent for longer than the heartbeat timeout (90 s), within the chunk's limit (900 s).
    assert stored_at - start_at > config.heartbeat_timeout == 90
    assert config.script_timeout(MANTID_CHUNK) == 300 + 600
    assert supervisor_would_kill(config, reports, reports[-1][0]) == []
    assert [p.chunks for _t, p in reports if p.detail.endswith("processed")] == [1, 2]


@pytest.mark.slow
def test_a_slow_chunk_is_announced_at_its_start_and_waited_for(
    calls: Calls, tmp_path: Path, monkeypatch
) -> None:
    # 70 s: longer than update_every, and than the former stall limit (2 x 30 + 2 s)
    config, reports = run_at_update_every_30(tmp_path, monkeypatch, {"CHUNK_S": "70"}, 3)
    announced = [(t, p) for t, p in reports if p.detail.startswith("loading chunk")][:2]
    assert [p.detail for _t, p in announced] == ["loading chunk 2", "loading chunk 3"]
    assert all(p.in_script == MANTID_CHUNK for _t, p in announced)
    for (at, progress), chunk in zip(announced, (2, 3), strict=True):
        stored_at = next(t for t, p in reports if p.chunks == chunk)
        after = [t for t, _p in reports if at < t < stored_at]
        assert after == []  # silent while Mantid is in the chunk
        assert stored_at - at >= 65
        assert progress.chunks == chunk - 1
    assert supervisor_would_kill(config, reports, reports[-1][0]) == []


def test_monitor_live_data_start_up_window_is_not_a_failure(
    calls: Calls, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MANTID_STANDIN_START_S", "2")  # under MONITOR_START_GRACE_S
    monkeypatch.setenv("MANTID_STANDIN_CHUNK_EVERY_S", "0.2")
    config = make_config(tmp_path, {"instrument": "POWGEN", "update_every": 0.5})
    code, reports, _ = run_engine(config, lambda r: any(p.chunks >= 3 for _t, p in r))
    assert code is WorkerExit.STOPPED
    assert max(p.chunks for _t, p in reports) >= 3
    assert all(p.state is not WorkerState.ERROR for _t, p in reports)


def test_run_end_with_stop_transition_ends_cleanly(
    calls: Calls, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MANTID_STANDIN_CHUNK_EVERY_S", "0.2")
    monkeypatch.setenv("MANTID_STANDIN_END_RUN_AFTER", "1")
    config = make_config(tmp_path, {"instrument": "POWGEN", "run_transition": "Stop"})
    code, reports, _ = run_engine(config)
    assert code is WorkerExit.STOPPED
    assert reports[-1][1].state is WorkerState.RUN_ENDED


def test_mantid_log_goes_into_ours_routed_once(
    calls: Calls, tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MANTID_STANDIN_CHUNK_EVERY_S", "0.1")
    config = make_config(tmp_path, {"instrument": "POWGEN", "update_every": 0.5})
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            run_engine(config, lambda r: any(p.chunks >= 2 for _t, p in r))
    mantid = [r.getMessage() for r in caplog.records if r.name == "Mantid"]
    assert "MonitorLiveData: Loading live data chunk 1" in mantid
    assert calls.named("log_to_python") == [{"level": "information", "pattern": "%s: %t"}]


# --- stopping ----------------------------------------------------------------------------


def test_stop_cancels_monitor_live_data(calls: Calls, tmp_path: Path, caplog) -> None:
    config = make_config(tmp_path, {"instrument": "POWGEN", "update_every": 0.5})
    with caplog.at_level(logging.INFO):
        code, _reports, took = run_engine(config, first_chunk)
    assert code is WorkerExit.STOPPED
    assert took < 1.0
    assert calls.named("MonitorLiveData.cancel") == [{}]
    assert "MonitorLiveData stopped" in caplog.text
    assert calls.named("AnalysisDataServiceObserver.observeReplace")[-1] == {"on": False}
    assert not [c for c in calls.all() if "shutdown" in c["call"] or "cancelAll" in c["call"]]


@pytest.mark.parametrize(
    ("cancel_s", "logged"),
    [
        ("1", "monitor_stopped: MonitorLiveData stopped 1."),
        ("60", "MonitorLiveData still runs 2.0 s after cancel"),
    ],
)
def test_a_slow_cancel_is_waited_for_at_most_two_seconds(
    calls: Calls, tmp_path: Path, monkeypatch, caplog, cancel_s: str, logged: str
) -> None:
    monkeypatch.setenv("MANTID_STANDIN_CANCEL_S", cancel_s)
    config = make_config(tmp_path, {"instrument": "POWGEN", "update_every": 0.5})
    with caplog.at_level(logging.INFO):
        code, _reports, _took = run_engine(config, first_chunk)
    assert code is WorkerExit.STOPPED
    assert logged in caplog.text


def test_stop_returns_even_when_cancel_blocks_forever(
    calls: Calls, tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MANTID_STANDIN_CANCEL", "block")
    # The uncancelled MonitorLiveData thread outlives the test: keep it silent meanwhile.
    monkeypatch.setenv("MANTID_STANDIN_CHUNK_EVERY_S", "100000")
    config = make_config(tmp_path, {"instrument": "POWGEN", "stop_timeout": 2})
    code, _reports, took = run_engine(config, first_chunk)
    assert code is WorkerExit.STOPPED
    assert 0.9 <= took < 2.0  # waited min(stop_timeout / 2, 5 s) = 1 s, not forever
    assert calls.named("MonitorLiveData.cancel") == [{}]
    assert "MonitorLiveData still runs 1.0 s after cancel" in caplog.text


def test_stop_while_start_live_data_waits_for_the_listener(
    calls: Calls, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MANTID_STANDIN_NOT_READY_S", "60")
    config = make_config(tmp_path, {"instrument": "POWGEN"})
    began = time.monotonic()
    code, _reports, took = run_engine(config, lambda _r: time.monotonic() - began > 1.0)
    assert code is WorkerExit.STOPPED
    assert took < 1.5
    assert calls.named("StartLiveData.cancel") == [{}]
    assert calls.named("StartLiveData.getProperty") == []


# --- the real daemon with the stand-in ---------------------------------------------------


def mantid_daemon(
    tmp_path: Path, raw: dict[str, Any], env: dict[str, str], standin: bool
) -> Daemon:
    """The daemon on ``raw`` with a processing script, output in ``out``; with ``standin`` the
    stand-in is importable as ``mantid`` and records to ``mantid-calls.jsonl``."""
    config = make_config(tmp_path, {"output_dir": str(tmp_path / "out"), **raw}, ("proc",))
    record = tmp_path / "mantid-calls.jsonl"
    return Daemon(
        tmp_path,
        config.raw,
        env={"MANTID_STANDIN_RECORD": str(record), **env},
        pythonpath=(str(STANDIN),) if standin else (),
        clear_prefixes=("MANTID_STANDIN_",),
    )


def workers(daemon: Daemon) -> list[int]:
    """Pids of the workers that executed StartLiveData, in order."""
    calls = Calls(daemon.out.parent / "mantid-calls.jsonl").all()
    pids = [c["pid"] for c in calls if c["call"] == "StartLiveData.execute"]
    return list(dict.fromkeys(pids))


def recorded(daemon: Daemon) -> Calls:
    return Calls(daemon.out.parent / "mantid-calls.jsonl")


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()
        daemon.kill_left_over()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_daemon_restarts_a_worker_whose_monitor_failed(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    daemon = mantid_daemon(
        tmp_path,
        {"instrument": "POWGEN", "engine": "mantid", "update_every": 0.5},
        {"MANTID_STANDIN_CHUNK_EVERY_S": "0.2", "MANTID_STANDIN_FAIL_AFTER": "1"},
        standin=True,
    )
    daemons.append(daemon)
    assert daemon.wait_for(lambda: len(workers(daemon)) >= 2, 30), daemon.text()
    assert daemon.process.poll() is None, daemon.text()
    assert "stand-in processing script raised on chunk 1" in daemon.text()
    code, _took = daemon.stop()
    assert code == 0, daemon.text()


@pytest.mark.slow
def test_daemon_restarts_a_worker_whose_monitor_stalled(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    daemon = mantid_daemon(
        tmp_path,
        {
            "instrument": "POWGEN",
            "engine": "mantid",
            "update_every": 0.5,
            "heartbeat_timeout_sec": 3,
            "script_timeout_sec": 1.5,  # a chunk (LoadLiveData) may take 1.5 + 1.5 s
        },
        {"MANTID_STANDIN_CHUNK_EVERY_S": "0.2", "MANTID_STANDIN_UPDATES": "1"},
        standin=True,
    )
    daemons.append(daemon)
    assert daemon.wait_for(lambda: len(workers(daemon)) >= 2, 30), daemon.text()
    # The stalled chunk was reported as LoadLiveData: its limit, 1.5 + 1.5 s, ran out.
    assert "script_timeout: LoadLiveData" in daemon.text()
    assert not _alive(workers(daemon)[0])
    code, _took = daemon.stop()
    assert code == 0, daemon.text()


@pytest.mark.parametrize(
    ("raw", "env", "started", "cancelled", "logged"),
    [
        pytest.param(
            {"stop_timeout": 2.0},
            {"MANTID_STANDIN_CANCEL": "block"},
            "MonitorLiveData.isRunning",
            "MonitorLiveData.cancel",
            "MonitorLiveData still runs 1.0 s after cancel",  # min(stop_timeout / 2, 2 s)
            id="monitor-cancel-blocks",
        ),
        pytest.param(
            {"stop_timeout": 5.0},
            {"MANTID_STANDIN_FIRST_CHUNK_S": "600", "MANTID_STANDIN_CANCEL_S": "600"},
            "StartLiveData.execute",
            "StartLiveData.cancel",
            "StartLiveData still runs 2.0 s after cancel",  # min(stop_timeout / 2, 2 s)
            id="slow-first-chunk-slow-cancel",
        ),
    ],
)
@pytest.mark.slow
def test_daemon_stops_in_seconds_whatever_mantid_does(
    tmp_path: Path,
    daemons: list[Daemon],
    raw: dict,
    env: dict,
    started: str,
    cancelled: str,
    logged: str,
) -> None:
    # Mantid's exit hook (AlgorithmManager.shutdown() with the GIL held) never returns here
    # (MANTID_STANDIN_EXIT=block): the worker ends with os._exit, so it never runs.
    daemon = mantid_daemon(
        tmp_path,
        {"instrument": "POWGEN", "engine": "mantid", **raw},
        {"MANTID_STANDIN_EXIT": "block", **env},
        standin=True,
    )
    daemons.append(daemon)
    assert daemon.wait_for(lambda: bool(recorded(daemon).named(started)), 20), daemon.text()
    code, _took = daemon.stop()
    text = daemon.text()
    assert code == 0, text
    assert "worker_killed" not in text, text  # it ended before stop_timeout
    assert daemon.left_over() == [], text
    assert recorded(daemon).named(cancelled) == [{}]
    assert logged in text
    assert "ended with exit status 0 (STOPPED)" in text


def test_engine_auto_without_mantid_uses_the_embedded_engine_and_says_why(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    daemon = mantid_daemon(
        tmp_path,
        {"instrument": "POWGEN", "engine": "auto", "listener": "fake", "update_every": 0.5},
        {},
        standin=False,
    )
    daemons.append(daemon)
    reason = (
        "engine 'auto': no module named 'mantid' in this Python, using the embedded scipp engine"
    )
    assert daemon.wait_for(lambda: reason in daemon.text(), 20), daemon.text()
    code, _took = daemon.stop()
    assert code == 0, daemon.text()


def test_engine_mantid_without_mantid_exits_2_at_start(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    daemon = mantid_daemon(
        tmp_path, {"instrument": "POWGEN", "engine": "mantid"}, {}, standin=False
    )
    daemons.append(daemon)
    assert daemon.wait_for(lambda: daemon.process.poll() is not None, 8), daemon.text()
    assert daemon.process.returncode == 2, daemon.text()
    assert (
        "engine 'mantid' is configured but no module named 'mantid' in this Python" in daemon.text()
    )


# --- the watch, stepped on a fake clock ----------------------------------------------------


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SteppedMonitor:
    """MonitorLiveData as the watch sees it: running until the test ends it."""

    def __init__(self) -> None:
        self.running = True

    def isRunning(self) -> bool:
        return self.running

    def isExecuted(self) -> bool:
        return False


class SteppedStart:
    """StartLiveData whose execute returns at once, handing over ``monitor``."""

    def __init__(self, monitor: SteppedMonitor) -> None:
        self.monitor = monitor

    def execute(self) -> bool:
        return True

    def getProperty(self, _name: str):
        return type("Property", (), {"value": self.monitor})()


def mantid_log(tap: MantidLogTap, level: int, text: str) -> None:
    tap.emit(logging.LogRecord("Mantid", level, __file__, 0, text, None, None))


def stepped_watch(tmp_path: Path):
    """A MonitorWatch on a fake clock at update_every 30, begun; returns (config, watch, step,
    reports, updates, tap): ``step(t, event)`` ticks every 0.25 s up to ``t`` seconds after the
    start, then calls ``event``; reports carry those seconds."""
    config = make_config(tmp_path, {"instrument": "POWGEN", "update_every": 30})
    clock = FakeClock()
    reports: list[tuple[float, Progress]] = []
    updates, tap = OutputUpdates(clock), MantidLogTap(clock)
    watch = MonitorWatch(
        engine=MantidEngine(config, clock=clock),
        start=SteppedStart(SteppedMonitor()),
        updates=updates,
        tap=tap,
        report=lambda p: reports.append((clock.now - 1000.0, p)),
        progress=Progress(state=WorkerState.STARTING, engine="mantid"),
    )
    watch.begin()
    watch.thread.join()

    def step(t: float, event: Callable[[], None] | None = None) -> None:
        while clock.now - 1000.0 < t:
            clock.now = round(clock.now + 0.25, 2)
            assert watch.tick(clock.now) is None
        if event is not None:
            event()

    return config, step, reports, updates, tap


def test_the_watch_stepped_through_a_slow_start_and_a_stalled_chunk(tmp_path: Path) -> None:
    config, step_until, reports, updates, tap = stepped_watch(tmp_path)
    not_ready = "LoadLiveData: The SNSLiveEventDataListener is not ready to return data: no run"
    step_until(20, lambda: mantid_log(tap, logging.WARNING, not_ready))
    step_until(40, lambda: mantid_log(tap, logging.WARNING, not_ready))
    step_until(200, updates.seen)  # the first chunk is stored 200 s after the start
    step_until(300)  # the next chunk was due at 230 s and never ends
    seen = [(t, p.state.value, p.in_script, p.detail) for t, p in reports]
    beats = [(t, d) for t, _s, _i, d in seen if d.startswith("waiting for chunk 2")]
    starting = "StartLiveData: connecting the listener and loading the first chunk"
    assert seen[:6] == [
        (0.0, "connecting", "LoadLiveData", starting),
        (20.25, "waiting_for_run", "", not_ready),
        (20.25, "waiting_for_run", "LoadLiveData", not_ready),
        (40.25, "waiting_for_run", "", not_ready),
        (40.25, "waiting_for_run", "LoadLiveData", not_ready),
        (200.25, "running", "", "chunk 1 processed"),
    ]  # fmt: skip
    # Beats between chunks, one a second (half the heartbeat interval), until the due time
    # (230.25 s: update_every after the store was seen) plus the 2 s slack; then the chunk
    # counts as started at its due time, and silence follows.
    assert beats[0][0] == 201.25
    assert beats[-1][0] == 231.25
    assert len(beats) == 31
    assert seen[6 + len(beats) :] == [
        (232.25, "running", "LoadLiveData", "chunk 2 due: MonitorLiveData loads it")
    ]
    last = reports[-1][1]
    assert last.in_script_since == pytest.approx(time.time() - 2.0, abs=1.0)
    assert supervisor_would_kill(config, reports, 300.0) == []
    assert supervisor_would_kill(config, reports, 232.25 + 900.5) != []  # the chunk's limit


def test_the_watch_stepped_through_logged_chunk_starts_and_a_long_chunk(tmp_path: Path) -> None:
    config, step, reports, updates, tap = stepped_watch(tmp_path)
    start = "MonitorLiveData: Loading live data chunk {} at 12:00:00"
    step(10, updates.seen)
    step(40, lambda: mantid_log(tap, logging.INFO, start.format(0)))
    step(150, updates.seen)  # chunk 2 took 110 s, longer than update_every: chunk 3 starts now
    mantid_log(tap, logging.INFO, start.format(1))
    step(160, updates.seen)
    step(170)
    seen = [
        (t, p.in_script, p.detail)
        for t, p in reports
        if not p.detail.startswith("waiting for chunk")
    ]
    assert seen[1:] == [
        (10.25, "", "chunk 1 processed"),
        (40.25, "LoadLiveData", "loading chunk 2"),
        (150.25, "", "chunk 2 processed"),
        (150.25, "LoadLiveData", "loading chunk 3"),
        (160.25, "", "chunk 3 processed"),
    ]
    # Nothing while Mantid was in chunk 2 (40.25 - 150.25 s) or in chunk 3.
    inside = [t for t, _p in reports if 40.25 < t < 150.25 or 150.25 < t < 160.25]
    assert inside == []
    assert supervisor_would_kill(config, reports, 170.0) == []


def test_waiting_an_hour_for_a_run_is_never_a_chunk_past_its_limit(tmp_path: Path) -> None:
    config, step, reports, updates, tap = stepped_watch(tmp_path)
    not_ready = "LoadLiveData: The SNSLiveEventDataListener is not ready to return data: no run"
    for warning_at in range(20, 3600, 20):  # Mantid's real cadence, for an hour
        step(warning_at, lambda: mantid_log(tap, logging.WARNING, not_ready))
    step(3610, updates.seen)
    step(3611)
    assert {p.state for _t, p in reports[1:-1]} == {WorkerState.WAITING_FOR_RUN}
    assert reports[-1][1].detail == "chunk 1 processed"
    assert supervisor_would_kill(config, reports, 3611.0) == []
    assert config.script_timeout(MANTID_CHUNK) + config.heartbeat_timeout < 3600
