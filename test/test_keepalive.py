"""The supervisor's systemd keep-alive, decided on a fake clock (STYLE.md §12): WATCHDOG=1 only
while the worker beats, and again at once when it (or its replacement) beats again. The machine
is stepped through its public events; no process, no sleep."""

from __future__ import annotations

import pytest

from livereduce.config import config_from_mapping
from livereduce.protocol import Progress, WorkerState
from livereduce.supervisor.actions import Notify, NotifyKind, Start
from livereduce.supervisor.events import Started, Tick, WorkerReport
from livereduce.supervisor.machine import Machine

WATCHDOG_SEC = 120.0  # livereduce.service
HEARTBEAT_TIMEOUT_S = 90.0  # the default for update_every 30: max(3 * 30, 60)
PID = 1


def pings_for(tmp_path, beats: bool) -> list[float]:
    """Tick every 0.1 s for 300 s; the worker reports at each tick where ``beats(now)``."""
    (tmp_path / "reduce_FAKE_live_proc.py").write_text("output = input\n")
    config = config_from_mapping(
        {"instrument": "FAKE", "listener": "fake", "script_dir": ".", "update_every": 30},
        tmp_path / "livereduce.conf",
    )
    assert config.heartbeat_timeout == HEARTBEAT_TIMEOUT_S
    now = [0.0]
    machine = Machine(
        config,
        clock=lambda: now[0],
        wall=lambda: now[0],
        scripts_exist=lambda: True,
        watchdog_interval_s=WATCHDOG_SEC / 2,  # as WATCHDOG_USEC=120 s gives
    )
    pings: list[float] = []
    for tenth in range(0, 3000):
        now[0] = tenth / 10
        if beats(now[0]):
            progress = Progress(state=WorkerState.RUNNING, pid=PID)
            machine.step(WorkerReport(PID, progress, now[0]))
        for action in machine.step(Tick()):
            if isinstance(action, Start):
                machine.step(Started(PID))
            elif action == Notify(NotifyKind.WATCHDOG):
                pings.append(now[0])
    return pings


@pytest.mark.parametrize("beat_again_at", [89.0, 141.0, 165.0])
def test_a_worker_that_beats_again_in_time_keeps_the_service(tmp_path, beat_again_at):
    """The worker beats until 50 s, then again from ``beat_again_at``: a slow chunk (89 s), or
    the replacement the supervisor starts after its heartbeat timeout (50 + 90 s) once it has
    booted. systemd must hear WATCHDOG=1 within every WatchdogSec all along."""
    pings = pings_for(tmp_path, lambda now: now < 50 or now >= beat_again_at)
    gaps = [later - earlier for earlier, later in zip([0.0, *pings], pings, strict=False)]
    assert max(gaps) < WATCHDOG_SEC


def test_a_hung_worker_gets_no_ping(tmp_path):
    pings = pings_for(tmp_path, lambda now: now < 50)
    assert pings
    # While the machine replaces the hung worker (from 140 s) it pings again: it is acting.
    assert [t for t in pings if 50 + WATCHDOG_SEC / 2 < t < 140] == []
