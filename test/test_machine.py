"""Every supervisor decision, stepped on a fake clock with a fake worker (no process, no sleep).

The harness carries out the machine's actions as the daemon loop does (a Start gets a new fake
pid and a Started event back) and records them, so each test states exactly which signals,
kills, notifications and starts a sequence of events leads to.
"""

from __future__ import annotations

import itertools
import logging
import signal
from pathlib import Path
from typing import Any

import pytest

from livereduce.config import config_from_mapping
from livereduce.protocol import Progress, Resume, WorkerExit, WorkerState
from livereduce.supervisor.actions import (
    DaemonExit,
    Exit,
    KillGroup,
    Notify,
    NotifyKind,
    ResyncWatcher,
    SendSignal,
    Start,
)
from livereduce.supervisor.events import (
    ConfigSaved,
    Exited,
    MemoryOver,
    ScriptsSaved,
    SignalReceived,
    SpawnFailed,
    Started,
    Tick,
    WorkerReport,
)
from livereduce.supervisor.machine import Machine, State
from livereduce.supervisor.memory import MemoryExceeded, MemoryLimit
from livereduce.supervisor.watch import ConfigChanged, ScriptsChanged

WALL0 = 1_700_000_000.0
PROC = "reduce_FAKE_live_proc.py"
POST = "reduce_FAKE_live_post_proc.py"


class Harness:
    """The machine for a FAKE configuration (``raw`` overrides), a fake clock and workers."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        watchdog_s: float | None = None,
        start_s: float = 0.0,
        **raw: Any,
    ) -> None:
        (tmp_path / PROC).write_text("output = input\n")
        self.config = config_from_mapping(
            {
                "instrument": "FAKE",
                "listener": "fake",
                "script_dir": ".",
                "update_every": 1,
                "heartbeat_timeout_sec": 60,
                **raw,
            },
            tmp_path / "livereduce.conf",
        )
        self.now = start_s  # a monotonic clock, where 0 is not special
        self.scripts_exist = True
        self.machine = Machine(
            self.config,
            clock=lambda: self.now,
            wall=lambda: WALL0 + self.now - start_s,
            scripts_exist=lambda: self.scripts_exist,
            watchdog_interval_s=watchdog_s,
        )
        self._pids = itertools.count(1000)
        self.pid: int | None = None
        self.actions: list[Any] = []
        self.starts: list[tuple[float, Resume | None]] = []
        self.exit: DaemonExit | None = None

    # -- driving -----------------------------------------------------------------------------

    def step(self, event: Any) -> list[Any]:
        done = self.machine.step(event)
        for action in done:
            self.actions.append(action)
            if isinstance(action, Start):
                self.starts.append((self.now, action.resume))
                self.pid = next(self._pids)
                self.step(Started(self.pid))
            elif isinstance(action, Exit):
                self.exit = action.status
        return done

    def tick(self) -> list[Any]:
        return self.step(Tick())

    def run_until(self, t: float, *, dt: float = 0.5, beat: dict[str, Any] | None = None) -> None:
        """Tick every ``dt`` up to ``t``; with ``beat``, the worker reports that each tick."""
        while self.now < t - 1e-9:
            self.now = min(self.now + dt, t)
            if beat is not None and self.pid is not None and self.machine.worker is not None:
                self.report(**beat)
            self.tick()

    def report(self, state: WorkerState = WorkerState.RUNNING, **fields: Any) -> list[Any]:
        assert self.pid is not None
        progress = Progress(state=state, pid=self.pid, **fields)
        return self.step(WorkerReport(self.pid, progress, self.now))

    def exited(self, status: int, **fields: Any) -> list[Any]:
        assert self.pid is not None
        pid, self.pid = self.pid, None
        return self.step(Exited(pid=pid, status=status, **fields))

    # -- observing ---------------------------------------------------------------------------

    def of(self, kind: type) -> list[Any]:
        return [a for a in self.actions if isinstance(a, kind)]

    def status(self) -> dict[str, Any]:
        return self.machine.status()

    def reasons(self) -> list[str]:
        return [entry["reason"] for entry in self.status()["restart_history"]]


@pytest.fixture(autouse=True)
def info_logs(caplog):
    caplog.set_level(logging.INFO)


@pytest.fixture
def make(tmp_path):
    def make(**kwargs: Any) -> Harness:
        return Harness(tmp_path, **kwargs)

    return make


def running(h: Harness, **fields: Any) -> int:
    """Start the first worker and have it report that it runs; returns its pid."""
    h.tick()
    h.report(WorkerState.RUNNING, run_number=7, chunks=1, events=100, **fields)
    assert h.pid is not None
    return h.pid


# -- start and READY -------------------------------------------------------------------------


def test_state_since_is_when_the_shown_state_last_changed(make):
    h = make()
    h.tick()
    h.now = 2.0
    h.report(WorkerState.CONNECTING, detail="connecting to 127.0.0.1:31415")
    assert (h.status()["state"], h.status()["state_since"]) == ("connecting", WALL0 + 2.0)
    h.now = 30.0
    h.report(WorkerState.CONNECTING, detail="reconnecting to 127.0.0.1:31415")  # no change
    h.tick()
    assert h.status()["state_since"] == WALL0 + 2.0
    h.now = 31.5
    h.report(WorkerState.RUNNING, run_number=7, chunks=1, events=100)
    assert (h.status()["state"], h.status()["state_since"]) == ("running", WALL0 + 31.5)


def test_ready_when_the_worker_is_connected_not_before(make):
    h = make()
    h.tick()
    assert h.starts == [(0.0, None)]
    assert h.machine.state is State.WORKING
    h.report(WorkerState.STARTING)
    h.report(WorkerState.CONNECTING, detail="connecting to 127.0.0.1:31415")
    assert h.of(Notify) == []
    assert h.status()["state"] == "connecting"
    assert "connecting to 127.0.0.1:31415" in h.machine.status_line()
    h.now = 1.0
    h.report(WorkerState.WAITING_FOR_RUN, detail="no run")
    assert [n.kind for n in h.of(Notify)] == [NotifyKind.READY]
    h.report(WorkerState.RUNNING, chunks=1)
    assert [n.kind for n in h.of(Notify)] == [NotifyKind.READY]  # once


@pytest.mark.parametrize("state", [WorkerState.RUNNING, WorkerState.NO_DATA])
def test_ready_on_running_and_no_data(make, state):
    h = make()
    h.tick()
    h.report(state)
    assert [n.kind for n in h.of(Notify)] == [NotifyKind.READY]


# -- heartbeat, backoff -----------------------------------------------------------------------


def test_a_silent_worker_is_aborted_then_killed_and_replaced_with_growing_delays(make, caplog):
    h = make(heartbeat_timeout_sec=10)
    first = running(h)
    h.run_until(10.0)
    assert h.of(SendSignal) == []  # silent for exactly the timeout: still fine
    h.run_until(10.5)
    assert h.of(SendSignal) == [SendSignal(first, signal.SIGABRT)]
    assert h.machine.state is State.RESTARTING
    assert "heartbeat_timeout: no heartbeat from worker pid 1000 for 10.5 s" in caplog.text
    h.run_until(12.0)
    assert h.of(KillGroup) == []
    h.run_until(12.5)  # HUNG_STOP_GRACE_S after the SIGABRT
    assert h.of(KillGroup) == [KillGroup(first)]
    h.exited(-signal.SIGKILL, stack='File "reduce_FAKE_live_proc.py", line 3 in <module>')
    assert 'worker_stack: pid 1000, where it was:\nFile "reduce_FAKE_live_proc.py"' in caplog.text
    h.tick()
    assert h.starts == [(0.0, None), (12.5, None)]  # the first hang restarts at once
    h.report(WorkerState.RUNNING)
    h.run_until(23.0)
    assert len(h.of(SendSignal)) == 2
    h.exited(-signal.SIGABRT)
    h.run_until(27.5)
    assert len(h.starts) == 2
    assert h.status()["state"] == "backoff"
    assert h.machine.status_line() == "backoff after heartbeat_timeout: next worker start in 1 s"
    h.run_until(28.0)  # 5 s after the second hang
    assert [t for t, _ in h.starts] == [0.0, 12.5, 28.0]
    status = h.status()
    assert h.reasons() == ["heartbeat_timeout", "heartbeat_timeout"]
    assert status["errors"] == 2
    assert status["last_error"].startswith("no heartbeat from worker pid 1001 for 10.5 s")


def test_crash_backoff_grows_and_a_stable_worker_resets_it(make):
    h = make()
    h.tick()
    for expected_delay in (1.0, 2.0, 4.0):
        h.report(WorkerState.RUNNING)
        h.exited(WorkerExit.CRASHED)
        crashed_at, count = h.now, len(h.starts)
        h.run_until(crashed_at + expected_delay - 0.5)
        assert len(h.starts) == count
        h.run_until(crashed_at + expected_delay)
        assert h.starts[-1][0] == crashed_at + expected_delay
    started = h.now
    h.run_until(started + 61, beat={"state": WorkerState.RUNNING})  # stable: backoffs reset
    h.exited(WorkerExit.CRASHED)
    crashed_at = h.now
    h.run_until(crashed_at + 1.0)
    assert h.starts[-1][0] == crashed_at + 1.0
    assert h.reasons() == ["worker_crashed"] * 4
    assert h.status()["errors"] == 4


def test_exit_status_3_is_a_boot_failure_only_before_progress(make, caplog):
    h = make()
    h.tick()
    h.report(WorkerState.CONNECTING)
    h.exited(WorkerExit.BOOT_FAILURE)
    assert h.reasons() == ["boot_failure"]
    assert h.machine.status_line() == "backoff after boot_failure: next worker start in 5 s"
    h.run_until(5.0)
    assert [t for t, _ in h.starts] == [0.0, 5.0]
    # A script's os._exit(3) after the worker connected: a crash, with the crash backoff.
    h.report(WorkerState.RUNNING, in_script=PROC)
    h.exited(3)
    assert h.reasons() == ["boot_failure", "worker_crashed"]
    h.run_until(6.0)
    assert [t for t, _ in h.starts] == [0.0, 5.0, 6.0]
    h.report(WorkerState.WAITING_FOR_RUN)
    h.exited(WorkerExit.ENGINE_FAILURE)  # 4 after progress: a crash too
    assert h.reasons()[-1] == "worker_crashed"
    assert "ended on its own with exit status 3 (BOOT_FAILURE) after 0.0 s" in caplog.text


def test_a_worker_program_that_cannot_start_backs_off_as_a_boot_failure(make):
    h = make()
    h.machine.step(Tick())  # the Start action is not carried out here: the spawn failed
    h.step(SpawnFailed("No such file or directory: 'python'"))
    assert h.machine.state is State.BACKOFF
    assert h.reasons() == ["boot_failure"]
    assert (
        h.status()["last_error"] == "cannot start the worker: No such file or directory: 'python'"
    )


# -- memory --------------------------------------------------------------------------------


def excess(pid: int, rss_mib: int = 600) -> MemoryExceeded:
    limit = MemoryLimit(limit_bytes=500 * 2**20, base_bytes=1000 * 2**20, percent=50, source="x")
    return MemoryExceeded(pid=pid, rss_bytes=rss_mib * 2**20, limit=limit)


def test_memory_overrun_kills_at_once_and_backs_off_when_it_repeats(make, caplog):
    h = make()
    first = running(h)
    h.step(MemoryOver(excess(first)))
    assert h.of(KillGroup) == [KillGroup(first)]
    assert h.of(SendSignal) == []  # no SIGTERM and no grace: waiting only lets it grow
    assert (
        "memory_exceeded: worker pid 1000 uses 600.0 MiB, above the limit of 500.0" in caplog.text
    )
    h.exited(-signal.SIGKILL, peak_rss_bytes=610 * 2**20)
    assert "peak RSS 610.0 MiB" in caplog.text
    h.tick()
    assert [t for t, _ in h.starts] == [0.0, 0.0]
    second = h.pid
    h.report(WorkerState.RUNNING)
    h.step(MemoryOver(excess(second)))
    h.exited(-signal.SIGKILL)
    h.run_until(1.5)
    assert len(h.starts) == 2
    h.run_until(2.0)
    assert [t for t, _ in h.starts] == [0.0, 0.0, 2.0]
    status = h.status()
    assert h.reasons() == ["memory_exceeded", "memory_exceeded"]
    assert status["errors"] == 2
    assert status["worker_peak_rss_bytes"] is None  # the second worker's peak was not known
    assert status["last_error"].startswith("worker pid 1001 uses 600.0 MiB")


def test_a_worker_being_replaced_is_killed_at_once_when_over_but_not_counted(make):
    h = make()
    first = running(h)
    h.step(SignalReceived(signal.SIGHUP))
    h.step(MemoryOver(excess(first)))
    assert h.of(KillGroup) == [KillGroup(first)]
    h.step(MemoryOver(excess(first)))
    assert h.of(KillGroup) == [KillGroup(first)]  # once
    assert h.reasons() == ["sighup"]
    assert h.status()["errors"] == 0
    h.step(MemoryOver(excess(4242)))  # a reading of some other pid: nothing
    assert len(h.of(KillGroup)) == 1


# -- stop ----------------------------------------------------------------------------------


def test_sigterm_stops_the_worker_kills_its_group_after_4_s_and_exits_0(make, caplog):
    h = make()  # stop_timeout 20 by default: only an outer bound
    pid = running(h)
    h.now = 5.0
    h.step(SignalReceived(signal.SIGTERM))
    assert h.of(SendSignal) == [SendSignal(pid, signal.SIGTERM)]
    assert [n.kind for n in h.of(Notify)][-1] is NotifyKind.STOPPING
    assert h.status()["state"] == "stopping"
    h.run_until(8.5)
    assert h.of(KillGroup) == []
    h.run_until(9.0)
    assert h.of(KillGroup) == [KillGroup(pid)]
    assert "worker_killed: pid 1000 did not stop 4.0 s after SIGTERM" in caplog.text
    assert h.exit is None
    h.exited(-signal.SIGKILL)
    assert h.exit is DaemonExit.OK
    assert h.machine.state is State.STOPPED
    assert h.starts == [(0.0, None)]


def test_stop_timeout_bounds_the_grace_and_a_second_sigterm_kills_at_once(make):
    h = make(stop_timeout=1.0)
    pid = running(h)
    h.step(SignalReceived(signal.SIGINT))
    h.run_until(1.0)
    assert h.of(KillGroup) == [KillGroup(pid)]
    h = make(stop_timeout=1.0)
    pid = running(h)
    h.step(SignalReceived(signal.SIGTERM))
    h.step(SignalReceived(signal.SIGTERM))
    assert h.of(KillGroup) == [KillGroup(pid)]
    h.exited(0)
    assert h.exit is DaemonExit.OK


def test_sigterm_without_a_worker_exits_at_once(make):
    h = make()
    h.tick()
    h.report(WorkerState.CONNECTING)
    h.exited(WorkerExit.BOOT_FAILURE)
    assert h.machine.state is State.BACKOFF
    h.step(SignalReceived(signal.SIGTERM))
    assert h.exit is DaemonExit.OK
    h.run_until(30.0)
    assert len(h.starts) == 1


def test_sigterm_while_a_hung_worker_is_being_replaced_keeps_the_earlier_deadline(make):
    h = make(heartbeat_timeout_sec=10)
    pid = running(h)
    h.run_until(10.5)  # SIGABRT sent at 10.5, SIGKILL due at 12.5
    h.step(SignalReceived(signal.SIGTERM))
    assert h.of(SendSignal) == [SendSignal(pid, signal.SIGABRT)]
    h.run_until(12.5)
    assert h.of(KillGroup) == [KillGroup(pid)]
    h.exited(-signal.SIGKILL)
    assert h.exit is DaemonExit.OK
    assert len(h.starts) == 1


def test_sigquit_logs_the_state_and_exits_131(make, caplog):
    h = make()
    pid = running(h)
    h.step(SignalReceived(signal.SIGQUIT))
    assert '"worker_pid": 1000' in caplog.text.split("quit_requested: SIGQUIT: state at exit: ")[1]
    h.exited(0)
    assert h.exit is DaemonExit.QUIT
    assert h.of(SendSignal) == [SendSignal(pid, signal.SIGTERM)]


# -- reload, scripts, configuration ------------------------------------------------------------


def test_sighup_reloads_at_info_and_ready_follows_the_new_worker(make, caplog):
    caplog.set_level(logging.INFO)
    h = make()
    first = running(h)
    h.step(SignalReceived(signal.SIGHUP))
    assert h.of(SendSignal) == [SendSignal(first, signal.SIGTERM)]
    assert h.of(ResyncWatcher) == [ResyncWatcher()]
    kinds = [n.kind for n in h.of(Notify)]
    assert kinds == [NotifyKind.READY, NotifyKind.RELOADING]
    h.exited(0)
    h.tick()
    assert len(h.starts) == 2
    h.report(WorkerState.CONNECTING)
    assert [n.kind for n in h.of(Notify)][-1] is NotifyKind.RELOADING
    h.report(WorkerState.WAITING_FOR_RUN)
    assert [n.kind for n in h.of(Notify)][-1] is NotifyKind.READY
    assert h.reasons() == ["sighup"]
    assert [r.levelname for r in caplog.records if "SIGHUP" in r.getMessage()] == ["INFO"] * 2


def change(*names: str) -> ScriptsChanged:
    return ScriptsChanged(
        paths=tuple(Path(n) for n in names), detected_by="inotify", saved_at=WALL0 - 1
    )


def test_script_saves_restart_at_once_unless_broken_or_gone(make, caplog):
    h = make()
    first = running(h)
    h.step(ScriptsSaved(change=change(PROC), exists=True, problems=(f"{PROC}:2: bad",)))
    assert h.of(SendSignal) == []
    assert h.status()["scripts_problem"] == (
        f"saved script not loaded, the worker runs the previous version: {PROC}:2: bad"
    )
    h.step(ScriptsSaved(change=change(PROC), exists=False))
    assert h.of(SendSignal) == []
    assert "scripts_missing: " in caplog.text
    h.step(ScriptsSaved(change=change(PROC), exists=True))
    assert h.of(SendSignal) == [SendSignal(first, signal.SIGTERM)]
    assert h.status()["scripts_problem"] == ""
    h.exited(0)
    h.now = 2.0
    h.tick()
    h.report(WorkerState.RUNNING, chunks=1)
    assert h.status()["last_reload_latency_s"] == 3.0  # saved 1 s before the wall clock's 0
    assert h.reasons() == ["scripts_changed"]
    assert "scripts_picked_up: reduce_FAKE_live_proc.py: 3.00 s" in caplog.text


def test_no_worker_while_no_processing_script_exists(make):
    h = make()
    h.scripts_exist = False
    h.run_until(30.0)
    assert h.starts == []
    assert h.status()["state"] == "held"
    assert "no worker runs until one appears" in h.status()["scripts_problem"]
    (ready,) = h.of(Notify)  # systemd's start returns: only a person ends this wait
    assert ready.kind is NotifyKind.READY
    assert ready.text.startswith("no processing script in ")
    h.scripts_exist = True
    h.step(ScriptsSaved(change=change(PROC), exists=True))
    h.tick()
    assert h.starts == [(30.0, None)]


def config_change(new_md5: str = "b") -> ConfigChanged:
    return ConfigChanged(
        path=Path("livereduce.conf"), detected_by="inotify", old_md5="a", new_md5=new_md5
    )


def test_config_changes(make, caplog):
    h = make()
    pid = running(h)
    h.step(ConfigSaved(change=config_change(), restored=True))
    assert h.status()["config_problem"] == ""
    h.step(ConfigSaved(change=config_change(), error="livereduce.conf: not JSON"))
    assert h.of(SendSignal) == []
    assert "config_change_rejected: " in caplog.text
    assert "config_restored: " in caplog.text
    # the status says the file on disk is not the one in force, until it is again
    assert h.status()["config_problem"] == (
        "the configuration file on disk cannot be used, the one read at start runs on "
        "(the next start of the service fails): livereduce.conf: not JSON"
    )
    h.step(ConfigSaved(change=config_change(), restored=True))
    assert h.status()["config_problem"] == ""
    h.step(ConfigSaved(change=config_change()))
    assert h.of(SendSignal) == [SendSignal(pid, signal.SIGTERM)]
    h.exited(0)
    assert h.exit is DaemonExit.OK
    assert h.reasons() == []


def test_a_run_ended_with_stop_stays_up_until_a_change(make):
    h = make(run_transition="Stop")
    running(h)
    h.report(WorkerState.RUN_ENDED)
    h.exited(WorkerExit.STOPPED)
    h.run_until(600.0)
    assert len(h.starts) == 1
    assert h.status()["state"] == "run_ended"
    assert h.status()["restarts"] == 0
    h.step(SignalReceived(signal.SIGHUP))
    h.tick()
    assert [t for t, _ in h.starts] == [0.0, 600.0]


def test_an_unasked_exit_0_is_restarted(make):
    h = make()
    running(h)
    h.exited(WorkerExit.STOPPED)
    assert h.reasons() == ["worker_crashed"]  # after progress every status is a crash


# -- script time limits ----------------------------------------------------------------------


def test_a_slow_post_processing_within_its_limit_is_progress(make, caplog):
    h = make(update_every=30, watchdog_s=60.0)  # post-processing limit max(600, 60) s
    pid = running(h)
    h.now = 10.0
    h.report(WorkerState.RUNNING, in_script=POST, in_script_since=WALL0 + 9)
    h.run_until(610.0, dt=1.0)
    assert h.of(SendSignal) == []
    pings = [i for i, a in enumerate(h.actions) if a == Notify(NotifyKind.WATCHDOG)]
    assert len(pings) == 11  # every 60 s from 0 to 600: a slow script keeps the service
    assert f"in {POST} for 600 s" in h.machine.status_line()
    h.run_until(611.0, dt=1.0)
    assert h.of(SendSignal) == [SendSignal(pid, signal.SIGABRT)]
    assert (
        f"script_timeout: {POST} ran for 601.0 s in worker pid 1000, past its "
        "script_timeout_sec of 600 s (1 in a row)"
    ) in caplog.text
    assert h.reasons() == ["script_timeout"]


def test_a_script_past_its_limit_three_times_in_a_row_is_held_until_it_changes(make, caplog):
    h = make(script_timeout_sec={"processing": 20})
    h.tick()
    for n in range(3):
        h.report(WorkerState.RUNNING, in_script=PROC)
        t0 = h.now
        h.run_until(t0 + 20.5)
        assert h.of(SendSignal)[-1] == SendSignal(h.pid, signal.SIGABRT)
        h.exited(-signal.SIGABRT)
        h.run_until(h.now + 30.0)
        assert len(h.starts) == (n + 2 if n < 2 else 3)
    status = h.status()
    assert status["state"] == "held"
    assert status["scripts_problem"] == (
        f"{PROC} ran past its script_timeout_sec (20 s) 3 times in a row: no worker runs until "
        "it changes (or SIGHUP)"
    )
    assert h.reasons() == ["script_timeout"] * 3
    assert "; start when a script changes (held); restart #3" in caplog.text
    assert status["errors"] == 3
    h.run_until(h.now + 3600.0, dt=10.0)
    assert len(h.starts) == 3  # never an endless loop
    h.step(ScriptsSaved(change=change(PROC), exists=True))
    h.tick()
    assert len(h.starts) == 4
    assert h.status()["state"] == "starting"


def test_a_script_that_finishes_in_time_breaks_the_run_of_timeouts(make):
    h = make(script_timeout_sec={"processing": 20})
    h.tick()
    for _ in range(2):
        h.report(WorkerState.RUNNING, in_script=PROC)
        h.run_until(h.now + 20.5)
        h.exited(-signal.SIGABRT)
        h.run_until(h.now + 30.0)
    h.report(WorkerState.RUNNING, in_script=PROC)
    h.now += 5
    h.report(WorkerState.RUNNING, in_script="", chunks=1)  # it finished this time
    h.report(WorkerState.RUNNING, in_script=PROC)
    h.run_until(h.now + 20.5)
    h.exited(-signal.SIGABRT)
    h.run_until(h.now + 30.0)
    assert len(h.starts) == 4
    assert h.machine.state is not State.HELD


# -- nothing lost across restarts -------------------------------------------------------------


def test_the_unfinished_run_is_handed_to_the_next_worker(make):
    h = make()
    h.tick()
    h.report(WorkerState.RUNNING, unfinished_run=7, unfinished_run_start_ns=123)
    h.exited(-signal.SIGKILL)
    h.run_until(1.0)
    assert h.starts[-1] == (1.0, Resume(run_number=7, start_ns=123))
    assert h.status()["resume"] == {"run_number": 7, "start_ns": 123}
    h.report(WorkerState.WAITING_FOR_RUN)  # the run was written: cleared
    h.exited(-signal.SIGKILL)
    h.run_until(3.0)
    assert h.starts[-1] == (3.0, None)


def test_a_run_that_kills_every_worker_is_given_up_after_three(make, caplog):
    h = make()
    h.tick()
    for lost in range(4):  # the first worker was handed no run: its loss does not count
        h.report(WorkerState.RUNNING, unfinished_run=7, unfinished_run_start_ns=123)
        h.step(MemoryOver(excess(h.pid)))
        h.exited(-signal.SIGKILL)
        h.run_until(h.now + 10.0)
        assert ("resume_given_up" in caplog.text) is (lost == 3)
    resumes = [resume for _, resume in h.starts]
    again = Resume(run_number=7, start_ns=123)
    assert resumes == [None, again, again, again, None]
    assert "resume_given_up: run 7 lost 3 workers in a row (the last: memory_exceeded)" in (
        caplog.text
    )
    assert h.status()["resume"] is None
    assert h.status()["errors"] == 4


def test_a_worker_that_lasts_resets_the_count_of_lost_workers(make, caplog):
    h = make()
    h.tick()
    for uptime in (5.0, 5.0, 61.0, 5.0, 5.0):  # the third outlived STABLE_AFTER_S
        h.report(WorkerState.RUNNING, unfinished_run=7, unfinished_run_start_ns=123)
        h.run_until(h.now + uptime, beat={"unfinished_run": 7, "unfinished_run_start_ns": 123})
        h.exited(-signal.SIGSEGV)
        h.run_until(h.now + 20.0)
    assert "resume_given_up" not in caplog.text
    assert h.starts[-1][1] == Resume(run_number=7, start_ns=123)


def test_losses_while_completing_another_run_or_at_boot_count_afresh(make, caplog):
    h = make()
    h.tick()
    for run in (7, 7, 8, 8):
        h.report(WorkerState.RUNNING, unfinished_run=run, unfinished_run_start_ns=run)
        h.exited(-signal.SIGSEGV)
        h.run_until(h.now + 10.0)
    h.exited(WorkerExit.BOOT_FAILURE)  # never started: not the run's doing
    h.run_until(h.now + 10.0)
    assert "resume_given_up" not in caplog.text
    assert h.starts[-1][1] == Resume(run_number=8, start_ns=8)


# -- an honest status --------------------------------------------------------------------------


def test_failing_when_the_last_five_chunks_all_failed_or_wrote_nothing(make):
    h = make()
    h.tick()
    h.report(chunks=1, errors=0, results_written=1)
    for n in range(2, 6):
        h.report(chunks=n, errors=n - 1, results_written=1)
    assert h.status()["state"] == "running"  # four in a row
    h.report(chunks=6, errors=5, results_written=1)
    assert h.status()["state"] == "failing"
    assert h.machine.status_line().startswith("failing (the last 5 chunks all failed); running:")
    h.report(chunks=7, errors=5, results_written=2)
    assert h.status()["state"] == "running"
    for n in range(8, 12):
        h.report(chunks=n, errors=5, results_written=2)
    assert h.status()["state"] == "running"
    h.report(chunks=12, errors=5, results_written=2)
    assert h.status()["state"] == "failing"
    assert "no result written for 5 chunks" in h.machine.status_line()
    assert h.status()["errors"] == 5


def test_an_engine_that_does_not_count_results_is_not_failing_for_it(make):
    h = make()
    h.tick()
    for n in range(1, 10):
        h.report(chunks=n)
    assert h.status()["state"] == "running"


def report_1000_events_per_s(make, seconds: int) -> Harness:
    """A running worker reporting 1000 more events each second from 0 to ``seconds``."""
    h = make()
    h.tick()
    for second in range(0, seconds + 1):
        h.now = float(second)
        h.report(events=1000 * second)
    return h


def test_events_per_s_is_a_sliding_window_that_decays(make):
    h = report_1000_events_per_s(make, 20)
    assert h.status()["events_per_s"] == pytest.approx(1000.0)
    h.now = 25.0
    h.report(events=20_000)  # the run is over: nothing new
    assert h.status()["events_per_s"] == pytest.approx(5000 / 10)
    h.now = 31.0
    assert h.status()["events_per_s"] == 0.0


def test_errors_count_chunks_lost_and_workers_lost(make):
    h = make()
    h.tick()
    h.report(chunks=3, errors=2, last_error="ZeroDivisionError: division by zero")
    assert h.status()["last_error"] == "ZeroDivisionError: division by zero"
    h.exited(-signal.SIGSEGV)
    h.run_until(1.0)
    h.report(chunks=1, errors=1)
    status = h.status()
    assert status["errors"] == 2 + 1 + 1
    assert "ended on its own with signal SIGSEGV" in status["last_error"]


def test_progress_line_every_progress_every_sec(make, caplog):
    t0 = 1000.0
    h = make(progress_every_sec=30, start_s=t0)
    h.tick()
    for second in range(1, 31):
        h.now = t0 + second
        h.report(
            run_number=7,
            chunks=second,
            events=1000 * second,
            last_chunk_time=WALL0 + second - 2,
            results_written=second - 1 if second < 30 else 28,
        )
        h.tick()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress: ")]
    assert lines == [
        "progress: running: run 7, 30 chunks, 30,000 events, 1,000 events/s, lag 2.0 s, "
        "last result written 1.0 s ago (28 written)"
    ]
    h.run_until(t0 + 60.0, dt=1.0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress: ")]
    assert len(lines) == 2
    assert lines[1].startswith(
        "progress: running: run 7, 30 chunks, 30,000 events, 0 events/s, lag 32.0 s"
    )


# -- systemd keep-alive (see also test_keepalive.py) --------------------------------------------


def test_no_keepalive_while_the_worker_is_silent_and_again_at_once_when_it_beats(make):
    h = make(heartbeat_timeout_sec=90, watchdog_s=60.0)
    h.tick()
    h.run_until(50.0, beat={"state": WorkerState.RUNNING})
    h.run_until(130.0)
    pings = [a for a in h.actions if a == Notify(NotifyKind.WATCHDOG)]
    assert len(pings) == 2  # at 0 and 60; the one due at 120 is held back (silent since 50)
    h.report(WorkerState.RUNNING)
    h.tick()
    pings = [a for a in h.actions if a == Notify(NotifyKind.WATCHDOG)]
    assert len(pings) == 3


def test_only_a_change_marks_the_status_for_rewriting(make):
    h = make()
    running(h)
    assert h.machine.dirty
    h.machine.dirty = False  # the loop published it
    h.now = 0.5
    h.tick()
    assert not h.machine.dirty  # left to the periodic refresh
    h.report(chunks=2)
    assert h.machine.dirty


def test_sighup_or_a_save_ends_a_backoff_at_once(make):
    h = make()
    h.tick()
    h.report(WorkerState.CONNECTING)
    h.exited(WorkerExit.BOOT_FAILURE)  # 5 s of backoff
    h.now = 1.0
    h.step(SignalReceived(signal.SIGHUP))
    h.tick()
    assert [t for t, _ in h.starts] == [0.0, 1.0]
    h.report(WorkerState.CONNECTING)
    h.exited(WorkerExit.BOOT_FAILURE)  # the backoff started over: 5 s again
    h.now = 2.0
    h.tick()
    assert len(h.starts) == 2
    h.step(ScriptsSaved(change=change(PROC), exists=True))
    h.tick()
    assert [t for t, _ in h.starts] == [0.0, 1.0, 2.0]
    assert h.reasons() == ["boot_failure", "sighup", "boot_failure", "scripts_changed"]


def test_events_per_s_starts_over_when_a_replay_resets_the_run_never_negative(make):
    # Found against livereduce-replay: the SMS restarted, the run was replayed from its start
    # (data_reset), the worker's event count fell from 18,141 to 4,712 and the status said
    # "-1,338 events/s". A count that falls is a new baseline, not negative events.
    h = report_1000_events_per_s(make, 5)
    h.now = 6.0
    h.report(events=200)  # the replay replaced the run's 5000 events
    assert h.status()["events_per_s"] == 0.0
    h.now = 8.0
    h.report(events=1200)
    assert h.status()["events_per_s"] == pytest.approx(1000 / 2)


def test_a_new_worker_has_30_s_for_its_first_report_then_the_heartbeat_applies(make, caplog):
    h = make(heartbeat_timeout_sec=2)
    h.tick()
    h.run_until(30.0)
    assert h.of(SendSignal) == []  # importing its engine on a loaded machine
    h.run_until(30.5)
    assert h.of(SendSignal) == [SendSignal(1000, signal.SIGABRT)]
    assert "not one report since it started (allowed 30 s)" in caplog.text
    h.exited(-signal.SIGABRT)
    h.tick()
    h.report(WorkerState.CONNECTING)
    started = h.now
    h.run_until(started + 2.0)
    assert len(h.of(SendSignal)) == 1
    h.run_until(started + 2.5)  # once it has reported, heartbeat_timeout_sec
    assert h.of(SendSignal)[-1] == SendSignal(1001, signal.SIGABRT)
