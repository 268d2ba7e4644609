"""Stop in seconds, scripts announced, any BaseException from a script loses one chunk.

The first tests step the embedded engine in this process; the last ones run the real daemon
(``scripts/livereduce.py CONFIG``) with the embedded engine and the fake listener, SIGTERM it
at a chosen moment (synchronised on a file a script writes, a status, a temporary output file)
and check its exit status and that no process it started is left (issue 15.3).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import scipp as sc

from daemon_process import Daemon
from livereduce.config import config_from_mapping
from livereduce.protocol import Progress, WorkerExit, WorkerState
from livereduce.worker.engine.embedded import EmbeddedEngine
from livereduce.worker.listeners.base import Chunk, ListenerBase, NotYet, RunInfo, make_events
from livereduce.worker.outputs.result import OutputWriter
from livereduce.worker.stop import StopRequested, StopToken

PROC = "reduce_FAKE_live_proc.py"
POST = "reduce_FAKE_live_post_proc.py"


class Chunks(ListenerBase):
    """A listener giving ``count`` chunks of one run (10 pulses of 7 events each), then NotYet;
    ``on_extract(n)`` is called before chunk ``n`` (from 1) is handed over."""

    name = "test chunks"

    def __init__(self, count: int, on_extract=lambda _n: None) -> None:
        self.count = count
        self.given = 0
        self.on_extract = on_extract
        self.closed = False

    def start(self, _start_from) -> None:
        pass

    def extract_data(self) -> Chunk:
        if self.given == self.count:
            raise NotYet("nothing more")
        self.given += 1
        self.on_extract(self.given)
        pulses = range(10 * (self.given - 1), 10 * self.given)
        events = make_events(
            np.array(pulses) * 16_666_667,
            np.full(10, 7),
            np.arange(70) % 50,
            np.linspace(0.0, 16000.0, 70, dtype=np.float32),
        )
        return Chunk(
            events=events,
            run=RunInfo(number=5, title="run 5", instrument="TEST"),
            begins_run=self.given == 1,
            ends_run=self.given == self.count,
        )

    def close(self) -> None:
        self.closed = True


def engine_for(tmp_path: Path, proc: str | None, post: str | None = None, **raw) -> EmbeddedEngine:
    for name, source in ((PROC, proc), (POST, post)):
        if source is not None:
            (tmp_path / name).write_text(source)
    config = config_from_mapping(
        {
            "instrument": "FAKE",
            "listener": "fake",
            "script_dir": str(tmp_path),
            "output_dir": str(tmp_path / "out"),
            "update_every": 0.01,
            **raw,
        },
        tmp_path / "livereduce.conf",
        check_scripts=False,
    )
    return EmbeddedEngine(config, None)


def run_engine(engine: EmbeddedEngine, listener: Chunks, stop: StopToken | None = None):
    engine.listener = listener
    reports: list[Progress] = []
    code = engine.run(stop or StopToken(), reports.append)
    return code, reports


def events_in(path: Path) -> int:
    return int(sc.io.load_hdf5(path).bins.size().sum().value)


# --- script reports (15.7) -----------------------------------------------------------------


def test_each_script_is_announced_before_and_cleared_after(tmp_path):
    engine = engine_for(tmp_path, "output = input\n", "output = input\n", run_transition="Stop")
    began = time.time()
    code, reports = run_engine(engine, Chunks(2))
    assert code is WorkerExit.STOPPED
    scripts = [(r.in_script, r.in_script_since is not None) for r in reports]
    assert scripts == [
        ("", False),  # connecting
        (PROC, True),
        ("", False),
        (POST, True),
        ("", False),
        ("", False),  # the step's report: chunk 1
        (PROC, True),
        ("", False),
        (POST, True),
        ("", False),
        ("", False),  # chunk 2, the run ended: run_transition Stop
    ]
    since = [r.in_script_since for r in reports if r.in_script]
    assert since == sorted(since)
    assert began <= since[0] <= since[-1] <= time.time()
    # The report naming the post-processing script comes after the chunk was accumulated.
    assert [r.chunks for r in reports if r.in_script == POST] == [0, 1]
    assert reports[-1].state is WorkerState.RUN_ENDED
    assert reports[-1].chunks == 2


# --- any BaseException from a script loses one chunk (15.4) --------------------------------


def test_a_script_running_on_the_first_chunk_is_reported_in_the_run(tmp_path):
    # Found live: a processing script stuck on a run's first chunk showed in the status as
    # "connecting: no run, 0 chunks" for all of its script_timeout_sec.
    engine = engine_for(tmp_path, "output = input\n", "output = input\n", run_transition="Stop")
    _code, reports = run_engine(engine, Chunks(1))
    announced = [(r.in_script, r.state, r.run_number, r.detail) for r in reports if r.in_script]
    assert announced == [
        (PROC, WorkerState.RUNNING, 5, "run 5, 70 events: processing chunk 1"),
        (POST, WorkerState.RUNNING, 5, "run 5, 70 events: processing chunk 1"),
    ]


@pytest.mark.parametrize(
    ("raise_", "message"),
    [
        ("raise KeyboardInterrupt", "KeyboardInterrupt"),
        ("raise SystemExit(0)", "SystemExit: 0"),
        ("raise SystemExit(3)", "SystemExit: 3"),
        ("import sys; sys.exit('bad chunk')", "SystemExit: bad chunk"),
        ("raise GeneratorExit", "GeneratorExit"),
        ("raise BaseException('base')", "BaseException: base"),
    ],
)
@pytest.mark.parametrize("script", [PROC, POST])
def test_any_base_exception_from_a_script_loses_that_chunk_only(
    tmp_path, caplog, raise_, message, script
):
    failing = (
        "workspaces['calls'] = workspaces.get('calls', 0) + 1\n"
        f"if workspaces['calls'] == 2:\n    {raise_}\n"
        "output = input\n"
    )
    proc, post = (failing, None) if script == PROC else ("output = input\n", failing)
    engine = engine_for(tmp_path, proc, post, run_transition="Stop")
    with caplog.at_level(logging.ERROR):
        code, reports = run_engine(engine, Chunks(3))
    assert code is WorkerExit.STOPPED
    last = reports[-1]
    assert last.state is WorkerState.RUN_ENDED
    assert last.errors == 1
    assert last.last_error == f"{tmp_path / script}:3: {message}"
    assert "line 3, in <module>" in caplog.text
    assert f"{message}" in caplog.text
    if script == PROC:
        assert last.chunks == 2  # chunk 2 lost
        assert events_in(tmp_path / "out" / "result.h5") == 140
    else:
        assert last.chunks == 3  # accumulated; only its post-processing was lost
        assert events_in(tmp_path / "out" / "result.h5") == 210


# --- stop between the phases of a step (15.3) ----------------------------------------------

STOP_IN_PROC = """
workspaces['calls'] = workspaces.get('calls', 0) + 1
if workspaces['calls'] == 2:
    workspaces['stop'].request('test')
output = input
"""

POST_MARKS = """
workspaces['post'] = workspaces.get('post', 0) + 1
output = input
"""


def test_a_stop_in_the_processing_script_skips_the_rest_of_the_step(tmp_path, caplog):
    engine = engine_for(tmp_path, STOP_IN_PROC, POST_MARKS)
    stop = StopToken()
    engine.workspaces["stop"] = stop
    with caplog.at_level(logging.INFO):
        code, reports = run_engine(engine, Chunks(3), stop)
    assert code is WorkerExit.STOPPED
    assert engine.workspaces["post"] == 1  # chunk 2 was neither accumulated nor post-processed
    assert engine.accumulation.value().bins.size().sum().value == 70
    assert events_in(tmp_path / "out" / "result.h5") == 70
    assert reports[-1].in_script == ""
    assert reports[-1].chunks == 1
    assert "engine_stopping: test: a step abandoned" in caplog.text


@pytest.mark.parametrize(
    ("write_s", "on_disk", "logged"),
    [
        (None, 140, ""),  # a quick write: the pending output (chunk 2) is written
        (2.5, 70, "output_not_flushed: the last write took 2.5 s (more than 1 s at a stop)"),
    ],
)
def test_a_stop_between_steps_writes_a_pending_output_when_quick(
    tmp_path, caplog, write_s, on_disk, logged
):
    engine = engine_for(tmp_path, None, POST_MARKS)
    stop = StopToken()
    # Chunk 1 is written; chunk 2's output waits for its write (the write budget is spent);
    # the stop comes as the engine asks for chunk 3.
    listener = Chunks(3, on_extract=lambda n: stop.request("test") if n == 3 else None)
    engine.writer._next_allowed = float("inf")
    engine.writer.write = _first_only(engine.writer)
    if write_s is not None:
        ticks = iter(range(10**6))
        engine.writer._clock = lambda: next(ticks) * write_s  # every write seems that long
    with caplog.at_level(logging.INFO):
        code, _reports = run_engine(engine, listener, stop)
    assert code is WorkerExit.STOPPED
    assert events_in(tmp_path / "out" / "result.h5") == on_disk
    if logged:
        assert logged in caplog.text
    else:
        assert "output_not_flushed" not in caplog.text


def _first_only(writer):
    """Let the first write through at once, then spend the write budget: the others wait."""
    calls = []
    write = writer.write

    def limited(workspace, version, *, force=False, **options):
        calls.append(version)
        wrote = write(workspace, version, force=force or len(calls) == 1, **options)
        writer._next_allowed = float("inf")
        return wrote

    return limited


class _HalfWrite:
    """A workspace whose save writes part of the file, then meets the stop signal."""

    def save_hdf5(self, path: Path) -> None:
        Path(path).write_bytes(b"half a file")
        raise StopRequested("SIGTERM", "the output write")


def test_an_abandoned_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    writer = OutputWriter(tmp_path, "result")
    assert writer.write(sc.DataArray(sc.arange("x", 3.0)), 1)
    before = (tmp_path / "result.h5").read_bytes()
    with pytest.raises(StopRequested):
        writer.write(_HalfWrite(), 2, force=True)
    assert (tmp_path / "result.h5").read_bytes() == before
    assert temporaries(tmp_path) == []


def test_a_stop_signal_raises_only_inside_abandonable_work():
    stop = StopToken()
    stop._handle(15, None)  # outside: a flag only
    assert stop.requested
    assert stop.reason == "SIGTERM"
    with stop.abandonable("the processing script"):
        pass  # a stop asked for earlier does not raise: the phase checks see it
    with pytest.raises(StopRequested) as raised:
        stop.check()
    assert raised.value.phase == ""
    fresh = StopToken()
    with pytest.raises(StopRequested) as raised, fresh.abandonable("the processing script"):
        fresh._handle(15, None)
    assert (raised.value.reason, raised.value.phase) == ("SIGTERM", "the processing script")
    assert fresh.abandoning == ""


# --- the real daemon ------------------------------------------------------------------------

SLEEPER = """
import pathlib, subprocess, time
workspaces['calls'] = workspaces.get('calls', 0) + 1
if workspaces['calls'] == 2:
    subprocess.Popen(['sleep', '60'])
    pathlib.Path({mark!r}).write_text('sleeping')
    time.sleep(20)
output = input
"""

SWALLOWER = """
import pathlib, time
try:
    pathlib.Path({mark!r}).write_text('sleeping')
    time.sleep(20)
except BaseException:
    time.sleep(20)
output = input
"""


STOP_BOUND_S = 5.0
"""``stop_timeout``: the supervisor's kill grace for a stopping worker is min(4 s, this), so a
worker that ends by itself (no ``worker_killed``) took less than the issue's 5 s."""


def daemon_config(tmp_path: Path, **extra) -> dict:
    return {
        "instrument": "FAKE",
        "listener": "fake",
        "engine": "embedded",
        "script_dir": str(tmp_path),
        "output_dir": str(tmp_path / "out"),
        "status_file": str(tmp_path / "status.json"),
        "update_every": 0.3,
        "stop_timeout": STOP_BOUND_S,
        "listener_options": {"event_rate": 10_000, "pixel_count": 64},
        **extra,
    }


@pytest.fixture
def daemons():
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()
        daemon.kill_left_over()


def start(tmp_path: Path, daemons: list[Daemon], raw: dict, **scripts: str) -> Daemon:
    for name, source in scripts.items():
        (tmp_path / f"reduce_FAKE_live_{name}.py").write_text(source)
    daemon = Daemon(tmp_path, raw)
    daemons.append(daemon)
    return daemon


def assert_stopped_promptly(daemon: Daemon, *, by_itself: bool = True) -> str:
    """SIGTERM: the daemon exits 0 and nothing it started is left. With ``by_itself`` its
    worker ended by itself with status 0 before the supervisor's SIGKILL (STOP_BOUND_S: the
    issue's bound, kept by the supervisor's clock, not asserted on ours; bench/stop_time.py
    prints the times); without, that SIGKILL may have been the bound."""
    code, _took = daemon.stop()
    text = daemon.text()
    assert code == 0, text
    if by_itself:
        assert "worker_killed" not in text, text
        assert "ended with exit status 0 (STOPPED)" in text, text
    assert daemon.left_over() == [], text
    assert len(daemon.seen) >= 1
    return text


def temporaries(folder: Path) -> list[str]:
    """The temporary files of output writes in ``folder`` (``.result...``: hidden, renamed when
    complete)."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".result")]


def status(tmp_path: Path) -> dict:
    try:
        return json.loads((tmp_path / "status.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.parametrize(
    ("scripts", "abandoned"),
    [
        ({"proc": SLEEPER}, "the processing script reduce_FAKE_live_proc.py abandoned"),
        (
            {"proc": "output = input\n", "post_proc": SLEEPER},
            "the post-processing script reduce_FAKE_live_post_proc.py abandoned",
        ),
    ],
    ids=["processing", "post-processing"],
)
@pytest.mark.slow
def test_sigterm_during_a_20_s_sleep_in_a_script(tmp_path, daemons, scripts, abandoned):
    mark = tmp_path / "sleeping"
    sources = {name: source.format(mark=str(mark)) for name, source in scripts.items()}
    daemon = start(tmp_path, daemons, daemon_config(tmp_path), **sources)
    assert daemon.wait_for(mark.exists, 60), daemon.text()
    assert daemon.wait_for(lambda: len(daemon.seen) >= 2, 5)  # the worker and `sleep 60`
    text = assert_stopped_promptly(daemon)
    assert f"engine_stopping: SIGTERM: {abandoned}" in text
    out = tmp_path / "out"
    assert events_in(out / "result.h5") > 0  # chunk 1's output, whole
    assert temporaries(out) == []


def test_sigterm_with_a_script_that_swallows_the_stop(tmp_path, daemons):
    mark = tmp_path / "sleeping"
    daemon = start(
        tmp_path, daemons, daemon_config(tmp_path), proc=SWALLOWER.format(mark=str(mark))
    )
    assert daemon.wait_for(mark.exists, 60), daemon.text()
    text = assert_stopped_promptly(daemon)
    assert "stop_deadline: still running 3.0 s after the stop request (SIGTERM)" in text


IN_C_WITH_THE_GIL = """
import pathlib
pathlib.Path({mark!r}).write_text('in C')
sum(range(10**12))  # one C call that holds the GIL for hours: no Python code runs meanwhile
output = input
"""


@pytest.mark.slow
def test_sigterm_with_a_script_in_c_code_holding_the_gil(tmp_path, daemons):
    # Neither the signal handler nor the stop deadline can run: the supervisor's kill grace
    # (4 s, at most stop_timeout) is the bound, and the daemon still exits 0, nothing left.
    mark = tmp_path / "sleeping"
    daemon = start(
        tmp_path, daemons, daemon_config(tmp_path), proc=IN_C_WITH_THE_GIL.format(mark=str(mark))
    )
    assert daemon.wait_for(mark.exists, 60), daemon.text()
    code, _took = daemon.stop()
    text = daemon.text()
    assert code == 0, text
    assert "did not stop 4.0 s after SIGTERM: SIGKILL to its process group" in text
    assert daemon.left_over() == [], text


LEAVES_A_THREAD = """
import pathlib, threading, time
if 'thread' not in workspaces:
    workspaces['thread'] = threading.Thread(target=time.sleep, args=(600,))  # not a daemon
    workspaces['thread'].start()
    pathlib.Path({mark!r}).write_text('started')
output = input
"""


def test_sigterm_with_a_thread_a_script_left_running(tmp_path, daemons):
    mark = tmp_path / "started"
    source = LEAVES_A_THREAD.format(mark=str(mark))
    daemon = start(tmp_path, daemons, daemon_config(tmp_path), proc=source)
    assert daemon.wait_for(mark.exists, 60), daemon.text()
    text = assert_stopped_promptly(daemon)
    # Python's own exit would wait for the thread for ever; the worker ends without it.
    assert "stop_deadline" not in text
    assert "exit status 0 (STOPPED)" in text


BIG = 6 * 10**7


@pytest.mark.slow  # two chunks of 3x10^7 events: the size, about 10 s and 1.5 GB
@pytest.mark.parametrize("moment", ["in a step", "in an output write"])
def test_sigterm_on_6e7_accumulated_events(tmp_path, daemons, moment):
    raw = daemon_config(
        tmp_path, update_every=1.0, listener_options={"event_rate": 3 * 10**7, "pixel_count": 1024}
    )
    daemon = start(tmp_path, daemons, raw, proc="output = input\n")
    out = tmp_path / "out"
    assert daemon.wait_for(lambda: status(tmp_path).get("events", 0) >= BIG, 90), daemon.text()
    if moment == "in an output write":
        assert daemon.wait_for((out / "result.h5").exists, 30), daemon.text()
        assert daemon.wait_for(lambda: bool(temporaries(out)), 30), daemon.text()
    before = (out / "result.h5").stat() if (out / "result.h5").exists() else None
    # One C call of scipp's HDF5 writer on 6e7 events takes about a second (more on a busy
    # machine) and no signal handler runs inside it: on a loaded machine the supervisor's kill
    # grace may be what ends the worker, and the daemon still exits 0 within it.
    text = assert_stopped_promptly(daemon, by_itself=False)
    if before is not None:
        assert events_in(out / "result.h5") >= 3 * 10**7 - 10**5  # whole, readable
    if "worker_killed" not in text and "stop_deadline" not in text:
        assert temporaries(out) == []  # an abandoned write removes its temporary


@pytest.fixture
def installed_stop():
    """A StopToken installed in this (the main) thread, with everything it changes restored."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
    saved_hook = sys.unraisablehook
    stop = StopToken()
    stop.install(exit_after_s=None)
    try:
        yield stop
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.set_wakeup_fd(-1)
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        sys.unraisablehook = saved_hook


class _Collected:
    """An object whose collection runs a callback (as the garbage collector does mid-write)."""


def _signal_in_a_callback_then_wait(stop: StopToken) -> None:
    item = _Collected()
    # The signal's handler runs inside the callback, where Python ignores exceptions.
    keep = weakref.ref(item, lambda _ref: signal.raise_signal(signal.SIGTERM))
    del item
    assert keep() is None
    assert stop.requested  # the handler ran, and its StopRequested was swallowed
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.001)  # raised again here, STOP_RETRY_S later


def test_a_stop_swallowed_by_a_callback_is_raised_again(installed_stop):
    stop = installed_stop
    with pytest.raises(StopRequested) as raised, stop.abandonable("the output write"):
        _signal_in_a_callback_then_wait(stop)
    assert (raised.value.reason, raised.value.phase) == ("SIGTERM", "the output write")
    assert stop.abandoning == ""


def test_a_real_sigterm_interrupts_a_sleep_inside_abandonable_work(installed_stop):
    stop = installed_stop
    threading.Timer(0.2, os.kill, args=(os.getpid(), signal.SIGTERM)).start()
    began = time.monotonic()
    with pytest.raises(StopRequested), stop.abandonable("the processing script"):
        time.sleep(20)
    assert time.monotonic() - began < 5
