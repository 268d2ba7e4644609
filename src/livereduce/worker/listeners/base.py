"""The listener contract: where chunks come from.

A listener is Mantid's ILiveListener (mantid-live-data.md §3) reshaped so that no getter mutates
state: :meth:`Listener.extract_data` returns everything that arrived since the previous call as
one :class:`Chunk`, and a chunk never spans two runs. A run that ends inside the interval gives a
chunk with ``ends_run`` set; the data of the next run come in the next call, with
``begins_run`` set. The engine applies the run transition behaviour from those two flags.

Chunks hold events in the layout scippnexus gives for an NXevent_data group: a DataArray
binned over ``event_time_zero`` (one bin per pulse, datetime64 ns), each event with coords
``event_id`` (int32 pixel ID) and ``event_time_offset`` (float32, µs) and data float32 counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

import numpy as np
import scipp as sc

from livereduce.config import StartFrom


class NotYet(Exception):
    """The listener has nothing to give yet (not connected, waiting for a run); the message says
    what it waits for. The engine logs it, reports it and tries again on the next tick.

    ``waiting_for_run``: the listener hears its source and no run is open (else it is still
    connecting), read under the listener's lock when it raised. ``input_counts``: what it left
    out or could not read since the previous chunk, when no chunk carries it (bad bytes outside
    a run: the same kinds as :attr:`Chunk.input_counts`, handed over once).
    """

    def __init__(
        self,
        message: str,
        *,
        waiting_for_run: bool = False,
        input_counts: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.waiting_for_run = waiting_for_run
        self.input_counts: Mapping[str, int] = input_counts or {}


class ListenerError(Exception):
    """The listener cannot go on (e.g. the file is unreadable). The worker exits with
    ``WorkerExit.ENGINE_FAILURE`` and the supervisor restarts it with backoff."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunInfo:
    """What is known of a run: ``number`` (0 = not in a run), ``title``, ``start_time``
    (timezone-aware UTC), ``instrument`` (name as the stream gives it), ``experiment``
    (proposal / experiment identifier), ``geometry_xml`` (the Mantid IDF, may be empty) and
    ``partial``: the listener joined the run after its start, so its data are incomplete (the
    engine keeps such a run's output under a ``_partial`` name, never over a complete one)."""

    number: int
    title: str = ""
    start_time: datetime | None = None
    instrument: str = ""
    experiment: str = ""
    geometry_xml: str = field(default="", repr=False)
    partial: bool = False

    @property
    def start_ns(self) -> int | None:
        """``start_time`` as Unix nanoseconds, None when unknown."""
        if self.start_time is None:
            return None
        return (self.start_time - _UNIX_EPOCH) // timedelta(microseconds=1) * 1000


_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

STREAM_FAULTS = frozenset(
    {"malformed_packets", "framing_losses", "framing_failures", "malformed_messages"}
)
"""Kinds of :attr:`Chunk.input_counts` that are faults of the stream (counted as errors in the
status, besides their own count); the other kinds are data the listener left out by rule
(error or unmapped pixels, paused pulses, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk:
    """Everything a listener received in one interval.

    ``events``: detector events, binned over ``event_time_zero`` (see module docstring).
    ``monitors``: name (e.g. ``monitor2``) -> monitor events in the same layout.
    ``logs``: sample-environment and DAS logs received in the interval, name -> DataArray over
    dim ``time`` (datetime64 ns coord) with the values (unit where the stream gives one);
    ``proton_charge`` is one of them (pC per pulse).
    ``run``: the run the data belong to, None when outside a run.
    ``begins_run`` / ``ends_run``: the first / last chunk of ``run``.
    ``data_reset``: the listener started the current run over (it reconnected and the stream
    replays the run from its first pulse), so this chunk replaces what was accumulated for the
    run instead of adding to it: Mantid's ``dataReset()``, which forces Replace (§2.3 step 8).
    ``input_counts``: what the listener received since the previous chunk but left out or could
    not read, by kind (e.g. ``error_events``, ``out_of_range_events``, ``paused_events``,
    ``malformed_packets``, ``skipped_bytes``; docs/adara.md lists them); kinds in
    :data:`STREAM_FAULTS` are faults.
    ``connected`` / ``activity``: whether the listener's source was connected when the chunk was
    handed over, and what the listener was doing, in words (taken with the chunk, under the
    listener's lock); the engine reports them while a run's data stop coming.
    """

    events: sc.DataArray
    monitors: Mapping[str, sc.DataArray] = field(default_factory=dict)
    logs: Mapping[str, sc.DataArray] = field(default_factory=dict)
    run: RunInfo | None = None
    begins_run: bool = False
    ends_run: bool = False
    data_reset: bool = False
    input_counts: Mapping[str, int] = field(default_factory=dict)
    connected: bool = True
    activity: str = ""

    @property
    def event_count(self) -> int:
        """Number of detector events in the chunk."""
        return int(self.events.bins.size().sum().value) if self.events.bins is not None else 0


@runtime_checkable
class Listener(Protocol):
    """A source of chunks. Implementations: ``adara`` (SNS SMS), ``kafka``, ``fake``,
    ``nexus``; each module ``livereduce.worker.listeners.<kind>`` has ``from_config(config) ->
    Listener``."""

    name: str
    """Listener name for logs, e.g. 'adara bl14b-daq1.sns.gov:31415'. What a listener that talks
    to a server is doing reaches the engine with the data: :attr:`Chunk.connected` and
    :attr:`Chunk.activity`, :attr:`NotYet.waiting_for_run`."""

    def start(self, start_from: StartFrom) -> None:
        """Connect (or open) and begin collecting; from the start of the current run or now.
        Must return promptly: a slow or absent source shows up as NotYet, not as a hang."""

    def extract_data(self) -> Chunk:
        """Everything received since the previous call (possibly an empty chunk).
        Raises NotYet when there is nothing to give yet, ListenerError when it cannot go on."""

    def close(self) -> None:
        """Stop collecting and release sockets, threads and files. Safe to call twice."""

    hands_over_early: bool
    """Whether :attr:`chunk_ready` can ever be true (the engine then polls it)."""

    @property
    def chunk_ready(self) -> bool:
        """A chunk should be taken now, before the next ``update_every`` tick (the listener's
        bounded buffer is filling up, or a run ended)."""

    @property
    def streams(self) -> Mapping[str, Mapping[str, float]]:
        """Per input stream (e.g. a Kafka topic) figures for the status: lag, events/s."""

    def accumulated(self, output: object, chunk: Chunk) -> None:
        """Called by the engine with the output workspace after each processed chunk (the
        Kafka listener in a consumer group publishes it as its partial result)."""


class ListenerBase:
    """What a listener that has no use for the optional members of :class:`Listener` gets:
    chunks only on the engine's tick, no per-stream figures, nothing done after a chunk."""

    hands_over_early = False

    @property
    def chunk_ready(self) -> bool:
        """Never: chunks are taken every ``update_every``."""
        return False

    @property
    def streams(self) -> Mapping[str, Mapping[str, float]]:
        """No per-stream figures."""
        return {}

    def accumulated(self, output: object, chunk: Chunk) -> None:
        """Nothing to do after a chunk."""


def unit_or_none(text: str) -> sc.Unit | None:
    """A log's unit as the stream or file spells it (a PV's ``units``, an NXlog's ``units``
    attribute); None when empty or when scipp does not know the spelling (e.g. 'pixel')."""
    try:
        return sc.Unit(text) if text else None
    except (sc.UnitError, RuntimeError, ValueError):
        return None


def make_events(
    pulse_times_ns: np.ndarray,
    pulse_event_counts: np.ndarray,
    event_id: np.ndarray,
    event_time_offset_us: np.ndarray,
) -> sc.DataArray:
    """Events in the scippnexus NXevent_data layout, without per-event Python loops.

    ``pulse_times_ns``: (P,) int64 Unix ns per pulse; ``pulse_event_counts``: (P,) events per
    pulse; ``event_id``: (N,) pixel IDs; ``event_time_offset_us``: (N,) time of flight in µs,
    with N = sum of the counts and events ordered by pulse. Returns a DataArray of dim
    ``event_time_zero`` (P), binned over dim ``event``. Raises ValueError on mismatched sizes.
    """
    counts = np.asarray(pulse_event_counts, dtype=np.int64)
    n = int(counts.sum())
    if len(event_id) != n or len(event_time_offset_us) != n or len(pulse_times_ns) != len(counts):
        raise ValueError(
            f"inconsistent event arrays: {len(pulse_times_ns)} pulses, {counts.size} counts, "
            f"sum {n}, {len(event_id)} event_id, {len(event_time_offset_us)} event_time_offset"
        )
    begin = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=begin[1:])
    table = sc.DataArray(
        sc.ones(dims=["event"], shape=[n], dtype="float32", unit="counts"),
        coords={
            "event_id": sc.array(
                dims=["event"], values=np.asarray(event_id, dtype=np.int32), unit=None
            ),
            "event_time_offset": sc.array(
                dims=["event"], values=np.asarray(event_time_offset_us, dtype=np.float32), unit="us"
            ),
        },
    )
    return bin_by_pulse(np.asarray(pulse_times_ns, dtype=np.int64), begin, begin + counts, table)


def bin_by_pulse(
    pulse_times_ns: np.ndarray, begin: np.ndarray, end: np.ndarray, table: sc.DataArray
) -> sc.DataArray:
    """The NXevent_data layout of :func:`make_events` around an event table that already
    exists (taken as it is, not copied): ``table`` of dim ``event`` with float32 counts and
    coords ``event_id`` (int32) and ``event_time_offset`` (float32 µs); pulse ``i`` holds events
    ``begin[i]:end[i]`` ((P,) int64 each) and has Unix time ``pulse_times_ns[i]`` ((P,) int64
    ns). Raises scipp's errors on inconsistent sizes or indices."""
    binned = sc.bins(
        begin=sc.array(dims=["event_time_zero"], values=begin, unit=None),
        end=sc.array(dims=["event_time_zero"], values=end, unit=None),
        dim="event",
        data=table,
    )
    return sc.DataArray(
        binned,
        coords={
            "event_time_zero": sc.array(
                dims=["event_time_zero"],
                values=pulse_times_ns.astype("datetime64[ns]", copy=False),
                unit="ns",
            )
        },
    )


def empty_events() -> sc.DataArray:
    """A chunk's events when nothing arrived: zero pulses, same layout as :func:`make_events`."""
    return make_events(
        np.empty(0, dtype=np.int64),
        np.empty(0, dtype=np.int64),
        np.empty(0, dtype=np.int32),
        np.empty(0, dtype=np.float32),
    )
