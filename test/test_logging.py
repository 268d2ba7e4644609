"""Log file location, line format, syslog priority prefixes on stderr, and rotation.

configure_logging changes process-wide state (root logger, threading.excepthook), so the
behaviour is exercised in a child Python process; the log file and stderr are real.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from livereduce.config import config_from_mapping
from livereduce.logsetup import SNS_LOG_FILE, default_log_path, syslog_priority

HEADER = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR|CRITICAL|DEBUG) "
    r"(supervisor|worker)\[\d+\] [\w.]+: "
)

CHILD = """
import json, logging, os, sys, threading
from pathlib import Path
from livereduce.config import config_from_mapping
from livereduce.logsetup import configure_logging

raw = json.loads(sys.argv[1])
if os.environ.get("AS_JOURNAL"):  # what systemd sets when stderr is its journal stream
    info = os.fstat(2)
    os.environ["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
config = config_from_mapping(raw, None, check_scripts=False)
print(configure_logging(config, process=sys.argv[2]), file=sys.stdout, flush=True)
log = logging.getLogger("livereduce.test")
log.info("hello %s", "info")
log.warning("careful")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("it failed\\nover two lines")
if len(sys.argv) > 3:  # rotate as logrotate does (rename, no copytruncate), then log again
    path = Path(raw["log_file"])
    path.rename(path.with_name(path.name + ".1"))
    log.info("after rotation")
thread = threading.Thread(target=lambda: 1 / 0, name="doomed")
thread.start()
thread.join()
"""


def run_child(
    tmp_path: Path, *extra: str, process: str = "supervisor", env: dict[str, str] | None = None
):
    raw = {"instrument": "HYSPEC", "listener": "fake", "log_file": str(tmp_path / "lr.log")}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(raw), process, *extra],
        env={**os.environ, "AS_JOURNAL": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=True,
    )
    return result


def config(**raw):
    return config_from_mapping({"instrument": "HYSPEC", **raw}, None, check_scripts=False)


def test_log_path_follows_the_predecessors_rules(tmp_path):
    assert default_log_path(config(), user="snsdata") == SNS_LOG_FILE
    assert default_log_path(config(), user="alice", cwd=tmp_path) == tmp_path / "livereduce.log"
    chosen = tmp_path / "x" / "mine.log"
    assert default_log_path(config(log_file=str(chosen)), user="snsdata") == chosen


def test_syslog_priorities():
    assert [syslog_priority(n) for n in (50, 40, 30, 20, 10)] == [2, 3, 4, 6, 7]
    assert syslog_priority(35) == 4  # between WARNING and ERROR: the less severe named level


def test_file_lines_have_time_level_component_and_no_priority_prefix(tmp_path):
    result = run_child(tmp_path)
    assert result.stdout.strip() == str(tmp_path / "lr.log")
    lines = (tmp_path / "lr.log").read_text().splitlines()
    assert all(HEADER.match(line) for line in lines), lines
    assert not any(line.startswith("<") for line in lines)
    assert " INFO supervisor[" in lines[0]
    assert lines[0].endswith("livereduce.test: hello info")
    error_lines = [line for line in lines if " ERROR " in line]
    # message (2 lines) + traceback (4 lines) + thread crash (message + traceback)
    assert any(line.endswith("ZeroDivisionError: division by zero") for line in error_lines)
    assert any(line.endswith(": over two lines") for line in error_lines)
    assert any("thread_died: doomed" in line for line in error_lines)


def test_stderr_lines_carry_syslog_priority_on_every_traceback_line(tmp_path):
    stderr = run_child(tmp_path, process="worker").stderr.splitlines()
    assert stderr, "nothing logged to stderr"
    assert all(re.match(r"^<[2-7]>", line) for line in stderr), stderr
    info = [line for line in stderr if line.startswith("<6>")]
    warning = [line for line in stderr if line.startswith("<4>")]
    errors = [line for line in stderr if line.startswith("<3>")]
    assert len(info) == 1
    assert info[0].endswith("hello info")
    assert len(warning) == 1
    assert warning[0].endswith("careful")
    # What `journalctl -p err` shows: both tracebacks, every line, and nothing else.
    assert any("Traceback (most recent call last):" in line for line in errors)
    assert sum("ZeroDivisionError: division by zero" in line for line in errors) == 2
    assert all(HEADER.match(line[3:]) for line in errors)
    assert all(" worker[" in line for line in stderr)


@pytest.mark.parametrize(
    "env",
    [
        {"AS_JOURNAL": ""},  # a pipe (`| tee`), no JOURNAL_STREAM
        {"AS_JOURNAL": "", "JOURNAL_STREAM": "8:12345"},  # inherited, but stderr is elsewhere
    ],
)
def test_no_priority_prefix_when_stderr_is_not_the_journal(tmp_path, env):
    stderr = run_child(tmp_path, env=env).stderr.splitlines()
    assert stderr
    assert not any(re.match(r"^<\d>", line) for line in stderr), stderr
    assert all(HEADER.match(line) for line in stderr if " Traceback" not in line)
    assert stderr[0].endswith("hello info")


def test_rotated_file_is_reopened(tmp_path):
    run_child(tmp_path, "rotate")
    old = (tmp_path / "lr.log.1").read_text()
    new = (tmp_path / "lr.log").read_text()
    assert "hello info" in old
    assert "after rotation" not in old
    assert "after rotation" in new
    assert "hello info" not in new
    assert "thread_died: doomed" in new


def test_unwritable_log_file_falls_back_to_stderr(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    raw = {"instrument": "HYSPEC", "log_file": str(blocker / "sub" / "lr.log")}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(raw), "supervisor"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "None"
    assert f"cannot open log file {blocker / 'sub' / 'lr.log'}" in result.stderr
    assert "hello info" in result.stderr


@pytest.mark.parametrize("process", ["supervisor", "worker"])
def test_component_names(tmp_path, process):
    run_child(tmp_path, process=process)
    assert f" {process}[" in (tmp_path / "lr.log").read_text().splitlines()[0]
