"""The worker program: ``python -m livereduce.worker --report-fd N``.

The supervisor starts it with the configuration as JSON ``{"path": str | null, "raw": {...}}`` on
standard input and the write end of a pipe as ``--report-fd``; the worker runs one engine and
writes :class:`~livereduce.protocol.Progress` reports (its heartbeats) to that pipe. It ends
with a :class:`~livereduce.protocol.WorkerExit` status: STOPPED on SIGTERM/SIGINT or when the
run ended with run_transition Stop, BOOT_FAILURE when it cannot start (bad configuration,
engine unavailable, unusable listener settings), ENGINE_FAILURE when the listener fails while
running, CRASHED on an unexpected exception (its traceback is logged). A supervisor that went
away (BrokenPipeError on the report pipe) counts as a stop request.

A stop takes seconds whatever the worker does (issue 15.3, :mod:`livereduce.worker.stop`): the
engine abandons the work in hand, and the process ends with :func:`~livereduce.worker.stop.
exit_now` (never the interpreter's shutdown, which Mantid's exit hook can hang); at the latest
``STOP_EXIT_AFTER_S`` after the stop request it ends itself with status 0.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from livereduce.config import Config, ConfigError, config_from_mapping
from livereduce.config import Engine as EngineChoice
from livereduce.logsetup import configure_logging
from livereduce.protocol import (
    STACK_FD_ENV,
    Progress,
    ReportWriter,
    Resume,
    WorkerExit,
    WorkerState,
)
from livereduce.worker.engine import Engine, EngineUnavailable, choose_engine
from livereduce.worker.listeners.base import ListenerError
from livereduce.worker.outputs.compat import install_compat_modules
from livereduce.worker.stop import StopRequested, StopToken

log = logging.getLogger("livereduce.worker")


def read_config(stream: Any) -> tuple[Config, Resume | None]:
    """The configuration sent on ``stream`` and the run to complete first (its ``resume``,
    None when absent or null); raises ConfigError when the message is not usable."""
    try:
        message = json.load(stream)
        raw, path = message["raw"], message.get("path")
        resume = Resume.from_json(message.get("resume"))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise ConfigError(
            None, None, f"the worker's standard input is not a configuration message: {error}"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(None, None, "the worker's configuration message has no 'raw' object")
    return config_from_mapping(raw, Path(path) if path else None, check_scripts=False), resume


def make_engine(choice: EngineChoice, config: Config, resume: Resume | None = None) -> Engine:
    """The engine object for ``choice`` (imported only when chosen), with its listener; the
    embedded engine completes ``resume`` first. Raises ConfigError or ValueError for unusable
    listener settings."""
    if choice is EngineChoice.MANTID:
        from livereduce.worker.engine import mantid  # noqa: PLC0415 - Mantid only when chosen
        from livereduce.worker.outputs import publishing  # noqa: PLC0415

        if resume is not None:
            log.warning(
                "resume_ignored: Mantid's StartLiveData cannot ask for a past time; "
                "run %d may stay incomplete",
                resume.run_number,
            )

        # Mantid scripts' publish_plot must not stall MonitorLiveData either: queue it. (The
        # embedded engine installs its own publisher, whose counts go into its reports.)
        publishing.set_default_config(config.publish_config)
        publishing.install(publishing.Publisher(timeout_s=config.publish_timeout_sec))
        return mantid.from_config(config)
    from livereduce.worker.engine.embedded import EmbeddedEngine  # noqa: PLC0415
    from livereduce.worker.listeners import create_listener  # noqa: PLC0415

    return EmbeddedEngine(config, create_listener(config, resume), resume=resume)


class _Reporter:
    """Sends reports; the supervisor gone (BrokenPipeError) becomes a stop request."""

    def __init__(self, writer: ReportWriter, stop: StopToken) -> None:
        self._writer = writer
        self._stop = stop
        self.last: Progress | None = None
        self.supervisor_gone = False

    def __call__(self, progress: Progress) -> None:
        self.last = progress
        if self.supervisor_gone:
            return
        try:
            self._writer.send(progress)
        except BrokenPipeError:
            self.supervisor_gone = True
            self._stop.request("supervisor gone")


def run_worker(config: Config, report_fd: int, resume: Resume | None = None) -> WorkerExit:
    """Choose the engine, run it until it stops, and map failures to exit statuses;
    ``resume`` is the run a previous worker left unfinished."""
    stop = StopToken()
    stop.install()
    # SIGHUP is the supervisor's to act on (it restarts this worker); `systemctl kill -s HUP`
    # sends it to every process of the unit, and its default action would kill us mid-write.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    reporter = _Reporter(ReportWriter(report_fd), stop)
    # Scripts of both engines import publish_plot from SNS packages that are not on PyPI.
    install_compat_modules()
    try:
        choice, reason = choose_engine(config)
        log.info("engine_chosen: %s (%s)", choice, reason)
        if resume is not None:
            log.info(
                "resume: completing run %d first (started at Unix time %.0f s)",
                resume.run_number,
                resume.start_ns / 1e9,
            )
        engine = make_engine(choice, config, resume)
    except (EngineUnavailable, ConfigError, ValueError) as error:
        log.error("worker_boot_failed: %s", error)
        _final(reporter, f"cannot start: {error}")
        return WorkerExit.BOOT_FAILURE
    try:
        return engine.run(stop, reporter)
    except StopRequested as stopped:
        log.info("engine_stopping: %s", stopped.reason)
        return WorkerExit.STOPPED
    except ListenerError as error:
        log.error("listener_failed: %s", error)
        _final(reporter, f"listener failed: {error}")
        return WorkerExit.ENGINE_FAILURE
    except Exception as error:
        log.exception("worker_crashed: unexpected %s", type(error).__name__)
        _final(reporter, f"crashed: {type(error).__name__}: {error}")
        return WorkerExit.CRASHED
    finally:
        send_queued_plots(config)


def send_queued_plots(config: Config) -> None:
    """The Mantid engine's scripts queued plots on a publisher (make_engine): send what waits
    before the process ends, within half the stop timeout (the embedded engine does its own)."""
    from livereduce.worker.outputs import publishing  # noqa: PLC0415

    publisher = publishing.install(None)
    if publisher is not None:
        publisher.close(min(config.publish_timeout_sec + 1.0, config.stop_timeout / 2))


def _final(reporter: _Reporter, error: str) -> None:
    """Best effort: tell the supervisor why the worker ends (STYLE.md §10)."""
    base = reporter.last or Progress(state=WorkerState.ERROR)
    reporter(base.with_(state=WorkerState.ERROR, detail=error, last_error=error[-500:]))


def _enable_faulthandler(stack_fd: str) -> None:
    """Point faulthandler at the supervisor's stack file (fd ``stack_fd``), else stderr."""
    if stack_fd.isdigit():
        try:
            os.set_inheritable(int(stack_fd), False)
            faulthandler.enable(file=int(stack_fd), all_threads=True)
            return
        except (OSError, ValueError) as error:
            log.warning("stack_file_unusable: fd %s: %s; stacks go to stderr", stack_fd, error)
    faulthandler.enable()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the WorkerExit status."""
    parser = argparse.ArgumentParser(
        prog="python -m livereduce.worker", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--report-fd", type=int, required=True, help="pipe fd for progress reports")
    args = parser.parse_args(argv)
    # Programs the scripts start must not hold the report pipe open after this process ends.
    os.set_inheritable(args.report_fd, False)
    try:
        config, resume = read_config(sys.stdin)
    except ConfigError as error:
        logging.basicConfig(level=logging.INFO)
        log.error("worker_boot_failed: %s", error)
        return WorkerExit.BOOT_FAILURE
    configure_logging(config, process="worker")
    # A hung worker killed with SIGABRT shows where it hung (e.g. inside a user script): into the
    # file the supervisor reads after the abort and logs in livereduce.log, else stderr.
    _enable_faulthandler(os.environ.pop(STACK_FD_ENV, ""))
    return int(run_worker(config, args.report_fd, resume))


if __name__ == "__main__":
    sys.exit(main())
