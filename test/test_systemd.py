"""livereduce.service and livereduce_watchdog.service under a real systemd.

Each test boots systemd in a container (``systemd-nspawn --volatile=yes -D /``: the host's /usr
on a throw-away root), with the real unit files from this checkout and a drop-in that only
points ExecStart at this checkout and shortens RestartSec (and, per test, the timeout being
tested). A driver unit runs the test's shell scenario inside the container (systemctl,
journalctl), writes what it saw to /srv/lrtest/out and powers the container off. The test then
reads those files. The service runs as ``snsdata``, a user the scenario creates inside the
container (its /etc is a tmpfs, thrown away at power-off). The watchdog service runs as root
there: the container has no polkit to let snsdata restart units.

The SMS is the replay server (``livereduce-replay``) or a silent TCP server, both started on
the host's loopback, which the container shares. The last test checks, without systemd, that
the unit's real timings (which the container tests shorten) fit the daemon's defaults.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from livereduce.config import config_from_mapping
from livereduce.watchdog import SYSTEMD_STATUS_FILE

REPO = Path(__file__).resolve().parents[1]
IN_REPO = "/opt/livereduce"
IN_SRV = "/srv/lrtest"
BOOT_TIMEOUT_S = 150.0
"""Upper bound of one container's life; scenarios bound each of their own waits far below."""


DRIVER_UNIT = f"""\
[Unit]
Description=livereduce test driver
[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/bin/bash {IN_SRV}/driver.sh
StandardOutput=file:{IN_SRV}/out/driver.out
StandardError=file:{IN_SRV}/out/driver.err
"""

PRELUDE = f"""\
set -u
OUT={IN_SRV}/out
finish() {{
    journalctl --no-pager -o short-monotonic > $OUT/journal.txt
    systemctl --no-block poweroff
}}
trap finish EXIT
note() {{ echo "$*" >> $OUT/notes.txt; }}
prop() {{ systemctl show -p "$2" --value "$1"; }}
# wait_for SECONDS COMMAND...: poll COMMAND every 0.2 s; note and fail on timeout.
wait_for() {{
    local limit=$1; shift
    local end=$(( $(date +%s) + limit ))
    until "$@"; do
        if [ "$(date +%s)" -ge "$end" ]; then note "TIMEOUT waiting for: $*"; return 1; fi
        sleep 0.2
    done
}}
is() {{ [ "$(prop "$1" "$2")" = "$3" ]; }}
# status_field KEY: a field of the daemon's status file
status_field() {{
    python3 -c "import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2]))" \\
        /run/livereduce/status.json "$1" 2>/dev/null
}}
worker_replaced() {{ local w; w=$(status_field worker_pid); [ "$w" != "$1" ] && [ "$w" != None ]; }}
journal_has() {{ journalctl -u "$1" -o cat | grep -q "$2"; }}
useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin snsdata
chmod 755 /root
install -d -m 1755 -o snsdata /var/log/SNS_applications
systemctl daemon-reload
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Container:
    """One boot of systemd with the livereduce units; :meth:`boot` runs a scenario."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.srv = root / "srv"
        self.out = self.srv / "out"
        self.scripts = self.srv / "scripts"
        self.units = root / "units"
        for folder in (self.out, self.scripts, self.units):
            folder.mkdir(parents=True)
        for folder in (root, self.srv, self.out, self.scripts):
            folder.chmod(0o755)  # readable by snsdata inside the container
        self.config_path = self.srv / "livereduce.conf"
        self.dropins: dict[str, str] = {}
        self.proc_script(
            "import os, time\n"
            f"if os.path.exists('{IN_SRV}/hang'):\n"
            "    time.sleep(3600)  # a processing script that hangs, on request\n"
            "output = input\n"
        )

    def proc_script(self, text: str) -> None:
        (self.scripts / "reduce_HYS_live_proc.py").write_text(text)

    def config(self, **keys: object) -> dict:
        raw = {
            "instrument": "HYSPEC",
            "script_dir": f"{IN_SRV}/scripts",
            "update_every": 1,
            "VENV": sys.prefix,
            "listener_options": {"stale_timeout_sec": 60},
            **keys,
        }
        self.config_path.write_text(json.dumps(raw, indent=1))
        return raw

    def dropin(self, unit: str, text: str) -> None:
        self.dropins[unit] = text

    def boot(self, scenario: str, timeout_s: float = BOOT_TIMEOUT_S) -> str:
        """Boot, run ``scenario`` (bash, after PRELUDE) in the driver unit, power off.
        Returns the console output; raises AssertionError when the container outlives
        ``timeout_s`` (it is killed first)."""
        (self.srv / "driver.sh").write_text(PRELUDE + scenario)
        (self.units / "lrtest-driver.service").write_text(DRIVER_UNIT)
        service = {
            "livereduce.service": f"{IN_REPO}/scripts/livereduce.sh {IN_SRV}/livereduce.conf",
            "livereduce_watchdog.service": (
                f"{IN_REPO}/scripts/livereduce_watchdog.sh {IN_SRV}/livereduce.conf"
            ),
        }
        binds = [
            f"--bind-ro={REPO}:{IN_REPO}",
            f"--bind={self.srv}:{IN_SRV}",
            f"--bind-ro={self.units / 'lrtest-driver.service'}:/etc/systemd/system/"
            "lrtest-driver.service",
        ]
        for prefix in {sys.prefix, sys.base_prefix}:
            binds.append(f"--bind-ro={prefix}")
        for unit, exec_start in service.items():
            binds.append(f"--bind-ro={REPO / unit}:/etc/systemd/system/{unit}")
            folder = self.units / f"{unit}.d"
            folder.mkdir(exist_ok=True)
            (folder / "test.conf").write_text(
                "[Service]\n"
                "# the checkout instead of the RPM's /usr/bin\n"
                f"ExecStart=\nExecStart={exec_start}\n"
                "# tests wait for restarts: 1 s instead of 10 s\n"
                "RestartSec=1\n" + self.dropins.get(unit, "")
            )
            binds.append(f"--bind-ro={folder}:/etc/systemd/system/{unit}.d")
        command = [
            "systemd-nspawn", "--volatile=yes", "-D", "/", "--register=no", "--keep-unit",
            "-q", "-b", f"--machine=lrtest-{uuid.uuid4().hex[:10]}", *binds,
            "--", "systemd.firstboot=off", "systemd.unit=lrtest-driver.service",
        ]  # fmt: skip
        console = self.root / "console.txt"
        with console.open("wb") as sink:
            process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_tree(process)
                raise AssertionError(
                    f"container still running after {timeout_s} s; notes: {self.notes()}"
                ) from None
            except BaseException:  # pytest-timeout, Ctrl-C: never leave a container behind
                _kill_tree(process)
                raise
        return console.read_text(errors="replace")

    def read(self, name: str) -> str:
        path = self.out / name
        return path.read_text(errors="replace") if path.exists() else ""

    def notes(self) -> str:
        return self.read("notes.txt")

    def values(self, name: str) -> dict[str, str]:
        """KEY=VALUE lines of an output file, as written by ``systemctl show``."""
        return dict(line.split("=", 1) for line in self.read(name).splitlines() if "=" in line)


def _kill_tree(process: subprocess.Popen) -> None:
    """Power the container off (SIGTERM to nspawn), then SIGKILL everything left in it."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(process.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def container(tmp_path: Path) -> Container:
    if os.geteuid() != 0:
        pytest.skip("booting systemd in a container needs root")
    if shutil.which("systemd-nspawn") is None:
        pytest.skip(
            "systemd-nspawn is missing (Debian package systemd-container; .ci/system-deps.sh)"
        )
    return Container(tmp_path)


@pytest.fixture
def replay(shared_data: Path) -> Iterator[str]:
    """The replay server on a free loopback port, streaming HYSPEC run 178921 (232 s) 20 times
    faster than real time, over and over; yields its address."""
    runs = [str(shared_data / "HYS_178921.nxs.h5")]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "livereduce.adara.replay",
            *runs,
            "--port=0",
            "--speed=20",
            "--loop",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = process.stdout.readline()
        match = re.search(r"listening on (\S+:\d+)", line)
        assert match, f"replay server did not start: {line!r}"
        yield match.group(1)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


@pytest.fixture
def silent_sms() -> Iterator[str]:
    """A TCP server that accepts connections and never sends a byte; yields its address."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        done.set()
        thread.join(timeout=5)
        for connection in accepted:
            connection.close()
        server.close()


@pytest.mark.systemd
def test_start_status_journal_restart_and_stop(container: Container, replay: str) -> None:
    container.config(listener="adara", address=replay)
    container.boot(
        """
note "start-begin $(date +%s.%N)"
systemctl start livereduce
note "start-rc $?"
systemctl show livereduce -p ActiveState -p SubState -p MainPID -p StatusText > $OUT/started.txt
cp /run/livereduce/status.json $OUT/status-at-start.json
systemctl status livereduce --no-pager -l > $OUT/systemctl-status.txt
ls -ln /var/log/SNS_applications /var/lib/livereduce > $OUT/files.txt
first=$(prop livereduce MainPID)
systemctl restart livereduce
note "restart-rc $?"
systemctl show livereduce -p ActiveState -p SubState -p MainPID > $OUT/restarted.txt
systemctl reload livereduce
note "reload-rc $?"
for _ in $(seq 50); do
    journalctl -u livereduce --no-pager -o cat | grep -q "worker_restart.*SIGHUP" && break
    sleep 0.2
done
systemctl show livereduce -p ActiveState -p MainPID > $OUT/reloaded.txt
t0=$(date +%s.%N)
systemctl stop livereduce
t1=$(date +%s.%N)
note "stop-seconds $(python3 -c "print($t1 - $t0)")"
systemctl show livereduce -p ActiveState -p Result -p MainPID > $OUT/stopped.txt
ps -eo pid,args | grep -e livereduce -e 'python' | grep -v grep > $OUT/ps-after-stop.txt
journalctl -u livereduce --no-pager -o cat > $OUT/unit-journal.txt
"""
    )
    notes = container.notes()
    assert "start-rc 0" in notes, notes
    started = container.values("started.txt")
    assert (started["ActiveState"], started["SubState"]) == ("active", "running")
    # Type=notify: `systemctl start` returned only after READY=1, i.e. after the first chunk
    # or once the worker waits for a run
    status = json.loads(container.read("status-at-start.json"))
    assert status["chunks"] >= 1 or status["state"] == "waiting_for_run", status
    assert started["StatusText"].startswith(("running: run 17892", "waiting_for_run"))
    assert f'Status: "{started["StatusText"]}"' in container.read("systemctl-status.txt")
    # exec: the main process is python itself, not the launcher's bash
    assert re.search(r"Main PID: \d+ \(python", container.read("systemctl-status.txt"))
    # the hardening leaves the log file and the output (StateDirectory) writable
    files = container.read("files.txt")
    assert re.search(r" \d+ +\d+ +[1-9]\d* .* livereduce\.log\n", files), files
    assert re.search(r" result\.h5\n", files), files
    journal = container.read("unit-journal.txt")
    assert "user 'snsdata'" in journal
    assert re.search(r" INFO supervisor\[\d+\] livereduce", journal), journal[-2000:]
    assert re.search(r" INFO worker\[\d+\] livereduce", journal)
    ready = journal.index("Started livereduce.service")
    assert "chunk 1 processed" in journal[:ready] or "waiting_for_run" in journal[:ready]
    # restart: a new main process, running again
    restarted = container.values("restarted.txt")
    assert "restart-rc 0" in notes
    assert restarted["ActiveState"] == "active"
    assert restarted["MainPID"] != started["MainPID"]
    # reload: SIGHUP to the daemon, which stays (same main PID) and restarts its worker
    assert "reload-rc 0" in notes
    reloaded = container.values("reloaded.txt")
    assert reloaded == {"ActiveState": "active", "MainPID": restarted["MainPID"]}
    assert re.search(r"worker_restart.*SIGHUP", journal), journal[-3000:]
    # stop: within TimeoutStopSec (45 s) and nothing left behind
    seconds = float(re.search(r"stop-seconds (\S+)", notes).group(1))
    assert seconds < 45
    stopped = container.values("stopped.txt")
    assert stopped == {"ActiveState": "inactive", "Result": "success", "MainPID": "0"}
    assert container.read("ps-after-stop.txt") == ""
    assert "timed out. Killing" not in container.read("journal.txt")


CHANGE_CONFIG = f"""python3 - <<'PY'
import json
path = "{IN_SRV}/livereduce.conf"
raw = json.load(open(path))
raw["update_every"] = 2
open(path, "w").write(json.dumps(raw))
PY
"""


@pytest.mark.systemd
def test_config_content_change_restarts_the_service(container: Container, replay: str) -> None:
    container.config(listener="adara", address=replay)
    container.boot(
        """
systemctl start livereduce
note "start-rc $?"
systemctl show livereduce -p MainPID -p NRestarts > $OUT/before.txt
"""
        + CHANGE_CONFIG
        + """
wait_for 60 bash -c '[ "$(systemctl show -p NRestarts --value livereduce)" = 1 ] &&
    [ "$(systemctl show -p ActiveState --value livereduce)" = active ]'
systemctl show livereduce -p MainPID -p NRestarts -p ActiveState > $OUT/after.txt
journalctl -u livereduce --no-pager -o cat > $OUT/unit-journal.txt
"""
    )
    assert "start-rc 0" in container.notes(), container.notes()
    before, after = container.values("before.txt"), container.values("after.txt")
    assert before["NRestarts"] == "0"
    assert after["NRestarts"] == "1", container.notes()
    assert after["ActiveState"] == "active"
    assert after["MainPID"] != before["MainPID"]
    journal = container.read("unit-journal.txt")
    assert "config_changed:" in journal
    assert "update_every': 2" in journal or '"update_every": 2.0' in journal


@pytest.mark.systemd
def test_frozen_worker_is_restarted_by_systemds_watchdog(container: Container, replay: str) -> None:
    # the daemon's own heartbeat timeout (120 s) is far longer than WatchdogSec: systemd is first
    container.config(listener="adara", address=replay, heartbeat_timeout_sec=120)
    container.dropin("livereduce.service", "WatchdogSec=4\n")
    container.boot(
        """
systemctl start livereduce
note "start-rc $?"
systemctl show livereduce -p MainPID -p NRestarts > $OUT/before.txt
worker=$(status_field worker_pid)
note "worker $worker"
kill -STOP "$worker"
note "stopped $(date +%s.%N)"
first=$(prop livereduce MainPID)
wait_for 60 bash -c '[ "$(systemctl show -p NRestarts --value livereduce)" -ge 1 ] &&
    [ "$(systemctl show -p ActiveState --value livereduce)" = active ]'
note "restarted $(date +%s.%N)"
systemctl show livereduce -p MainPID -p NRestarts -p ActiveState > $OUT/after.txt
kill -0 "$worker" 2>/dev/null && note "old worker still there"
journalctl -u livereduce --no-pager -o cat > $OUT/unit-journal.txt
"""
    )
    notes = container.notes()
    assert "start-rc 0" in notes, notes
    before, after = container.values("before.txt"), container.values("after.txt")
    assert after["NRestarts"] == "1", notes
    assert after["MainPID"] != before["MainPID"]
    assert "old worker still there" not in notes
    journal = container.read("unit-journal.txt")
    assert "livereduce.service: Watchdog timeout (limit 4s)!" in journal
    assert "heartbeat_timeout:" not in journal  # the daemon did not act: systemd did


@pytest.mark.systemd
def test_hanging_script_is_replaced_by_the_supervisor_first(
    container: Container, replay: str
) -> None:
    # the daemon's heartbeat timeout (4 s) is far shorter than WatchdogSec (120 s)
    container.config(listener="adara", address=replay, heartbeat_timeout_sec=4)
    container.boot(
        f"""
systemctl start livereduce
note "start-rc $?"
systemctl show livereduce -p MainPID -p NRestarts > $OUT/before.txt
worker=$(status_field worker_pid)
touch {IN_SRV}/hang
wait_for 40 worker_replaced "$worker"
rm -f {IN_SRV}/hang
note "worker $worker replaced by $(status_field worker_pid)"
systemctl show livereduce -p MainPID -p NRestarts -p ActiveState > $OUT/after.txt
journalctl -u livereduce --no-pager -o cat > $OUT/unit-journal.txt
"""
    )
    notes = container.notes()
    assert "start-rc 0" in notes, notes
    before, after = container.values("before.txt"), container.values("after.txt")
    assert after == {"MainPID": before["MainPID"], "NRestarts": "0", "ActiveState": "active"}
    assert re.search(r"worker \d+ replaced by \d+", notes), notes
    journal = container.read("unit-journal.txt")
    assert "heartbeat_timeout: no heartbeat from worker pid" in journal
    assert "Watchdog timeout" not in journal  # the supervisor acted, not systemd


@pytest.mark.systemd
def test_silent_sms_start_times_out_and_the_journal_says_what_it_waited_for(
    container: Container, silent_sms: str
) -> None:
    container.config(listener="adara", address=silent_sms)
    container.dropin("livereduce.service", "TimeoutStartSec=6\n")
    container.boot(
        """
systemctl start livereduce &
starter=$!
sleep 4
systemctl show livereduce -p ActiveState -p SubState -p StatusText > $OUT/during.txt
wait $starter
note "start-rc $?"
systemctl stop livereduce
journalctl -u livereduce --no-pager -o cat > $OUT/unit-journal.txt
"""
    )
    notes = container.notes()
    during = container.values("during.txt")
    assert (during["ActiveState"], during["SubState"]) == ("activating", "start")
    assert re.search(r"start-rc [1-9]", notes), notes
    journal = container.read("unit-journal.txt")
    assert "livereduce.service: start operation timed out. Terminating." in journal
    assert f"connected to the SMS at {silent_sms}" in journal
    assert during["StatusText"], "no STATUS= while starting"
    assert silent_sms in during["StatusText"] or "connecting" in during["StatusText"]


@pytest.mark.systemd
def test_bad_json_crash_loop_stops_at_the_start_limit(container: Container) -> None:
    container.config_path.write_text('{"instrument": "HYSPEC",\n "update_every": }\n')
    container.dropin("livereduce.service", "RestartSec=200ms\n")
    container.boot(
        """
systemctl start livereduce
note "start-rc $?"
wait_for 60 is livereduce ActiveState failed
systemctl show livereduce -p ActiveState -p Result -p NRestarts > $OUT/failed.txt
sleep 3
systemctl show livereduce -p ActiveState -p Result -p NRestarts > $OUT/later.txt
journalctl -u livereduce --no-pager -o cat > $OUT/unit-journal.txt
"""
    )
    failed = container.values("failed.txt")
    assert failed["ActiveState"] == "failed", container.notes()
    # systemd 252 keeps the last failure's result; later versions say start-limit-hit
    assert failed["Result"] in {"exit-code", "start-limit-hit"}
    assert failed["NRestarts"] == "10"  # StartLimitBurst=10: the 11th start was refused
    assert container.values("later.txt") == failed
    journal = container.read("unit-journal.txt")
    assert "livereduce.sh: configuration file /srv/lrtest/livereduce.conf: Expecting value: " in (
        journal
    )
    assert "Start request repeated too quickly." in journal


@pytest.mark.systemd
def test_watchdog_service_leaves_a_stopped_service_alone_and_restarts_a_stalled_one(
    container: Container, replay: str
) -> None:
    container.config(
        listener="adara",
        address=replay,
        heartbeat_timeout_sec=120,
        stop_timeout=3,  # the restart stops a hung worker: no need to wait the default 20 s
        watchdog={"interval": 1, "threshold": 20},
    )
    container.dropin("livereduce_watchdog.service", "# no polkit in the container\nUser=root\n")
    container.boot(
        f"""
systemctl start livereduce
note "start-rc $?"
systemctl start livereduce_watchdog
wait_for 20 journal_has livereduce_watchdog healthy
systemctl stop livereduce
note "stopped $(date +%s)"
sleep 4
journalctl -u livereduce_watchdog --no-pager -o cat > $OUT/watchdog-after-stop.txt
systemctl show livereduce -p ActiveState -p NRestarts > $OUT/after-stop.txt
systemctl start livereduce
first=$(prop livereduce MainPID)
touch {IN_SRV}/hang
wait_for 60 journal_has livereduce_watchdog "restart of livereduce.service queued"
rm -f {IN_SRV}/hang
wait_for 30 bash -c '[ "$(systemctl show -p MainPID --value livereduce)" != "$0" ] &&
    [ "$(systemctl show -p ActiveState --value livereduce)" = active ]' "$first"
note "main pid $first -> $(prop livereduce MainPID)"
journalctl -u livereduce_watchdog --no-pager -o cat > $OUT/watchdog-journal.txt
"""
    )
    notes = container.notes()
    assert "start-rc 0" in notes, notes
    assert container.values("after-stop.txt") == {"ActiveState": "inactive", "NRestarts": "0"}
    after_stop = container.read("watchdog-after-stop.txt")
    left_alone = re.findall(r"livereduce.service is inactive \(dead.*left alone", after_stop)
    assert len(left_alone) >= 3, after_stop  # one a second for 4 s
    assert "restarting livereduce.service" not in after_stop
    assert "restart of livereduce.service" not in after_stop
    journal = container.read("watchdog-journal.txt")
    assert re.search(r"WARNING .*livereduce.service stalled: last progress 2\d s ago", journal)
    match = re.search(r"main pid (\d+) -> (\d+)", notes)
    assert match, notes
    assert match.group(1) != match.group(2)


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((REPO / name).read_text())
    return parser


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|min)?", value)
    assert match, value
    return int(match.group(1)) * {"ms": 0.001, "s": 1, None: 1, "min": 60}[match.group(2)]


def test_unit_timings_fit_the_daemons_defaults() -> None:
    """The real values, which the container tests shorten: a crash loop reaches the start
    limit, a stop outlasts the daemon's own stop timeout, systemd's watchdog outlasts the
    daemon's heartbeat timeout at the default update_every."""
    unit = _unit("livereduce.service")
    service, section = unit["Service"], unit["Unit"]
    assert (service["Type"], service["NotifyAccess"]) == ("notify", "main")
    assert (service["Restart"], service["KillMode"], service["User"]) == (
        "always",
        "mixed",
        "snsdata",
    )
    burst, interval = int(section["StartLimitBurst"]), _seconds(section["StartLimitIntervalSec"])
    assert burst * _seconds(service["RestartSec"]) < interval  # a crash loop hits the limit
    defaults = config_from_mapping({"instrument": "HYSPEC"}, None, check_scripts=False)
    assert _seconds(service["TimeoutStopSec"]) >= defaults.stop_timeout + 20
    assert _seconds(service["WatchdogSec"]) > defaults.heartbeat_timeout
    assert _seconds(service["TimeoutStartSec"]) > 3 * defaults.update_every
    assert Path("/run", service["RuntimeDirectory"], "status.json") == SYSTEMD_STATUS_FILE
    assert service["ExecStart"] == "/usr/bin/livereduce.sh /etc/livereduce.conf"
    for option in ("NoNewPrivileges", "PrivateTmp", "ProtectKernelTunables"):
        assert service[option] == "yes"
    watchdog = _unit("livereduce_watchdog.service")
    assert watchdog["Unit"]["After"] == "livereduce.service"
    assert watchdog["Service"]["ExecStart"].startswith(
        "/usr/bin/livereduce_watchdog.sh /etc/livereduce.conf"
    )
    assert "Requires" not in watchdog["Unit"]  # stopping livereduce leaves the watchdog running
