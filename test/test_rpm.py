"""./rpmbuild.sh: both RPMs, their files and modes, their scriptlets, rpmlint without errors,
and the installed layout (launcher + daemon + watchdog from /usr/share/livereduce) working.

Needs Debian's ``rpm`` (rpmbuild, rpm2archive) and PyPI's ``rpmlint``; .ci/system-deps.sh
installs them. The scriptlets are run with ``sh`` after pointing systemd's helper and the log
folder at stand-ins under tmp_path, since this host has neither an RPM database nor
systemd-update-helper.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
MAIN = f"python-livereduce-{VERSION}-1.noarch.rpm"
WATCHDOG = f"python-livereduce-watchdog-{VERSION}-1.noarch.rpm"
HELPER = "/usr/lib/systemd/systemd-update-helper"
LOGDIR = "/var/log/SNS_applications"

pytestmark = pytest.mark.skipif(
    shutil.which("rpmbuild") is None or shutil.which("rpmlint") is None,
    reason="rpmbuild (Debian package rpm) or rpmlint (pip install rpmlint rpm) is missing; "
    "run .ci/system-deps.sh",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The RPMs built into a fresh folder, and rpmbuild.sh --lint's output."""
    outdir = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [str(REPO / "rpmbuild.sh"), "--outdir", str(outdir), "--lint"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return outdir, done.stdout


def _rpm(*args: str) -> str:
    return subprocess.run(
        ["rpm", *args], capture_output=True, text=True, timeout=60, check=True
    ).stdout


def _files(path: Path) -> dict[str, str]:
    """{file name: permissions} of an RPM."""
    out = _rpm("-qp", "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]", str(path))
    return {name: mode for mode, name in (line.split(" ", 1) for line in out.splitlines())}


def test_both_rpms_and_the_source_rpm_are_built(built: tuple[Path, str]) -> None:
    outdir, output = built
    names = sorted(p.name for p in outdir.iterdir())
    assert names == sorted([MAIN, WATCHDOG, f"python-livereduce-{VERSION}-1.src.rpm"])
    assert f"{outdir}/{MAIN}" in output.splitlines()


def test_rpmlint_reports_no_errors(built: tuple[Path, str]) -> None:
    summary = built[1].strip().splitlines()[-1]
    assert "3 packages and 0 specfiles checked; 0 errors" in summary


def test_main_rpm_files_and_modes(built: tuple[Path, str]) -> None:
    files = _files(built[0] / MAIN)
    expected = {
        "/usr/bin/livereduce.sh": "-rwxr-xr-x",
        "/usr/bin/livereduce.py": "-rwxr-xr-x",
        "/usr/lib/systemd/system/livereduce.service": "-rw-r--r--",
        "/usr/share/livereduce/livereduce/__init__.py": "-rw-r--r--",
        "/usr/share/livereduce/livereduce/cli.py": "-rw-r--r--",
        "/usr/share/livereduce/livereduce/watchdog.py": "-rw-r--r--",
        f"/usr/share/doc/python-livereduce-{VERSION}/livereduce.conf.example": "-rw-r--r--",
        f"/usr/share/doc/python-livereduce-{VERSION}/systemd.md": "-rw-r--r--",
    }
    assert {name: files.get(name) for name in expected} == expected
    assert not [name for name in files if "__pycache__" in name]


def test_watchdog_rpm_files_modes_and_requirements(built: tuple[Path, str]) -> None:
    files = _files(built[0] / WATCHDOG)
    expected = {
        "/usr/bin/livereduce_watchdog.sh": "-rwxr-xr-x",
        "/usr/lib/systemd/system/livereduce_watchdog.service": "-rw-r--r--",
        "/usr/share/polkit-1/rules.d/50-snsdata-livereduce.rules": "-rw-r--r--",
    }
    assert {name: files.get(name) for name in expected} == expected
    requires = _rpm("-qpR", str(built[0] / WATCHDOG)).split("\n")
    assert f"python-livereduce = {VERSION}-1" in requires
    assert "polkit" in requires
    main_requires = _rpm("-qpR", str(built[0] / MAIN))
    for private in ("nsd-app-wrap", "jq", "polkit"):
        assert private not in main_requires
    assert "python3.11" in main_requires.split("\n")


def _scriptlet(rpm: Path, tag: str, tmp: Path) -> str:
    text = _rpm("-qp", "--qf", f"%{{{tag}}}", str(rpm))
    assert HELPER in text or tag == "PREIN"
    return text.replace(HELPER, str(tmp / "update-helper")).replace(LOGDIR, str(tmp / "log"))


def test_scriptlets_enable_on_install_restart_on_upgrade_and_keep_logs(
    built: tuple[Path, str], tmp_path: Path
) -> None:
    calls = tmp_path / "calls.txt"
    helper = tmp_path / "update-helper"
    helper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    helper.chmod(0o755)
    rpm = built[0] / MAIN

    def run(tag: str, count: int) -> list[str]:
        calls.unlink(missing_ok=True)
        script = _scriptlet(rpm, tag, tmp_path)
        subprocess.run(["sh", "-c", script, "sh", str(count)], check=True, timeout=30)
        return calls.read_text().splitlines() if calls.exists() else []

    assert run("POSTIN", 1) == ["install-system-units livereduce.service"]
    log_dir = tmp_path / "log"
    assert oct(log_dir.stat().st_mode & 0o7777) == "0o1755"
    (log_dir / "livereduce.log").write_text("kept\n")
    assert run("POSTIN", 2) == []  # upgrade: the admin's enable/disable choice stays
    assert run("PREUN", 1) == []  # upgrade: the service keeps running
    assert run("POSTUN", 1) == ["mark-restart-system-units livereduce.service"]
    assert run("PREUN", 0) == ["remove-system-units livereduce.service"]
    assert run("POSTUN", 0) == []
    assert (log_dir / "livereduce.log").read_text() == "kept\n"
    scripts = _rpm("-qp", "--scripts", str(rpm)) + _rpm(
        "-qp", "--scripts", str(built[0] / WATCHDOG)
    )
    assert "rm " not in scripts
    assert "livereduce_watchdog.service" in _rpm("-qp", "--scripts", str(built[0] / WATCHDOG))


def _extract(rpm: Path, root: Path) -> None:
    archive = root / "payload.tgz"
    with rpm.open("rb") as source, archive.open("wb") as target:
        subprocess.run(["rpm2archive", "-"], stdin=source, stdout=target, check=True, timeout=60)
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="tar")


def test_installed_layout_runs_the_daemon_and_the_watchdog(
    built: tuple[Path, str], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _extract(built[0] / MAIN, root)
    _extract(built[0] / WATCHDOG, root)
    launcher = (root / "usr/bin/livereduce.sh").read_text()
    assert "\nINSTALLED_PYTHON=/usr/bin/python3.11\n" in launcher
    assert (root / "usr/bin/livereduce.py").read_text().startswith("#!/usr/bin/python3.11\n")
    config = tmp_path / "livereduce.conf"
    config.write_text(json.dumps({"instrument": "NOMAD", "update_every": 0, "VENV": sys.prefix}))
    env = {**os.environ, "LIVEREDUCE_PYTHON": sys.executable, "PYTHONPATH": ""}
    done = subprocess.run(
        [str(root / "usr/bin/livereduce.sh"), str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "key 'update_every'" in done.stderr
    config.write_text(json.dumps({"instrument": "NOMAD", "watchdog": {"threshold": 5}}))
    done = subprocess.run(
        [str(root / "usr/bin/livereduce_watchdog.sh"), str(config), "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "key 'watchdog.threshold'" in done.stderr
