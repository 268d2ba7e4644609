"""``livereduce-watchdog``: the external watchdog, for sites that want one beside systemd's.

It restarts ``livereduce.service`` through ``systemctl`` when the daemon's status file shows no
progress for ``watchdog.threshold`` seconds, checking every ``watchdog.interval`` seconds (keys
of the predecessor, reference: upstream-livereduce.md §3a; validated by config.py). Unlike the
predecessor it judges by the status file (``last_chunk_time``, or ``updated`` while the daemon
says it waits for a run), not by the log file's age; it leaves alone a unit stopped by an
admin (``inactive``) or being restarted by systemd, and starts a ``failed`` one again (after
``reset-failed``, which clears a start limit a drop-in may have set); it spaces its restarts
(at least one threshold apart, doubling while restarts do not help); and it logs every
decision. It only needs the standard library, so the system Python runs it.
"""

from __future__ import annotations

import argparse
import enum
import logging
import logging.handlers
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from livereduce import __version__
from livereduce.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from livereduce.delays import doubling_delay_s
from livereduce.supervisor.status import StatusError
from livereduce.supervisor.status import read_status as read_status_file
from livereduce.worker.stop import StopToken

log = logging.getLogger("livereduce.watchdog")

UNIT = "livereduce.service"
SYSTEMD_STATUS_FILE = Path("/run/livereduce/status.json")
"""The daemon's status file under systemd: ``RuntimeDirectory=livereduce`` of livereduce.service
(the config's ``status_file`` key overrides it)."""

MAX_BACKOFF_S = 3600.0
"""Upper bound of the gap between two restarts when restarts keep not helping: one per hour
still brings the service back after an outage without flooding the journal."""

WAITING_STATES = frozenset({"waiting_for_run", "run_ended", "no_data", "held"})
"""Daemon states in which no chunk arrives by design (between runs, after a Stop, a beam trip
inside a run, a hold only a script change ends: a restart would only run the held-off script
into its time limit again); the status file's ``updated`` time then shows that the daemon is
alive (status.py writes it at least every few seconds, from the worker's heartbeats)."""

SHOW_PROPERTIES = ("ActiveState", "SubState", "Result", "MainPID", "ActiveEnterTimestampMonotonic")


class Action(enum.Enum):
    """What a check decided."""

    NOTHING = "nothing"
    RESTART = "restart"
    RECOVER = "recover"
    """``reset-failed`` and ``start`` a failed unit."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One check's outcome: the action and, in words, why (this is what gets logged)."""

    action: Action
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """What the watchdog needs from the configuration. Seconds.

    ``threshold`` is the effective one: ``watchdog.threshold``, raised to twice
    ``update_every`` when that is longer (a chunk per ``update_every`` is the normal pace).
    """

    interval: float
    threshold: float
    status_file: Path

    @classmethod
    def from_config(cls, config: Config, status_file: Path | None = None) -> Settings:
        """Settings from a loaded configuration; ``status_file`` overrides the file's key."""
        if status_file is None:
            status_file = (
                config.status_file if "status_file" in config.given else SYSTEMD_STATUS_FILE
            )
        threshold = max(float(config.watchdog.threshold), 2 * config.update_every)
        return cls(
            interval=float(config.watchdog.interval), threshold=threshold, status_file=status_file
        )


class Systemctl(Protocol):
    """The systemctl operations the watchdog uses."""

    def show(self, unit: str) -> Mapping[str, str]:
        """The unit's properties (SHOW_PROPERTIES). Raises OSError when systemctl fails."""
        ...

    def restart(self, unit: str) -> str:
        """Queue a restart of ``unit``. Raises OSError naming systemctl's error."""
        ...

    def recover(self, unit: str) -> str:
        """Clear the failed state of ``unit`` and queue its start. Raises OSError naming
        systemctl's error."""
        ...


@dataclass(frozen=True, slots=True)
class SystemctlCommand:
    """:class:`Systemctl` through the ``systemctl`` program (``command`` may name another path).

    An unprivileged user needs the polkit rule 50-snsdata-livereduce.rules to restart the unit.
    """

    command: str = "systemctl"
    timeout_s: float = 30.0

    def _run(self, *args: str) -> str:
        try:
            done = subprocess.run(
                [self.command, *args],
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise OSError(f"{self.command} {' '.join(args)}: {error}") from None
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
            raise OSError(f"{self.command} {' '.join(args)}: {message}")
        return done.stdout

    def show(self, unit: str) -> Mapping[str, str]:
        """Properties of ``unit`` from ``systemctl show``."""
        text = self._run("show", unit, "--property=" + ",".join(SHOW_PROPERTIES))
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def restart(self, unit: str) -> str:
        """``systemctl restart --no-block``: the job is queued, the next check sees its effect."""
        return self._run("restart", "--no-block", unit).strip()

    def recover(self, unit: str) -> str:
        """``systemctl reset-failed`` then ``systemctl start --no-block``."""
        self._run("reset-failed", unit)
        return self._run("start", "--no-block", unit).strip()


def read_status(path: Path) -> dict[str, Any] | None:
    """The daemon's status file as a dict, or None when it is missing or not a livereduce
    status file (:func:`livereduce.supervisor.status.read_status`; the daemon writes it
    atomically, so a torn file means something else wrote it)."""
    try:
        return read_status_file(path)
    except StatusError:
        return None


def progress_time(status: Mapping[str, Any]) -> float | None:
    """Unix time of the daemon's last sign of progress: the last chunk, or the status update
    while it waits for a run (WAITING_STATES); None before either exists."""
    times = [status.get("last_chunk_time")]
    if status.get("state") in WAITING_STATES:
        times.append(status.get("updated"))
    numbers = [t for t in times if isinstance(t, int | float) and not isinstance(t, bool)]
    return max(numbers) if numbers else None


class Watchdog:
    """Decides, one check at a time, whether to restart the unit, and does it.

    ``clock`` returns (wall time, monotonic time) in seconds; the unit's
    ActiveEnterTimestampMonotonic is on the same monotonic clock (CLOCK_MONOTONIC).
    """

    def __init__(
        self,
        settings: Settings,
        systemctl: Systemctl,
        *,
        unit: str = UNIT,
        clock: Callable[[], tuple[float, float]] = lambda: (time.time(), time.monotonic()),
    ) -> None:
        self.settings = settings
        self.unit = unit
        self._systemctl = systemctl
        self._clock = clock
        self._last_restart_mono: float | None = None
        self._useless_restarts = 0

    def restart_gap(self) -> float:
        """Seconds the next restart must wait after the previous one."""
        return doubling_delay_s(self._useless_restarts + 1, self.settings.threshold, MAX_BACKOFF_S)

    def decide(self) -> Decision:
        """Look at the unit and the status file; return what to do and why (no side effects
        apart from the throttle's memory of restarts that did not help)."""
        try:
            props = self._systemctl.show(self.unit)
        except OSError as error:
            return Decision(Action.NOTHING, f"cannot query {self.unit}: {error}")
        active, sub = props.get("ActiveState", "?"), props.get("SubState", "?")
        result = props.get("Result", "?")
        if active == "inactive":
            return Decision(
                Action.NOTHING,
                f"{self.unit} is inactive ({sub}, result {result}): stopped on purpose, left alone",
            )
        if active == "failed":
            return self._throttled(
                Decision(Action.RECOVER, f"{self.unit} is failed ({sub}, result {result})")
            )
        if active != "active":
            return Decision(
                Action.NOTHING, f"{self.unit} is {active} ({sub}): systemd is handling it"
            )
        return self._judge_progress(props)

    def _judge_progress(self, props: Mapping[str, str]) -> Decision:
        now, now_mono = self._clock()
        threshold = self.settings.threshold
        status = read_status(self.settings.status_file)
        last = None
        state = None
        if status is not None and str(status.get("supervisor_pid")) == props.get("MainPID"):
            last = progress_time(status)
            state = status.get("state")
        active_since = _micro(props.get("ActiveEnterTimestampMonotonic"))
        if last is not None:
            age = now - last
            what = f"last progress {age:.0f} s ago (state {state})"
        elif active_since is not None:
            age = now_mono - active_since
            what = f"no progress reported since it became active {age:.0f} s ago"
        else:
            return Decision(Action.NOTHING, f"{self.unit} is active but its start time is unknown")
        if status is None:
            what += f"; status file {self.settings.status_file} missing"
        if age < threshold:
            if last is not None:
                self._useless_restarts = 0
            return Decision(
                Action.NOTHING, f"{self.unit} healthy: {what} (threshold {threshold:.0f} s)"
            )
        return self._throttled(
            Decision(Action.RESTART, f"{self.unit} stalled: {what} (threshold {threshold:.0f} s)")
        )

    def _throttled(self, decision: Decision) -> Decision:
        """``decision``, or NOTHING while the last restart or recovery is more recent than
        :meth:`restart_gap`."""
        if self._last_restart_mono is not None:
            since = self._clock()[1] - self._last_restart_mono
            if since < self.restart_gap():
                return Decision(
                    Action.NOTHING,
                    f"{decision.reason}, but the last restart was {since:.0f} s ago; "
                    f"next one allowed after {self.restart_gap():.0f} s",
                )
        return decision

    def check(self) -> Decision:
        """One check: decide, log the decision, restart when it says so."""
        decision = self.decide()
        if decision.action is Action.NOTHING:
            log.info("%s", decision.reason)
            return decision
        verb = "restart" if decision.action is Action.RESTART else "start"
        log.warning("%s: %sing %s", decision.reason, verb, self.unit)
        if self._last_restart_mono is not None:
            self._useless_restarts += 1
        self._last_restart_mono = self._clock()[1]
        try:
            if decision.action is Action.RESTART:
                self._systemctl.restart(self.unit)
            else:
                self._systemctl.recover(self.unit)
        except OSError as error:
            log.error("%s of %s failed: %s", verb, self.unit, error)
        else:
            log.info("%s of %s queued", verb, self.unit)
        return decision


def _micro(value: str | None) -> float | None:
    """A systemd microsecond timestamp as seconds; None for missing or zero (never entered)."""
    try:
        micro = int(value or 0)
    except ValueError:
        return None
    return micro / 1e6 if micro > 0 else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livereduce-watchdog",
        description="Restart livereduce.service when its status file shows no progress for "
        "watchdog.threshold seconds; leave it alone when it was stopped (docs/systemd.md).",
    )
    parser.add_argument(
        "config", nargs="?", default=str(DEFAULT_CONFIG_PATH), help="default %(default)s"
    )
    parser.add_argument("--unit", default=UNIT, help="unit to watch (default %(default)s)")
    parser.add_argument(
        "--status-file",
        type=Path,
        help=f"the daemon's status file (default: the config's status_file, else "
        f"{SYSTEMD_STATUS_FILE})",
    )
    parser.add_argument("--systemctl", default="systemctl", help="systemctl program")
    parser.add_argument("--log-file", type=Path, help="also log to this file")
    parser.add_argument("--once", action="store_true", help="check once and exit")
    parser.add_argument("--version", action="version", version=f"livereduce-watchdog {__version__}")
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    return _parser().parse_args(argv)


def _configure_logging(log_file: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        try:
            handlers.append(logging.handlers.WatchedFileHandler(log_file))
        except OSError as error:
            print(
                f"livereduce-watchdog: cannot write log file {log_file}: {error}", file=sys.stderr
            )
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def _load(path: str, status_file: Path | None) -> Settings:
    config = load_config(path, check_scripts=False, warn=log.warning)
    settings = Settings.from_config(config, status_file)
    if settings.threshold > config.watchdog.threshold:
        log.warning(
            "watchdog.threshold %d s is shorter than twice update_every (%g s): using %.0f s",
            config.watchdog.threshold,
            config.update_every,
            settings.threshold,
        )
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``livereduce-watchdog [CONFIG]``. Exit status 2 when the configuration
    cannot be used at start; later configuration errors keep the previous settings."""
    args = _parse(argv)
    _configure_logging(args.log_file)
    try:
        settings = _load(args.config, args.status_file)
    except ConfigError as error:
        log.error("%s", error)
        return 2
    watchdog = Watchdog(settings, SystemctlCommand(args.systemctl), unit=args.unit)
    log.info(
        "watching %s: status file %s, check every %g s, restart after %g s without progress",
        args.unit,
        settings.status_file,
        settings.interval,
        settings.threshold,
    )
    stop = StopToken()
    stop.install()
    config_text = _read_text(args.config)
    while True:
        watchdog.check()
        if args.once or stop.wait(watchdog.settings.interval):
            break
        text = _read_text(args.config)
        if text != config_text:
            config_text = text
            try:
                watchdog.settings = _load(args.config, args.status_file)
            except ConfigError as error:
                log.error("%s; keeping the previous watchdog settings", error)
            else:
                log.info("configuration changed: %s", watchdog.settings)
    if stop.requested:
        log.info("stopping on %s", stop.reason)
    return 0


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
