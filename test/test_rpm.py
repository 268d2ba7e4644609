"""./rpmbuild.sh: both RPMs, their files and modes, their scriptlets, rpmlint without errors or
unexplained warnings, the source RPM rebuilding, and the installed layout (launcher + daemon +
watchdog from /usr/share/livereduce) working.

Needs Debian's ``rpm`` (rpmbuild, rpm2archive), the rpm Python bindings (``python3-rpm``) and
PyPI's ``rpmlint`` and ``argparse-manpage``; .ci/system-deps.sh and the test extra install
them. The scriptlets are run with ``sh`` after pointing systemd's helper, systemctl and
systemd-tmpfiles at stand-ins under tmp_path, since this host has neither an RPM database nor
systemd-update-helper. test_systemd.py installs the RPMs for real, into a container.
"""

from __future__ import annotations

import importlib.util
import itertools
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


def _missing() -> str | None:
    """Why the RPMs cannot be built and linted here, or None."""
    if shutil.which("rpmbuild") is None or shutil.which("rpmlint") is None:
        return (
            "rpmbuild (Debian package rpm) or rpmlint (pip install rpmlint) is missing; "
            "run .ci/system-deps.sh"
        )
    try:
        import rpm  # noqa: F401, PLC0415 - rpmlint needs the system's bindings
    except ImportError as error:
        return f"the rpm Python bindings are missing (Debian: python3-rpm): {error}"
    if importlib.util.find_spec("argparse_manpage") is None:
        return "argparse-manpage is missing (pip install -e '.[test]')"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


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


def test_rpmlint_reports_no_errors_and_no_unfiltered_warnings(built: tuple[Path, str]) -> None:
    summary = built[1].strip().splitlines()[-1]
    assert "3 packages and 0 specfiles checked; 0 errors, 0 warnings" in summary, built[1]
    # each filter has its reason on the line above it
    script = (REPO / "rpmbuild.sh").read_text()
    filters = script[script.index("Filters = [") : script.index("]\nLINT")].splitlines()[1:]
    for above, line in itertools.pairwise(filters):
        if line.strip().startswith('"'):
            assert above.strip().startswith("#"), line


def test_the_source_rpm_rebuilds_with_its_own_spec(built: tuple[Path, str], tmp_path: Path) -> None:
    srpm = built[0] / f"python-livereduce-{VERSION}-1.src.rpm"
    assert _rpm("-qp", "--qf", "%{VERSION}", str(srpm)) == VERSION
    args = ["--define", f"_topdir {tmp_path}"]
    if not _rpm("--eval", "%{?_unitdir}").strip():  # Debian: no systemd RPM macros
        args += ["--load", str(REPO / "packaging" / "macros.systemd"), "--nodeps"]
    done = subprocess.run(
        ["rpmbuild", "--rebuild", *args, str(srpm)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    rebuilt = tmp_path / "RPMS" / "noarch"
    assert sorted(p.name for p in rebuilt.iterdir()) == sorted([MAIN, WATCHDOG])
    assert _files(rebuilt / MAIN) == _files(built[0] / MAIN)


def test_main_rpm_files_and_modes(built: tuple[Path, str]) -> None:
    files = _files(built[0] / MAIN)
    expected = {
        "/usr/bin/livereduce.sh": "-rwxr-xr-x",
        "/usr/bin/livereduce.py": "-rwxr-xr-x",
        "/usr/lib/systemd/system/livereduce.service": "-rw-r--r--",
        "/usr/share/livereduce/livereduce/__init__.py": "-rw-r--r--",
        "/usr/share/livereduce/livereduce/cli.py": "-rw-r--r--",
        "/usr/share/livereduce/livereduce/watchdog.py": "-rw-r--r--",
        f"/usr/share/livereduce/livereduce-{VERSION}.dist-info/METADATA": "-rw-r--r--",
        "/usr/share/livereduce/demo/reduce_FAKE_live_proc.py": "-rw-r--r--",
        "/usr/share/livereduce/demo/reduce_FAKE_live_post_proc.py": "-rw-r--r--",
        "/usr/share/doc/python-livereduce/systemd.md": "-rw-r--r--",
        "/usr/share/licenses/python-livereduce/LICENSE": "-rw-r--r--",
        "/usr/share/man/man1/livereduce.sh.1.gz": "-rw-r--r--",
        "/usr/share/man/man1/livereduce.py.1.gz": "-rw-r--r--",
        "/usr/lib/sysusers.d/livereduce.conf": "-rw-r--r--",
        "/usr/lib/tmpfiles.d/livereduce.conf": "-rw-r--r--",
        "/etc/livereduce.conf": "-rw-r--r--",
        "/etc/logrotate.d/python-livereduce": "-rw-r--r--",
        "/var/log/SNS_applications": "drwxr-xr-x",
    }
    assert {name: files.get(name) for name in expected} == expected
    assert not [name for name in files if "__pycache__" in name]
    # pixi.toml (path = ".") is only of use in a checkout
    assert not [name for name in files if "pixi" in name]
    configs = _rpm("-qp", "--configfiles", str(built[0] / MAIN)).split()
    assert sorted(configs) == ["/etc/livereduce.conf", "/etc/logrotate.d/python-livereduce"]
    flags = _rpm("-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]", str(built[0] / MAIN))
    assert "cn /etc/livereduce.conf" in flags.splitlines()  # %config(noreplace)
    owners = _rpm("-qp", "--qf", "[%{FILEUSERNAME} %{FILENAMES}\n]", str(built[0] / MAIN))
    assert f"snsdata {LOGDIR}" in owners.splitlines()


def test_watchdog_rpm_files_modes_and_requirements(built: tuple[Path, str]) -> None:
    files = _files(built[0] / WATCHDOG)
    expected = {
        "/usr/bin/livereduce_watchdog.sh": "-rwxr-xr-x",
        "/usr/lib/systemd/system/livereduce_watchdog.service": "-rw-r--r--",
        "/usr/share/polkit-1/rules.d/50-snsdata-livereduce.rules": "-rw-r--r--",
    }
    assert {name: files.get(name) for name in expected} == expected
    requires = _rpm("-qpR", str(built[0] / WATCHDOG)).split("\n")
    assert f"python-livereduce = {VERSION}" in requires
    assert "polkit" in requires
    main_requires = _rpm("-qpR", str(built[0] / MAIN))
    for private in ("nsd-app-wrap", "jq", "polkit"):
        assert private not in main_requires
    assert {"python3.11", "logrotate"} <= set(main_requires.split("\n"))


STAND_IN = """#!/bin/sh
# stand-in for {name} (tests only): records its arguments
echo "{name} $*" >> {calls}
"""


def _scriptlet(rpm: Path, tag: str, tmp: Path, *, helper: bool) -> str:
    """A scriptlet of ``rpm`` with systemd's helper, systemd-tmpfiles and /run/systemd/system
    pointed at stand-ins under ``tmp`` (the helper only when ``helper``)."""
    text = _rpm("-qp", "--qf", f"%{{{tag}}}", str(rpm))
    stand_ins = {
        HELPER: tmp / ("update-helper" if helper else "no-update-helper"),
        "/usr/bin/systemd-tmpfiles": tmp / "bin" / "systemd-tmpfiles",
        "/run/systemd/system": tmp,  # systemd is running
    }
    for real, stand_in in stand_ins.items():
        text = text.replace(real, str(stand_in))
    return text


@pytest.mark.parametrize("helper", [True, False], ids=["update-helper", "systemctl"])
def test_scriptlets_enable_on_install_restart_on_upgrade_and_keep_logs(
    built: tuple[Path, str], tmp_path: Path, helper: bool
) -> None:
    calls = tmp_path / "calls.txt"
    (tmp_path / "bin").mkdir()
    for name, path in [
        ("update-helper", tmp_path / "update-helper"),
        ("systemctl", tmp_path / "bin" / "systemctl"),
        ("systemd-tmpfiles", tmp_path / "bin" / "systemd-tmpfiles"),
    ]:
        path.write_text(STAND_IN.format(name=name, calls=calls))
        path.chmod(0o755)
    rpm = built[0] / MAIN
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}

    def run(tag: str, count: int) -> list[str]:
        calls.unlink(missing_ok=True)
        script = _scriptlet(rpm, tag, tmp_path, helper=helper)
        subprocess.run(["sh", "-c", script, "sh", str(count)], check=True, timeout=30, env=env)
        return calls.read_text().splitlines() if calls.exists() else []

    tmpfiles = "systemd-tmpfiles --create /usr/lib/tmpfiles.d/livereduce.conf"
    if helper:
        assert run("POSTIN", 1) == [
            tmpfiles,
            "update-helper install-system-units livereduce.service",
        ]
        assert run("POSTUN", 1) == ["update-helper mark-restart-system-units livereduce.service"]
        assert run("PREUN", 0) == ["update-helper remove-system-units livereduce.service"]
    else:  # never skipped silently: systemctl does what the helper would
        assert run("POSTIN", 1) == [
            tmpfiles,
            "systemctl daemon-reload",
            "systemctl --no-reload preset livereduce.service",
        ]
        assert run("POSTUN", 1) == [
            "systemctl daemon-reload",
            "systemctl try-restart livereduce.service",
        ]
        assert run("PREUN", 0) == ["systemctl --no-reload disable --now livereduce.service"]
    assert run("POSTIN", 2) == [tmpfiles]  # upgrade: the admin's enable/disable choice stays
    assert run("PREUN", 1) == []  # upgrade: the service keeps running
    assert run("POSTUN", 0) == []
    scripts = _rpm("-qp", "--scripts", str(rpm)) + _rpm(
        "-qp", "--scripts", str(built[0] / WATCHDOG)
    )
    assert "rm " not in scripts  # logs are kept
    assert "chown" not in scripts  # ownership comes from the package and tmpfiles.d
    assert "systemd-sysusers --replace=/usr/lib/sysusers.d/livereduce.conf" in scripts
    assert "livereduce_watchdog.service" in _rpm("-qp", "--scripts", str(built[0] / WATCHDOG))


WHERE_IS_THE_DISTRIBUTION = (
    "import importlib.metadata as m; print(m.distribution('livereduce').locate_file(''))"
)


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
    done = subprocess.run(
        [str(root / "usr/bin/livereduce.sh"), "--version"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, f"livereduce {VERSION}\n"), done.stderr
    # the version comes from the package's own dist-info, not from an installed wheel
    done = subprocess.run(
        [sys.executable, "-c", WHERE_IS_THE_DISTRIBUTION],
        env={**env, "PYTHONPATH": str(root / "usr/share/livereduce")},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == str(root / "usr/share/livereduce")
