"""An SNS NeXus event file read into what the replay server streams: one run, pulse by pulse.

The file layout is the one SNS's translation service writes (checked on HYSPEC 2017 and
REF_L 2021 runs): ``entry/bank<N>_events`` NXevent_data groups (``event_id`` u32,
``event_time_offset`` f32 µs, ``event_time_zero`` f64 s from an ``offset``, ``event_index``),
``entry/bank_error_events`` / ``entry/bank_unmapped_events`` (ADARA's pseudo-banks
0xFFFFFFFE / 0xFFFFFFFF), ``entry/monitor<N>`` NXmonitor event groups, ``entry/DASlogs`` NXlog
groups (``time``/``value``, ``device_id``/``device_name`` for PVs), ``entry/instrument/
instrument_xml/data`` (the Mantid IDF), ``entry/run_number``, ``title``, ``start_time``,
``experiment_identifier``.

Pulses keep the file's order: that is the order the SMS recorded them in. Real files are
untidy (REF_L_184977 has pulse times that step backward and one time shared by five pulses);
every pulse stays a pulse of its own, so no event is lost, merged or duplicated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from livereduce.nexus_values import BANK_NAME as _BANK_NAME
from livereduce.nexus_values import decode_text as _decode
from livereduce.nexus_values import iso_to_unix_ns, times_ns

ERROR_BANK_ID = 0xFFFFFFFE
"""ADARA bank ID of events whose pixel has the error bit (ADARA doc/design, banked events)."""
UNMAPPED_BANK_ID = 0xFFFFFFFF
"""ADARA bank ID of events whose pixel is not in the pixel mapping table."""

_PSEUDO_BANKS = {"bank_error_events": ERROR_BANK_ID, "bank_unmapped_events": UNMAPPED_BANK_ID}
_MONITOR_NAME = re.compile(r"monitor(\d+)")


class RunFileError(Exception):
    """The file is not an SNS event file the replay can stream; the message names the file,
    the HDF5 path and what is wrong."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EventGroup:
    """Events of one bank or monitor, ordered by pulse.

    ``ident``: ADARA bank ID or monitor ID. ``pulse_begin``: (P+1,) int64, the events of pulse
    ``i`` are ``[pulse_begin[i], pulse_begin[i+1])``. ``event_id``: (N,) uint32 pixel IDs
    (zeros for monitors). ``tof_100ns``: (N,) uint32 time of flight in ADARA's 100 ns units.
    """

    name: str
    ident: int
    pulse_begin: np.ndarray
    event_id: np.ndarray
    tof_100ns: np.ndarray

    @property
    def event_count(self) -> int:
        """Number of events N."""
        return len(self.tof_100ns)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSeries:
    """One DASlog as a PV of a device: ``kind`` is the ADARA device descriptor ``pv_type``
    (``double``, ``integer`` (signed 32 bit), ``unsigned integer``, ``string``);
    ``times_ns``: (M,) int64 Unix ns in file order; ``values``: (M,) float64, int64 or
    object (str)."""

    name: str
    device_id: int
    device_name: str
    variable_id: int
    kind: str
    units: str
    times_ns: np.ndarray
    values: np.ndarray


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFile:
    """A run read from an SNS NeXus event file.

    ``pulse_times_ns``: (P,) int64 Unix ns in file order; ``proton_charge_pc``: (P,) float64 pC
    per pulse; ``banks``/``monitors``: :class:`EventGroup` per bank / monitor, all over the same
    P pulses; ``logs``: every DASlog with ``time`` and ``value`` except ``proton_charge``
    (streamed as the pulse charge of the banked event packets).
    """

    path: Path
    run_number: int
    title: str
    experiment: str
    start_time_ns: int
    instrument_name: str
    short_name: str
    beamline: str
    target_station: int
    instrument_xml: str = field(repr=False)
    pulse_times_ns: np.ndarray = field(repr=False)
    proton_charge_pc: np.ndarray = field(repr=False)
    banks: tuple[EventGroup, ...] = field(repr=False)
    monitors: tuple[EventGroup, ...] = field(repr=False)
    logs: tuple[LogSeries, ...] = field(repr=False)

    @property
    def pulse_count(self) -> int:
        """Number of pulses P."""
        return len(self.pulse_times_ns)

    @property
    def detector_event_count(self) -> int:
        """Events in the real banks (not the error / unmapped pseudo-banks)."""
        return sum(b.event_count for b in self.banks if b.ident < ERROR_BANK_ID)


def read_run_file(path: str | Path) -> RunFile:
    """Read ``path`` (see the module docstring for the layout). Raises RunFileError naming the
    file and the HDF5 path when a required part is missing or inconsistent."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as h5:
            return _read(path, h5)
    except OSError as exc:
        raise RunFileError(f"{path}: cannot read as HDF5: {exc}") from exc


def _read(path: Path, h5: h5py.File) -> RunFile:
    entry = _group(path, h5, "entry")
    event_groups = sorted(
        (name for name in entry if _BANK_NAME.fullmatch(name) or name in _PSEUDO_BANKS),
        key=_bank_sort_key,
    )
    if not event_groups:
        raise RunFileError(f"{path}: /entry has no bank<N>_events group")
    first = entry[event_groups[0]]
    if not isinstance(first.get("event_time_zero"), h5py.Dataset):
        raise RunFileError(f"{path}: {first.name} has no event_time_zero")
    pulses_ns = _times_ns(path, first["event_time_zero"])
    banks = tuple(_event_group(path, entry, name, pulses_ns) for name in event_groups)
    monitors = tuple(
        _event_group(path, entry, name, pulses_ns)
        for name in sorted(entry, key=_bank_sort_key)
        if _MONITOR_NAME.fullmatch(name) and "event_time_offset" in entry[name]
    )
    instrument = _group(path, entry, "instrument")
    name_ds = instrument.get("name")
    return RunFile(
        path=path,
        run_number=_run_number(path, entry),
        title=_text(path, entry, "title", ""),
        experiment=_text(path, entry, "experiment_identifier", ""),
        start_time_ns=_start_time_ns(path, entry, pulses_ns),
        instrument_name=_text(path, instrument, "name"),
        short_name=_decode(name_ds.attrs.get("short_name", b"")) if name_ds is not None else "",
        beamline=_text(path, instrument, "beamline", ""),
        target_station=int(np.ravel(instrument["target_station_number"][()])[0])
        if "target_station_number" in instrument
        else 1,
        instrument_xml=_text(path, instrument, "instrument_xml/data", ""),
        pulse_times_ns=pulses_ns,
        proton_charge_pc=_proton_charge(entry, pulses_ns),
        banks=banks,
        monitors=monitors,
        logs=_logs(path, entry),
    )


def _run_number(path: Path, entry: h5py.Group) -> int:
    text = _text(path, entry, "run_number")
    if not text.strip().isdigit():
        raise RunFileError(f"{path}: /entry/run_number {text!r} is not a run number")
    return int(text)


def _bank_sort_key(name: str) -> tuple[int, str]:
    match = _BANK_NAME.fullmatch(name) or _MONITOR_NAME.fullmatch(name)
    return (int(match.group(1)) if match else 1 << 33, name)


def _group(path: Path, parent: h5py.Group, name: str) -> h5py.Group:
    item = parent.get(name)
    if not isinstance(item, h5py.Group):
        raise RunFileError(f"{path}: {parent.name.rstrip('/')}/{name} is missing")
    return item


_REQUIRED = object()


def _text(path: Path, group: h5py.Group, name: str, default: object = _REQUIRED) -> str:
    item = group.get(name)
    if not isinstance(item, h5py.Dataset):
        if default is _REQUIRED:
            raise RunFileError(f"{path}: {group.name}/{name} is missing")
        return str(default)
    return _decode(item[()])


def _times_ns(path: Path, dataset: h5py.Dataset) -> np.ndarray:
    """:func:`livereduce.nexus_values.times_ns`, its errors as RunFileError naming the file."""
    try:
        return times_ns(dataset)
    except ValueError as exc:
        raise RunFileError(f"{path}: {exc}") from None


def _event_group(path: Path, entry: h5py.Group, name: str, pulses_ns: np.ndarray) -> EventGroup:
    group = entry[name]
    where = f"{path}: {group.name}"
    for key in ("event_index", "event_time_offset", "event_time_zero"):
        if key not in group:
            raise RunFileError(f"{where} has no {key}")
    zero = _times_ns(path, group["event_time_zero"])
    if not np.array_equal(zero, pulses_ns):
        raise RunFileError(f"{where}/event_time_zero differs from the other banks' pulses")
    tof_us = np.asarray(group["event_time_offset"][()], dtype=np.float64)
    index = np.asarray(group["event_index"][()], dtype=np.int64)
    if len(index) != len(zero) or (len(index) and index[0] != 0):
        raise RunFileError(f"{where}/event_index has {len(index)} entries for {len(zero)} pulses")
    if np.any(np.diff(index) < 0) or (len(index) and index[-1] > len(tof_us)):
        raise RunFileError(f"{where}/event_index is not an increasing index into the events")
    if "event_id" in group:
        event_id = np.asarray(group["event_id"][()], dtype=np.uint32)
    else:
        event_id = np.zeros(len(tof_us), dtype=np.uint32)
    if len(event_id) != len(tof_us):
        raise RunFileError(f"{where}: {len(event_id)} event_id for {len(tof_us)} event_time_offset")
    match = _BANK_NAME.fullmatch(name) or _MONITOR_NAME.fullmatch(name)
    ident = int(match.group(1)) if match else _PSEUDO_BANKS[name]
    return EventGroup(
        name=name,
        ident=ident,
        pulse_begin=np.append(index, len(tof_us)),
        event_id=event_id,
        # the translation service wrote tof_100ns / 10 as float32, so this is exact
        tof_100ns=np.rint(tof_us * 10.0).astype(np.uint32),
    )


def _start_time_ns(path: Path, entry: h5py.Group, pulses_ns: np.ndarray) -> int:
    text = _text(path, entry, "start_time", "")
    if text:
        try:
            return iso_to_unix_ns(text)
        except ValueError as exc:
            raise RunFileError(f"{path}: /entry/start_time {text!r} is not a time") from exc
    return int(pulses_ns.min()) if len(pulses_ns) else 0


def _proton_charge(entry: h5py.Group, pulses_ns: np.ndarray) -> np.ndarray:
    log = entry.get("DASlogs/proton_charge")
    if isinstance(log, h5py.Group) and "value" in log and len(log["value"]) == len(pulses_ns):
        return np.asarray(log["value"][()], dtype=np.float64)
    return np.zeros(len(pulses_ns), dtype=np.float64)


def _logs(path: Path, entry: h5py.Group) -> tuple[LogSeries, ...]:
    daslogs = entry.get("DASlogs")
    if not isinstance(daslogs, h5py.Group):
        return ()
    found: list[tuple[int, str, str, h5py.Group]] = []
    for name in sorted(daslogs):
        group = daslogs[name]
        if name == "proton_charge" or not isinstance(group, h5py.Group):
            continue
        if not isinstance(group.get("time"), h5py.Dataset) or "value" not in group:
            continue
        device_id = int(np.ravel(group["device_id"][()])[0]) if "device_id" in group else 0
        device_name = _decode(group["device_name"][()]) if "device_name" in group else ""
        found.append((device_id, device_name, name, group))
    # logs the DAS made itself (frequency, pause, ...) get a device of their own after the PVs
    own_device = max((d for d, *_ in found), default=0) + 1
    next_variable: dict[int, int] = {}
    logs = []
    for device_id, device_name, name, group in found:
        series = _log_series(path, group)
        if series is None:
            continue
        dev = device_id or own_device
        next_variable[dev] = next_variable.get(dev, 0) + 1
        logs.append(
            LogSeries(
                name=name,
                device_id=dev,
                device_name=device_name or "livereduce-replay",
                variable_id=next_variable[dev],
                kind=series[0],
                units=series[1],
                times_ns=series[2],
                values=series[3],
            )
        )
    return tuple(logs)


def _log_series(path: Path, group: h5py.Group) -> tuple[str, str, np.ndarray, np.ndarray] | None:
    raw = group["value"][()]
    times = _times_ns(path, group["time"])
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1 or len(raw) != len(times):
        return None
    units = _decode(group["value"].attrs.get("units", b""))
    kind_char = raw.dtype.kind
    if kind_char == "f":
        return "double", units, times, raw.astype(np.float64)
    if kind_char == "i":
        return "integer", units, times, raw.astype(np.int64)
    if kind_char in "ub":
        return "unsigned integer", units, times, raw.astype(np.int64)
    if kind_char in "SUO":
        return "string", units, times, np.array([_decode(v) for v in raw], dtype=object)
    return None
