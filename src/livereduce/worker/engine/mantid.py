"""The Mantid engine: the worker drives Mantid's StartLiveData and watches MonitorLiveData.

Sites with Mantid keep their Mantid processing scripts (``input`` is a workspace, ``output``
a workspace name; mantid-live-data.md §2.5). The call sequence is the predecessor's
(upstream-livereduce.md §1.2, §2.1), plus what it lacked:

* ``Listener``, ``Address``, ``RunTransitionBehavior`` and ``PeriodList`` / ``SpectraList`` come
  from the configuration (the predecessor passed ``spectra``, a name StartLiveData does not
  have; a property the chosen listener does not declare is an error at start here);
* StartLiveData runs in a helper thread, so the worker's loop stays responsive to a stop while
  the first chunk loads;
* the script paths come from the configuration (``Config.existing_scripts``), as for the
  embedded engine and the supervisor's watch: one source of truth (issue 14.3);
* the loop watches MonitorLiveData and reports only progress; the supervisor alone decides
  when the worker is hung (issue 15.8). Mantid stores the output workspace in the analysis data
  service (ADS) only after a whole chunk (LoadLiveData: extract, processing script, accumulation,
  post-processing script) has finished, so a chunk is reported like a script: when it starts
  (StartLiveData's synchronous first chunk at once; later ones at Mantid's "Loading live data
  chunk" log line, or when it is due, ``update_every`` after the last, start to start) the
  worker sends one report with ``in_script`` = ``LoadLiveData`` and then stays silent until the
  chunk is stored; the supervisor allows it ``Config.script_timeout("LoadLiveData")`` (both
  scripts' limits). Between chunks the loop beats every HEARTBEAT_INTERVAL_S until the next one
  is due. Each "not ready" warning of the listener is progress too (state ``waiting_for_run``,
  held until a chunk is stored: real Mantid repeats the warning only every ~20 s): that attempt
  of LoadLiveData ended and the next begins, so the worker sends a report with ``in_script``
  empty and one naming ``LoadLiveData`` again (the supervisor times a script from the report
  that first names it, so waiting hours for a run is never a script past its limit). A
  MonitorLiveData that ended in error ends the worker with ENGINE_FAILURE;
* a stop cancels MonitorLiveData from the loop (never from a signal handler), waits at most
  ``CANCEL_WAIT_MAX_S`` and returns. It never calls ``AlgorithmManager.shutdown()``, whose wait
  with the GIL held can hang forever (upstream-livereduce.md §2.5), and the worker ends with
  ``os._exit`` (:func:`livereduce.worker.stop.exit_now`), so Mantid's own exit hook, which
  calls it, never runs either.

The worker builds the engine with :func:`from_config`. Mantid is imported in :meth:`run`, so
this module imports without Mantid.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from livereduce.config import MANTID_CHUNK, Config, ListenerKind, RunTransitionBehavior, StartFrom
from livereduce.protocol import HEARTBEAT_INTERVAL_S, Progress, WorkerExit, WorkerState
from livereduce.worker.stop import StopToken

log = logging.getLogger(__name__)

LISTENER_CLASSES: Mapping[ListenerKind, str] = {
    ListenerKind.ADARA: "SNSLiveEventDataListener",
    ListenerKind.FAKE: "FakeEventDataListener",
    ListenerKind.NEXUS: "FileEventDataListener",
}
"""Mantid's listener class for each ``listener`` kind (mantid-live-data.md §3.1)."""

LISTENER_SETTINGS: Mapping[tuple[ListenerKind, str], str] = {
    (ListenerKind.FAKE, "event_rate"): "fakeeventdatalistener.datarate",
    (ListenerKind.FAKE, "run_length_sec"): "fakeeventdatalistener.endrunevery",
    (ListenerKind.NEXUS, "chunks"): "fileeventdatalistener.chunks",
}
"""Mantid ``ConfigService`` keys read by Mantid's listeners for our ``listener_options``
(mantid-live-data.md §3.6, §3.7). Options not listed have no Mantid equivalent."""

NEXUS_FILE_SETTING = "fileeventdatalistener.filename"
"""The file FileEventDataListener replays (mantid-live-data.md §3.7)."""

MANTID_LOG_LEVEL = "information"
"""Mantid's log level routed into ours: the predecessor's choice (upstream-livereduce.md §2.2)."""

MANTID_LOG_PATTERN = "%s: %t"
"""Poco pattern: the Mantid source (algorithm) name, then the text."""

NOT_READY_TEXT = "is not ready to return data"
"""LoadLiveData's warning each time the listener raises NotYet (mantid-live-data.md §2.3)."""

CHUNK_START_TEXT = "Loading live data chunk"
"""MonitorLiveData's notice as each chunk starts (mantid-live-data.md §2.4)."""

CHUNK_START_SLACK_S = HEARTBEAT_INTERVAL_S
"""How long after its due time a chunk whose start Mantid did not log counts as started:
MonitorLiveData looks at the clock every 50 ms (mantid-live-data.md §2.4)."""

TICK_S = 0.25
"""How often the loop looks at MonitorLiveData and the stop token: cheap, and well inside
HEARTBEAT_INTERVAL_S."""

MONITOR_START_GRACE_S = 5.0
"""MonitorLiveData starts asynchronously; until it says it is running it is given this long
(Mantid's own StartLiveData test allows 2 s)."""

CANCEL_WAIT_MAX_S = 2.0
"""Upper bound on waiting for a cancelled algorithm to end before returning anyway: inside the
worker's own stop deadline (``STOP_EXIT_AFTER_S``), so that the log says what held it."""

_routing = threading.Lock()
_routed_with: list[Callable[..., None]] = []


class MantidBootError(Exception):
    """Mantid cannot start live data with this configuration; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class MantidInstrument:
    """The instrument as Mantid's Facilities.xml has it: ``name`` (for StartLiveData),
    ``short_name`` (for script names) and ``facility``."""

    name: str
    short_name: str
    facility: str


def resolve_instrument(config_service: Any, name: str) -> MantidInstrument:
    """Look ``name`` up in Mantid's ``ConfigService``; switch Mantid's default facility when the
    instrument belongs to another one (StartLiveData only accepts instruments of the default
    facility) and make it the default instrument, as the predecessor does (in memory only).

    Raises MantidBootError when Mantid does not know the instrument.
    """
    try:
        info = config_service.getInstrument(name)
    except (RuntimeError, ValueError, KeyError) as error:
        raise MantidBootError(
            f"instrument '{name}' is not in Mantid's Facilities.xml: {error}"
        ) from None
    facility = info.facility().name()
    current = config_service.getFacility().name()
    if facility != current:
        log.info(
            "facility_switched: instrument %s belongs to facility %s, Mantid's default was %s",
            info.name(),
            facility,
            current,
        )
        config_service.setFacility(facility)
    if config_service["default.instrument"] != info.name():
        config_service["default.instrument"] = info.name()
    return MantidInstrument(name=info.name(), short_name=info.shortName(), facility=facility)


def existing_scripts(config: Config, mantid_short_name: str) -> tuple[Path | None, Path | None]:
    """(processing, post-processing) script paths that exist and are not empty: the
    configuration's (``Config.existing_scripts``: ``reduce_<SHORT>_live_proc.py`` in
    ``script_dir``, with livereduce's short name), the ones the supervisor watches. A short name
    of Mantid's Facilities.xml that differs is logged, never used.

    Raises MantidBootError when neither exists.
    """
    if mantid_short_name != config.instrument.short_name:
        log.warning(
            "instrument_short_name_differs: Mantid calls %s '%s', livereduce '%s': the scripts "
            "are %s",
            config.instrument.name, mantid_short_name, config.instrument.short_name,
            config.proc_script.name,
        )  # fmt: skip
    found = config.existing_scripts()
    if found == (None, None):
        wanted = f"'{config.proc_script.name}'"
        if config.post_process:
            wanted += f" or '{config.post_proc_script.name}'"
        raise MantidBootError(
            f"no processing script in {config.script_dir}: need at least one non-empty {wanted}"
        )
    return found


def listener_settings(config: Config) -> dict[str, str]:
    """Mantid ``ConfigService`` entries for the configured listener: the nexus file and the
    ``listener_options`` that have a Mantid equivalent (others are logged and ignored)."""
    settings = {}
    if config.listener is ListenerKind.NEXUS:
        settings[NEXUS_FILE_SETTING] = config.address
    for option, value in config.listener_options.items():
        key = LISTENER_SETTINGS.get((config.listener, option))
        if key is None:
            log.warning(
                "listener_option_ignored: listener_options.%s has no Mantid equivalent", option
            )
            continue
        settings[key] = str(int(value)) if float(value).is_integer() else str(value)
    return settings


def start_live_data_properties(
    config: Config,
    instrument: MantidInstrument,
    proc: Path | None,
    post: Path | None,
    accumulation_workspace: str | None,
) -> dict[str, Any]:
    """StartLiveData's properties, in the order they must be set: ``Instrument`` and
    ``Listener`` first, because setting them declares the listener's own properties
    (``PeriodList``, ``SpectraList``; mantid-live-data.md §1).

    ``Listener`` and ``Address`` are passed only when the configuration names them, so that
    otherwise Mantid's Facilities.xml connection for the instrument applies, as with the
    predecessor; a nexus file goes through :func:`listener_settings` instead of ``Address``.
    ``accumulation_workspace`` is required with a post-processing script.
    """
    properties: dict[str, Any] = {"Instrument": instrument.name}
    if "listener" in config.given:
        properties["Listener"] = LISTENER_CLASSES[config.listener]
    if "address" in config.given and config.listener is not ListenerKind.NEXUS:
        properties["Address"] = config.address
    from_start = config.start_from is StartFrom.START_OF_RUN
    properties |= {
        "UpdateEvery": float(config.update_every),
        "PreserveEvents": config.preserve_events,
        "AccumulationMethod": str(config.accum_method),
        "RunTransitionBehavior": str(config.run_transition),
        "FromNow": not from_start,
        "FromStartOfRun": from_start,
    }
    if proc is not None:
        properties["ProcessingScriptFilename"] = str(proc)
    if post is not None:
        if not accumulation_workspace:
            raise ValueError("a post-processing script needs an accumulation workspace name")
        properties["PostProcessingScriptFilename"] = str(post)
        properties["AccumulationWorkspace"] = accumulation_workspace
    properties["OutputWorkspace"] = config.output_workspace
    if config.periods:
        properties["PeriodList"] = list(config.periods)
    if config.spectra:
        properties["SpectraList"] = list(config.spectra)
    return properties


LISTENER_PROPERTIES = {"PeriodList": "periods", "SpectraList": "spectra"}
"""StartLiveData properties declared by the listener, not by StartLiveData itself, and the
configuration keys they come from (mantid-live-data.md §1)."""


def create_start_live_data(api: ModuleType, properties: Mapping[str, Any]) -> Any:
    """A managed StartLiveData algorithm with ``properties`` set in order (errors rethrown).

    Raises MantidBootError naming the property StartLiveData does not have or rejects.
    """
    algorithm = api.AlgorithmManager.create("StartLiveData")
    algorithm.setRethrows(True)
    for name, value in properties.items():
        if name not in algorithm and name in LISTENER_PROPERTIES:
            listener = properties.get("Listener") or "its Facilities.xml listener"
            raise MantidBootError(
                f"key '{LISTENER_PROPERTIES[name]}': StartLiveData for {properties['Instrument']} "
                f"with {listener} has no {name} property (only listeners that declare it, such "
                "as ISISHistoDataListener, take it)"
            )
        if name not in algorithm:
            raise MantidBootError(f"this Mantid's StartLiveData has no {name} property")
        try:
            algorithm.setProperty(name, value)
        except (ValueError, RuntimeError, TypeError) as error:
            raise MantidBootError(f"StartLiveData rejects {name}={value!r}: {error}") from None
    return algorithm


def route_mantid_log(log_to_python: Callable[..., None]) -> None:
    """Send Mantid's log to the Python logger ``Mantid`` (and so into ours) once per Mantid in
    this process: the predecessor re-routed on every restart of live data."""
    with _routing:
        if not any(routed is log_to_python for routed in _routed_with):
            log_to_python(MANTID_LOG_LEVEL, MANTID_LOG_PATTERN)
            _routed_with.append(log_to_python)


class MantidLogTap(logging.Handler):
    """Remembers, from Mantid's log, the last error, the last listener-not-ready warning and
    the last chunk start (each with its time on ``clock``, monotonic seconds, and its text);
    Mantid's threads call it, the loop reads it."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(level=logging.INFO)
        self._clock = clock
        self.last_error = ""
        self.error_at: float | None = None
        self.not_ready_at: float | None = None
        self.not_ready_text = ""
        self.chunk_start_at: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        text = " ".join(record.getMessage().split())
        if record.levelno >= logging.ERROR:
            self.last_error = text
            self.error_at = self._clock()
        elif NOT_READY_TEXT in text:
            self.not_ready_text = text
            self.not_ready_at = self._clock()
        elif CHUNK_START_TEXT in text:
            self.chunk_start_at = self._clock()


class OutputUpdates:
    """Counts stores of the output workspace in the ADS (one per chunk: LoadLiveData stores
    its result there after every chunk). Mantid calls :meth:`seen` from its own threads;
    ``clock`` gives monotonic seconds."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.count = 0
        self.at: float | None = None
        self.wall: float | None = None

    def seen(self) -> None:
        with self._lock:
            self.count += 1
            self.at = self._clock()
            self.wall = time.time()

    def snapshot(self) -> tuple[int, float | None, float | None]:
        """(updates, monotonic time of the last, wall time of the last)."""
        with self._lock:
            return self.count, self.at, self.wall


def _observe_output(api: Any, name: str, updates: OutputUpdates) -> Any:
    """An ADS observer calling ``updates.seen()`` when workspace ``name`` is added or replaced."""

    class OutputObserver(api.AnalysisDataServiceObserver):
        def addHandle(self, ws_name: str, _workspace: Any) -> None:
            if ws_name == name:
                updates.seen()

        def replaceHandle(self, ws_name: str, _workspace: Any) -> None:
            if ws_name == name:
                updates.seen()

    observer = OutputObserver()
    observer.observeAdd(True)
    observer.observeReplace(True)
    return observer


def _execute(algorithm: Any, outcome: dict[str, Any]) -> None:
    try:
        algorithm.execute()
    except Exception as error:  # noqa: BLE001 (any Mantid failure goes to the loop)
        outcome["error"] = " ".join(str(error).split()) or type(error).__name__
    else:
        outcome["ok"] = time.monotonic()


def _cancel(algorithm: Any, label: str, finished: Callable[[], bool], wait_s: float) -> bool:
    """Cancel ``algorithm`` from a daemon thread (a cancel that blocks cannot block us) and wait
    up to ``wait_s`` for ``finished()``. Returns whether it finished."""
    threading.Thread(target=algorithm.cancel, name=f"cancel {label}", daemon=True).start()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if finished():
            return True
        time.sleep(0.05)
    return finished()


class MantidEngine:
    """Live data on Mantid for ``config``; see the module docstring. ``tick_s`` is how often the
    loop polls (seconds); ``clock`` (monotonic seconds) times chunks and heartbeats (tests run
    it faster, with the stand-in's MANTID_STANDIN_TIME_SCALE)."""

    def __init__(
        self,
        config: Config,
        *,
        tick_s: float = TICK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.tick_s = tick_s
        self.clock = clock

    def run(self, stop: StopToken, report: Callable[[Progress], None]) -> WorkerExit:
        """Start live data and watch it until stopped, the run ends (``run_transition`` Stop)
        or Mantid fails. Returns STOPPED, BOOT_FAILURE (Mantid cannot start with this
        configuration) or ENGINE_FAILURE (StartLiveData or MonitorLiveData failed)."""
        progress = Progress(
            state=WorkerState.STARTING, engine="mantid", instrument=self.config.instrument.name
        )
        report(progress.with_(detail="importing Mantid"))
        try:
            from mantid import api, kernel  # noqa: PLC0415 (optional dependency)
            from mantid.utils.logging import log_to_python  # noqa: PLC0415
        except ImportError as error:
            return _failed(
                report, progress, WorkerExit.BOOT_FAILURE, f"cannot import Mantid: {error}"
            )
        route_mantid_log(log_to_python)
        tap = MantidLogTap(self.clock)
        mantid_logger = logging.getLogger("Mantid")
        if mantid_logger.getEffectiveLevel() > logging.INFO:
            mantid_logger.setLevel(logging.INFO)  # the tap needs the chunk-start notices
        mantid_logger.addHandler(tap)
        try:
            return self._run(
                api=api, kernel=kernel, tap=tap, stop=stop, report=report, progress=progress
            )
        finally:
            mantid_logger.removeHandler(tap)

    def _run(
        self,
        *,
        api: ModuleType,
        kernel: ModuleType,
        tap: MantidLogTap,
        stop: StopToken,
        report: Callable[[Progress], None],
        progress: Progress,
    ) -> WorkerExit:
        config = self.config
        try:
            instrument = resolve_instrument(kernel.ConfigService, config.instrument.name)
            proc, post = existing_scripts(config, instrument.short_name)
            for key, value in listener_settings(config).items():
                kernel.ConfigService[key] = value
            accumulation = (
                api.AnalysisDataService.unique_name(prefix="accumulation_") if post else None
            )
            properties = start_live_data_properties(config, instrument, proc, post, accumulation)
            start = create_start_live_data(api, properties)
        except MantidBootError as error:
            return _failed(report, progress, WorkerExit.BOOT_FAILURE, str(error))
        progress = progress.with_(instrument=instrument.name)
        log.info(
            "start_live_data: StartLiveData(%s)",
            ", ".join(f"{k}={v!r}" for k, v in properties.items()),
        )
        updates = OutputUpdates(self.clock)
        observer = _observe_output(api, config.output_workspace, updates)
        watch = MonitorWatch(
            engine=self, start=start, updates=updates, tap=tap, report=report, progress=progress
        )
        result = watch.loop(stop)
        if watch.quiet():
            observer.observeAdd(False)
            observer.observeReplace(False)
        return result


def _failed(
    report: Callable[[Progress], None], progress: Progress, code: WorkerExit, message: str
) -> WorkerExit:
    log.error("mantid_failed: %s", message)
    report(
        progress.with_(
            state=WorkerState.ERROR, detail=message, errors=progress.errors + 1, last_error=message
        )
    )
    return code


class MonitorWatch:
    """The worker's loop while Mantid runs live data: one :meth:`tick` every ``tick_s``.

    ``chunk_since`` is the (monotonic) start of the chunk Mantid is loading, None between
    chunks; ``due`` is when the next chunk starts (MonitorLiveData: ``update_every`` start to
    start, at once after a chunk that took longer)."""

    def __init__(
        self,
        *,
        engine: MantidEngine,
        start: Any,
        updates: OutputUpdates,
        tap: MantidLogTap,
        report: Callable[[Progress], None],
        progress: Progress,
    ) -> None:
        self.engine = engine
        self.clock = engine.clock
        self.start = start
        self.updates = updates
        self.tap = tap
        self.report = report
        self.progress = progress
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(
            target=_execute, args=(start, self.outcome), name="StartLiveData", daemon=True
        )
        self.monitor: Any = None
        self.monitor_since = 0.0
        self.monitor_seen_running = False
        self.reported_at = 0.0
        self.reported_chunks = 0
        self.chunk_since: float | None = None
        self.due = 0.0
        self.not_ready_seen: float | None = None
        self.chunk_start_seen: float | None = None

    def loop(self, stop: StopToken) -> WorkerExit:
        """:meth:`begin`, then :meth:`tick` every ``tick_s`` until Mantid ended or ``stop``."""
        self.begin()
        while not stop.wait(self.engine.tick_s):
            ended = self.tick(self.clock())
            if ended is not None:
                return ended
        return self._stop(stop.reason)

    def begin(self) -> None:
        """Run StartLiveData in its thread; its synchronous first chunk starts now."""
        self.thread.start()
        self._chunk_started(
            self.clock(),
            WorkerState.CONNECTING,
            "StartLiveData: connecting the listener and loading the first chunk",
        )

    def tick(self, now: float) -> WorkerExit | None:
        """Look at Mantid once at monotonic ``now``: report what moved; the exit status once
        StartLiveData or MonitorLiveData has ended, else None."""
        ended = self._ended(now)
        if ended is None:
            self._follow(now)
        return ended

    def _follow(self, now: float) -> None:
        """Report a stored chunk, a not-ready warning, a chunk start, or (between chunks) a
        heartbeat; nothing while Mantid is in a chunk."""
        chunks, chunk_at, chunk_wall = self.updates.snapshot()
        not_ready_at, start_at = self.tap.not_ready_at, self.tap.chunk_start_at
        new_start = start_at is not None and start_at != self.chunk_start_seen
        self.chunk_start_seen = start_at
        if chunks != self.reported_chunks:
            update_every = self.engine.config.update_every
            began = self.chunk_since if self.chunk_since is not None else now
            self.due = max(began + update_every, now) if chunks > 1 else now + update_every
            self.chunk_since = None
            self.reported_chunks = chunks
            self.progress = self.progress.with_(chunks=chunks, last_chunk_time=chunk_wall)
            self._send(now, WorkerState.RUNNING, f"chunk {chunks} processed")
            if new_start and start_at is not None and chunk_at is not None and start_at >= chunk_at:
                # A chunk longer than update_every: the next one started as this one was stored.
                self._chunk_started(start_at, WorkerState.RUNNING, f"loading chunk {chunks + 1}")
        elif not_ready_at is not None and not_ready_at != self.not_ready_seen:
            # That attempt of LoadLiveData ended (the listener answered "not ready") and the
            # next one starts: two reports, so that the supervisor times the new attempt.
            self.not_ready_seen = not_ready_at
            self.chunk_since = None
            self._send(now, WorkerState.WAITING_FOR_RUN, self.tap.not_ready_text)
            self._chunk_started(not_ready_at, WorkerState.WAITING_FOR_RUN, self.tap.not_ready_text)
        elif self.chunk_since is not None:
            pass  # Mantid is in a chunk: silent until it is stored (module docstring)
        elif new_start and start_at is not None:
            self._chunk_started(start_at, self.progress.state, f"loading chunk {chunks + 1}")
        elif now >= self.due + CHUNK_START_SLACK_S:
            detail = f"chunk {chunks + 1} due: MonitorLiveData loads it"
            self._chunk_started(self.due, self.progress.state, detail)
        elif now - self.reported_at >= HEARTBEAT_INTERVAL_S / 2:
            since = now - (chunk_at if chunk_at is not None else now)
            detail = f"waiting for chunk {chunks + 1} ({since:.0f} s since the last)"
            self._send(now, self.progress.state, detail)

    def _chunk_started(self, at: float, state: WorkerState, detail: str) -> None:
        """Mantid started a chunk (or retries one) at monotonic ``at``: one report naming
        LoadLiveData, then silence until it is stored."""
        self.chunk_since = at
        since_wall = time.time() - (self.clock() - at)
        self.progress = self.progress.with_(in_script=MANTID_CHUNK, in_script_since=since_wall)
        self._send(self.clock(), state, detail)

    def _ended(self, now: float) -> WorkerExit | None:
        """The exit status once StartLiveData or MonitorLiveData has ended, else None."""
        if self.monitor is None:
            return self._start_ended(now)
        if self.monitor.isRunning():
            self.monitor_seen_running = True
            return None
        if self.monitor.isExecuted():
            if self.engine.config.run_transition is RunTransitionBehavior.STOP:
                message = "the run ended and run_transition is Stop: live data monitoring stopped"
                log.info("run_ended: %s", message)
                self.progress = self.progress.with_(in_script="", in_script_since=None)
                self._send(now, WorkerState.RUN_ENDED, message)
                return WorkerExit.STOPPED
            return self._fail("MonitorLiveData ended although run_transition is not Stop")
        error_at = self.tap.error_at
        failed_since_start = error_at is not None and error_at >= self.outcome["ok"]
        if not (self.monitor_seen_running or failed_since_start) and (
            now - self.monitor_since < MONITOR_START_GRACE_S
        ):
            return None
        why = self.tap.last_error or "no error message in Mantid's log"
        return self._fail(f"MonitorLiveData ended with an error: {why}")

    def _start_ended(self, now: float) -> WorkerExit | None:
        """ENGINE_FAILURE once StartLiveData failed; takes MonitorLiveData when it succeeded."""
        if self.thread.is_alive():
            return None
        if "error" in self.outcome:
            return self._fail(f"StartLiveData failed: {self.outcome['error']}")
        self.monitor = self.start.getProperty("MonitorLiveData").value
        self.monitor_since = now
        if self.monitor is None:
            return self._fail("StartLiveData returned no MonitorLiveData (is update_every > 0?)")
        return None

    def _send(self, now: float, state: WorkerState, detail: str) -> None:
        if self.chunk_since is None:
            self.progress = self.progress.with_(in_script="", in_script_since=None)
        self.progress = self.progress.with_(state=state, detail=detail)
        self.reported_at = now
        self.report(self.progress)

    def _fail(self, message: str) -> WorkerExit:
        self.progress = self.progress.with_(in_script="", in_script_since=None)
        return _failed(self.report, self.progress, WorkerExit.ENGINE_FAILURE, message)

    def _stop(self, reason: str) -> WorkerExit:
        wait_s = min(self.engine.config.stop_timeout / 2, CANCEL_WAIT_MAX_S)
        if self.monitor is None and self.thread.is_alive():
            log.info("engine_stopping: %s: cancelling StartLiveData", reason)
            if not _cancel(self.start, "StartLiveData", lambda: not self.thread.is_alive(), wait_s):
                log.warning(
                    "start_still_running: StartLiveData still runs %.1f s after cancel; "
                    "leaving it to the process exit",
                    wait_s,
                )
                return WorkerExit.STOPPED
            if "ok" in self.outcome:
                self.monitor = self.start.getProperty("MonitorLiveData").value
        if self.monitor is not None:
            log.info("engine_stopping: %s: cancelling MonitorLiveData", reason)
            began = time.monotonic()
            if _cancel(
                self.monitor, "MonitorLiveData", lambda: not self.monitor.isRunning(), wait_s
            ):
                log.info(
                    "monitor_stopped: MonitorLiveData stopped %.1f s after cancel",
                    time.monotonic() - began,
                )
            else:
                log.warning(
                    "monitor_still_running: MonitorLiveData still runs %.1f s after cancel; "
                    "leaving it to the process exit (the worker ends without Mantid's exit hook)",
                    wait_s,
                )
        return WorkerExit.STOPPED

    def quiet(self) -> bool:
        """Whether no Mantid algorithm of this session is still running."""
        if self.thread.is_alive():
            return False
        return self.monitor is None or not self.monitor.isRunning()


def from_config(config: Config) -> MantidEngine:
    """The engine the worker runs for ``EngineChoice.MANTID`` (Mantid is imported in ``run``)."""
    return MantidEngine(config)
