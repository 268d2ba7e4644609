"""The ``livereduce`` command line: version, configuration errors (exit 2), start-up log."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from livereduce import __version__
from livereduce.cli import main
from test_supervisor import STOP_TIMEOUT_S, Daemon

REPO = Path(__file__).resolve().parents[1]
ENTRY = REPO / "scripts" / "livereduce.py"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


@pytest.mark.parametrize("command", [[str(ENTRY)], ["-m", "livereduce"]])
def test_version(tmp_path, command):
    result = run(*command, "--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"livereduce {__version__}"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "file not found"),
        ("{\n  'instrument': 1\n}", "invalid JSON at line 2 column 3"),
        (
            '{"instrument": "HYSPEC", "update_every": "often"}',
            "key 'update_every': expected a number > 0",
        ),
        ('{"instrument": "HYSPEC", "accum_method": "Sum"}', "expected one of Add, Replace, Append"),
    ],
)
def test_configuration_errors_exit_2_with_one_message(tmp_path, content, expected):
    conf = tmp_path / "livereduce.conf"
    if content is not None:
        conf.write_text(content)
    result = run(str(ENTRY), str(conf), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"livereduce: configuration file {conf}")
    assert expected in lines[0]
    assert not (tmp_path / "livereduce.log").exists()


def test_engine_mantid_without_mantid_exits_2(tmp_path):
    conf = tmp_path / "livereduce.conf"
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "reduce_HYS_live_proc.py").write_text("output = input\n")
    conf.write_text(
        json.dumps({"instrument": "HYSPEC", "engine": "mantid", "script_dir": "scripts"})
    )
    result = run(str(ENTRY), str(conf), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"livereduce: configuration file {conf}: key 'engine': engine 'mantid' is configured but "
        "no module named 'mantid' in this Python\n"
    )


def test_an_output_dir_that_cannot_be_made_exits_2_with_one_error_line(tmp_path):
    # Found trying it: output_dir naming an existing file (or a folder that cannot be created)
    # ended in a FileExistsError traceback and exit status 1, the supervisor's internal error.
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "reduce_FAKE_live_proc.py").write_text("output = input\n")
    (tmp_path / "out").write_text("a file, not a folder\n")
    conf = tmp_path / "livereduce.conf"
    conf.write_text(
        json.dumps(
            {
                "instrument": "FAKE",
                "listener": "fake",
                "script_dir": "scripts",
                "output_dir": "out",
                "status_file": "status.json",
                "log_file": "livereduce.log",
            }
        )
    )
    result = run(str(ENTRY), str(conf), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].endswith(
        f"output_dir_unusable: configuration file {conf}: key 'output_dir': {tmp_path / 'out'} "
        f"cannot be created or written: [Errno 17] File exists: '{tmp_path / 'out'}'"
    )
    assert "Traceback" not in result.stderr


def test_main_returns_2_in_process(tmp_path, capsys):
    assert main([str(tmp_path / "absent.conf")]) == 2
    assert "absent.conf: file not found" in capsys.readouterr().err


def test_startup_log_and_unknown_keys(tmp_path):
    lr = Daemon(tmp_path, spelling_mistake=1, system_mem_limit_perc=55, mem_check_interval_sec=3)
    try:
        lr.start()
        lr.running()
        lr.send(signal.SIGTERM)
        assert lr.exit_status(timeout_s=STOP_TIMEOUT_S + 5) == 0
        first = [line.split(": ", 1)[1] for line in lr.log().splitlines()[:5]]
    finally:
        lr.close()
    assert first[0] == f"livereduce_starting: version {__version__}, user '{getpass.getuser()}'"
    assert first[1] == f"python: {sys.version.split()[0]} at {sys.executable}"
    assert first[2] == f"config_file: {lr.conf}"
    name, effective = first[3].split(": ", 1)
    assert name == "effective_configuration"
    effective = json.loads(effective)
    assert effective["system_mem_limit_perc"] == 55
    assert effective["mem_check_interval_sec"] == 3
    assert effective["update_every"] == lr.raw["update_every"]
    assert effective["heartbeat_timeout"] == lr.raw["heartbeat_timeout_sec"]
    assert first[4].startswith("config_unknown_keys: ")
    assert first[4].endswith("unknown key(s) ignored: spelling_mistake")


def test_sigabrt_leaves_the_supervisor_stack_on_stderr(tmp_path):
    lr = Daemon(tmp_path)
    worker = None
    try:
        lr.start()
        worker = lr.running()
        lr.send(signal.SIGABRT)
        assert lr.exit_status(timeout_s=STOP_TIMEOUT_S + 5) == -signal.SIGABRT
    finally:
        lr.close()
        if worker is not None:  # orphaned by the abort; under systemd the cgroup kill ends it
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)
    stderr = lr.stderr.read_text()
    assert "Fatal Python error: Aborted" in stderr
    assert 'File "' in stderr
