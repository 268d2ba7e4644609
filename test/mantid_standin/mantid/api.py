"""STAND-IN for tests, not Mantid: StartLiveData / MonitorLiveData, the ADS and its observer.

Behaviour follows ../shared/reference/mantid-live-data.md §1-2: StartLiveData validates its
properties, loads the first chunk synchronously, then starts MonitorLiveData in the background,
which replaces the output workspace in the ADS after every chunk. What MonitorLiveData does
after that is scripted by the MANTID_STANDIN_* environment variables (README.md).
"""

from __future__ import annotations

import atexit
import random
import string
import threading
import time
from typing import Any, ClassVar

from mantid import _standin
from mantid.kernel import INSTRUMENTS, ConfigService

if _standin.env_str("EXIT") == "block":
    # Like a Mantid whose at-exit framework shutdown never returns.
    atexit.register(threading.Event().wait)

LISTENERS = (
    "SNSLiveEventDataListener",
    "FakeEventDataListener",
    "FileEventDataListener",
    "ISISHistoDataListener",
    "ISISLiveEventDataListener",
    "KafkaEventListener",
)
CHOICES = {
    "AccumulationMethod": ("Add", "Replace", "Append"),
    "RunTransitionBehavior": ("Restart", "Stop", "Rename"),
}
FILE_PROPERTIES = ("ProcessingScriptFilename", "PostProcessingScriptFilename")
LISTENER_PROPERTIES = {"ISISHistoDataListener": ("PeriodList", "SpectraList")}
"""Dynamic properties StartLiveData copies from its listener (mantid-live-data.md §1)."""


class Workspace:
    """A workspace: its name and the chunk number that produced it."""

    def __init__(self, name: str, chunk: int) -> None:
        self.name = name
        self.chunk = chunk


class AnalysisDataServiceObserver:
    """``mantid.api.AnalysisDataServiceObserver``: subclasses define addHandle/replaceHandle."""

    def __init__(self) -> None:
        self._observing: set[str] = set()

    def _observe(self, kind: str, on: bool) -> None:
        _standin.record(f"AnalysisDataServiceObserver.observe{kind}", on=on)
        if on:
            self._observing.add(kind)
        else:
            self._observing.discard(kind)
        AnalysisDataService._observers_changed(self)

    def observeAdd(self, on: bool) -> None:
        self._observe("Add", on)

    def observeReplace(self, on: bool) -> None:
        self._observe("Replace", on)


class _AnalysisDataService:
    """``mantid.api.AnalysisDataService`` (the singleton): named workspaces; observers are
    called synchronously in the thread that adds or replaces, as Poco notifications are."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._workspaces: dict[str, Workspace] = {}
        self._observers: list[AnalysisDataServiceObserver] = []

    def _observers_changed(self, observer: AnalysisDataServiceObserver) -> None:
        with self._lock:
            if observer._observing and observer not in self._observers:
                self._observers.append(observer)
            elif not observer._observing and observer in self._observers:
                self._observers.remove(observer)

    def unique_name(self, n: int = 5, prefix: str = "", suffix: str = "") -> str:
        _standin.record("AnalysisDataService.unique_name", n=n, prefix=prefix, suffix=suffix)
        while True:
            name = prefix + "".join(random.choices(string.ascii_lowercase, k=n)) + suffix
            if name not in self._workspaces:
                return name

    def add_or_replace(self, name: str, workspace: Workspace) -> None:
        """What LoadLiveData's output store does (unrecorded: Mantid does it, not the engine)."""
        with self._lock:
            kind = "Replace" if name in self._workspaces else "Add"
            self._workspaces[name] = workspace
            observers = [o for o in self._observers if kind in o._observing]
        for observer in observers:
            handler = getattr(observer, f"{kind.lower()}Handle", None)
            if handler is not None:
                handler(name, workspace)


AnalysisDataService = _AnalysisDataService()


class _Property:
    def __init__(self, value: Any) -> None:
        self.value = value


def _cancel_later(cancelled: threading.Event) -> None:
    """What ``cancel()`` does: at once, never ($MANTID_STANDIN_CANCEL=block) or after
    $MANTID_STANDIN_CANCEL_S (a cancel that takes effect only at a late interruption point)."""
    if _standin.env_str("CANCEL") == "block":
        threading.Event().wait()
    delay = _standin.env_float("CANCEL_S")
    if not delay:
        cancelled.set()
        return
    timer = threading.Timer(_standin.seconds(delay), cancelled.set)
    timer.daemon = True
    timer.start()


class MonitorLiveData:
    """The background loop: replaces the output workspace every chunk, as scripted. Chunks
    start ``UpdateEvery`` apart, start to start, as in Mantid (mantid-live-data.md §2.4)."""

    def __init__(self, properties: dict[str, Any]) -> None:
        self._properties = properties
        self._cancelled = threading.Event()
        self._start_s = _standin.env_float("START_S") or 0.0
        # starting (not yet isRunning: the start-up window) | running | executed | failed
        self._state = "starting" if self._start_s else "running"
        interval = _standin.env_float("CHUNK_EVERY_S")
        self._interval_s = _standin.seconds(
            interval if interval is not None else float(properties["UpdateEvery"])
        )
        self._chunk_s = _standin.seconds(_standin.env_float("CHUNK_S") or 0.0)
        self._thread = threading.Thread(target=self._loop, name="MonitorLiveData", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def isRunning(self) -> bool:
        _standin.record("MonitorLiveData.isRunning")
        return self._state == "running"

    def isExecuted(self) -> bool:
        _standin.record("MonitorLiveData.isExecuted")
        return self._state == "executed"

    def cancel(self) -> None:
        _standin.record("MonitorLiveData.cancel")
        _cancel_later(self._cancelled)

    def _loop(self) -> None:
        if self._start_s:
            time.sleep(_standin.seconds(self._start_s))
            self._state = "running"
        limit = _standin.env_float("UPDATES")
        fail_after = _standin.env_float("FAIL_AFTER")
        end_run_after = _standin.env_float("END_RUN_AFTER")
        output = self._properties["OutputWorkspace"]
        updates = 0  # chunks loaded by this loop; StartLiveData loaded the one before
        last = time.monotonic()
        while not self._cancelled.wait(max(last + self._interval_s - time.monotonic(), 0.0)):
            last = time.monotonic()
            if limit is not None and updates >= limit:
                continue  # stalled: alive, but no chunk ever completes
            updates += 1
            _standin.log("notice", "MonitorLiveData", f"Loading live data chunk {updates}")
            if self._chunk_s:
                time.sleep(self._chunk_s)  # a slow chunk: a script is no interruption point
            if fail_after is not None and updates >= fail_after:
                message = _standin.env_str("FAIL_MESSAGE") or (
                    "ValueError: stand-in processing script raised on chunk "
                    f"{updates} (reduce_live_proc.py, line 3)"
                )
                _standin.log(
                    "error",
                    "MonitorLiveData",
                    f"Error in execution of algorithm MonitorLiveData:\n{message}",
                )
                self._state = "failed"
                return
            AnalysisDataService.add_or_replace(output, Workspace(output, updates + 1))
            if end_run_after is not None and updates >= end_run_after:
                _standin.log("notice", "MonitorLiveData", "Run #1234 ended.")
                if self._properties.get("RunTransitionBehavior") == "Stop":
                    _standin.log("notice", "MonitorLiveData", "Stopping live data monitoring.")
                    self._state = "executed"
                    return
        _standin.log("warning", "MonitorLiveData", "MonitorLiveData: Execution cancelled by user.")
        self._state = "failed"


class StartLiveData:
    """StartLiveData-v1: properties as declared by Mantid, validated the same way."""

    _BASE: ClassVar[dict[str, Any]] = {
        "Instrument": "", "Connection": "", "Listener": "", "Address": "", "StartTime": "",
        "ProcessingAlgorithm": "", "ProcessingProperties": "", "ProcessingScript": "",
        "ProcessingScriptFilename": "", "AccumulationMethod": "Add", "PreserveEvents": False,
        "PostProcessingAlgorithm": "", "PostProcessingProperties": "", "PostProcessingScript": "",
        "PostProcessingScriptFilename": "", "RunTransitionBehavior": "Restart",
        "AccumulationWorkspace": "", "OutputWorkspace": "", "LastTimeStamp": "",
        "FromNow": True, "FromStartOfRun": False, "FromTime": False, "UpdateEvery": 30.0,
        "MonitorLiveData": None,
    }  # fmt: skip

    def __init__(self) -> None:
        self._values: dict[str, Any] = dict(self._BASE)
        self._set: dict[str, Any] = {}
        self._cancelled = threading.Event()

    def __contains__(self, name: str) -> bool:
        _standin.record("StartLiveData.__contains__", name=name)
        return name in self._values

    def setRethrows(self, rethrows: bool) -> None:
        _standin.record("StartLiveData.setRethrows", rethrows=rethrows)

    def _listener(self) -> str:
        if self._values["Listener"]:
            return self._values["Listener"]
        for info in INSTRUMENTS:
            if info.name() == self._values["Instrument"]:
                return info.listener
        return ""

    def setProperty(self, name: str, value: Any) -> None:
        _standin.record("StartLiveData.setProperty", name=name, value=value)
        if name not in self._values:
            raise RuntimeError(f"Unknown property search object {name}")
        self._check(name, value)
        self._values[name] = value
        self._set[name] = value
        if name in ("Instrument", "Listener"):
            for dynamic in ("PeriodList", "SpectraList"):
                self._values.pop(dynamic, None)
            for dynamic in LISTENER_PROPERTIES.get(self._listener(), ()):
                self._values[dynamic] = []

    def _check(self, name: str, value: Any) -> None:
        expected = self._BASE.get(name, [])
        if isinstance(expected, bool) and not isinstance(value, bool):
            raise ValueError(f"{name}: expected a bool, got {value!r}")
        if name == "UpdateEvery" and (
            isinstance(value, bool) or not isinstance(value, int | float)
        ):
            raise ValueError(f"UpdateEvery: expected a number, got {value!r}")
        if name in CHOICES and value not in CHOICES[name]:
            raise ValueError(f"The value '{value}' is not in the list of allowed values")
        if name == "Instrument":
            facility = ConfigService.get("default.facility")
            allowed = [i.name() for i in INSTRUMENTS if i.facility().name() == facility]
            if value not in allowed:
                raise ValueError(f"The value '{value}' is not in the list of allowed values")
        if name == "Listener" and value not in ("", *LISTENERS):
            raise ValueError(f"The value '{value}' is not in the list of allowed values")
        if name in FILE_PROPERTIES and value:
            try:
                open(value, encoding="utf-8").close()
            except OSError:
                raise ValueError(f'File "{value}" not found') from None
        if name in ("PeriodList", "SpectraList") and not (
            isinstance(value, list) and all(isinstance(v, int) for v in value)
        ):
            raise ValueError(f"{name}: expected a list of integers, got {value!r}")

    def getProperty(self, name: str) -> _Property:
        _standin.record("StartLiveData.getProperty", name=name)
        return _Property(self._values[name])

    def cancel(self) -> None:
        _standin.record("StartLiveData.cancel")
        _cancel_later(self._cancelled)

    def execute(self) -> bool:
        _standin.record("StartLiveData.execute", properties=self._set)
        try:
            self._execute()
        except RuntimeError as error:
            _standin.log(
                "error", "StartLiveData", f"Error in execution of algorithm StartLiveData:\n{error}"
            )
            raise
        return True

    def _execute(self) -> None:
        values = self._values
        if sum(bool(values[k]) for k in ("FromNow", "FromStartOfRun", "FromTime")) != 1:
            raise RuntimeError("Please check exactly one of FromNow, FromStartOfRun, FromTime.")
        if not values["OutputWorkspace"]:
            raise RuntimeError("Invalid value for OutputWorkspace: must be set")
        if values["PostProcessingScriptFilename"] and values["AccumulationWorkspace"] in (
            "",
            values["OutputWorkspace"],
        ):
            raise RuntimeError("AccumulationWorkspace must be set, and differ from OutputWorkspace")
        failure = _standin.env_str("START_FAIL")
        if failure:
            raise RuntimeError(failure)
        wait_s = _standin.seconds(_standin.env_float("NOT_READY_S") or 0.0)
        every_s = _standin.seconds(_standin.env_float("NOT_READY_EVERY_S") or 1.0)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            _standin.log(
                "warning",
                "LoadLiveData",
                f"The {self._listener()} is not ready to return data: Waiting for a run to start.",
            )
            if self._cancelled.wait(min(every_s, max(deadline - time.monotonic(), 0.0))):
                raise RuntimeError("Algorithm terminated")
        first_chunk_s = _standin.seconds(_standin.env_float("FIRST_CHUNK_S") or 0.0)
        if first_chunk_s and self._cancelled.wait(first_chunk_s):
            raise RuntimeError("Algorithm terminated")
        output = values["OutputWorkspace"]
        if values["PostProcessingScriptFilename"]:
            AnalysisDataService.add_or_replace(
                values["AccumulationWorkspace"], Workspace(values["AccumulationWorkspace"], 1)
            )
        AnalysisDataService.add_or_replace(output, Workspace(output, 1))
        monitor = MonitorLiveData(dict(values))
        values["MonitorLiveData"] = monitor
        monitor.start()
        _standin.log("notice", "StartLiveData", "StartLiveData-v1 successful")


class _AlgorithmManager:
    """``mantid.api.AlgorithmManager``: only ``create`` (no shutdown, no cancelAll, on purpose:
    the engine must not call them)."""

    def create(self, name: str, version: int = -1) -> StartLiveData:
        _standin.record("AlgorithmManager.create", name=name, version=version)
        if name != "StartLiveData":
            raise RuntimeError(f"algorithm {name} is not in the stand-in")
        return StartLiveData()


AlgorithmManager = _AlgorithmManager()
