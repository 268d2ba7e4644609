"""The real SNS live_data_server (peers/live_data_server: Django + PostgreSQL) for tests.

One server per test session: a PostgreSQL cluster in a temporary folder on 127.0.0.1 (run as
the ``postgres`` user when the tests run as root: PostgreSQL refuses root), the snapshot's Django
project with a ``local_settings.py`` pointing at it, an upload user, and ``manage.py runserver``
on a free loopback port. Skipped with the reason when the snapshot, Django, psycopg or the
PostgreSQL binaries are missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

PEERS = Path(
    os.environ.get("LIVEREDUCE_PEERS", Path(__file__).parents[1] / ".." / "shared" / "peers")
)
SERVER_SRC = PEERS / "live_data_server" / "src"
PG_BIN = Path("/usr/lib/postgresql")
USERNAME = "livereduce"
PASSWORD = "publish-secret-42"
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class LiveDataServer:
    """A running server: ``url`` (``http://127.0.0.1:PORT``) and the upload credentials."""

    url: str
    username: str
    password: str

    def publish_config(self, folder: Path, *, password: str | None = None) -> Path:
        """A post_processing.conf for this server in ``folder``."""
        path = folder / "post_processing.conf"
        path.write_text(
            json.dumps(
                {
                    "publish_url_template": self.url
                    + "/plots/${instrument}/${run_number}/upload_plot_data/",
                    "publisher_username": self.username,
                    "publisher_password": self.password if password is None else password,
                    "publisher_certificate": "",
                }
            )
        )
        return path

    @staticmethod
    def unreachable_config(folder: Path) -> Path:
        """A post_processing.conf naming a loopback port nothing listens on: 'server down'."""
        path = folder / "down.conf"
        template = f"http://127.0.0.1:{free_port()}/plots/${{instrument}}/${{run_number}}/"
        path.write_text(json.dumps({"publish_url_template": template + "upload_plot_data/"}))
        return path

    def html(self, instrument: str, run: int) -> requests.Response:
        """``GET /plots/<instrument>/<run>/update/html/``, past the server's 15 s page cache
        (it is keyed by the full URL: a fresh query string is a fresh page)."""
        return requests.get(
            f"{self.url}/plots/{instrument}/{run}/update/html/",
            params={"fresh": uuid.uuid4().hex},
            timeout=10,
        )


def histogram_total(html: str) -> float:
    """Sum of the first trace's y values (or heatmap z) in a published plotly div."""
    call = re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\])\s*,\s*\{", html, re.S)
    assert call, html[:500]
    traces = json.loads(call.group(1))
    trace = traces[0]
    values = [v for row in trace["z"] for v in row] if "z" in trace else trace["y"]
    return sum(v for v in values if v is not None)


def free_port() -> int:
    """A port free on 127.0.0.1 now (the servers below need a number before they start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_tool(name: str) -> Path | None:
    found = shutil.which(name)
    if found:
        return Path(found)
    for candidate in sorted(PG_BIN.glob(f"*/bin/{name}"), reverse=True):
        return candidate
    return None


def _as_postgres() -> dict:
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres"}


def _missing() -> str:
    if not (SERVER_SRC / "manage.py").is_file():
        return f"live_data_server snapshot not found at {SERVER_SRC}"
    for module in ("django", "corsheaders", "psycopg"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[test]')"
    if _pg_tool("initdb") is None or _pg_tool("pg_ctl") is None:
        return "PostgreSQL is not installed (.ci/system-deps.sh)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
    return ""


def _wait_http(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"live_data_server exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            requests.get(url, timeout=1)
            return
        time.sleep(0.1)
    raise RuntimeError(f"live_data_server did not answer: {log.read_text()[-3000:]}")


@contextlib.contextmanager
def run_live_data_server() -> Iterator[LiveDataServer]:
    """Start PostgreSQL and the server; stop both at the end."""
    folder = Path(tempfile.mkdtemp(prefix="livereduce-livedata-"))
    pgdata = folder / "pg"
    pgdata.mkdir()
    user = _as_postgres()
    if user:
        os.chmod(folder, 0o755)
        shutil.chown(pgdata, "postgres", "postgres")
    pg_port = free_port()
    pg_log = folder / "postgres.log"
    pg_log.touch()
    if user:
        shutil.chown(pg_log, "postgres", "postgres")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT}
    server = None
    try:
        subprocess.run(
            [str(_pg_tool("initdb")), "-D", str(pgdata), "-U", "livedata", "--auth=trust"],
            check=True,
            **quiet,
            **user,
        )
        subprocess.run(
            [
                str(_pg_tool("pg_ctl")), "-D", str(pgdata), "-l", str(pg_log), "-w",
                "-o", f"-c listen_addresses=127.0.0.1 -p {pg_port} -k {pgdata} -c fsync=off",
                "start",
            ],
            check=True,
            **quiet,
            **user,
        )  # fmt: skip
        subprocess.run(
            [
                str(_pg_tool("createdb")), "-h", "127.0.0.1", "-p", str(pg_port),
                "-U", "livedata", "livedata",
            ],
            check=True,
            **quiet,
        )  # fmt: skip
        settings = folder / "settings"
        settings.mkdir()
        (settings / "local_settings.py").write_text(
            "DATABASES = {'default': {'ENGINE': 'django.db.backends.postgresql', "
            f"'NAME': 'livedata', 'USER': 'livedata', 'HOST': '127.0.0.1', 'PORT': {pg_port}}}}}\n"
            "SECRET_KEY = 'test-only-not-secret'\n"
            "ALLOWED_HOSTS = ['127.0.0.1', 'localhost']\n"
            "DEBUG = False\n"
        )
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(settings), str(SERVER_SRC)]),
            "DJANGO_SUPERUSER_USERNAME": USERNAME,
            "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
            "DJANGO_SUPERUSER_EMAIL": "livereduce@example.invalid",
            "PYTHONWARNINGS": "ignore",
        }
        manage = [sys.executable, str(SERVER_SRC / "manage.py")]
        for command in (
            ["migrate", "--noinput"],
            ["createcachetable"],
            ["createsuperuser", "--noinput"],
        ):
            subprocess.run([*manage, *command], check=True, env=env, cwd=SERVER_SRC, **quiet)
        port = free_port()
        log = folder / "server.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                [*manage, "runserver", f"127.0.0.1:{port}", "--noreload"],
                env=env,
                cwd=SERVER_SRC,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/plots/", server, log)
        yield LiveDataServer(url=url, username=USERNAME, password=PASSWORD)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        subprocess.run(
            [str(_pg_tool("pg_ctl")), "-D", str(pgdata), "-m", "immediate", "-w", "stop"],
            check=False,
            **quiet,
            **user,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def live_data_server() -> Iterator[LiveDataServer]:
    """The real live_data_server, started once per session (skipped when it cannot run)."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    with run_live_data_server() as server:
        yield server
