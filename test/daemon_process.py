"""The real daemon (``python scripts/livereduce.py CONFIG``) as a test's child process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
DAEMON = REPO / "scripts" / "livereduce.py"


class Daemon:
    """The daemon on configuration ``raw`` (written to ``tmp_path / "livereduce.conf"``), run in
    ``tmp_path`` in a session of its own, with ``env`` added to this environment (variables
    starting with one of ``clear_prefixes`` removed first) and ``pythonpath`` put first on
    PYTHONPATH. Its output (with the worker's) goes to ``tmp_path / "daemon.out"``."""

    def __init__(
        self,
        tmp_path: Path,
        raw: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        pythonpath: tuple[str, ...] = (),
        clear_prefixes: tuple[str, ...] = (),
    ) -> None:
        path = tmp_path / "livereduce.conf"
        path.write_text(json.dumps(dict(raw)))
        self.out = tmp_path / "daemon.out"
        environ = {
            k: v
            for k, v in os.environ.items()
            if not any(k.startswith(prefix) for prefix in clear_prefixes)
        }
        environ |= dict(env or {})
        environ["PYTHONPATH"] = os.pathsep.join([*pythonpath, environ.get("PYTHONPATH", "")]).strip(
            os.pathsep
        )
        with self.out.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, str(DAEMON), str(path)],
                cwd=tmp_path,
                env=environ,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.seen: dict[int, psutil.Process] = {}

    def text(self) -> str:
        """Everything the daemon and its workers printed so far."""
        return self.out.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """Poll ``condition`` (and remember the daemon's descendants) until it holds, the
        daemon exits or ``timeout_s`` passes; returns whether it held."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.remember_descendants()
            if condition():
                return True
            if self.process.poll() is not None:
                return condition()
            time.sleep(0.05)
        return False

    def remember_descendants(self) -> None:
        """Note every process the daemon started so far (workers, programs of scripts)."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self.seen.setdefault(child.pid, child)

    def left_over(self) -> list[str]:
        """The processes remembered that still run (zombies count as gone)."""
        alive = []
        for pid, process in self.seen.items():
            with contextlib.suppress(psutil.Error):
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {process.cmdline()}")
        return alive

    def stop(self, timeout_s: float = 30.0) -> tuple[int | None, float]:
        """SIGTERM, wait up to ``timeout_s``; returns (exit status or None, seconds taken).
        Whatever is left of its session is killed afterwards."""
        self.remember_descendants()
        began = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - began
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        return code, took

    def kill_left_over(self) -> None:
        """SIGKILL every remembered process still running (test teardown)."""
        for process in self.seen.values():
            with contextlib.suppress(psutil.Error):
                process.kill()
