"""The live view page: one HTTP page with the status, the latest figures and the last log lines.

Served (``view_address``) from a thread of the supervisor, it only reads files: the status file
(the supervisor's), ``<output_workspace>_figures.json`` (the worker's, written atomically) and
the log file. The page polls them every :data:`POLL_MS` and redraws with plotly.js, which this
server sends itself (``/plotly.min.js``, from the plotly package): beamline computers may have
no internet.

Paths: ``/`` the page, ``/status.json``, ``/figures.json``, ``/log.txt`` (the last
:data:`LOG_LINES` lines), ``/plotly.min.js``. Anything else is 404; only GET and HEAD.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from livereduce.view.page import PAGE

log = logging.getLogger(__name__)

POLL_MS = 2000
"""The status file is rewritten every two seconds (status.WRITE_EVERY_S): poll as often."""
LOG_LINES = 40
LOG_TAIL_BYTES = 64 * 1024
"""Read at most this much of the log's end: it can be gigabytes after months."""


def plotly_js_path() -> Path:
    """The minified plotly.js shipped in the plotly Python package. Raises FileNotFoundError
    when plotly is not installed."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the plotly package is not installed")
    path = Path(spec.origin).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the plotly package")
    return path


def tail_lines(path: Path, count: int = LOG_LINES) -> str:
    """The last ``count`` lines of ``path`` (``""`` when it cannot be read)."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - LOG_TAIL_BYTES))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-count:])


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (as config.py normalises ``view_address``) -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


class ViewServer:
    """Serves the page on ``address`` (``HOST:PORT``; port 0: any free one) from a daemon
    thread. ``status_file``, ``figures_file``, ``log_file``: what it reads. Raises OSError
    when the address cannot be bound."""

    def __init__(
        self, address: str, *, status_file: Path, figures_file: Path, log_file: Path | None
    ) -> None:
        files = {
            "status": Path(status_file),
            "figures": Path(figures_file),
            "log": Path(log_file) if log_file else None,
        }
        try:
            plotly_js: Path | None = plotly_js_path()
        except FileNotFoundError as error:
            log.warning("view_without_plotly: %s; the page cannot draw figures", error)
            plotly_js = None

        class Handler(_Handler):
            paths = files
            script = plotly_js

        self._httpd = ThreadingHTTPServer(parse_address(address), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="livereduce-view", daemon=True
        )

    @property
    def url(self) -> str:
        """``http://HOST:PORT/`` as bound."""
        host, port = self._httpd.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else host
        return f"http://{name}:{port}/"

    def start(self) -> ViewServer:
        """Start serving; returns self."""
        self._thread.start()
        log.info("view_started: live view at %s", self.url)
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    paths: dict[str, Path | None]
    script: Path | None
    server_version = "livereduce-view"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("view_request: " + format, *args)

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        route = self.path.split("?", 1)[0]
        if route == "/":
            self._send(PAGE.replace("__POLL_MS__", str(POLL_MS)).encode(), "text/html", head)
        elif route == "/status.json":
            self._send(self._read("status", b'{"state": "unknown"}'), "application/json", head)
        elif route == "/figures.json":
            self._send(self._read("figures", b'{"figures": []}'), "application/json", head)
        elif route == "/log.txt":
            path = self.paths["log"]
            text = tail_lines(path) if path is not None else ""
            self._send(text.encode(), "text/plain; charset=utf-8", head)
        elif route == "/plotly.min.js" and self.script is not None:
            self._send(self.script.read_bytes(), "application/javascript", head, cache=True)
        else:
            self.send_error(HTTPStatus.NOT_FOUND, "not a page of the live view")

    def _read(self, name: str, missing: bytes) -> bytes:
        path = self.paths[name]
        if path is None:
            return missing
        try:
            data = path.read_bytes()
        except OSError:
            return missing
        with contextlib.suppress(ValueError):
            json.loads(data)
            return data
        return missing  # never a torn file (both are renamed into place), but be safe

    def _send(self, body: bytes, kind: str, head: bool, *, cache: bool = False) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=86400" if cache else "no-store")
        self.end_headers()
        if not head:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)
