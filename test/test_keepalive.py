"""The supervisor's systemd keep-alive, decided on a fake clock (STYLE.md §12): WATCHDOG=1 only
while the worker beats, and again at once when it (or its replacement) beats again."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from livereduce.config import config_from_mapping
from livereduce.supervisor import daemon

WATCHDOG_SEC = 120.0  # livereduce.service
HEARTBEAT_TIMEOUT_S = 90.0  # the default for update_every 30: max(3 * 30, 60)


@pytest.fixture
def supervisor(tmp_path, monkeypatch):
    (tmp_path / "reduce_FAKE_live_proc.py").write_text("output = input\n")
    config = config_from_mapping(
        {"instrument": "FAKE", "listener": "fake", "script_dir": ".", "update_every": 30},
        tmp_path / "livereduce.conf",
    )
    assert config.heartbeat_timeout == HEARTBEAT_TIMEOUT_S
    now = [0.0]
    pings: list[float] = []
    monkeypatch.setattr(daemon.notify, "watchdog", lambda **_: pings.append(now[0]))
    supervisor = daemon.Supervisor(config, clock=lambda: now[0])
    supervisor._watchdog_interval_s = WATCHDOG_SEC / 2  # as WATCHDOG_USEC=120 s gives
    return supervisor, now, pings


def stand_in_worker(supervisor) -> SimpleNamespace:
    """The few fields of the worker handle the keep-alive reads (a stand-in, no process)."""
    worker = SimpleNamespace(stop_reason="", last_beat_s=0.0, pid=1)
    supervisor.worker = worker
    return worker


@pytest.mark.parametrize("beat_again_at", [89.0, 141.0, 165.0])
def test_a_worker_that_beats_again_in_time_keeps_the_service(supervisor, beat_again_at):
    """The worker beats until 50 s, then again from ``beat_again_at``: a slow chunk (89 s), or
    the replacement the supervisor starts after its heartbeat timeout (50 + 90 s) once it has
    booted. systemd must hear WATCHDOG=1 within every WatchdogSec all along."""
    supervisor, now, pings = supervisor
    worker = stand_in_worker(supervisor)
    for tenth in range(0, 3000):
        now[0] = tenth / 10
        if now[0] < 50 or now[0] >= beat_again_at:
            worker.last_beat_s = now[0]
        supervisor._keepalive(now[0])
    gaps = [later - earlier for earlier, later in zip([0.0, *pings], pings, strict=False)]
    assert max(gaps) < WATCHDOG_SEC


def test_a_hung_worker_gets_no_ping(supervisor):
    supervisor, now, pings = supervisor
    worker = stand_in_worker(supervisor)
    for tenth in range(0, 3000):
        now[0] = tenth / 10
        if now[0] < 50:
            worker.last_beat_s = now[0]
        supervisor._keepalive(now[0])
    assert pings
    assert max(pings) <= 50 + WATCHDOG_SEC / 2
