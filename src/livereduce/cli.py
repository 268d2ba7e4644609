"""The ``livereduce`` command: read the configuration, set up logging, run the supervisor.

``livereduce [CONFIG]``: CONFIG defaults to ``/etc/livereduce.conf`` (built-in defaults when
that does not exist either, as the predecessor did). A configuration that cannot be used gives
one message on stderr naming the file, the key and what is allowed, and exit status 2; the
other exit statuses are :class:`livereduce.supervisor.daemon.DaemonExit`.

``livereduce plot RESULT.h5 -o OUT.png`` draws a result file (:mod:`livereduce.commands.plot`);
``livereduce try CONFIG RUN.nxs.h5`` runs the scripts on a recorded run
(:mod:`livereduce.commands.trial`).
"""

from __future__ import annotations

import argparse
import faulthandler
import getpass
import importlib
import json
import logging
import sys
from collections.abc import Sequence

from livereduce import __version__
from livereduce.config import Config, ConfigError, load_config
from livereduce.logsetup import configure_logging, default_log_path
from livereduce.supervisor.daemon import DaemonExit, run_daemon
from livereduce.view.files import figures_path
from livereduce.view.server import ViewServer
from livereduce.worker.engine import check_engine

log = logging.getLogger("livereduce")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livereduce",
        description="Keep the live reduction of a neutron instrument's data stream running.",
        epilog="Signals: SIGTERM/SIGINT stop, SIGHUP reloads the processing scripts, SIGQUIT "
        "logs the state and quits. See docs/operations.md. Also: 'livereduce plot RESULT.h5 "
        "-o OUT.png' draws a result file; 'livereduce try CONFIG RUN.nxs.h5' runs the "
        "scripts on a recorded run.",
    )
    parser.add_argument(
        "config", nargs="?", help="configuration file (JSON); default /etc/livereduce.conf"
    )
    parser.add_argument("--version", action="version", version=f"livereduce {__version__}")
    return parser


def log_startup(config: Config) -> None:
    """The first lines of the log: version, Python, user, configuration file and the full
    effective configuration (memory keys included)."""
    log.info("livereduce_starting: version %s, user '%s'", __version__, _user())
    log.info("python: %s at %s", sys.version.split()[0], sys.executable)
    log.info("config_file: %s", config.path or "none (built-in defaults)")
    log.info("effective_configuration: %s", json.dumps(config.effective(), sort_keys=True))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"


SUBCOMMANDS = {"plot": "livereduce.commands.plot", "try": "livereduce.commands.trial"}
"""``livereduce plot RESULT`` and ``livereduce try CONFIG RUN``; anything else is a CONFIG."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run livereduce with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    args = _parser().parse_args(argv)
    warnings: list[str] = []
    try:
        config = load_config(args.config, warn=warnings.append)
        check_engine(config)
    except ConfigError as error:
        print(f"livereduce: {error}", file=sys.stderr)
        return int(DaemonExit.CONFIG_ERROR)
    configure_logging(config, process="supervisor")
    # A supervisor killed by systemd's watchdog (SIGABRT) then leaves its stack in the journal.
    faulthandler.enable()
    log_startup(config)
    for warning in warnings:
        log.warning("config_unknown_keys: %s", warning)
    view = start_view(config)
    try:
        return run_daemon(config)
    finally:
        if view is not None:
            view.close()


def start_view(config: Config) -> ViewServer | None:
    """The live view page for ``config`` (``view_address``), serving from a thread; None when
    it is off or cannot bind (logged: the page is optional, the reduction is not)."""
    if not config.view_address:
        return None
    try:
        return ViewServer(
            config.view_address,
            status_file=config.status_file,
            figures_file=figures_path(config.output_dir, config.output_workspace),
            log_file=default_log_path(config),
        ).start()
    except OSError as error:
        log.error("view_failed: cannot serve the live view on %s: %s", config.view_address, error)
        return None
