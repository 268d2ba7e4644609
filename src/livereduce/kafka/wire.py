"""The ESS streaming formats livereduce reads and writes, decoded at the boundary.

Every Kafka message value is one flatbuffer whose file identifier (bytes 4..8) names its schema
(ess-dmsc/streaming-data-types, read and written with the PyPI package
ess-streaming-data-types). The ones used here:

========  ===============================================================================
``ev44``  detector events: ``reference_time`` (int64 Unix ns, one per pulse),
          ``reference_time_index`` (int32, index of each pulse's first event),
          ``time_of_flight`` (int32 ns), ``pixel_id`` (int32)
``ev42``  the older event message: one ``pulse_time`` (uint64 Unix ns),
          ``time_of_flight`` (uint32 ns), ``detector_id`` (uint32)
``f144``  one sample-environment value: ``source_name`` (the log name), ``value`` (a scalar or
          an array), ``timestamp`` (int64 Unix ns)
``pl72``  run start: ``run_name`` (the run number as text), ``start_time`` (uint64 Unix **ms**),
          ``instrument_name``, ``job_id``, ``metadata``
``6s4t``  run stop: ``run_name``, ``job_id``, ``stop_time`` (uint64 Unix **ms**)
========  ===============================================================================

:func:`decode` turns a message value into a frozen dataclass with times in Unix ns and time of
flight in µs, as the rest of livereduce uses them. A value that is not one of these schemas
raises :class:`IgnoredMessage` (a known schema livereduce does not use, or an unknown one:
dropped and counted), a value that claims a schema but does not parse raises
:class:`MalformedMessage` (logged and counted). Neither stops the listener.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike
from streaming_data_types import (
    eventdata_ev42,
    eventdata_ev44,
    logdata_f144,
    run_start_pl72,
    run_stop_6s4t,
)

NS_PER_MS = 1_000_000
_LAST_DIGITS = re.compile(r"\d+(?=\D*$)")
NS_PER_US = 1_000


class IgnoredMessage(Exception):
    """A message of a schema livereduce does not read on that topic; dropped and counted."""


class MalformedMessage(Exception):
    """A message that names a schema it does not follow; the message says which and why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EventMessage:
    """Detector events of one or more pulses (ev44, or ev42 with one pulse).

    ``reference_time_ns``: (P,) int64 Unix ns per pulse; ``pulse_event_counts``: (P,) int64;
    ``event_id``: (N,) int32 pixel IDs; ``event_time_offset_us``: (N,) float32 µs, with N the
    sum of the counts, events ordered by pulse.
    """

    source_name: str
    message_id: int
    reference_time_ns: np.ndarray = field(repr=False)
    pulse_event_counts: np.ndarray = field(repr=False)
    event_id: np.ndarray = field(repr=False)
    event_time_offset_us: np.ndarray = field(repr=False)

    @property
    def event_count(self) -> int:
        """Number of events in the message."""
        return len(self.event_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogMessage:
    """One f144 value: ``name`` (its source name), ``time_ns`` (Unix ns), ``value``."""

    name: str
    time_ns: int
    value: object = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStart:
    """A pl72: ``run_number`` (the last group of digits in ``run_name``, 0 when it has none:
    result files are named by it), ``run_name`` (what runs are matched by),
    ``start_ns`` (Unix ns, from the ms on the wire), ``instrument``, ``job_id``, ``title`` (from
    the ``metadata`` JSON's ``title`` when there is one)."""

    run_number: int
    run_name: str
    start_ns: int
    instrument: str = ""
    job_id: str = ""
    title: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStop:
    """A 6s4t: the run it ends (``run_name``, ``job_id``) and ``stop_ns`` (Unix ns from ms)."""

    run_name: str
    stop_ns: int
    job_id: str = ""


Message = EventMessage | LogMessage | RunStart | RunStop


def schema_of(value: bytes) -> str:
    """The flatbuffer file identifier of ``value`` (e.g. ``'ev44'``), '' when it has none."""
    if len(value) < 8:
        return ""
    return value[4:8].decode("ascii", errors="replace")


def decode(value: bytes) -> Message:
    """The message ``value`` holds; raises IgnoredMessage or MalformedMessage (module doc)."""
    schema = schema_of(value)
    reader = _DECODERS.get(schema)
    if reader is None:
        raise IgnoredMessage(f"schema {schema!r} is not read by livereduce")
    try:
        return reader(value)
    except (
        ValueError, TypeError, IndexError, AttributeError, KeyError, UnicodeDecodeError,
        struct.error,  # flatbuffers on a truncated buffer
    ) as error:  # fmt: skip
        raise MalformedMessage(
            f"{schema} message of {len(value)} bytes: {type(error).__name__}: {error}"
        ) from None


def _ev44(value: bytes) -> EventMessage:
    data = eventdata_ev44.deserialise_ev44(value)
    pulses = np.asarray(data.reference_time, dtype=np.int64)
    index = np.asarray(data.reference_time_index, dtype=np.int64)
    tof = np.asarray(data.time_of_flight)
    pixel = np.asarray(data.pixel_id)
    if len(pixel) != len(tof):
        raise ValueError(f"{len(pixel)} pixel_id but {len(tof)} time_of_flight")
    if len(pulses) != len(index):
        raise ValueError(f"{len(pulses)} reference_time but {len(index)} reference_time_index")
    if len(pulses) == 0:
        if len(tof):
            raise ValueError(f"{len(tof)} events without a reference_time")
        index = np.zeros(0, dtype=np.int64)
    elif index[0] != 0 or np.any(np.diff(index) < 0) or index[-1] > len(tof):
        raise ValueError("reference_time_index does not start at 0 and rise within the events")
    counts = np.diff(np.append(index, len(tof)))
    return EventMessage(
        source_name=data.source_name,
        message_id=int(data.message_id),
        reference_time_ns=pulses,
        pulse_event_counts=counts,
        event_id=pixel.astype(np.int32, copy=False),
        event_time_offset_us=(tof.astype(np.float64) / NS_PER_US).astype(np.float32),
    )


def _ev42(value: bytes) -> EventMessage:
    data = eventdata_ev42.deserialise_ev42(value)
    tof = np.asarray(data.time_of_flight)
    pixel = np.asarray(data.detector_id)
    if len(pixel) != len(tof):
        raise ValueError(f"{len(pixel)} detector_id but {len(tof)} time_of_flight")
    return EventMessage(
        source_name=data.source_name,
        message_id=int(data.message_id),
        reference_time_ns=np.array([data.pulse_time], dtype=np.int64),
        pulse_event_counts=np.array([len(tof)], dtype=np.int64),
        event_id=pixel.astype(np.int32),
        event_time_offset_us=(tof.astype(np.float64) / NS_PER_US).astype(np.float32),
    )


def _f144(value: bytes) -> LogMessage:
    data = logdata_f144.deserialise_f144(value)
    return LogMessage(name=data.source_name, time_ns=int(data.timestamp_unix_ns), value=data.value)


def _pl72(value: bytes) -> RunStart:
    data = run_start_pl72.deserialise_pl72(value)
    name = data.run_name.strip()
    digits = _LAST_DIGITS.search(name)
    return RunStart(
        run_number=int(digits.group()) if digits else 0,
        run_name=name,
        start_ns=int(data.start_time) * NS_PER_MS,
        instrument=data.instrument_name,
        job_id=data.job_id,
        title=_title(data.metadata),
    )


def _title(metadata: str) -> str:
    try:
        parsed = json.loads(metadata) if metadata else {}
    except json.JSONDecodeError:
        return ""
    return str(parsed.get("title", "")) if isinstance(parsed, dict) else ""


def _6s4t(value: bytes) -> RunStop:
    data = run_stop_6s4t.deserialise_6s4t(value)
    return RunStop(
        run_name=data.run_name.strip(), stop_ns=int(data.stop_time) * NS_PER_MS, job_id=data.job_id
    )


_DECODERS: dict[str, Callable[[bytes], Message]] = {
    "ev44": _ev44,
    "ev42": _ev42,
    "f144": _f144,
    "pl72": _pl72,
    "6s4t": _6s4t,
}


def encode_events(  # noqa: PLR0917 - the ev44 fields in schema order
    source_name: str,
    message_id: int,
    reference_time_ns: ArrayLike,
    reference_time_index: ArrayLike,
    time_of_flight_ns: ArrayLike,
    pixel_id: ArrayLike,
) -> bytes:
    """An ev44 message (arrays as in the module table; int32 ns time of flight)."""
    return eventdata_ev44.serialise_ev44(
        source_name,
        message_id,
        np.asarray(reference_time_ns, dtype=np.int64),
        np.asarray(reference_time_index, dtype=np.int32),
        np.asarray(time_of_flight_ns, dtype=np.int32),
        np.asarray(pixel_id, dtype=np.int32),
    )


def encode_log(name: str, value: object, time_ns: int) -> bytes:
    """An f144 message for one value of log ``name`` at ``time_ns`` (Unix ns)."""
    return logdata_f144.serialise_f144(name, value, time_ns)


def encode_run_start(
    run_number: int, start_ns: int, *, instrument: str = "", title: str = ""
) -> bytes:
    """A pl72 for ``run_number`` starting at ``start_ns`` (floored to the wire's ms)."""
    return run_start_pl72.serialise_pl72(
        job_id=f"livereduce-{run_number}",
        filename=f"{instrument}_{run_number}.nxs",
        start_time=start_ns // NS_PER_MS,
        run_name=str(run_number),
        instrument_name=instrument,
        metadata=json.dumps({"title": title}),
    )


def encode_run_stop(run_number: int, stop_ns: int) -> bytes:
    """A 6s4t ending ``run_number`` at ``stop_ns`` (rounded up to the wire's ms, so an event
    at ``stop_ns - 1`` stays inside the run)."""
    return run_stop_6s4t.serialise_6s4t(
        job_id=f"livereduce-{run_number}",
        run_name=str(run_number),
        stop_time=-(-stop_ns // NS_PER_MS),
    )
