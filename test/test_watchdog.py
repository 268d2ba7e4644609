"""livereduce-watchdog: judged by the status file, leaves a stopped unit alone, starts a failed
one again, throttles its restarts, logs every decision, validates its settings.

The decision tests drive :class:`Watchdog` with a fixed clock and a stand-in for systemctl
(an object answering ``show``/``restart``/``recover`` as systemctl would). The process tests
run the real ``python -m livereduce.watchdog`` with a stand-in ``systemctl`` program written here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from livereduce import __version__
from livereduce.config import config_from_mapping
from livereduce.watchdog import SYSTEMD_STATUS_FILE, Action, Settings, Watchdog

NOW = 1_800_000_000.0  # wall clock, Unix s
MONO = 50_000.0  # monotonic clock, s
PID = "4242"


class StandInSystemctl:
    """Answers ``show`` from ``props`` and records ``restart`` and ``recover`` calls, as
    systemctl would."""

    def __init__(self, **props: str) -> None:
        self.props = {
            "ActiveState": "active",
            "SubState": "running",
            "Result": "success",
            "MainPID": PID,
            "ActiveEnterTimestampMonotonic": str(int((MONO - 3600) * 1e6)),
            **props,
        }
        self.restarts: list[str] = []
        self.recoveries: list[str] = []

    def show(self, unit: str) -> dict[str, str]:
        return dict(self.props)

    def restart(self, unit: str) -> str:
        self.restarts.append(unit)
        return ""

    def recover(self, unit: str) -> str:
        self.recoveries.append(unit)
        return ""


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> tuple[float, float]:
        return NOW + self.offset, MONO + self.offset


def _status(path: Path, **fields: object) -> None:
    data = {"state": "running", "updated": NOW, "supervisor_pid": int(PID), **fields}
    path.write_text(json.dumps(data))


@pytest.fixture
def status_file(tmp_path: Path) -> Path:
    return tmp_path / "status.json"


def _watchdog(status_file: Path, systemctl: StandInSystemctl, clock: Clock) -> Watchdog:
    settings = Settings(interval=60, threshold=300, status_file=status_file)
    return Watchdog(settings, systemctl, clock=clock)


@pytest.mark.parametrize(
    ("active", "sub", "result", "words"),
    [
        ("inactive", "dead", "success", "stopped on purpose, left alone"),
        ("activating", "auto-restart", "exit-code", "systemd is handling it"),
        ("deactivating", "stop-sigterm", "success", "systemd is handling it"),
    ],
)
def test_a_unit_that_is_not_active_is_left_alone_even_when_stale(
    status_file: Path, active: str, sub: str, result: str, words: str
) -> None:
    _status(status_file, last_chunk_time=NOW - 10_000)
    systemctl = StandInSystemctl(ActiveState=active, SubState=sub, Result=result)
    decision = _watchdog(status_file, systemctl, Clock()).check()
    assert decision.action is Action.NOTHING
    assert words in decision.reason
    assert (systemctl.restarts, systemctl.recoveries) == ([], [])


@pytest.mark.parametrize("result", ["start-limit-hit", "exit-code", "timeout"])
def test_a_failed_unit_is_started_again_and_throttled_like_a_restart(
    status_file: Path, result: str
) -> None:
    systemctl, clock = (
        StandInSystemctl(ActiveState="failed", SubState="failed", Result=result),
        Clock(),
    )
    watchdog = _watchdog(status_file, systemctl, clock)
    recovered_at = []
    for offset in range(0, 1000, 50):  # still failed at every check
        clock.offset = offset
        decision = watchdog.check()
        if decision.action is Action.RECOVER:
            recovered_at.append(offset)
            assert decision.reason == f"livereduce.service is failed (failed, result {result})"
    assert recovered_at == [0, 300, 900]  # the same spacing as restarts
    assert systemctl.recoveries == ["livereduce.service"] * 3
    assert systemctl.restarts == []


def test_fresh_chunk_is_healthy_and_stale_chunk_restarts(status_file: Path) -> None:
    systemctl = StandInSystemctl()
    watchdog = _watchdog(status_file, systemctl, Clock())
    _status(status_file, last_chunk_time=NOW - 299)
    decision = watchdog.check()
    assert (decision.action, systemctl.restarts) == (Action.NOTHING, [])
    assert "last progress 299 s ago" in decision.reason
    _status(status_file, last_chunk_time=NOW - 301)
    decision = watchdog.check()
    assert decision.action is Action.RESTART
    assert systemctl.restarts == ["livereduce.service"]
    assert "last progress 301 s ago (state running)" in decision.reason


def test_restarts_are_throttled_and_the_gap_doubles_while_they_do_not_help(
    status_file: Path,
) -> None:
    systemctl, clock = StandInSystemctl(), Clock()
    watchdog = _watchdog(status_file, systemctl, clock)
    _status(status_file, last_chunk_time=NOW - 1000)
    times_restarted = []
    for offset in range(0, 1300, 50):  # a check every 50 s, status stale all along
        clock.offset = offset
        if watchdog.check().action is Action.RESTART:
            times_restarted.append(offset)
    assert times_restarted == [0, 300, 900]  # gaps: threshold, then twice the threshold
    clock.offset = 950
    decision = watchdog.decide()
    assert "last restart was 50 s ago; next one allowed after 1200 s" in decision.reason


def test_a_fresh_chunk_after_a_restart_resets_the_backoff(status_file: Path) -> None:
    systemctl, clock = StandInSystemctl(), Clock()
    watchdog = _watchdog(status_file, systemctl, clock)
    _status(status_file, last_chunk_time=NOW - 1000)
    watchdog.check()
    clock.offset = 300
    watchdog.check()
    assert watchdog.restart_gap() == 600
    _status(status_file, last_chunk_time=NOW + 300)
    assert watchdog.check().action is Action.NOTHING
    assert watchdog.restart_gap() == 300


@pytest.mark.parametrize("state", ["waiting_for_run", "no_data", "run_ended", "held"])
def test_waiting_for_data_counts_the_status_update_as_progress(
    status_file: Path, state: str
) -> None:
    systemctl = StandInSystemctl()
    _status(status_file, state=state, last_chunk_time=NOW - 9000, updated=NOW - 3)
    decision = _watchdog(status_file, systemctl, Clock()).check()
    assert decision.action is Action.NOTHING
    assert f"last progress 3 s ago (state {state})" in decision.reason
    _status(status_file, state=state, last_chunk_time=None, updated=NOW - 500)
    assert _watchdog(status_file, systemctl, Clock()).check().action is Action.RESTART


def test_without_a_status_file_of_this_instance_the_time_since_start_counts(
    status_file: Path,
) -> None:
    started = str(int((MONO - 100) * 1e6))
    systemctl = StandInSystemctl(ActiveEnterTimestampMonotonic=started)
    decision = _watchdog(status_file, systemctl, Clock()).check()
    assert decision.action is Action.NOTHING
    assert "since it became active 100 s ago; status file" in decision.reason
    assert "missing" in decision.reason
    # a status file left by an earlier process (another supervisor pid) proves nothing
    _status(status_file, supervisor_pid=1, last_chunk_time=NOW)
    systemctl.props["ActiveEnterTimestampMonotonic"] = str(int((MONO - 400) * 1e6))
    decision = _watchdog(status_file, systemctl, Clock()).check()
    assert decision.action is Action.RESTART
    assert "no progress reported since it became active 400 s ago" in decision.reason


def test_settings_follow_the_config(tmp_path: Path) -> None:
    raw = {"instrument": "NOMAD", "update_every": 200, "watchdog": {"interval": 5, "threshold": 60}}
    config = config_from_mapping(raw, None, check_scripts=False)
    settings = Settings.from_config(config)
    assert (settings.interval, settings.threshold) == (5, 400)  # raised to 2 x update_every
    assert settings.status_file == SYSTEMD_STATUS_FILE
    raw = {"instrument": "NOMAD", "status_file": str(tmp_path / "s.json")}
    config = config_from_mapping(raw, None, check_scripts=False)
    assert Settings.from_config(config).status_file == tmp_path / "s.json"
    assert Settings.from_config(config).threshold == 300


STAND_IN_SYSTEMCTL = """\
#!/bin/bash
# stand-in for systemctl (tests only): `show` prints $SHOW_FILE, every call is recorded
echo "$*" >> "$CALLS"
case $1 in
    show) [ -f "$SHOW_FILE" ] || { echo "Failed to connect to bus" >&2; exit 1; }
          cat "$SHOW_FILE" ;;
    restart | reset-failed | start) exit 0 ;;
esac
"""


class Process:
    """Runs ``python -m livereduce.watchdog`` with the stand-in systemctl."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.systemctl = root / "systemctl"
        self.systemctl.write_text(STAND_IN_SYSTEMCTL)
        self.systemctl.chmod(0o755)
        self.calls = root / "calls.txt"
        self.show = root / "show.txt"
        self.status = root / "status.json"
        self.config = root / "livereduce.conf"
        self.config.write_text(json.dumps({"instrument": "NOMAD", "watchdog": {"interval": 1}}))
        self.env = {**os.environ, "CALLS": str(self.calls), "SHOW_FILE": str(self.show)}

    def unit(self, active: str, sub: str) -> None:
        started = int((time.monotonic() - 1000) * 1e6)
        self.show.write_text(
            f"ActiveState={active}\nSubState={sub}\nResult=success\nMainPID={PID}\n"
            f"ActiveEnterTimestampMonotonic={started}\n"
        )

    def argv(self, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "livereduce.watchdog", str(self.config),
            "--systemctl", str(self.systemctl), "--status-file", str(self.status), *extra,
        ]  # fmt: skip

    def once(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv("--once"),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def restarts(self) -> list[str]:
        calls = self.calls.read_text().splitlines() if self.calls.exists() else []
        return [c for c in calls if c.startswith("restart")]


@pytest.fixture
def proc(tmp_path: Path) -> Process:
    return Process(tmp_path)


def test_process_restarts_a_stalled_active_unit_through_systemctl(proc: Process) -> None:
    proc.unit("active", "running")
    _status(proc.status, last_chunk_time=time.time() - 1000)
    done = proc.once()
    assert done.returncode == 0, done.stderr
    assert proc.restarts() == ["restart --no-block livereduce.service"]
    assert "WARNING livereduce.watchdog: livereduce.service stalled: last progress 1000 s ago" in (
        done.stderr
    )
    assert "restart of livereduce.service queued" in done.stderr


def test_process_leaves_a_stopped_unit_alone_and_says_so(proc: Process) -> None:
    proc.unit("inactive", "dead")
    _status(proc.status, last_chunk_time=time.time() - 1000)
    done = proc.once()
    assert done.returncode == 0, done.stderr
    assert proc.restarts() == []
    assert "INFO livereduce.watchdog: livereduce.service is inactive (dead, result success)" in (
        done.stderr
    )


def test_process_starts_a_failed_unit_after_reset_failed(proc: Process) -> None:
    proc.unit("failed", "failed")
    done = proc.once()
    assert done.returncode == 0, done.stderr
    assert proc.calls.read_text().splitlines()[1:] == [
        "reset-failed livereduce.service",
        "start --no-block livereduce.service",
    ]
    assert "WARNING livereduce.watchdog: livereduce.service is failed (failed, result " in (
        done.stderr
    )
    assert "start of livereduce.service queued" in done.stderr


def test_process_prints_its_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "livereduce.watchdog", "--version"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, f"livereduce-watchdog {__version__}\n")


def test_the_watchdog_needs_only_the_standard_library() -> None:
    """The RPM runs it on the system's python3.11, without numpy, scipp or psutil: with -S
    (no site-packages) only the standard library and the package itself can be imported."""
    src = Path(__file__).resolve().parents[1] / "src"
    done = subprocess.run(
        [sys.executable, "-S", "-m", "livereduce.watchdog", "--version"],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"livereduce-watchdog {__version__}\n"


def test_process_survives_a_failing_systemctl(proc: Process) -> None:
    done = proc.once()  # no show file: the stand-in fails like systemctl without a bus
    assert done.returncode == 0
    assert "cannot query livereduce.service" in done.stderr
    assert "Failed to connect to bus" in done.stderr


@pytest.mark.parametrize(
    ("watchdog", "key"),
    [({"interval": 0}, "watchdog.interval"), ({"threshold": 19}, "watchdog.threshold")],
)
def test_process_rejects_bad_watchdog_settings_with_exit_2(
    proc: Process, watchdog: dict, key: str
) -> None:
    proc.config.write_text(json.dumps({"instrument": "NOMAD", "watchdog": watchdog}))
    done = proc.once()
    assert done.returncode == 2
    assert f"key '{key}'" in done.stderr
    assert not proc.calls.exists()


def test_process_checks_every_interval_rereads_the_config_and_stops_on_sigterm(
    proc: Process,
) -> None:
    proc.unit("active", "running")
    _status(proc.status, last_chunk_time=time.time())
    process = subprocess.Popen(
        proc.argv(), env=proc.env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while sum("healthy" in line for line in lines) < 2 and time.monotonic() < deadline:
            lines.append(process.stderr.readline())
        changed = proc.root / "changed.conf"
        changed.write_text(
            json.dumps(
                {
                    "instrument": "NOMAD",
                    "update_every": 1,
                    "watchdog": {"interval": 1, "threshold": 45},
                }
            )
        )
        changed.replace(proc.config)  # atomic, as an editor's save by rename
        while not any("threshold 45 s" in line for line in lines) and time.monotonic() < deadline:
            lines.append(process.stderr.readline())
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    text = "".join(lines) + rest
    assert process.returncode == 0
    assert "configuration changed" in text
    assert "healthy: last progress" in text
    assert "threshold 45 s" in text
    assert "stopping on SIGTERM" in text


POLKIT_HARNESS = """
// stand-in for polkit's JavaScript API (tests only): collects the rule, then asks it
const rules = [];
const polkit = {Result: {YES: "yes", NO: "no", NOT_HANDLED: null}, addRule: (r) => rules.push(r)};
%s
const [user, unit, verb, id] = process.argv.slice(2);
const action = {id: id, lookup: (key) => ({unit: unit, verb: verb})[key]};
console.log(JSON.stringify(rules.map((rule) => rule(action, {user: user}))));
"""


@pytest.mark.parametrize(
    ("user", "unit", "verb", "action_id", "answer"),
    [
        (
            "snsdata",
            "livereduce.service",
            "restart",
            "org.freedesktop.systemd1.manage-units",
            "yes",
        ),
        ("snsdata", "livereduce.service", "start", "org.freedesktop.systemd1.manage-units", "yes"),
        (
            "snsdata",
            "livereduce.service",
            "reset-failed",
            "org.freedesktop.systemd1.manage-units",
            "yes",
        ),
        ("snsdata", "livereduce.service", "stop", "org.freedesktop.systemd1.manage-units", None),
        ("snsdata", "livereduce.service", "enable", "org.freedesktop.systemd1.manage-units", None),
        ("snsdata", "sshd.service", "restart", "org.freedesktop.systemd1.manage-units", None),
        ("alice", "livereduce.service", "restart", "org.freedesktop.systemd1.manage-units", None),
        ("snsdata", "livereduce.service", "restart", "org.freedesktop.login1.reboot", None),
    ],
)
def test_polkit_rule_lets_snsdata_start_restart_reset_failed_livereduce_only(
    tmp_path: Path, user: str, unit: str, verb: str, action_id: str, answer: str | None
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node (to run the polkit rule's JavaScript) is not installed")
    rule = (Path(__file__).resolve().parents[1] / "50-snsdata-livereduce.rules").read_text()
    script = tmp_path / "rule.js"
    script.write_text(POLKIT_HARNESS % rule)
    done = subprocess.run(
        [node, str(script), user, unit, verb, action_id],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(done.stdout) == [answer]
