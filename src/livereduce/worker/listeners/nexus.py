"""A NeXus event file read in chunks: Mantid's FileEventDataListener (mantid-live-data.md §3.7).

The file's detector banks (NXevent_data groups named ``bank<N>_events``; ADARA's pseudo-banks
``bank_error_events`` and ``bank_unmapped_events`` are left out, as Mantid's LoadEventNexus does)
are read with scippnexus, a range of pulses at a time, and merged pulse by pulse into one chunk.
Event monitors (NXmonitor groups with events) come along in ``Chunk.monitors``, DASlogs in
``Chunk.logs``. The run (number, title, start time, instrument, experiment, IDF) comes from the
file. The first chunk begins the run, the last one ends it; after that :meth:`extract_data`
raises NotYet saying the file is finished, so the engine stays up and waits.

``listener_options``: ``chunks`` (split the file into this many chunks of equal pulse counts,
one per extraction) and/or ``speed`` (release pulses as their time comes, ``speed`` times faster
than real time; with ``chunks`` as well, no chunk holds more than 1/``chunks`` of the pulses).
Neither: ``speed`` 1. ``start_from`` is ignored: a file is always read from its first pulse.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np
import scipp as sc
import scippnexus as snx

from livereduce.config import Config, ConfigError, StartFrom
from livereduce.nexus_values import decode_text, detector_banks, iso_to_unix_ns, times_ns
from livereduce.worker.listeners.base import (
    Chunk,
    ListenerBase,
    ListenerError,
    NotYet,
    RunInfo,
    empty_events,
    unit_or_none,
)


def _text(group: h5py.Group, name: str) -> str:
    if name not in group:
        return ""
    return decode_text(group[name][()])


class NexusListener(ListenerBase):
    """Streams one NeXus event file (``path``) in chunks; see the module docstring.

    ``clock`` is a monotonic clock in seconds (injected by tests). Raises ListenerError from
    :meth:`start` when the file cannot be read or holds no detector banks.
    """

    def __init__(
        self,
        path: Path,
        *,
        chunks: int = 0,
        speed: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = f"nexus {path}"
        self._path = Path(path)
        self._chunks = int(chunks)
        self._speed = float(speed) if speed or chunks else 1.0
        self._clock = clock
        self._file: snx.File | None = None
        self._banks: list[snx.Group] = []
        self._monitors: dict[str, snx.Group] = {}
        self._logs: dict[str, tuple[np.ndarray, sc.DataArray]] = {}
        self._pulse_offset_s = np.empty(0)
        self._run: RunInfo | None = None
        self._next = 0
        self._started_at = 0.0
        self._event_total = 0

    def start(self, start_from: StartFrom) -> None:
        """Open the file and read its run information and logs."""
        del start_from
        try:
            self._open()
        except (OSError, KeyError, ValueError, IndexError) as error:
            self.close()
            raise ListenerError(f"cannot read NeXus event file {self._path}: {error}") from error
        self._next = 0
        self._started_at = self._clock()

    def _open(self) -> None:
        with h5py.File(self._path, "r") as h5:
            entry_name = next(
                (k for k in h5 if h5[k].attrs.get("NX_class") in (b"NXentry", "NXentry")), None
            )
            if entry_name is None:
                raise ValueError("no NXentry group")
            entry = h5[entry_name]
            bank_names = detector_banks(entry)
            if not bank_names:
                raise ValueError(f"no detector bank (bank<N>_events) in /{entry_name}")
            times = entry[bank_names[0]]["event_time_zero"]
            pulse_ns = times_ns(times, _text(entry, "start_time"))
            pulse_s = np.asarray(times[()], dtype=np.float64)
            for name in bank_names[1:]:
                if not np.array_equal(entry[name]["event_time_zero"][()], pulse_s):
                    raise ValueError(
                        f"/{entry_name}/{name} has other pulses than {bank_names[0]}: "
                        "banks are merged pulse by pulse"
                    )
            monitor_names = [
                k
                for k in entry
                if entry[k].attrs.get("NX_class") in (b"NXmonitor", "NXmonitor")
                and "event_time_zero" in entry[k]
            ]
            start = _text(entry, "start_time")
            run_text = _text(entry, "run_number")
            self._run = RunInfo(
                number=int(run_text) if run_text.strip().isdigit() else 0,
                title=_text(entry, "title"),
                start_time=datetime.fromtimestamp(iso_to_unix_ns(start) / 1e9, tz=UTC)
                if start
                else None,
                instrument=_text(entry["instrument"], "name") if "instrument" in entry else "",
                experiment=_text(entry, "experiment_identifier"),
                geometry_xml=_text(entry["instrument"]["instrument_xml"], "data")
                if "instrument" in entry and "instrument_xml" in entry["instrument"]
                else "",
            )
            self._logs = _read_logs(entry["DASlogs"], start) if "DASlogs" in entry else {}
        # Pulse times can step backward in real files; release by the latest time seen so far.
        self._pulse_offset_s = (
            np.maximum.accumulate(pulse_s - pulse_s[0]) if pulse_s.size else pulse_s
        )
        self._pulse_ns = pulse_ns
        self._file = snx.File(self._path, "r")
        entry_group = self._file[entry_name]
        self._banks = [entry_group[name] for name in bank_names]
        self._monitors = {name: entry_group[name] for name in monitor_names}

    def _stop_pulse(self) -> int:
        total = len(self._pulse_offset_s)
        stop = total
        if self._speed:
            elapsed = (self._clock() - self._started_at) * self._speed
            stop = int(np.searchsorted(self._pulse_offset_s, elapsed, side="right"))
        if self._chunks:
            stop = min(stop, self._next + math.ceil(total / self._chunks))
        return max(stop, self._next)

    def extract_data(self) -> Chunk:
        """The next pulses of the file. Raises NotYet before start and after the last chunk."""
        if self._file is None or self._run is None:
            raise NotYet(f"the NeXus file {self._path} is not open")
        total = len(self._pulse_offset_s)
        if self._next >= total and self._next > 0:
            raise NotYet(
                f"the NeXus file {self._path} has been read completely "
                f"({self._event_total} events in {total} pulses); no more data"
            )
        first, stop = self._next, self._stop_pulse()
        events = self._read_events(first, stop)
        monitors = {
            name: self._read_monitor(group, first, stop) for name, group in self._monitors.items()
        }
        chunk = Chunk(
            events=events,
            monitors=monitors,
            logs=self._logs_between(first, stop),
            run=self._run,
            begins_run=first == 0 and (stop > first or total == 0),
            ends_run=stop >= total,
        )
        self._next = stop if total else 1
        self._event_total += chunk.event_count
        return chunk

    def _read_events(self, first: int, stop: int) -> sc.DataArray:
        if stop <= first:
            return empty_events()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # unit spellings scippnexus does not know
            parts = [bank["event_time_zero", first:stop] for bank in self._banks]
        if len(parts) == 1:
            return _events(parts[0]).copy()
        # Every bank has the same pulses (checked at start): merge the event lists pulse by pulse.
        merged = sc.concat([_events(part) for part in parts], "bank")
        return _events(merged).bins.concat("bank")

    def _read_monitor(self, group: snx.Group, first: int, stop: int) -> sc.DataArray:
        if stop <= first:
            return empty_events()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            loaded = group["event_time_zero", first:stop]
        return _events(loaded["events"] if isinstance(loaded, sc.DataGroup) else loaded)

    def _logs_between(self, first: int, stop: int) -> dict[str, sc.DataArray]:
        total = len(self._pulse_ns)
        low = -(1 << 62) if first == 0 else self._pulse_ns[min(first, total - 1)]
        high = 1 << 62 if stop >= total else self._pulse_ns[stop]
        out = {}
        for name, (log_ns, log) in self._logs.items():
            keep = (log_ns >= low) & (log_ns < high)
            if keep.any():
                out[name] = log[sc.array(dims=["time"], values=keep)] if not keep.all() else log
        return out

    def close(self) -> None:
        """Close the file. Safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._banks = []
        self._monitors = {}


def _events(loaded: object) -> sc.DataArray:
    """What scippnexus loaded from an NXevent_data / NXmonitor group: binned events, a
    DataArray; ListenerError when the file holds something else there."""
    if not isinstance(loaded, sc.DataArray) or loaded.bins is None:
        raise ListenerError(f"expected event data, got {type(loaded).__name__}")
    return loaded


def _text_attr(dataset: h5py.Dataset, name: str) -> str:
    raw = dataset.attrs.get(name)
    return "" if raw is None else decode_text(raw)


def _read_logs(group: h5py.Group, start: str) -> dict[str, tuple[np.ndarray, sc.DataArray]]:
    """DASlogs as name -> (Unix ns per entry, DataArray over ``time``; times without an offset
    count from the run's ``start``); logs whose time and value do not line up are left out
    (they are not time series)."""
    logs = {}
    for name, log in group.items():
        if not isinstance(log, h5py.Group) or "time" not in log or "value" not in log:
            continue
        times, values = log["time"], log["value"]
        if values.shape[:1] != times.shape or values.ndim > 2:
            continue
        try:
            log_ns = times_ns(times, start)
        except ValueError:
            continue
        raw = values[()]
        dims = ["time"] if raw.ndim == 1 else ["time", "value_index"]
        if raw.dtype.kind in "SO":
            if raw.ndim != 1:
                continue
            data = sc.array(dims=dims, values=[decode_text(v) for v in raw])
        else:
            data = sc.array(
                dims=dims, values=_scipp_dtype(raw), unit=unit_or_none(_text_attr(values, "units"))
            )
        logs[name] = (
            log_ns,
            sc.DataArray(
                data,
                coords={
                    "time": sc.array(
                        dims=["time"], values=log_ns.astype("datetime64[ns]"), unit="ns"
                    )
                },
            ),
        )
    return logs


def _scipp_dtype(raw: np.ndarray) -> np.ndarray:
    if raw.dtype.kind in "ui" and raw.dtype != np.int32:
        return raw.astype(np.int64)
    if raw.dtype.kind == "f" and raw.dtype not in (np.float32, np.float64):
        return raw.astype(np.float64)
    return raw


def from_config(config: Config) -> NexusListener:
    """The NeXus listener for the file named by ``config.address``; raises ConfigError when the
    file does not exist."""
    path = Path(config.address)
    if not path.is_file():
        raise ConfigError(config.path, "address", f"NeXus event file {path} does not exist")
    options = config.listener_options
    return NexusListener(
        path, chunks=int(options.get("chunks", 0)), speed=float(options.get("speed", 0.0))
    )
