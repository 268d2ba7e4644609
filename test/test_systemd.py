"""livereduce.service and livereduce_watchdog.service under a real systemd.

Each test boots systemd in a container on a fresh root folder: an empty tree whose /usr is the
host's /usr under a writable overlay (so an RPM can be installed into it), with /etc and /var
created by systemd at boot as on a new machine. Booting takes about a second, so every test
has its own container; what costs time is the service's own waiting, which each scenario
bounds by waiting for states and journal lines, never for a fixed time.

Most tests run the unit files of this checkout (bound into /etc/systemd/system) with a
drop-in that only points ExecStart at the checkout's launcher and shortens RestartSec (and,
per test, the timeout under test); snsdata and the log folder come from the checkout's
sysusers.d and tmpfiles.d files, as the RPM creates them. One test installs the RPMs built by
rpmbuild.sh instead and uses nothing of the checkout. A driver unit runs the test's shell
scenario inside the container (systemctl, journalctl), writes what it saw to /srv/lrtest/out
and powers the container off; the test then reads those files, and a failing assertion shows
the scenario's notes and the journal's last lines.

The Python that runs the daemon is the one running these tests, bound read-only into the
container wherever it lives; the service sees it through its private /tmp too. The SMS is the
replay server (``livereduce-replay``) or a silent TCP server, both started on the host's
loopback, which the container shares.
"""

from __future__ import annotations

import configparser
import contextlib
import itertools
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
BOOT_TIMEOUT_S = 240.0
"""Upper bound of one container's life; scenarios bound each of their own waits far below."""
JOURNAL_TAIL_LINES = 40
PREFIXES = sorted({sys.prefix, sys.base_prefix})
"""The Python installation the daemon runs with (a venv and the Python it was made from)."""

DRIVER_UNIT = f"""\
[Unit]
Description=livereduce test driver
# systemd powers off once the scenario has ended: a poweroff asked from inside the scenario
# raced its own end and, now and then, left the driver's stop job waiting its 90 s out
SuccessAction=poweroff
FailureAction=poweroff
[Service]
Type=oneshot
TimeoutStopSec=10
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
journal_count() {{ journalctl -u "$1" -o cat | grep -c "$2"; }}
# runtime_dropin UNIT NAME TEXT: a drop-in under /run, then daemon-reload
runtime_dropin() {{
    mkdir -p "/run/systemd/system/$1.d"
    printf '[Service]\\n%s\\n' "$3" > "/run/systemd/system/$1.d/$2.conf"
    systemctl daemon-reload
}}
export -f prop status_field journal_has journal_count worker_replaced
# every installed system has it (RHEL's setup package); the fresh /etc does not
[ -e /etc/hosts ] || printf '127.0.0.1 localhost\n::1 localhost\n' > /etc/hosts
"""

CHECKOUT_SETUP = f"""\
# snsdata and the log folder, from the files the RPM installs
systemd-sysusers {IN_REPO}/packaging/livereduce.sysusers
systemd-tmpfiles --create {IN_REPO}/packaging/livereduce.tmpfiles
systemctl daemon-reload
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tmp_bindings() -> str:
    """BindReadOnlyPaths= for the parts of the Python installation under /tmp, which the
    service's PrivateTmp=yes would hide (a venv made under /tmp, as in a fresh clone)."""
    under_tmp = [p for p in PREFIXES if Path(p).is_relative_to("/tmp")]
    if not under_tmp:
        return ""
    return (
        "# the Python installation lives under /tmp, which PrivateTmp= hides\n"
        f"BindReadOnlyPaths={' '.join(under_tmp)}\n"
    )


class Container:
    """One boot of systemd on a fresh root with the livereduce units; :meth:`boot` runs a
    scenario. ``from_checkout=False``: no unit, script or drop-in of the checkout is bound
    (the scenario installs the RPMs in ``rpms`` instead)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tree = root / "tree"
        self.usr_upper = root / "usr-upper"
        self.srv = root / "srv"
        self.out = self.srv / "out"
        self.scripts = self.srv / "scripts"
        self.units = root / "units"
        for folder in (self.tree, self.usr_upper, self.out, self.scripts, self.units):
            folder.mkdir(parents=True)
        for folder in (root, self.srv, self.out, self.scripts):
            folder.chmod(0o755)  # readable by snsdata inside the container
        self._make_tree()
        self.config_path = self.srv / "livereduce.conf"
        self.dropins: dict[str, str] = {}
        self.extra_binds: list[str] = []
        self.proc_script(
            "import os, time\n"
            f"if os.path.exists('{IN_SRV}/hang'):\n"
            "    time.sleep(3600)  # a processing script that hangs, on request\n"
            "output = input\n"
        )

    def _make_tree(self) -> None:
        """An empty OS tree: the usual /usr symlinks, an os-release, nothing in /etc."""
        for name in ("bin", "sbin", "lib", "lib64"):
            if Path("/", name).is_symlink():
                (self.tree / name).symlink_to(os.readlink(Path("/", name)))
        for name in ("usr", "etc", "var", "tmp", "srv", "root"):
            (self.tree / name).mkdir()
        (self.tree / "root").chmod(0o755)  # snsdata reaches a Python installed under /root
        shutil.copy2("/etc/os-release", self.tree / "etc" / "os-release")

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
        self.dropins[unit] = self.dropins.get(unit, "") + text

    def boot(
        self, scenario: str, *, from_checkout: bool = True, timeout_s: float = BOOT_TIMEOUT_S
    ) -> None:
        """Boot, run ``scenario`` (bash, after PRELUDE) in the driver unit, power off. Raises
        AssertionError, with the evidence, when the container outlives ``timeout_s`` (it is
        killed first)."""
        setup = CHECKOUT_SETUP if from_checkout else ""
        (self.srv / "driver.sh").write_text(PRELUDE + setup + scenario)
        (self.units / "lrtest-driver.service").write_text(DRIVER_UNIT)
        binds = [
            f"--bind={self.srv}:{IN_SRV}",
            f"--bind-ro={self.units / 'lrtest-driver.service'}:/etc/systemd/system/"
            "lrtest-driver.service",
            *(f"--bind-ro={prefix}" for prefix in PREFIXES),
            *self.extra_binds,
        ]
        exec_start = {
            "livereduce.service": f"{IN_REPO}/scripts/livereduce.sh {IN_SRV}/livereduce.conf",
            "livereduce_watchdog.service": (
                f"{IN_REPO}/scripts/livereduce_watchdog.sh {IN_SRV}/livereduce.conf"
            ),
        }
        if from_checkout:
            binds.append(f"--bind-ro={REPO}:{IN_REPO}")
        for unit, command in exec_start.items():
            text = "[Service]\n" + _tmp_bindings()
            if from_checkout:
                binds.append(f"--bind-ro={REPO / unit}:/etc/systemd/system/{unit}")
                text += (
                    "# the checkout instead of the RPM's /usr/bin\n"
                    f"ExecStart=\nExecStart={command}\n"
                    "# tests wait for restarts: 1 s instead of 10 s\n"
                    "RestartSec=1\n"
                )
            folder = self.units / f"{unit}.d"
            folder.mkdir(exist_ok=True)
            (folder / "test.conf").write_text(text + self.dropins.get(unit, ""))
            binds.append(f"--bind-ro={folder}:/etc/systemd/system/{unit}.d")
        command = [
            "systemd-nspawn", "-D", str(self.tree), f"--overlay=/usr:{self.usr_upper}:/usr",
            "--register=no", "--keep-unit", "-q", "-b",
            f"--machine=lrtest-{uuid.uuid4().hex[:10]}", *binds,
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
                    f"container still running after {timeout_s} s\n{self.evidence()}"
                ) from None
            except BaseException:  # pytest-timeout, Ctrl-C: never leave a container behind
                _kill_tree(process)
                raise

    def read(self, name: str) -> str:
        path = self.out / name
        return path.read_text(errors="replace") if path.exists() else ""

    def notes(self) -> str:
        return self.read("notes.txt")

    def values(self, name: str) -> dict[str, str]:
        """KEY=VALUE lines of an output file, as written by ``systemctl show``."""
        return dict(line.split("=", 1) for line in self.read(name).splitlines() if "=" in line)

    def evidence(self) -> str:
        """What a failure message shows: the scenario's notes and errors and the last lines
        of the container's journal (or of its console when it never got that far)."""
        journal = self.read("journal.txt").splitlines()
        if not journal:
            console = self.root / "console.txt"
            journal = console.read_text(errors="replace").splitlines() if console.exists() else []
        tail = "\n".join(journal[-JOURNAL_TAIL_LINES:])
        errors = self.read("driver.err").strip()[-2000:]
        return (
            f"--- scenario notes ---\n{self.notes()}"
            + (f"--- scenario stderr ---\n{errors}\n" if errors else "")
            + f"--- journal, last {JOURNAL_TAIL_LINES} lines ---\n{tail}"
        )

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """Assertions inside fail with :meth:`evidence` appended to their message."""
        try:
            yield
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.evidence()}") from None


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
def test_start_status_journal_fifteen_restarts_reload_and_stop(
    container: Container, replay: str
) -> None:
    container.config(listener="adara", address=replay)
    container.boot(
        """
systemctl start livereduce
note "start-rc $?"
systemctl show livereduce -p ActiveState -p SubState -p MainPID -p StatusText > $OUT/started.txt
systemctl status livereduce --no-pager -l > $OUT/systemctl-status.txt
for i in $(seq 15); do
    systemctl restart livereduce
    note "restart $i rc $? $(prop livereduce ActiveState)"
done
systemctl show livereduce -p ActiveState -p SubState -p MainPID -p Result > $OUT/restarted.txt
wait_for 60 bash -c '[ "$(status_field chunks)" -ge 1 ] 2>/dev/null'
ls -ln /var/log/SNS_applications /var/lib/livereduce > $OUT/files.txt
stat -c '%U %a' /var/log/SNS_applications > $OUT/logdir.txt
worker=$(status_field worker_pid)
systemctl reload livereduce
note "reload-rc $?"
wait_for 30 journal_has livereduce "reload_requested: SIGHUP"
wait_for 30 worker_replaced "$worker"
# RELOADING=1 holds the unit in "reloading" until the new worker is connected (READY=1)
wait_for 30 is livereduce ActiveState active
systemctl show livereduce -p ActiveState -p MainPID > $OUT/reloaded.txt
t0=$(date +%s.%N)
systemctl stop livereduce
t1=$(date +%s.%N)
note "stop-seconds $(python3 -c "print($t1 - $t0)")"
systemctl show livereduce -p ActiveState -p Result -p MainPID > $OUT/stopped.txt
ps -eo pid,args | grep -e livereduce -e 'python' | grep -v grep > $OUT/ps-after-stop.txt
journalctl -u livereduce --no-pager -o cat > $OUT/unit-journal.txt
journalctl -u livereduce --no-pager -o cat -p warning > $OUT/unit-warnings.txt
"""
    )
    notes = container.notes()
    with container.explained():
        assert "start-rc 0" in notes
        started = container.values("started.txt")
        assert (started["ActiveState"], started["SubState"]) == ("active", "running")
        assert started["StatusText"], "no STATUS= once started"
        assert f'Status: "{started["StatusText"]}"' in container.read("systemctl-status.txt")
        # exec: the main process is python itself, not the launcher's bash
        assert re.search(r"Main PID: \d+ \(python", container.read("systemctl-status.txt"))
        journal = container.read("unit-journal.txt")
        # Type=notify: `systemctl start` returned once the worker was connected
        ready = journal.index("Started livereduce.service")
        assert "connected to the SMS at" in journal[:ready]
        # 15 restarts in a row, every one succeeds: no start limit
        restarts = re.findall(r"restart (\d+) rc (\d+) (\w+)", notes)
        assert restarts == [(str(i), "0", "active") for i in range(1, 16)]
        restarted = container.values("restarted.txt")
        assert (restarted["ActiveState"], restarted["Result"]) == ("active", "success")
        assert restarted["MainPID"] != started["MainPID"]
        assert "Start request repeated too quickly" not in journal
        # the hardening leaves the log file and the output (StateDirectory) writable
        files = container.read("files.txt")
        assert re.search(r" \d+ +\d+ +[1-9]\d* .* livereduce\.log\n", files), files
        assert re.search(r" result\.h5\n", files), files
        assert container.read("logdir.txt") == "snsdata 755\n"  # from tmpfiles.d
        assert "user 'snsdata'" in journal
        assert re.search(r" INFO supervisor\[\d+\] livereduce", journal)
        assert re.search(r" INFO worker\[\d+\] livereduce", journal)
        assert not re.search(r"^<\d>", journal, re.MULTILINE)  # the journal parsed the prefixes
        # reload: SIGHUP to the daemon, which stays (same main PID) and restarts its worker
        assert "reload-rc 0" in notes
        reloaded = container.values("reloaded.txt")
        assert reloaded == {"ActiveState": "active", "MainPID": restarted["MainPID"]}
        assert "SIGHUP" not in container.read("unit-warnings.txt")  # a reload is no warning
        # stop: within TimeoutStopSec (45 s) and nothing left behind
        seconds = float(re.search(r"stop-seconds (\S+)", notes).group(1))
        assert seconds < 45
        stopped = container.values("stopped.txt")
        assert stopped == {"ActiveState": "inactive", "Result": "success", "MainPID": "0"}
        assert container.read("ps-after-stop.txt") == ""
        assert "timed out. Killing" not in container.read("journal.txt")


@pytest.mark.systemd
def test_start_returns_before_the_first_chunk_at_update_every_30(
    container: Container, replay: str
) -> None:
    container.config(listener="adara", address=replay, update_every=30)
    container.boot(
        """
t0=$(date +%s.%N)
systemctl start livereduce
note "start-rc $?"
t1=$(date +%s.%N)
note "start-seconds $(python3 -c "print($t1 - $t0)")"
note "chunks-at-start $(status_field chunks)"
systemctl show livereduce -p ActiveState -p StatusText > $OUT/started.txt
systemctl stop livereduce
"""
    )
    notes = container.notes()
    with container.explained():
        assert "start-rc 0" in notes
        assert container.values("started.txt")["ActiveState"] == "active"
        # READY=1 came once the worker was connected and receiving, not after a chunk
        assert "chunks-at-start 0" in notes
        seconds = float(re.search(r"start-seconds (\S+)", notes).group(1))
        print(f"systemctl start took {seconds:.1f} s at update_every 30")
        assert seconds < 30  # less than one update_every: it did not wait for a chunk


KILLED_SUPERVISOR_STOP = (
    "# after a killed supervisor, systemd 252 in this container sometimes waits the whole\n"
    "# TimeoutStopSec for a cgroup that is already empty: keep that wait short\n"
    "TimeoutStopSec=10\n"
)

CHANGE_CONFIG = f"""python3 - <<'PY'
import json
path = "{IN_SRV}/livereduce.conf"
raw = json.load(open(path))
raw["update_every"] = 2
open(path, "w").write(json.dumps(raw))
PY
"""


@pytest.mark.systemd
def test_watchdog_restarts_config_change_and_admin_restarts_leave_the_unit_active(
    container: Container, replay: str
) -> None:
    """Within five minutes: the external watchdog (as snsdata, through the real polkit and the
    shipped rule) leaves a stopped unit alone, restarts a stalled one and starts a failed
    one again; a configuration change restarts the service; five admin restarts follow."""
    container.config(
        listener="adara",
        address=replay,
        heartbeat_timeout_sec=120,
        stop_timeout=3,  # the restart stops a hung worker: no need to wait the default 20 s
        watchdog={"interval": 1, "threshold": 20},  # the least threshold allowed
    )
    if not Path("/usr/lib/polkit-1/polkitd").exists() or shutil.which("dbus-daemon") is None:
        pytest.skip("polkitd or dbus-daemon is missing (Debian packages polkitd, dbus)")
    container.dropin("livereduce.service", KILLED_SUPERVISOR_STOP)
    container.extra_binds.append(
        f"--bind-ro={REPO / '50-snsdata-livereduce.rules'}:"
        "/etc/polkit-1/rules.d/50-snsdata-livereduce.rules"
    )
    container.boot(
        f"""
systemctl start dbus.socket polkit.service
note "polkit-rc $?"
systemctl start livereduce
note "start-rc $?"
systemctl start livereduce_watchdog
wait_for 20 journal_has livereduce_watchdog healthy
# what the rule does not allow snsdata
setpriv --reuid=snsdata --regid=snsdata --clear-groups \
    systemctl --no-ask-password stop livereduce 2> $OUT/denied.txt
note "snsdata-stop-rc $?"
# 1. stopped by an admin: left alone
systemctl stop livereduce
wait_for 20 bash -c '[ "$(journal_count livereduce_watchdog "inactive (dead.*left alone")" -ge 3 ]'
journalctl -u livereduce_watchdog --no-pager -o cat > $OUT/watchdog-after-stop.txt
systemctl show livereduce -p ActiveState -p NRestarts > $OUT/after-stop.txt
# 2. stalled: restarted by the watchdog
systemctl start livereduce
first=$(prop livereduce MainPID)
touch {IN_SRV}/hang
wait_for 60 journal_has livereduce_watchdog "restart of livereduce.service queued"
rm -f {IN_SRV}/hang
wait_for 30 bash -c '[ "$(systemctl show -p MainPID --value livereduce)" != "$0" ] &&
    [ "$(systemctl show -p ActiveState --value livereduce)" = active ]' "$first"
note "stalled: main pid $first -> $(prop livereduce MainPID)"
# 3. a changed configuration: the daemon exits 0, systemd starts it again
"""
        + CHANGE_CONFIG
        + """
wait_for 60 bash -c '[ "$(systemctl show -p NRestarts --value livereduce)" = 1 ] &&
    [ "$(systemctl show -p ActiveState --value livereduce)" = active ]'
note "config-change: $(prop livereduce NRestarts) $(prop livereduce ActiveState)"
# 4. five admin restarts
for i in $(seq 5); do
    systemctl restart livereduce
    note "admin restart $i rc $? $(prop livereduce ActiveState)"
done
# 5. failed (here: killed with Restart= off): started again by the watchdog
runtime_dropin livereduce.service norestart "Restart=no"
main=$(prop livereduce MainPID)
[ "$main" != 0 ] && kill -KILL "$main"  # kill 0 would end this scenario
wait_for 60 journal_has livereduce_watchdog ": start of livereduce.service queued"
wait_for 30 is livereduce ActiveState active
systemctl show livereduce -p ActiveState -p SubState > $OUT/final.txt
journalctl -u livereduce_watchdog --no-pager -o cat > $OUT/watchdog-journal.txt
journalctl -u livereduce --no-pager -o cat > $OUT/unit-journal.txt
"""
    )
    notes = container.notes()
    with container.explained():
        assert "polkit-rc 0" in notes
        assert "start-rc 0" in notes
        assert re.search(r"snsdata-stop-rc [1-9]", notes)
        assert "Access denied" in container.read("denied.txt") or "authentication" in (
            container.read("denied.txt")
        )
        assert container.values("after-stop.txt") == {"ActiveState": "inactive", "NRestarts": "0"}
        after_stop = container.read("watchdog-after-stop.txt")
        assert "restarting livereduce.service" not in after_stop
        assert "restart of livereduce.service" not in after_stop
        journal = container.read("watchdog-journal.txt")
        assert re.search(r"WARNING .*livereduce.service stalled: last progress 2\d s ago", journal)
        match = re.search(r"stalled: main pid (\d+) -> (\d+)", notes)
        assert match
        assert match.group(1) != match.group(2)
        assert "config-change: 1 active" in notes
        admin = re.findall(r"admin restart (\d) rc (\d+) (\w+)", notes)
        assert admin == [(str(i), "0", "active") for i in range(1, 6)]
        assert re.search(
            r"WARNING .*livereduce.service is failed \(failed, result signal\)", journal
        )
        assert "start of livereduce.service failed" not in journal  # polkit allowed it
        assert "restart of livereduce.service failed" not in journal
        assert container.values("final.txt") == {"ActiveState": "active", "SubState": "running"}
        assert "Start request repeated too quickly" not in container.read("journal.txt")


@pytest.mark.systemd
def test_frozen_worker_is_restarted_by_systemds_watchdog(container: Container, replay: str) -> None:
    # the daemon's own heartbeat timeout (120 s) is far longer than WatchdogSec: systemd is first
    container.config(listener="adara", address=replay, heartbeat_timeout_sec=120)
    container.dropin("livereduce.service", "WatchdogSec=4\n" + KILLED_SUPERVISOR_STOP)
    container.boot(
        """
systemctl start livereduce
note "start-rc $?"
systemctl show livereduce -p MainPID -p NRestarts > $OUT/before.txt
wait_for 30 bash -c '[ "$(status_field worker_pid)" != None ]'
worker=$(status_field worker_pid)
note "worker $worker"
kill -STOP "$worker"
wait_for 60 bash -c '[ "$(systemctl show -p NRestarts --value livereduce)" -ge 1 ] &&
    [ "$(systemctl show -p ActiveState --value livereduce)" = active ]'
systemctl show livereduce -p MainPID -p NRestarts -p ActiveState > $OUT/after.txt
kill -0 "$worker" 2>/dev/null && note "old worker still there"
journalctl -u livereduce --no-pager -o cat > $OUT/unit-journal.txt
"""
    )
    notes = container.notes()
    with container.explained():
        assert "start-rc 0" in notes
        before, after = container.values("before.txt"), container.values("after.txt")
        assert after["NRestarts"] == "1"
        assert after["MainPID"] != before["MainPID"]
        assert "old worker still there" not in notes
        journal = container.read("unit-journal.txt")
        assert "livereduce.service: Watchdog timeout (limit 4s)!" in journal
        assert "heartbeat_timeout:" not in journal  # the daemon did not act: systemd did


@pytest.mark.systemd
def test_hanging_script_is_replaced_by_the_supervisor_first(
    container: Container, replay: str
) -> None:
    # the daemon's script time limit (4 s) is far shorter than WatchdogSec (120 s)
    container.config(
        listener="adara", address=replay, heartbeat_timeout_sec=4, script_timeout_sec=4
    )
    container.boot(
        f"""
systemctl start livereduce
note "start-rc $?"
systemctl show livereduce -p MainPID -p NRestarts > $OUT/before.txt
wait_for 30 bash -c '[ "$(status_field worker_pid)" != None ]'
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
    with container.explained():
        assert "start-rc 0" in notes
        before, after = container.values("before.txt"), container.values("after.txt")
        assert after == {"MainPID": before["MainPID"], "NRestarts": "0", "ActiveState": "active"}
        assert re.search(r"worker \d+ replaced by \d+", notes)
        journal = container.read("unit-journal.txt")
        assert "script_timeout: reduce_HYS_live_proc.py ran for" in journal
        assert "Watchdog timeout" not in journal  # the supervisor acted, not systemd


@pytest.mark.systemd
def test_silent_sms_start_times_out_and_the_journal_says_what_it_waited_for(
    container: Container, silent_sms: str
) -> None:
    container.config(listener="adara", address=silent_sms)
    container.dropin("livereduce.service", "TimeoutStartSec=6\n")
    container.boot(
        f"""
systemctl start livereduce &
starter=$!
wait_for 20 bash -c 'systemctl show -p StatusText --value livereduce | grep -q "{silent_sms}"'
systemctl show livereduce -p ActiveState -p SubState -p StatusText > $OUT/during.txt
wait $starter
note "start-rc $?"
systemctl stop livereduce
journalctl -u livereduce --no-pager -o cat > $OUT/unit-journal.txt
"""
    )
    notes = container.notes()
    with container.explained():
        during = container.values("during.txt")
        assert (during["ActiveState"], during["SubState"]) == ("activating", "start")
        assert silent_sms in during["StatusText"]
        assert re.search(r"start-rc [1-9]", notes)
        journal = container.read("unit-journal.txt")
        assert "livereduce.service: start operation timed out. Terminating." in journal
        assert f"connected to the SMS at {silent_sms}" in journal


@pytest.mark.systemd
def test_bad_config_never_hits_a_start_limit_and_a_fixed_one_runs_under_mdwe(
    container: Container, replay: str
) -> None:
    """A crash loop keeps trying (slowed by RestartSec) instead of leaving the unit failed;
    fixing the file is all it takes. The fixed configuration then runs with
    MemoryDenyWriteExecute=yes: numpy, scipp and h5py (the result file) work under it."""
    # "localhost": the name is resolved under the unit's RestrictAddressFamilies (no netlink)
    good = container.config(listener="adara", address=replay.replace("127.0.0.1", "localhost"))
    (container.srv / "good.conf").write_text(json.dumps(good))
    container.config_path.write_text('{"instrument": "HYSPEC",\n "update_every": }\n')
    container.dropin("livereduce.service", "RestartSec=200ms\n")
    container.boot(
        f"""
systemctl start --no-block livereduce
wait_for 90 bash -c '[ "$(systemctl show -p NRestarts --value livereduce)" -ge 12 ]'
systemctl show livereduce -p ActiveState -p Result -p NRestarts > $OUT/looping.txt
runtime_dropin livereduce.service mdwe "MemoryDenyWriteExecute=yes"
cp {IN_SRV}/good.conf {IN_SRV}/livereduce.conf
wait_for 60 is livereduce ActiveState active
wait_for 60 bash -c '[ "$(status_field chunks)" -ge 3 ] 2>/dev/null'
systemctl show livereduce -p ActiveState -p MemoryDenyWriteExecute > $OUT/fixed.txt
ls /var/lib/livereduce > $OUT/outputs.txt
systemctl stop livereduce
systemctl show livereduce -p ActiveState -p Result > $OUT/stopped.txt
journalctl -u livereduce --no-pager -o cat > $OUT/unit-journal.txt
"""
    )
    with container.explained():
        looping = container.values("looping.txt")
        assert int(looping["NRestarts"]) >= 12  # more than the old StartLimitBurst of 10
        assert looping["ActiveState"] != "failed"
        journal = container.read("unit-journal.txt")
        assert "configuration file /srv/lrtest/livereduce.conf: invalid JSON at line 2" in journal
        assert "Start request repeated too quickly." not in journal
        assert container.values("fixed.txt") == {
            "ActiveState": "active",
            "MemoryDenyWriteExecute": "yes",
        }
        assert "result.h5" in container.read("outputs.txt").split()
        assert container.values("stopped.txt") == {"ActiveState": "inactive", "Result": "success"}


def _built_rpms(outdir: Path) -> list[Path]:
    """The RPMs of this checkout, built by rpmbuild.sh; skips with the reason when it cannot
    build them here."""
    from test_rpm import _missing  # noqa: PLC0415 - the same conditions as test_rpm.py

    reason = _missing()
    if reason is not None:
        pytest.skip(reason)
    done = subprocess.run(
        [str(REPO / "rpmbuild.sh"), "--outdir", str(outdir)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return sorted(outdir.glob("*.noarch.rpm"))


@pytest.mark.systemd
def test_rpm_installed_on_a_fresh_root_runs_as_snsdata_and_logrotate_rotates_its_logs(
    container: Container,
) -> None:
    """rpm -i of both packages, then `systemctl start`, as an admin does: the user, the log
    folder, the units, /etc/livereduce.conf (the demo on the embedded engine) all come from
    the packages. The one addition: LIVEREDUCE_PYTHON names this Python for the daemon, standing
    in for RHEL's python3.11 with the dependencies (Debian's has no scipp)."""
    rpms = _built_rpms(container.root / "rpms")
    container.extra_binds.append(f"--bind-ro={container.root / 'rpms'}:{IN_SRV}/rpms")
    # (the watchdog needs only the standard library: it runs on the installed python3.11)
    container.dropin("livereduce.service", f"Environment=LIVEREDUCE_PYTHON={sys.executable}\n")
    names = " ".join(f"{IN_SRV}/rpms/{rpm.name}" for rpm in rpms)
    log = "/var/log/SNS_applications"
    container.boot(
        f"""
getent passwd snsdata && note "snsdata existed before"
rpm -i --nodeps {names} > $OUT/rpm.txt 2>&1
note "rpm-rc $?"
getent passwd snsdata > $OUT/passwd.txt
stat -c '%U %a' {log} > $OUT/logdir.txt
systemd-analyze security livereduce.service --no-pager > $OUT/security.txt 2>&1
systemd-analyze security livereduce_watchdog.service --no-pager >> $OUT/security.txt 2>&1
systemctl start livereduce
note "start-rc $?"
ps -o user= -p "$(prop livereduce MainPID)" > $OUT/user.txt
wait_for 60 bash -c '[ "$(status_field chunks)" -ge 1 ] 2>/dev/null'
systemctl start livereduce_watchdog
wait_for 30 grep -q "watching livereduce.service" {log}/livereduce_watchdog.log
# -s: logrotate's state file (RHEL's logrotate package provides /var/lib/logrotate)
logrotate -f -s /var/tmp/logrotate.status /etc/logrotate.d/python-livereduce \
    > $OUT/logrotate.txt 2>&1
note "logrotate-rc $?"
ls -l {log} > $OUT/rotated.txt
# both processes of the daemon write to the new file: a reload restarts the worker
systemctl reload livereduce
wait_for 60 bash -c 'grep -q " supervisor\\[" {log}/livereduce.log &&
    grep -q " worker\\[" {log}/livereduce.log'
systemctl stop livereduce_watchdog
wait_for 30 grep -q "stopping on" {log}/livereduce_watchdog.log
cp {log}/livereduce.log $OUT/new-log.txt
cp {log}/livereduce.log.1 $OUT/old-log.txt
cp {log}/livereduce_watchdog.log $OUT/new-watchdog-log.txt
systemctl stop livereduce
systemctl show livereduce -p ActiveState -p Result > $OUT/stopped.txt
LIVEREDUCE_PYTHON={sys.executable} livereduce.sh --version > $OUT/version.txt 2>&1
journalctl -u livereduce_watchdog --no-pager -o cat > $OUT/watchdog-journal.txt
""",
        from_checkout=False,
    )
    notes = container.notes()
    with container.explained():
        assert "snsdata existed before" not in notes
        assert "rpm-rc 0" in notes, container.read("rpm.txt")
        assert container.read("passwd.txt").startswith("snsdata:x:")
        assert container.read("logdir.txt") == "snsdata 755\n"
        assert "start-rc 0" in notes
        assert container.read("user.txt").strip() == "snsdata"
        assert "logrotate-rc 0" in notes, container.read("logrotate.txt")
        rotated = container.read("rotated.txt")
        assert " livereduce.log.1\n" in rotated
        assert " livereduce_watchdog.log.1\n" in rotated
        old, new = container.read("old-log.txt"), container.read("new-log.txt")
        assert re.search(r" INFO worker\[\d+\] ", old)
        assert re.search(r" INFO supervisor\[\d+\] .*reload_requested", new)
        assert re.search(r" INFO worker\[\d+\] ", new)
        assert "stopping on" in container.read("new-watchdog-log.txt")
        assert container.values("stopped.txt") == {"ActiveState": "inactive", "Result": "success"}
        exposures = re.findall(r"Overall exposure level for (\S+): (\d+\.\d+)", (
            container.read("security.txt")
        ))  # fmt: skip
        assert [unit for unit, _ in exposures] == [
            "livereduce.service",
            "livereduce_watchdog.service",
        ]
        assert all(float(level) <= 2.0 for _, level in exposures), exposures
        assert container.read("version.txt").startswith("livereduce ")


@pytest.mark.parametrize("unit", ["livereduce.service", "livereduce_watchdog.service"])
def test_unit_exposure_is_at_most_2(unit: str) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing (Debian package systemd)")
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(REPO / unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0, done.stdout


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((REPO / name).read_text())
    return parser


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|min)?", value)
    assert match, value
    return int(match.group(1)) * {"ms": 0.001, "s": 1, None: 1, "min": 60}[match.group(2)]


def test_unit_timings_fit_the_daemons_defaults() -> None:
    """The real values, which the container tests shorten: no start limit, a stop outlasts
    the daemon's own stop timeout, systemd's watchdog outlasts the daemon's heartbeat timeout
    at the default update_every; every hardening directive has its reason above it."""
    unit = _unit("livereduce.service")
    service, section = unit["Service"], unit["Unit"]
    assert (service["Type"], service["NotifyAccess"]) == ("notify", "main")
    assert (service["Restart"], service["KillMode"], service["User"]) == (
        "always",
        "mixed",
        "snsdata",
    )
    assert section["StartLimitIntervalSec"] == "0"  # never a start limit
    assert "StartLimitBurst" not in section
    assert _seconds(service["RestartSec"]) >= 10
    assert _seconds(service["RestartMaxDelaySec"]) > _seconds(service["RestartSec"])
    defaults = config_from_mapping({"instrument": "HYSPEC"}, None, check_scripts=False)
    assert _seconds(service["TimeoutStopSec"]) >= defaults.stop_timeout + 20
    assert _seconds(service["WatchdogSec"]) > defaults.heartbeat_timeout
    assert _seconds(service["TimeoutStartSec"]) > 3 * defaults.update_every
    assert Path("/run", service["RuntimeDirectory"], "status.json") == SYSTEMD_STATUS_FILE
    assert service["ExecStart"] == "/usr/bin/livereduce.sh /etc/livereduce.conf"
    assert section["Documentation"].startswith("man:livereduce.sh(1) file:///usr/share/doc/")
    for option in ("NoNewPrivileges", "PrivateTmp", "ProtectKernelTunables"):
        assert service[option] == "yes"
    assert "ProtectHome" not in service  # scripts write under /home
    assert service["ReadWritePaths"] == "-/SNS -/home -/var/log/SNS_applications"
    lines = (REPO / "livereduce.service").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("# Hardening"))
    hardening = lines[first : lines.index("[Install]")]
    for above, line in itertools.pairwise(hardening):
        if line and not line.startswith("#"):
            assert above.startswith("# "), f"{line}: no reason on the line above"
    watchdog = _unit("livereduce_watchdog.service")
    assert watchdog["Unit"]["After"] == "livereduce.service"
    assert watchdog["Unit"]["StartLimitIntervalSec"] == "0"
    assert watchdog["Service"]["ExecStart"].startswith(
        "/usr/bin/livereduce_watchdog.sh /etc/livereduce.conf"
    )
    assert "Requires" not in watchdog["Unit"]  # stopping livereduce leaves the watchdog running
