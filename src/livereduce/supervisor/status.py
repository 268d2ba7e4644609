"""The status file: what the supervisor knows, as JSON, and ``livereduce-status`` to read it.

The supervisor rewrites the file (``status_file`` key; under systemd
``$RUNTIME_DIRECTORY/status.json``) whenever a worker report arrives and at least every few
seconds, always to a temporary name in the same folder and then renamed over the old one, so a
reader never sees half a file. Fields are listed in :data:`FIELDS`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from livereduce.config import ConfigError, load_config

WRITE_EVERY_S = 2.0
"""The supervisor rewrites the file at least this often (docs/operations.md)."""

STALE_AFTER_S = 5 * WRITE_EVERY_S
"""An older file is flagged: a few missed writes are load, not a fault."""

SYSTEMD_STATUS_FILE = Path("/run/livereduce/status.json")
"""Where the service's status file is under systemd (``RuntimeDirectory=livereduce``)."""

FIELDS = {
    "state": "supervisor state: starting, connecting, running, no_data (in a run, nothing new "
    "arrives), waiting_for_run, run_ended, backoff, restarting, stopping, stopped",
    "detail": "what the worker is doing or waiting for, in words",
    "instrument": "instrument name",
    "engine": "the worker's engine",
    "run_number": "run number (null outside a run)",
    "run_title": "run title",
    "chunks": "chunks processed by the current worker",
    "events": "detector events received by the current worker",
    "events_per_s": "events received per second, over the last reports",
    "last_chunk_time": "Unix time of the last processed chunk (null before the first)",
    "errors": "chunks lost to script errors (current worker)",
    "last_error": "the last error, in words",
    "streams": "Kafka listener: per event topic {lag (messages), events_per_s}",
    "worker_pid": "pid of the worker process (null when none runs)",
    "worker_rss_bytes": "resident memory of the worker, bytes",
    "memory_limit_bytes": "the worker's memory limit, bytes (null: no limit)",
    "restarts": "worker restarts since the supervisor started",
    "restart_history": "the last restarts: [{time (Unix s), reason, detail}]",
    "last_reload_latency_s": "seconds from the last script save to the new worker's first chunk",
    "scripts_problem": "why the scripts on disk are not the ones running (empty when they are)",
    "supervisor_pid": "pid of the supervisor",
    "version": "livereduce version",
    "config": "configuration file",
    "updated": "Unix time this file was written",
}
"""Every key of the status file and its meaning (docs/operations.md shows the same list)."""


class StatusError(Exception):
    """The status file is missing or is not a livereduce status file; ``str()`` says which."""


def write_status(path: Path, status: Mapping[str, Any]) -> None:
    """Write ``status`` as JSON to ``path`` atomically (temporary file + rename).

    Raises OSError when the folder cannot be created or written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(status, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_status(path: Path) -> dict[str, Any]:
    """The status file at ``path`` as a dict. Raises StatusError when it is missing,
    unreadable, not JSON, or lacks the ``state`` and ``updated`` keys."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StatusError(f"status file {path} not found (is livereduce running?)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise StatusError(f"status file {path} cannot be read: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise StatusError(f"status file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or not {"state", "updated"} <= data.keys():
        raise StatusError(f"status file {path} is not a livereduce status file")
    return data


def _age(now: float, then: float | None) -> str:
    if then is None:
        return "never"
    seconds = max(now - then, 0.0)
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _stamp(then: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(then))


def _overdue(status: Mapping[str, Any], now: float) -> bool:
    updated = status.get("updated")
    return (
        status.get("state") != "stopped"
        and isinstance(updated, int | float)
        and now - updated > STALE_AFTER_S
    )


def format_status(status: Mapping[str, Any], *, now: float | None = None) -> str:
    """The status as lines for a person (``livereduce-status`` without ``--json``)."""
    now = time.time() if now is None else now
    get = status.get
    lines = [
        f"livereduce {get('version', '?')}, supervisor pid {get('supervisor_pid', '?')}, "
        f"status written {_age(now, get('updated'))}"
    ]
    pid = get("supervisor_pid")
    if isinstance(pid, int) and get("state") != "stopped" and not psutil.pid_exists(pid):
        lines.append(f"WARNING: supervisor pid {pid} is not running: this status is stale")
    elif _overdue(status, now):
        lines.append(
            f"WARNING: not rewritten for {now - get('updated'):.0f} s (it should be every "
            f"{WRITE_EVERY_S:g} s): the supervisor cannot write it, or is stuck"
        )
    state = str(get("state", "?"))
    if get("detail"):
        state += f" ({get('detail')})"
    run = get("run_number")
    run_text = "none" if run is None else str(run)
    if get("run_title"):
        run_text += f" '{get('run_title')}'"
    rss = get("worker_rss_bytes")
    worker = "none"
    if get("worker_pid") is not None:
        worker = f"pid {get('worker_pid')}"
        if rss is not None:
            worker += f", {rss / 2**20:.1f} MiB"
            limit = get("memory_limit_bytes")
            if limit:
                worker += f" of {limit / 2**20:.1f} MiB limit"
    events_per_s = get("events_per_s") or 0.0
    lines += [
        f"state:        {state}",
        f"instrument:   {get('instrument', '?')} (engine {get('engine') or '?'})",
        f"run:          {run_text}",
        f"chunks:       {get('chunks', 0)}",
        f"events:       {get('events', 0):,} ({events_per_s:,.0f} events/s)",
        f"last chunk:   {_age(now, get('last_chunk_time'))}",
        f"worker:       {worker}",
        f"errors:       {get('errors', 0)}"
        + (f" (last: {get('last_error')})" if get("last_error") else ""),
        f"restarts:     {get('restarts', 0)}",
    ]
    for topic, stream in sorted((get("streams") or {}).items()):
        lines.append(
            f"kafka:        {topic}: lag {stream.get('lag', 0):,.0f} messages, "
            f"{stream.get('events_per_s', 0):,.0f} events/s"
        )
    if get("scripts_problem"):
        lines.append(f"SCRIPTS:      {get('scripts_problem')}")
    for entry in get("restart_history") or []:
        detail = f": {entry.get('detail')}" if entry.get("detail") else ""
        lines.append(f"  {_stamp(entry.get('time', 0))} {entry.get('reason', '?')}{detail}")
    return "\n".join(lines)


def _candidates(args: argparse.Namespace) -> list[Path]:
    if args.file is not None:
        return [args.file]
    paths: list[Path] = []
    config_path = args.config
    if config_path is None and Path("/etc/livereduce.conf").exists():
        config_path = Path("/etc/livereduce.conf")
    config = None
    if config_path is not None:
        config = load_config(config_path, check_scripts=False)
        if "status_file" in config.raw:
            return [config.status_file]
    paths.append(SYSTEMD_STATUS_FILE)
    if config is not None:
        paths.append(config.status_file)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """``livereduce-status [--json] [--config CONFIG | --file STATUS]``.

    Prints the status (0), or one message on stderr and 1 when the file is missing or bad,
    2 for a bad configuration file.
    """
    parser = argparse.ArgumentParser(
        prog="livereduce-status", description="Show what the livereduce service is doing."
    )
    parser.add_argument("--json", action="store_true", help="print the status file as JSON")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--config", type=Path, help="configuration file (default /etc/livereduce.conf)"
    )
    where.add_argument("--file", type=Path, help="status file to read")
    args = parser.parse_args(argv)
    try:
        candidates = _candidates(args)
    except ConfigError as error:
        print(f"livereduce-status: {error}", file=sys.stderr)
        return 2
    existing = [p for p in candidates if p.exists()]
    path = existing[0] if existing else candidates[0]
    try:
        status = read_status(path)
    except StatusError as error:
        message = str(error)
        if len(candidates) > 1:
            message += f"; looked in {', '.join(str(p) for p in candidates)}"
        print(f"livereduce-status: {message}", file=sys.stderr)
        return 1
    text = json.dumps(status, indent=1, sort_keys=True) if args.json else format_status(status)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `livereduce-status | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
