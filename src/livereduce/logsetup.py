"""Logging for both processes: one log file that survives rotation, and the journal via stderr.

Where the file goes follows the predecessor (upstream-livereduce.md §2.2): the ``log_file`` key
if set, else ``/var/log/SNS_applications/livereduce.log`` when the user is ``snsdata``, else
``./livereduce.log``. The supervisor and the worker append to the same file; the component
name on every line tells them apart.

Every line, in the file and on stderr, reads ``time level component[pid] logger: message``;
a multi-line record (a traceback) repeats that header on each line, so a grep for a level or
a component finds the whole traceback. When stderr is the journal (``JOURNAL_STREAM`` names
its device and inode, systemd.exec(5)) each line also starts with its syslog priority, ``<3>``
for errors (sd-daemon(3)), so that ``journalctl -p err -u livereduce`` shows errors and their
tracebacks and nothing else. The priority prefix never reaches the file, a terminal or a pipe.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from livereduce.config import Config

SNS_LOG_FILE = Path("/var/log/SNS_applications/livereduce.log")
SNS_USER = "snsdata"
"""The account the service runs as at SNS; its log goes to SNS_LOG_FILE (predecessor's rule)."""

LINE_FORMAT = "%(asctime)s %(levelname)s %(component)s[%(process)d] %(name)s: %(message)s"

SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
"""Python level -> syslog priority (syslog(3): crit 2, err 3, warning 4, info 6, debug 7)."""

log = logging.getLogger(__name__)


def default_log_path(config: Config, *, user: str | None = None, cwd: Path | None = None) -> Path:
    """The log file for ``config``: ``log_file`` if set, else the SNS path for ``snsdata``,
    else ``livereduce.log`` in ``cwd`` (default: the working directory). ``user`` defaults to
    ``$USER``, which systemd sets from ``User=``."""
    if config.log_file is not None:
        return config.log_file
    if user is None:
        user = os.environ.get("USER", "")
    if user == SNS_USER:
        return SNS_LOG_FILE
    return (cwd or Path.cwd()) / "livereduce.log"


def stream_is_journal(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is connected to the journal: its file's ``device:inode`` equals
    ``$JOURNAL_STREAM``, which systemd sets for a service's stdout/stderr (systemd.exec(5)).
    A child that inherited the variable but writes to another file (``| tee``) gets False."""
    expected = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        info = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no file behind it (StringIO), or closed
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


def syslog_priority(levelno: int) -> int:
    """The syslog priority for a Python level number (a level between two named ones takes
    the priority of the named level below it)."""
    for level in sorted(SYSLOG_PRIORITY, reverse=True):
        if levelno >= level:
            return SYSLOG_PRIORITY[level]
    return SYSLOG_PRIORITY[logging.DEBUG]


class _ComponentFilter(logging.Filter):
    """Stamps every record with the process role ('supervisor' or 'worker')."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def filter(self, record: logging.LogRecord) -> bool:
        record.component = self.component
        return True


class LineFormatter(logging.Formatter):
    """Formats a record as one or more complete lines, each with the header, so that every
    line of a traceback carries the time, level and component."""

    def __init__(self, *, priority_prefix: bool = False) -> None:
        super().__init__(LINE_FORMAT)
        self.priority_prefix = priority_prefix

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)  # also sets record.message and record.asctime
        message = record.message
        record.message = ""
        header = self.formatMessage(record)
        record.message = message
        first, *rest = text.splitlines() or [""]
        lines = [first] + [header + line for line in rest]
        if self.priority_prefix:
            prefix = f"<{syslog_priority(record.levelno)}>"
            lines = [prefix + line for line in lines]
        return "\n".join(lines)


def _open_file_handler(path: Path) -> logging.Handler | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # WatchedFileHandler re-opens the file when logrotate renames it away.
        return logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    except OSError as error:
        sys.stderr.write(
            f"livereduce: cannot open log file {path}: {error}; logging to stderr only\n"
        )
        return None


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    name = args.thread.name if args.thread else "?"
    if args.exc_value is None:
        log.error("thread_died: %s: %s", name, args.exc_type.__name__)
        return
    log.error("thread_died: %s", name, exc_info=args.exc_value)


def configure_logging(
    config: Config, *, process: str, stream: TextIO | None = None, level: int = logging.INFO
) -> Path | None:
    """Configure the root logger once, in the entry point of ``process`` ('supervisor' or
    'worker'): the log file of :func:`default_log_path` plus ``stream`` (default stderr), with
    syslog priority prefixes when ``stream`` is the journal (:func:`stream_is_journal`).

    Returns the log file in use, or None when it could not be opened (a message on stderr
    says why; logging then goes to ``stream`` only). Uncaught exceptions in threads and
    Python warnings are logged too.
    """
    stream = sys.stderr if stream is None else stream
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    component = _ComponentFilter(process)

    console = logging.StreamHandler(stream)
    console.setFormatter(LineFormatter(priority_prefix=stream_is_journal(stream)))
    console.addFilter(component)
    root.addHandler(console)

    path = default_log_path(config)
    file_handler = _open_file_handler(path)
    if file_handler is not None:
        file_handler.setFormatter(LineFormatter())
        file_handler.addFilter(component)
        root.addHandler(file_handler)
    logging.captureWarnings(True)
    threading.excepthook = _log_thread_exception
    return path if file_handler is not None else None
