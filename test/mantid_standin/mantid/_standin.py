"""Recording, scripting by environment variables and the log channel of the stand-in."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from typing import Any

_record_lock = threading.Lock()

LEVELS = {"debug": 10, "information": 20, "notice": 25, "warning": 30, "error": 40}
"""Mantid's log priorities, ordered; notice maps to Python INFO as PythonLoggingChannel does."""

_channel = {"python": False, "level": LEVELS["notice"]}


def record(call: str, **args: Any) -> None:
    """Append ``{"pid", "call", "args"}`` as one JSON line to $MANTID_STANDIN_RECORD."""
    path = os.environ.get("MANTID_STANDIN_RECORD")
    if not path:
        return
    line = json.dumps({"pid": os.getpid(), "call": call, "args": args}, default=str)
    with _record_lock, open(path, "a", encoding="utf-8") as stream:
        stream.write(line + "\n")


def env_float(name: str) -> float | None:
    """The float value of $MANTID_STANDIN_<name>, or None when unset."""
    value = os.environ.get(f"MANTID_STANDIN_{name}")
    return None if value in (None, "") else float(value)


def seconds(standin_s: float) -> float:
    """Real seconds for ``standin_s`` seconds of the stand-in's time: divided by
    $MANTID_STANDIN_TIME_SCALE (default 1), so that a test can run a 200 s chunk in 2 s."""
    return standin_s / (env_float("TIME_SCALE") or 1.0)


def env_str(name: str) -> str | None:
    """The value of $MANTID_STANDIN_<name>, or None when unset or empty."""
    return os.environ.get(f"MANTID_STANDIN_{name}") or None


def route_to_python(level: str | None) -> None:
    """What ``log_to_python`` does: later messages go to the Python logger ``Mantid``."""
    _channel["python"] = True
    if level is not None:
        _channel["level"] = LEVELS[level]


def log(priority: str, source: str, text: str) -> None:
    """One Mantid log message from ``source``; to Python logging once routed, else stderr."""
    level = LEVELS[priority]
    if level < _channel["level"]:
        return
    if _channel["python"]:
        python_level = logging.INFO if priority == "notice" else level
        logging.getLogger("Mantid").log(python_level, "%s: %s", source, text)
    else:
        print(f"[mantid stand-in] {source}: {text}", file=sys.stderr)
