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
from enum import IntEnum
from pathlib import Path
from typing import Any

from livereduce import __version__
from livereduce.atomic import write_atomically
from livereduce.config import ConfigError, load_config

WRITE_EVERY_S = 2.0
"""The supervisor rewrites the file at least this often (docs/operations.md)."""

STALE_AFTER_S = 5 * WRITE_EVERY_S
"""An older file is flagged: a few missed writes are load, not a fault."""

SYSTEMD_STATUS_FILE = Path("/run/livereduce/status.json")
"""Where the service's status file is under systemd (``RuntimeDirectory=livereduce``)."""

FIELDS = {
    "state": "supervisor state: starting, connecting, running, no_data (in a run, nothing new "
    "arrives), waiting_for_run, failing (the last chunks all failed or wrote no result), "
    "run_ended, backoff, held (no worker until a script changes), restarting, stopping, stopped",
    "state_since": "Unix time the state was entered",
    "detail": "what the worker is doing or waiting for, in words",
    "instrument": "instrument name",
    "engine": "the worker's engine",
    "run_number": "run number (null outside a run)",
    "run_title": "run title",
    "chunks": "chunks processed by the current worker",
    "events": "detector events received by the current worker",
    "events_per_s": "events received per second over the last 10 s (0 once nothing arrives)",
    "last_chunk_time": "Unix time of the last processed chunk (null before the first)",
    "results_written": "result files the current worker wrote (null: its engine does not count)",
    "last_result_time": "Unix time the supervisor saw the last result file written",
    "in_script": "the user script the worker runs now (empty between scripts)",
    "errors": "since the supervisor started: chunks lost to script errors and stream faults, "
    "plus workers lost to hangs, script time limits, memory kills and crashes",
    "last_error": "the last error, in words",
    "plots_published": "plots uploaded to the live data server (current worker)",
    "publish_errors": "plot uploads that failed: timeout, no server, an answer other than 200",
    "last_publish_error": "the last failed upload, in words",
    "input_counts": "what the listener left out or could not read, by kind (current worker; "
    "docs/adara.md): error_events, out_of_range_events, paused_events, malformed_packets, ...",
    "streams": "Kafka listener: per event topic {lag (messages), events_per_s, malformed}",
    "worker_pid": "pid of the worker process (null when none runs)",
    "worker_rss_bytes": "resident memory of the worker, bytes",
    "worker_peak_rss_bytes": "peak resident memory of the last worker that ended, bytes",
    "memory_limit_bytes": "the worker's memory limit, bytes (null: no limit)",
    "restarts": "worker restarts since the supervisor started",
    "restart_history": "the last restarts: [{time (Unix s), reason, detail}]",
    "last_reload_latency_s": "seconds from the last script save to the new worker's first chunk",
    "scripts_problem": "why the scripts on disk are not the ones running, or why none runs "
    "(empty when they are)",
    "config_problem": "why the configuration file on disk is not the one in force (a rejected "
    "change: the next start fails), empty when it is",
    "resume": "the run the next worker completes first: {run_number, start_ns}, or null",
    "supervisor_pid": "pid of the supervisor",
    "version": "livereduce version",
    "config": "configuration file",
    "updated": "Unix time this file was written",
}
"""Every key of the status file and its meaning (docs/operations.md shows the same list)."""


class Health(IntEnum):
    """``livereduce-status``'s exit status, for monitoring (docs/operations.md)."""

    HEALTHY = 0
    FAILING = 1  # state failing, held or backoff: it runs, but produces nothing good
    STALE = 2  # not rewritten in time, its supervisor is not running, or it stopped
    NO_STATUS = 3  # no status file, an unreadable one, or a configuration that cannot be read


UNHEALTHY_STATES = frozenset({"failing", "held", "backoff"})

CONNECTING_TOO_LONG_S = 300.0
"""``connecting`` for longer than this is FAILING: the daemon keeps trying, but five minutes
without the data stream is beam time nobody watches (a reconnect normally takes seconds)."""


class StatusError(Exception):
    """The status file is missing or is not a livereduce status file; ``str()`` says which."""


def write_status(path: Path, status: Mapping[str, Any]) -> None:
    """Write ``status`` as JSON to ``path`` atomically (:func:`livereduce.atomic.write_atomically`).

    Raises OSError when the folder cannot be created or written.
    """
    text = json.dumps(status, indent=1, sort_keys=True) + "\n"
    write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


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


def _supervisor_gone(status: Mapping[str, Any]) -> bool:
    # psutil only here: livereduce-watchdog imports this module on the system Python, which
    # has the standard library only (the RPM's python3.11)
    import psutil  # noqa: PLC0415

    pid = status.get("supervisor_pid")
    if not isinstance(pid, int) or status.get("state") == "stopped":
        return False
    try:
        # a killed supervisor stays a zombie until its parent reaps it: gone all the same
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _connecting_too_long(status: Mapping[str, Any], now: float) -> bool:
    since = status.get("state_since")
    return (
        status.get("state") == "connecting"
        and isinstance(since, int | float)
        and now - since > CONNECTING_TOO_LONG_S
    )


def health(status: Mapping[str, Any], *, now: float | None = None) -> Health:
    """What ``status`` says to a monitoring check: STALE when the file is not being rewritten
    (older than STALE_AFTER_S), its supervisor is gone, or it stopped; FAILING for the states
    in UNHEALTHY_STATES and for ``connecting`` longer than CONNECTING_TOO_LONG_S; HEALTHY
    otherwise."""
    now = time.time() if now is None else now
    if status.get("state") == "stopped" or _supervisor_gone(status) or _overdue(status, now):
        return Health.STALE
    if status.get("state") in UNHEALTHY_STATES or _connecting_too_long(status, now):
        return Health.FAILING
    return Health.HEALTHY


def _stream_lines(streams: Mapping[str, Mapping[str, float]]) -> list[str]:
    """One line per Kafka event topic: lag, rate and malformed messages."""
    return [
        f"kafka:        {topic}: lag {stream.get('lag', 0):,.0f} messages, "
        f"{stream.get('events_per_s', 0):,.0f} events/s"
        + (f", {stream['malformed']:,.0f} malformed" if stream.get("malformed") else "")
        for topic, stream in sorted(streams.items())
    ]


def _warnings(status: Mapping[str, Any], now: float) -> list[str]:
    """The WARNING lines of :func:`format_status`: a stale file, a long connect."""
    lines = []
    if _supervisor_gone(status):
        lines.append(
            f"WARNING: supervisor pid {status.get('supervisor_pid')} is not running: this "
            "status is stale"
        )
    elif _overdue(status, now) and isinstance(updated := status.get("updated"), int | float):
        lines.append(
            f"WARNING: not rewritten for {now - updated:.0f} s (it should be every "
            f"{WRITE_EVERY_S:g} s): the supervisor cannot write it, or is stuck"
        )
    if _connecting_too_long(status, now):
        lines.append(
            f"WARNING: connecting for over {CONNECTING_TOO_LONG_S / 60:g} min: is the data "
            "stream's address right, and is the SMS or broker up?"
        )
    return lines


def format_status(status: Mapping[str, Any], *, now: float | None = None) -> str:
    """The status as lines for a person (``livereduce-status`` without ``--json``)."""
    now = time.time() if now is None else now
    get = status.get
    lines = [
        f"livereduce {get('version', '?')}, supervisor pid {get('supervisor_pid', '?')}, "
        f"status written {_age(now, get('updated'))}"
    ]
    lines += _warnings(status, now)
    state = str(get("state", "?"))
    if get("detail"):
        state += f" ({get('detail')})"
    if isinstance(since := get("state_since"), int | float):
        state += f", since {_age(now, since)}"
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
    ]
    if get("results_written") is not None:
        lines.append(
            f"results:      {get('results_written')} written, the last "
            f"{_age(now, get('last_result_time'))}"
        )
    if get("in_script"):
        lines.append(f"in script:    {get('in_script')}")
    lines += [
        f"worker:       {worker}",
        f"errors:       {get('errors', 0)}"
        + (f" (last: {get('last_error')})" if get("last_error") else ""),
        f"restarts:     {get('restarts', 0)}",
    ]
    lines += _stream_lines(get("streams") or {})
    if get("plots_published") or get("publish_errors"):
        lines.append(
            f"plots:        {get('plots_published', 0)} published, "
            f"{get('publish_errors', 0)} failed"
            + (f" (last: {get('last_publish_error')})" if get("last_publish_error") else "")
        )
    problems = (("scripts_problem", "SCRIPTS:"), ("config_problem", "CONFIG:"))
    lines += [f"{label:<14}{get(key)}" for key, label in problems if get(key)]
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
        if "status_file" in config.given:
            return [config.status_file]
    paths.append(SYSTEMD_STATUS_FILE)
    if config is not None:
        paths.append(config.status_file)
    return paths


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livereduce-status",
        description="Show what the livereduce service is doing.",
        epilog="Exit status: 0 healthy, 1 failing or held (or in backoff), 2 stale or the "
        "supervisor gone (or stopped), 3 no status to read.",
    )
    parser.add_argument("--json", action="store_true", help="print the status file as JSON")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--config", type=Path, help="configuration file (default /etc/livereduce.conf)"
    )
    where.add_argument("--file", type=Path, help="status file to read")
    parser.add_argument("--version", action="version", version=f"livereduce-status {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``livereduce-status [--json] [--config CONFIG | --file STATUS]``.

    Prints the status and returns its :func:`health` (0 healthy, 1 failing or held, 2 stale or
    supervisor gone); one message on stderr and 3 when there is no status to read (the file is
    missing or bad). A configuration file that cannot be read is named on stderr and the
    systemd service's status file is read instead.
    """
    args = _parser().parse_args(argv)
    try:
        candidates = _candidates(args)
    except ConfigError as error:
        # A configuration edited to nonsense is exactly when the operator asks what runs: the
        # service goes on with what it read at start, so its status is still worth finding.
        print(
            f"livereduce-status: {error}; looking for the service's status in "
            f"{SYSTEMD_STATUS_FILE}",
            file=sys.stderr,
        )
        candidates = [SYSTEMD_STATUS_FILE]
    existing = [p for p in candidates if p.exists()]
    path = existing[0] if existing else candidates[0]
    try:
        status = read_status(path)
    except StatusError as error:
        message = str(error)
        if len(candidates) > 1:
            message += f"; looked in {', '.join(str(p) for p in candidates)}"
        print(f"livereduce-status: {message}", file=sys.stderr)
        return int(Health.NO_STATUS)
    text = json.dumps(status, indent=1, sort_keys=True) if args.json else format_status(status)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `livereduce-status | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return int(health(status))
