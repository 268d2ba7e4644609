"""The unfinished run handed from one supervisor to the next (supervisor/handover.py)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from livereduce.config import load_config
from livereduce.protocol import Resume
from livereduce.supervisor.daemon import Supervisor
from livereduce.supervisor.handover import (
    HANDOVER_MAX_AGE_S,
    HANDOVER_REFRESH_S,
    handover_path,
    read_handover,
    write_handover,
)

RUN = Resume(run_number=178922, start_ns=1_509_587_520 * 10**9)


def test_written_read_and_removed(tmp_path):
    assert read_handover(tmp_path) is None
    write_handover(tmp_path, RUN)
    assert json.loads(handover_path(tmp_path).read_text()) == {
        "run_number": 178922,
        "start_ns": 1_509_587_520 * 10**9,
    }
    assert read_handover(tmp_path) == RUN
    write_handover(tmp_path, None)
    assert not handover_path(tmp_path).exists()
    write_handover(tmp_path, None)  # nothing to remove: fine


def test_an_old_or_bad_handover_is_not_taken_over(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    write_handover(tmp_path, RUN)
    written = handover_path(tmp_path).stat().st_mtime
    assert read_handover(tmp_path, now=written + HANDOVER_MAX_AGE_S - 1) == RUN
    assert read_handover(tmp_path, now=written + HANDOVER_MAX_AGE_S + 1) is None
    assert "resume_too_old: " in caplog.text
    handover_path(tmp_path).write_text('{"run_number": "x"}')
    assert read_handover(tmp_path) is None
    assert f"resume_unreadable: {handover_path(tmp_path)} cannot be used: " in caplog.text


def supervisor_for(tmp_path: Path) -> Supervisor:
    (tmp_path / "reduce_FAKE_live_proc.py").write_text("output = input\n")
    conf = tmp_path / "livereduce.conf"
    raw = {"instrument": "FAKE", "listener": "fake", "script_dir": ".", "output_dir": "out"}
    conf.write_text(json.dumps(raw))
    return Supervisor(load_config(conf))


def test_a_new_supervisor_hands_the_previous_ones_unfinished_run_to_its_first_worker(
    tmp_path, caplog
):
    # Found live: run 178923 was unfinished (a worker restart near its end) when a change of
    # the configuration file made the supervisor exit; the next supervisor started from the
    # current run and result_178923.h5 was never written.
    caplog.set_level(logging.INFO)
    first = supervisor_for(tmp_path)
    assert first.machine.resume is None
    first.machine.resume = RUN  # what its last worker reported
    first._write_status(time.monotonic(), force=True)
    assert read_handover(tmp_path / "out") == RUN
    second = supervisor_for(tmp_path)
    assert second.machine.resume == RUN
    assert second.status()["resume"] == RUN.to_json()
    assert "resume_taken_over: the previous supervisor left run 178922 unfinished" in caplog.text
    second.machine.resume = None  # its worker completed the run
    second._write_status(time.monotonic(), force=True)
    assert not handover_path(tmp_path / "out").exists()


def test_a_handover_that_cannot_be_written_is_logged_once(tmp_path, caplog, monkeypatch):
    supervisor = supervisor_for(tmp_path)

    def refuse(output_dir, resume):
        raise PermissionError(13, "Permission denied", os.fspath(output_dir))

    monkeypatch.setattr("livereduce.supervisor.daemon.write_handover", refuse)
    supervisor.machine.resume = RUN
    for _ in range(3):
        supervisor._write_status(time.monotonic(), force=True)
    assert caplog.text.count("resume_write_failed: the next supervisor will not get it: ") == 1


def test_a_long_unfinished_run_is_rewritten_every_refresh_interval(tmp_path, monkeypatch):
    # A run stays unfinished for hours; without a refresh the file's age would be the run's
    # and a restart late in the run would find the handover "too old".
    supervisor = supervisor_for(tmp_path)
    writes: list[tuple[float, Resume | None]] = []
    monkeypatch.setattr(
        "livereduce.supervisor.daemon.write_handover",
        lambda _dir, resume: writes.append((now, resume)),
    )
    supervisor.machine.resume = RUN
    period = HANDOVER_REFRESH_S
    for now in (
        1000.0,
        1000.0 + period / 2,
        1000.0 + period,
        1000.0 + 1.5 * period,
        1000.0 + 2 * period,
    ):
        supervisor._write_status(now, force=True)
    assert writes == [(1000.0, RUN), (1000.0 + period, RUN), (1000.0 + 2 * period, RUN)]
    supervisor.machine.resume = None
    now = 1001.0 + 2 * period
    supervisor._write_status(now, force=True)
    now += period
    supervisor._write_status(now, force=True)  # nothing to keep fresh
    assert writes[3:] == [(1001.0 + 2 * period, None)]
