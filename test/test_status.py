"""The status file: atomic writes, reading, and the livereduce-status command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

from livereduce.supervisor import status as status_module
from livereduce.supervisor.status import (
    FIELDS,
    Health,
    StatusError,
    format_status,
    health,
    main,
    read_status,
    write_status,
)


def sample(**changes):
    status = {
        "state": "running",
        "detail": "running: run 178921, 12 chunks",
        "instrument": "HYSPEC",
        "engine": "embedded",
        "run_number": 178921,
        "run_title": "vanadium",
        "chunks": 12,
        "events": 1234567,
        "events_per_s": 20500.4,
        "last_chunk_time": 1000.0,
        "errors": 1,
        "last_error": "reduce_HYS_live_proc.py line 3: ValueError",
        "worker_pid": 4242,
        "worker_rss_bytes": 300 * 2**20,
        "memory_limit_bytes": 1024 * 2**20,
        "restarts": 2,
        "restart_history": [
            {
                "time": 900.0,
                "reason": "scripts_changed",
                "detail": "reduce_HYS_live_proc.py changed",
            },
            {"time": 950.0, "reason": "memory_exceeded", "detail": "worker uses 1100 MiB"},
        ],
        "last_reload_latency_s": 1.5,
        "supervisor_pid": os.getpid(),
        "version": "2.0.0",
        "config": "/etc/livereduce.conf",
        "updated": 1010.0,
    }
    status.update(changes)
    return status


def test_round_trip_and_no_temporary_left(tmp_path):
    path = tmp_path / "run" / "status.json"
    write_status(path, sample())
    assert read_status(path) == sample()
    assert sorted(p.name for p in path.parent.iterdir()) == ["status.json"]


def test_every_field_is_documented():
    assert set(sample()) - {"last_reload_latency_s"} <= set(FIELDS)


def test_reader_never_sees_half_a_file(tmp_path):
    path = tmp_path / "status.json"
    write_status(path, sample())
    big = sample(last_error="x" * 200_000)
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            write_status(path, big)
            write_status(path, sample())

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        reads = 0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert read_status(path)["state"] == "running"
            reads += 1
    finally:
        stop.set()
        thread.join()
    assert reads > 10


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("{not json", "not valid JSON"),
        ('{"chunks": 3}', "not a livereduce status file"),
        ("[1, 2]", "not a livereduce status file"),
    ],
)
def test_bad_files_raise_with_the_path(tmp_path, content, message):
    path = tmp_path / "status.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(StatusError, match=message) as error:
        read_status(path)
    assert str(path) in str(error.value)


def test_format_for_people():
    text = format_status(sample(), now=1012.5)
    assert "status written 2.5 s ago" in text
    assert "state:        running (running: run 178921, 12 chunks)" in text
    assert "run:          178921 'vanadium'" in text
    assert "events:       1,234,567 (20,500 events/s)" in text
    assert "last chunk:   12.5 s ago" in text
    assert "worker:       pid 4242, 300.0 MiB of 1024.0 MiB limit" in text
    assert "restarts:     2" in text
    assert "memory_exceeded: worker uses 1100 MiB" in text
    assert "errors:       1 (last: reduce_HYS_live_proc.py line 3: ValueError)" in text
    assert "stale" not in text
    assert "SCRIPTS:" not in text
    assert "results:" not in text  # an engine that does not count them
    assert "in script:" not in text
    text = format_status(
        sample(results_written=11, last_result_time=1010.0, in_script="reduce_HYS_live_proc.py"),
        now=1012.5,
    )
    assert "results:      11 written, the last 2.5 s ago" in text
    assert "in script:    reduce_HYS_live_proc.py" in text


def test_format_says_since_when_and_warns_about_a_long_connect():
    text = format_status(sample(state="connecting", detail="", state_since=1000.0), now=1012.5)
    assert "state:        connecting, since 12.5 s ago" in text
    assert "WARNING: connecting" not in text
    text = format_status(sample(state="connecting", detail="", state_since=600.0), now=1012.5)
    assert "state:        connecting, since 6.9 min ago" in text
    assert "WARNING: connecting for over 5 min: is the data stream's address right" in text


def test_format_shows_scripts_that_are_not_running():
    problem = "saved script not loaded, the worker runs the previous version: x.py:3: bad"
    text = format_status(sample(scripts_problem=problem), now=1012.5)
    assert f"SCRIPTS:      {problem}" in text


def test_format_warns_about_a_file_not_rewritten():
    assert "not rewritten" not in format_status(sample(), now=1010.0 + 9)
    text = format_status(sample(), now=1010.0 + 30)
    assert "WARNING: not rewritten for 30 s (it should be every 2 s)" in text
    assert "not rewritten" not in format_status(sample(state="stopped"), now=1010.0 + 30)


def test_format_warns_about_a_dead_supervisor():
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    text = format_status(sample(supervisor_pid=int(finished.stdout)), now=1012.5)
    assert f"supervisor pid {int(finished.stdout)} is not running: this status is stale" in text


def test_command_prints_status_and_json(tmp_path, capsys):
    path = tmp_path / "status.json"
    write_status(path, sample(updated=time.time()))
    assert main(["--file", str(path)]) == 0
    assert "instrument:   HYSPEC (engine embedded)" in capsys.readouterr().out
    assert main(["--json", "--file", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["chunks"] == 12


def test_command_finds_the_file_through_the_config(tmp_path, capsys):
    path = tmp_path / "elsewhere" / "st.json"
    write_status(path, sample(chunks=77, updated=time.time()))
    conf = tmp_path / "lr.conf"
    conf.write_text(json.dumps({"instrument": "HYSPEC", "status_file": str(path)}))
    assert main(["--config", str(conf), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["chunks"] == 77


def test_command_missing_or_bad_file_exits_3(tmp_path, capsys):
    assert main(["--file", str(tmp_path / "none.json")]) == 3
    err = capsys.readouterr().err
    assert err.startswith("livereduce-status: status file ")
    assert "not found" in err
    (tmp_path / "bad.json").write_text("{")
    assert main(["--file", str(tmp_path / "bad.json")]) == 3
    assert "not valid JSON" in capsys.readouterr().err


def test_command_bad_config_exits_3(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(status_module, "SYSTEMD_STATUS_FILE", tmp_path / "run" / "status.json")
    conf = tmp_path / "lr.conf"
    conf.write_text("{")
    assert main(["--config", str(conf)]) == 3
    assert str(conf) in capsys.readouterr().err


def test_command_bad_config_still_shows_the_running_service(tmp_path, capsys, monkeypatch):
    # Found live: the configuration edited to nonsense while the service ran on with the one
    # it read at start; livereduce-status answered only "invalid JSON", exit 3.
    service_status = tmp_path / "run" / "status.json"
    write_status(service_status, sample(chunks=31, updated=time.time()))
    monkeypatch.setattr(status_module, "SYSTEMD_STATUS_FILE", service_status)
    conf = tmp_path / "lr.conf"
    conf.write_text('{"instrument": "HYS",')
    assert main(["--config", str(conf), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["chunks"] == 31
    assert captured.err.startswith(f"livereduce-status: configuration file {conf}: invalid JSON")
    assert captured.err.endswith(f"looking for the service's status in {service_status}\n")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, Health.HEALTHY),
        ({"state": "waiting_for_run"}, Health.HEALTHY),
        ({"state": "run_ended"}, Health.HEALTHY),
        ({"state": "failing"}, Health.FAILING),
        ({"state": "held"}, Health.FAILING),
        ({"state": "backoff"}, Health.FAILING),
        ({"updated": 1000.0 - 11}, Health.STALE),
        ({"state": "stopped"}, Health.STALE),
        ({"state": "failing", "updated": 1000.0 - 11}, Health.STALE),
        ({"state": "connecting", "state_since": 1000.0 - 299}, Health.HEALTHY),
        ({"state": "connecting", "state_since": 1000.0 - 301}, Health.FAILING),
        ({"state": "running", "state_since": 1000.0 - 3600}, Health.HEALTHY),
    ],
)
def test_health_for_monitoring(changes, expected):
    assert health(sample(**{"updated": 1000.0, **changes}), now=1000.0) is expected


def test_command_exit_status_is_the_health(tmp_path, capsys):
    path = tmp_path / "status.json"
    write_status(path, sample(state="failing", updated=time.time()))
    assert main(["--file", str(path)]) == 1
    write_status(path, sample(updated=time.time() - 60))
    assert main(["--file", str(path)]) == 2
    assert "WARNING: not rewritten for 60 s" in capsys.readouterr().out
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    write_status(path, sample(supervisor_pid=int(finished.stdout), updated=time.time()))
    assert main(["--file", str(path)]) == 2


def test_console_script_is_installed(tmp_path):
    path = tmp_path / "status.json"
    write_status(path, sample(updated=time.time()))
    result = subprocess.run(
        ["livereduce-status", "--file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "chunks:       12" in result.stdout


def test_a_closed_pipe_is_not_a_traceback(tmp_path):
    path = tmp_path / "status.json"
    write_status(path, sample(updated=time.time()))
    with subprocess.Popen(
        ["livereduce-status", "--file", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        process.stdout.close()  # like `| head -0`
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=60) == 0
    assert stderr == ""


def test_format_shows_a_configuration_file_that_is_not_in_force():
    problem = "the configuration file on disk cannot be used, the one read at start runs on"
    assert "CONFIG:" not in format_status(sample(), now=1012.5)
    text = format_status(sample(config_problem=problem), now=1012.5)
    assert f"CONFIG:       {problem}" in text


def test_a_killed_supervisor_not_yet_reaped_is_gone():
    # Found live: right after `kill -9` of the supervisor its pid was a zombie (the parent had
    # not reaped it yet) and livereduce-status said healthy, exit 0, with no warning.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # ended, left unreaped
        assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
        status = sample(supervisor_pid=child.pid, updated=time.time())
        assert health(status) is Health.STALE
        assert f"supervisor pid {child.pid} is not running" in format_status(status)
    finally:
        child.wait()


def test_format_shows_publishing_only_when_there_is_some():
    assert "plots:" not in format_status(sample(), now=1012.5)
    text = format_status(
        sample(plots_published=3, publish_errors=2, last_publish_error="answered 401"),
        now=1012.5,
    )
    assert "plots:        3 published, 2 failed (last: answered 401)" in text
