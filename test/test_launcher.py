"""scripts/livereduce.sh: environment selection (PIXI_ENV > CONDA_ENV > VENV > installed Python)
as the package decides it (``python -m livereduce.config --launcher-env``), exec, and one-line
errors with exit status 2; ``--version`` on every command.

The launcher is copied next to a stand-in daemon (``livereduce.py`` that reports which Python
runs it, its pid and environment) so each case shows what the real daemon would get. The
``conda``, ``micromamba`` and ``pixi`` programs are stand-ins written here (named so in their
first lines): they print activation code as the real tools' ``shell hook`` commands do.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from livereduce import __version__

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "scripts" / "livereduce.sh"

STAND_IN_DAEMON = """\
# stand-in for scripts/livereduce.py (tests only): reports how the launcher ran it
import json, os, sys
print(json.dumps({
    "executable": sys.executable,
    "argv": sys.argv[1:],
    "pid": os.getpid(),
    "pythonpath": os.environ.get("PYTHONPATH", ""),
    "env": {k: os.environ.get(k) for k in (
        "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "PIXI_ENVIRONMENT_NAME")},
}))
"""

STAND_IN_CONDA = """\
#!/bin/bash
# stand-in for conda (tests only): `conda shell.bash hook` defines a conda function whose
# `activate NAME` puts $ENVS/NAME/bin first on PATH, as conda's activation does.
[ "$1 $2" = "shell.bash hook" ] || { echo "stand-in conda: unexpected '$*'" >&2; exit 1; }
cat <<HOOK
conda() {
    [ "\\$1" = activate ] || return 1
    [ -d "$ENVS/\\$2" ] || { echo "EnvironmentNameNotFound: \\$2" >&2; return 1; }
    export CONDA_PREFIX="$ENVS/\\$2" CONDA_DEFAULT_ENV="\\$2" PATH="$ENVS/\\$2/bin:\\$PATH"
}
HOOK
"""

STAND_IN_MICROMAMBA = STAND_IN_CONDA.replace("conda", "micromamba").replace(
    '"$1 $2" = "shell.bash hook"', '"$1 $2 $3 $4" = "shell hook --shell bash"'
)

STAND_IN_PIXI = """\
#!/bin/bash
# stand-in for pixi (tests only): `pixi shell-hook ... --manifest-path M --environment E`
# prints exports for the environment folder .pixi/envs/E beside M, as pixi does.
echo "$*" >> "$PIXI_CALLS"
manifest="" environment=default
while [ $# -gt 0 ]; do
    case $1 in
        --manifest-path) manifest=$2; shift 2 ;;
        --environment) environment=$2; shift 2 ;;
        *) shift ;;
    esac
done
prefix=$(dirname "$manifest")/.pixi/envs/$environment
[ -d "$prefix" ] || { echo "stand-in pixi: no environment $environment" >&2; exit 1; }
echo "export PATH=\\"$prefix/bin:\\$PATH\\" CONDA_PREFIX=\\"$prefix\\""
echo "export PIXI_ENVIRONMENT_NAME=$environment"
"""


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _python_env(prefix: Path) -> Path:
    """A folder with bin/python pointing at this interpreter (an environment stand-in)."""
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python").symlink_to(sys.executable)
    return prefix


class Site:
    """A copy of the launcher beside the stand-in daemon, a stand-in package folder, and a PATH
    holding only the basic tools plus the stand-in programs a test adds."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "app" / "bin"
        self.launcher = self.bin / "livereduce.sh"
        self.bin.mkdir(parents=True)
        shutil.copy2(LAUNCHER, self.launcher)
        (self.bin / "livereduce.py").write_text(STAND_IN_DAEMON)
        # the real package: the launcher asks it which environment to activate
        (root / "app" / "src").mkdir(parents=True)
        (root / "app" / "src" / "livereduce").symlink_to(REPO / "src" / "livereduce")
        self.tools = root / "tools"
        self.tools.mkdir()
        for tool in ("bash", "dirname", "readlink", "basename", "cat"):
            (self.tools / tool).symlink_to(shutil.which(tool))
        self.env = {
            "PATH": str(self.tools),
            "LIVEREDUCE_PYTHON": sys.executable,
            "ENVS": str(root / "conda-envs"),
            "PIXI_CALLS": str(root / "pixi-calls.txt"),
            "HOME": str(root),
        }

    def config(self, content: dict | str) -> Path:
        path = self.root / "etc" / "livereduce.conf"
        path.parent.mkdir(exist_ok=True)
        if not isinstance(content, str):
            content = json.dumps({"instrument": "NOMAD", **content})
        path.write_text(content)
        return path

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.launcher), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def report(self, *args: str, **env: str) -> dict:
        done = self.run(*args, **env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def test_no_environment_key_execs_the_installed_python_with_the_arguments(site: Site) -> None:
    config = site.config({})
    process = subprocess.Popen(
        [str(site.launcher), str(config), "--extra"],
        env=site.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = process.communicate(timeout=30)
    report = json.loads(out)
    assert process.returncode == 0
    assert report["pid"] == process.pid  # exec: systemd's main PID is the daemon
    assert report["executable"] == sys.executable
    assert report["argv"] == [str(config), "--extra"]
    assert report["pythonpath"].split(":")[0] == str(site.root / "app" / "src")


def test_venv_key_runs_the_venv_python(site: Site) -> None:
    venv.create(site.root / "etc" / "venv", with_pip=False, symlinks=True)
    config = site.config({"VENV": "venv"})  # relative: taken from the config file's folder
    report = site.report(str(config))
    assert report["executable"] == str(site.root / "etc" / "venv" / "bin" / "python")
    assert report["env"]["VIRTUAL_ENV"] == str(site.root / "etc" / "venv")


def test_conda_env_is_activated_with_conda(site: Site) -> None:
    _executable(site.tools / "conda", STAND_IN_CONDA)
    prefix = _python_env(site.root / "conda-envs" / "mantid-dev")
    report = site.report(str(site.config({"CONDA_ENV": "mantid-dev", "VENV": "/nonexistent"})))
    assert report["executable"] == str(prefix / "bin" / "python")
    assert report["env"]["CONDA_DEFAULT_ENV"] == "mantid-dev"
    assert report["env"]["VIRTUAL_ENV"] is None


def test_conda_env_is_activated_with_micromamba_when_there_is_no_conda(site: Site) -> None:
    _executable(site.tools / "micromamba", STAND_IN_MICROMAMBA)
    prefix = _python_env(site.root / "conda-envs" / "livereduce")
    report = site.report(str(site.config({"CONDA_ENV": "livereduce"})))
    assert report["executable"] == str(prefix / "bin" / "python")
    assert report["env"]["CONDA_PREFIX"] == str(prefix)


def test_pixi_env_folder_wins_over_conda_and_venv(site: Site) -> None:
    _executable(site.tools / "pixi", STAND_IN_PIXI)
    _executable(site.tools / "conda", STAND_IN_CONDA)
    _python_env(site.root / "conda-envs" / "mantid-dev")
    workspace = site.root / "opt" / "livereduce"
    workspace.mkdir(parents=True)
    (workspace / "pixi.toml").write_text("[workspace]\n")
    prefix = _python_env(workspace / ".pixi" / "envs" / "default")
    config = site.config({"PIXI_ENV": str(workspace), "CONDA_ENV": "mantid-dev", "VENV": "x"})
    report = site.report(str(config))
    assert report["executable"] == str(prefix / "bin" / "python")
    assert report["env"]["PIXI_ENVIRONMENT_NAME"] == "default"
    call = Path(site.env["PIXI_CALLS"]).read_text().split()
    assert call[:3] == ["shell-hook", "--shell", "bash"]
    assert "--frozen" not in call  # no pixi.lock to freeze: pixi solves the manifest
    assert call[call.index("--manifest-path") + 1] == str(workspace / "pixi.toml")
    (workspace / "pixi.lock").write_text("version: 6\n")
    site.report(str(config))
    call = Path(site.env["PIXI_CALLS"]).read_text().splitlines()[-1].split()
    assert "--frozen" in call  # a start never re-solves or rewrites a lock file


def test_pixi_env_name_selects_an_environment_of_the_named_manifest(site: Site) -> None:
    _executable(site.tools / "pixi", STAND_IN_PIXI)
    manifest = site.root / "ws" / "pixi.toml"
    manifest.parent.mkdir()
    manifest.write_text("[workspace]\n")
    prefix = _python_env(manifest.parent / ".pixi" / "envs" / "mantid-nightly")
    config = site.config({"PIXI_ENV": "mantid-nightly"})
    report = site.report(str(config), LIVEREDUCE_PIXI_MANIFEST=str(manifest))
    assert report["executable"] == str(prefix / "bin" / "python")
    assert report["env"]["PIXI_ENVIRONMENT_NAME"] == "mantid-nightly"


def _one_error_line(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ('{"VENV": ', ("configuration file", "livereduce.conf", "line 1 column 10")),
        ("[1, 2]", ("must hold a JSON object",)),
        ({"CONDA_ENV": 5}, ("key 'CONDA_ENV'", "non-empty")),
        ({"VENV": "two\nlines"}, ("key 'VENV'", "expected one line")),
        ({"update_every": -1}, ("key 'update_every'",)),  # checked as the daemon checks it
        ({"VENV": "missing-venv"}, ("VENV", "missing-venv", "has no bin/python")),
        ({"CONDA_ENV": "mantid"}, ("CONDA_ENV 'mantid'", "none of conda, micromamba, mamba")),
        ({"PIXI_ENV": "/opt/lr"}, ("PIXI_ENV '/opt/lr'", "pixi command was not found")),
    ],
)
def test_bad_config_or_missing_tool_is_one_line_and_exit_2(
    site: Site, content: dict | str, fragments: tuple[str, ...]
) -> None:
    _one_error_line(site.run(str(site.config(content))), *fragments)


def test_pixi_env_name_without_a_manifest_is_one_line_and_exit_2(site: Site) -> None:
    _executable(site.tools / "pixi", STAND_IN_PIXI)
    _one_error_line(
        site.run(str(site.config({"PIXI_ENV": "mantid_dev"}))),
        "PIXI_ENV 'mantid_dev'",
        f"pixi manifest {site.root}/app/pixi.toml not found",
        "LIVEREDUCE_PIXI_MANIFEST",
    )


def test_conda_env_that_does_not_exist_is_one_line_and_exit_2(site: Site) -> None:
    _executable(site.tools / "conda", STAND_IN_CONDA)
    done = site.run(str(site.config({"CONDA_ENV": "gone"})))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"livereduce.sh: CONDA_ENV 'gone' (from {site.root}/etc/livereduce.conf): "
        "conda could not activate it"
    )


def test_missing_config_file_and_missing_python_are_reported(site: Site) -> None:
    _one_error_line(site.run(str(site.root / "nope.conf")), "configuration file", "not found")
    _one_error_line(
        site.run(str(site.config({})), LIVEREDUCE_PYTHON="no-such-python"),
        "Python 'no-such-python' not found",
    )


def test_real_launcher_runs_the_real_daemon_which_rejects_a_bad_value(tmp_path: Path) -> None:
    if not (REPO / "scripts" / "livereduce.py").is_file():
        pytest.skip("scripts/livereduce.py (the daemon) is not in this checkout yet")
    config = tmp_path / "bad.conf"
    config.write_text(json.dumps({"instrument": "NOMAD", "update_every": -1, "VENV": sys.prefix}))
    done = subprocess.run(
        [str(LAUNCHER), str(config)],
        env={**os.environ, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "update_every" in done.stderr


def _launcher_env(path: Path, raw: dict) -> subprocess.CompletedProcess[str]:
    path.write_text(json.dumps({"instrument": "NOMAD", **raw}))
    return subprocess.run(
        [sys.executable, "-m", "livereduce.config", "--launcher-env", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        ({}, ""),
        ({"VENV": "envs/lr", "CONDA_ENV": "mantid", "PIXI_ENV": "ws"}, "PIXI_ENV=ws\n"),
        ({"VENV": "envs/lr", "CONDA_ENV": "mantid"}, "CONDA_ENV=mantid\n"),
        ({"VENV": "envs/lr"}, "VENV={folder}/envs/lr\n"),
        ({"VENV": "/opt/venv"}, "VENV=/opt/venv\n"),
        ({"PIXI_ENV": "../ws"}, "PIXI_ENV={folder}/../ws\n"),
        ({"CONDA_ENV": " with space "}, "CONDA_ENV=with space\n"),
    ],
)
def test_the_package_tells_the_launcher_what_to_activate(
    tmp_path: Path, raw: dict, line: str
) -> None:
    done = _launcher_env(tmp_path / "lr.conf", raw)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == line.format(folder=tmp_path)


def test_the_launcher_parses_no_json_itself() -> None:
    text = LAUNCHER.read_text()
    assert "-m livereduce.config --launcher-env" in text
    assert "json" not in text.lower()


@pytest.mark.parametrize(
    "command", ["livereduce", "livereduce-replay", "livereduce-status", "livereduce-watchdog"]
)
def test_every_command_prints_its_version(command: str) -> None:
    program = Path(sys.executable).parent / command
    if not program.exists():
        pytest.skip(f"{command} is not installed beside {sys.executable} (pip install -e .)")
    done = subprocess.run(
        [str(program), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout) == (0, f"{command} {__version__}\n")
