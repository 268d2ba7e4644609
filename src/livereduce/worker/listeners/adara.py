"""The ``adara`` listener: chunks from an SNS SMS (Mantid's SNSLiveEventDataListener, reshaped).

A background thread keeps one :class:`~livereduce.adara.client.AdaraClient` connection, reads
the socket itself (the client has no reader thread of its own: one thread receives, frames and
decodes each packet straight into the chunk's table, so the engine's thread runs the scripts
beside it and no queue of packets holds memory between two threads) and turns its packets into
per-run buffers (mantid-live-data.md §3.2.4 for what Mantid does with each):

- run status NEW_RUN / STATE opens a run (number, start time), END_RUN closes it; run info,
  geometry and beamline info fill in the title, proposal, IDF and instrument name. A run first
  met as STATE whose first pulse comes more than ``PARTIAL_JOIN_S`` after its start was joined
  late: it is marked ``partial``;
- banked events: one ``event_time_zero`` bin per packet (header time = pulse time), time of
  flight = 100 ns units / 10 -> µs (plus the source's TOF offset when not yet corrected); the
  pulse charge (10 pC units) becomes the ``proton_charge`` log in pC. Left out and counted
  (``Chunk.input_counts``): events of the error and unmapped pseudo-banks (``error_events``,
  ``unmapped_events``), pixel IDs with the error bit 0x80000000 (``error_events``) or outside
  the instrument's pixels (``out_of_range_events``; the range comes from the stream's
  geometry, else from the instrument table),
  pulses flagged DUPLICATE_PULSE (``duplicate_pulses``: neither their events nor their charge),
  and pulses between a PAUSE and a RESUME annotation (``paused_events``; kept with
  ``keep_paused_events``);
- beam monitor events -> ``monitor<ID>`` (``event_id`` = the monitor ID; once seen in a run,
  a monitor is in every later chunk of the run, with no events when none arrived);
- device descriptors name the PVs; variable values become logs (u32 values of ``integer`` PVs
  are signed 32-bit, as Mantid reads them; array variables become 2-D logs over ``time`` and
  ``element``). The last value of every PV, also one sent before the run began, is carried
  into each new run (as Mantid keeps it); a value repeated with the same time is kept once.
  Text that is not UTF-8 gets replacement characters and one warning per PV;
- stream annotations: PAUSE / RESUME give the ``pause`` log (1 / 0), SCAN_START / SCAN_STOP
  the ``scan_index`` log (the scan index / 0); both logs start each run at 0.

:meth:`AdaraListener.extract_data` never blocks: it hands over what arrived since the previous
call (an empty chunk when in a run and nothing new came, also while reconnecting: the run
goes on at the SMS); a chunk never spans two runs (``ends_run`` / ``begins_run``). It raises
NotYet, saying why, when there is nothing to hand over outside a run: not connected yet,
reconnecting, or waiting for a run to start.

When the SMS goes away (closes cleanly, closes inside a packet, resets, or sends nothing, not
even heartbeats, for ``stale_timeout_sec``), the listener logs why at once, drops the incomplete
packet and reconnects with exponential backoff (0.5 s doubling up to ``reconnect_max_sec``,
each attempt logged; the backoff starts over only once a connection got past the point where
the previous one failed). A reconnect in a run asks for data from that run's start (hello start
time = the run start, whole seconds); outside a run, for the start of the current run. Whether
the SMS really replays is decided from what arrives, never from what was asked: when the first
pulse after the run's status is the run's first pulse (or earlier), the run is replayed and its
next chunk has ``data_reset=True`` (events, monitors and logs are replaced together: nothing is
counted twice); when it is later than the latest pulse received (or the run had no pulse yet),
the data continue the run: what was received is kept, and PV values sent again that are not
newer than what the run has are left out; in between, the SMS answered from inside the run:
what was received is kept and the pulses and values that come again are left out.

Bad input never loops: a malformed packet is skipped by its declared length (counted as
``malformed_packets`` and ``skipped_bytes``, logged once per packet type and run). A declared
length beyond any sane bound forces a reconnect; when two connections in a row fail at the
same point of the stream, the next one asks for data from the first whole second after that
point (the skip is counted as ``framing_failures`` and logged with the seconds skipped); later
reconnects in the run never ask for data before it, and the same bytes met again move the skip
one second further.

A worker that takes over from one that did not finish a run gets a :class:`Resume`: the first
connection asks for data from that run's start, so the run is completed before the current one.

Events are decoded straight into the chunk's preallocated scipp table
(:mod:`~livereduce.worker.listeners.pulse_events`). What the listener holds is bounded by
``buffer_bytes``: once reached, the connection thread stops reading the socket, its buffers
fill and TCP pushes back on the SMS (nothing is dropped; the pause is not a stale stream);
:attr:`AdaraListener.chunk_ready` tells the engine to take a chunk before its next tick (an
eighth of the buffer filled, or all of it, or a run ended).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import numpy as np
import scipp as sc

from livereduce.adara import packets
from livereduce.adara.client import AdaraClient, ConnectionLost
from livereduce.adara.errors import AdaraProtocolError, OversizePacketError
from livereduce.adara.metadata_xml import (
    INTEGER_PV_TYPES,
    MetadataXmlError,
    ProcessVariable,
    clean_text,
    parse_device_xml,
    parse_runinfo_xml,
    pixel_id_ranges,
)
from livereduce.adara.parser import MAX_PAYLOAD_BYTES, OTHER_TYPES
from livereduce.address import parse_host_port
from livereduce.config import Config, ConfigError, StartFrom
from livereduce.delays import doubling_delay_s
from livereduce.protocol import Resume
from livereduce.supervisor.memory import memory_limit
from livereduce.worker.engine.accumulation import RESERVE_BYTES
from livereduce.worker.listeners.base import (
    Chunk,
    ListenerBase,
    ListenerError,
    NotYet,
    RunInfo,
    unit_or_none,
)
from livereduce.worker.listeners.pulse_events import EVENT_BYTES, FIRST_CAPACITY, PulseEvents

log = logging.getLogger("livereduce.listener.adara")

RESUMABLE = True
"""This listener honours a :class:`~livereduce.protocol.Resume` (``from_config(resume=...)``)."""

STALE_TIMEOUT_S = 30.0
"""Default ``stale_timeout_sec``: Mantid's SNS listener gives up on a silent socket after 30 s;
an SMS sends heartbeats well within that when idle."""
RECONNECT_MAX_S = 30.0
"""Default ``reconnect_max_sec``: the longest wait between two connection attempts."""
CONNECT_TIMEOUT_S = 5.0
"""Default ``connect_timeout_sec`` of one TCP connect."""
FIRST_BACKOFF_S = 0.5
"""Wait before the first reconnection attempt; doubled on every failed attempt."""
_GET_TIMEOUT_S = 0.25
"""How long the reader waits for a packet before checking for staleness and close()."""
PARTIAL_JOIN_S = 2.0
"""A run first seen as STATE whose first pulse is more than this after the run start was joined
late (its start is missed): a few pulse periods beyond the whole-second rounding of the run
start on the wire."""
REPEATED_FAILURES = 2
"""Connections failing at the same point of the stream before the next one skips past it."""
NS_PER_S = 1_000_000_000

BUFFER_SHARE = 8
"""Default ``buffer_bytes``: the memory limit divided by this. The buffer is the chunk (events
are decoded into the chunk's scipp memory), and it fills again while the previous chunk is
processed, so two buffers and the processing script's copies of one (a histogram script makes
about one) stay under half the limit, leaving the rest for the accumulation."""
MIN_BUFFER_BYTES = 32 << 20
"""Smallest default ``buffer_bytes`` (a small memory limit still gets whole pulses)."""
MAX_BUFFER_BYTES = 1 << 30
"""Largest default ``buffer_bytes``: 9x10^7 events held (chunks of an eighth of that when
the stream outruns the engine), beyond which a larger buffer only adds memory, not
throughput."""
READY_SHARE = 8
"""A chunk is ready (taken before the engine's next tick) once it holds this share of
``buffer_bytes``: at a rate that fills the buffer faster than ``update_every`` the chunks stay
small, so the engine starts on the first one early, the last one after a run's end is short,
and the memory a chunk touches (its table, the script's temporaries) is what the chunk two
before freed, already mapped, instead of fresh pages (bench/end_to_end.py's run of 2x10^7
events on the 2-core development VM, load average about 5, median of 4: 0.69 s end to end
with 8, 0.81 with 4, 1.18 with 2, 0.83 with 16)."""
FULL_LOG_INTERVAL_S = 60.0
"""A full buffer is logged at most this often (a flood fills it on every chunk)."""
LOG_VALUE_BYTES = 80
"""Memory held per buffered log value: a Python time and value in two lists (estimate)."""

MAX_REPORTED_UNKNOWN_PVS = 100
"""Variables without a device descriptor are logged once each up to this many: a broken or
hostile stream must not flood the log (or memory) with one line per variable."""

PIXEL_ERROR_BIT = np.uint32(0x8000_0000)
"""Pixel ID bit the detector electronics set on an event in error (ADARA doc/design, banked
event data; Mantid drops such events)."""


def backoff_s(attempt: int, maximum_s: float) -> float:
    """Wait before connection attempt ``attempt`` + 1 (attempt >= 1): 0.5 s doubling, capped."""
    return doubling_delay_s(attempt, FIRST_BACKOFF_S, maximum_s)


@dataclasses.dataclass(slots=True)
class _Log:
    pv_type: str
    units: str
    times_ns: list[int] = dataclasses.field(default_factory=list)
    values: list[object] = dataclasses.field(default_factory=list)

    def to_data_array(self) -> sc.DataArray:
        times = sc.array(
            dims=["time"], values=np.asarray(self.times_ns, dtype="datetime64[ns]"), unit="ns"
        )
        unit = unit_or_none(self.units)
        if self.pv_type == "string":
            data = sc.array(dims=["time"], values=[str(v) for v in self.values])
        elif self.pv_type == "double":
            data = sc.array(dims=["time"], values=np.asarray(self.values, np.float64), unit=unit)
        elif self.pv_type in ("u32 array", "double array"):
            dtype = np.int64 if self.pv_type == "u32 array" else np.float64
            values = np.asarray(self.values, dtype=dtype).reshape(len(self.values), -1)
            data = sc.array(dims=["time", "element"], values=values, unit=unit)
        else:
            data = sc.array(dims=["time"], values=np.asarray(self.values, np.int64), unit=unit)
        return sc.DataArray(data, coords={"time": times})

    def latest_is(self, time_ns: int, value: object) -> bool:
        """Whether the latest value is ``value`` at ``time_ns`` (a repeat, kept once)."""
        if not self.times_ns or self.times_ns[-1] != time_ns:
            return False
        latest = self.values[-1]
        if isinstance(latest, np.ndarray) or isinstance(value, np.ndarray):
            return np.array_equal(np.asarray(latest), np.asarray(value))
        return latest == value


def _coerce(pv_type: str, value: Any, like: object | None = None) -> object:
    """``value`` as the log's type: str, float, an int that fits int64, or for array logs an
    array of the length of ``like`` (the log's first value). Raises ValueError, TypeError or
    OverflowError when it cannot be one."""
    if pv_type == "string":
        return str(value)
    if pv_type in ("u32 array", "double array"):
        if not isinstance(value, np.ndarray):
            raise TypeError(f"a scalar value {value!r} for an array PV")
        if isinstance(like, np.ndarray) and len(like) != len(value):
            raise ValueError(f"an array of {len(value)} elements for a log of {len(like)}")
        return value.copy()
    if isinstance(value, np.ndarray):
        raise TypeError("an array value for a scalar PV")
    if pv_type == "double":
        if isinstance(value, str):
            raise TypeError(f"a string value {value!r} for a double PV")
        return float(value)
    if isinstance(value, str) or (isinstance(value, float) and not value.is_integer()):
        raise TypeError(f"value {value!r} for an integer PV")
    number = int(value)
    if not -(2**63) <= number < 2**63:
        raise OverflowError(f"value {value!r} does not fit an integer PV")
    return number


@dataclasses.dataclass(frozen=True, slots=True)
class _PvValue:
    """One received PV value, as carried into the next run."""

    name: str
    pv_type: str
    units: str
    time_ns: int
    value: object


class _Segment:
    """What arrived of one run since the previous extraction."""

    def __init__(
        self, run: RunInfo, capacity: int, *, begins_run: bool, data_reset: bool = False
    ) -> None:
        self.run = run
        self.capacity = capacity
        self.begins_run = begins_run
        self.ends_run = False
        self.data_reset = data_reset
        self.events = PulseEvents(capacity)
        self.monitors: dict[str, PulseEvents] = {}
        self.logs: dict[str, _Log] = {}
        self.log_values = 0
        """Values held in ``logs`` (counted as they come: nbytes is asked after every
        packet)."""
        self.provisional: set[str] = set()
        """Logs holding only a value carried from before the run: the first value the run
        brings for them before its first pulse (the SMS sends its variable cache) replaces it."""

    def continuation(self) -> _Segment:
        """The next interval of the same run; monitors seen in the run stay in every chunk."""
        following = _Segment(self.run, self.capacity, begins_run=False)
        following.monitors = {name: PulseEvents() for name in self.monitors}
        return following

    def add_log(self, name: str, pv_type: str, units: str, time_ns: int, value: object) -> bool:
        """Add one value; False (nothing added) when it does not fit the type the log has
        (a string after doubles, a NaN for an integer PV): one bad value must not cost the
        chunk when the log is turned into an array. A repeat of the latest value at the same
        time is not added again (True)."""
        if name in self.provisional:
            self.provisional.discard(name)
            self.log_values -= len(self.logs.pop(name).values)
        entry = self.logs.get(name)
        if entry is None:
            entry = self.logs[name] = _Log(pv_type, units)
        try:
            value = _coerce(entry.pv_type, value, entry.values[0] if entry.values else None)
        except (ValueError, TypeError, OverflowError):
            return False
        if entry.latest_is(time_ns, value):
            return True
        entry.times_ns.append(time_ns)
        entry.values.append(value)
        self.log_values += 1
        return True

    def absorb(self, later: _Segment, newer_than: Mapping[str, int] | None = None) -> None:
        """Add what ``later`` (the same run, received after this) holds: its logs and events.
        ``newer_than``: log name -> the latest time the run already has; values of ``later``
        not newer than it are re-sent ones (an SMS's variable cache, a replay) and left out."""
        for name, entry in later.logs.items():
            after = newer_than.get(name) if newer_than is not None else None
            for time_ns, value in zip(entry.times_ns, entry.values, strict=True):
                if after is None or time_ns > after:
                    self.add_log(name, entry.pv_type, entry.units, time_ns, value)
        self.events.extend(later.events)
        for name, events in later.monitors.items():
            self.monitors.setdefault(name, PulseEvents()).extend(events)
        self.run = later.run

    def latest_times(self, into: dict[str, int]) -> None:
        """Raise ``into`` (log name -> latest time) to the latest time of each of these logs."""
        for name, entry in self.logs.items():
            if entry.times_ns:
                latest = max(entry.times_ns)
                into[name] = max(into.get(name, latest), latest)

    @property
    def nbytes(self) -> int:
        """Memory held by the segment's events, monitors and logs (bytes, estimated)."""
        return (
            self.events.nbytes
            + sum(monitor.nbytes for monitor in self.monitors.values())
            + LOG_VALUE_BYTES * self.log_values
        )

    def to_chunk(self, input_counts: dict[str, int]) -> Chunk:
        return Chunk(
            events=self.events.to_events(),
            monitors={name: m.to_events() for name, m in self.monitors.items()},
            logs={name: entry.to_data_array() for name, entry in self.logs.items()},
            run=self.run,
            begins_run=self.begins_run,
            ends_run=self.ends_run,
            data_reset=self.data_reset,
            input_counts=input_counts,
        )


@dataclasses.dataclass(slots=True, kw_only=True)
class _RunTracking:
    """Where the open run stands in the stream (a new one for every run)."""

    joined_by_state: bool = False
    """The run was first met as run status STATE (joined, not begun)."""
    seed: list[_PvValue] = dataclasses.field(default_factory=list)
    """The PV values carried into the run from before it began."""
    first_data_seen: bool = False
    first_pulse_ns: int | None = None
    last_pulse_ns: int | None = None
    log_last_ns: dict[str, int] = dataclasses.field(default_factory=dict)
    """Log name -> the latest value time the run has (not counting a pending rejoin)."""
    resent_until_ns: int | None = None
    """After a reconnect answered from inside the run: pulses up to this time come again."""
    skip_ns: int | None = None
    """The latest hello start time that skipped past bad bytes in this run."""
    paused: bool = False
    """Between a PAUSE and a RESUME annotation."""


class _Rejoin(Enum):
    """Where the listener is in rejoining a run after a reconnect.

    NONE -> AWAIT_STATUS on every reconnect; AWAIT_STATUS -> AWAIT_PULSE when the run status
    of the open run comes again (the open run is held), -> NONE when another run begins, the
    SMS reports no run, or data flow without a status; AWAIT_PULSE -> NONE at the first pulse
    (a replay, a continuation or a re-sent part, see ``_decide_replay``), at the run's end or at
    the next reconnect (a continuation)."""

    NONE = "in step with the stream"
    AWAIT_STATUS = "reconnected, waiting for the run status"
    AWAIT_PULSE = "the open run's status came again: the first pulse decides"


class _PixelRange:
    """The detector pixel IDs of the instrument, as inclusive ranges (empty: not known, every ID
    without the error bit is taken)."""

    def __init__(self, ranges: tuple[tuple[int, int], ...] = ()) -> None:
        merged: list[tuple[int, int]] = []
        for first, last in sorted(ranges):  # adjacent and overlapping ranges joined: few checks
            if merged and first <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], last))
            else:
                merged.append((first, last))
        self.ranges = tuple(merged)

    def invalid(self, ids: np.ndarray) -> np.ndarray | None:
        """(N,) bool mask of IDs outside the ranges (or with the error bit), None when all are
        valid (the common case, decided from the minimum and maximum alone)."""
        if not len(ids):
            return None
        low, high = int(ids.min()), int(ids.max())
        if not self.ranges:
            return ids >= PIXEL_ERROR_BIT if high >= PIXEL_ERROR_BIT else None
        if any(first <= low and high <= last for first, last in self.ranges):
            return None
        valid = np.zeros(len(ids), dtype=bool)
        for first, last in self.ranges:
            valid |= (ids >= first) & (ids <= last)
        return ~valid


class AdaraListener(ListenerBase):
    """Chunks from the SMS at ``host:port``; see the module docstring.

    ``keep_paused_events``: accumulate pulses between PAUSE and RESUME too (Mantid drops them).
    ``resume``: the run a previous worker left unfinished; the first connection asks for data
    from its start. ``pixel_ids``: the instrument's pixel IDs (first, last) from the instrument
    table, used until the stream sends a geometry.
    """

    hands_over_early = True

    def __init__(  # noqa: PLR0915 - one line per piece of explicit state
        self,
        host: str,
        port: int,
        *,
        stale_timeout_s: float = STALE_TIMEOUT_S,
        reconnect_max_s: float = RECONNECT_MAX_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        keep_paused_events: bool = False,
        resume: Resume | None = None,
        pixel_ids: tuple[int, int] | None = None,
        buffer_bytes: int = MAX_BUFFER_BYTES,
    ) -> None:
        self.name = f"adara {host}:{port}"
        self.host = host
        self.port = port
        self.stale_timeout_s = stale_timeout_s
        self.reconnect_max_s = reconnect_max_s
        self.connect_timeout_s = connect_timeout_s
        self.keep_paused_events = keep_paused_events
        self.resume = resume
        # buffer_bytes bounds what the listener holds: once reached it stops taking packets
        # until the engine takes a chunk (chunk_ready); backpressure_waits counts those pauses
        self.buffer_bytes, self.backpressure_waits = buffer_bytes, 0
        self._capacity = event_capacity(buffer_bytes)
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: AdaraClient | None = None
        self._start_from = StartFrom.START_OF_RUN
        self._state = "not started"
        self._heard = False
        self._failure: str | None = None
        self.connections = 0
        """Successful connections so far (the first one included)."""
        self.hello_start_ns: list[int] = []
        """The hello start time of every connection made, in order."""
        # run state, guarded by _lock
        self._finished: deque[_Segment] = deque()
        self._open: _Segment | None = None
        self._rejoin = _Rejoin.NONE
        self._rejoined_by_state = False
        self._held: _Segment | None = None
        """The run as it was before a reconnect, in state AWAIT_PULSE (None otherwise)."""
        self._delivered_run: int | None = None
        self._tracking = _RunTracking()
        self._seen_a_run = False
        self._instrument = ""
        self._geometry = ""
        self._table_pixels = _PixelRange((pixel_ids,) if pixel_ids is not None else ())
        self._pixels = self._table_pixels
        self._pvs: dict[tuple[int, int], ProcessVariable] = {}
        self._unknown_pvs: set[tuple[int, int]] = set()
        self._mistyped: set[str] = set()
        self._warned_text: set[str] = set()
        self._last_pv: dict[str, _PvValue] = {}
        self._counts: Counter[str] = Counter()
        self._logged_faults: set[tuple[str, int, int | None]] = set()
        self._dropped_outside_run = 0
        # where the stream position is, for reconnects (connection thread only)
        self._data_ns: int | None = None
        self._failure_point: int | None = None
        self._failure_repeats = 0
        self._skip_to_ns: int | None = None
        self._last_skip_ns: int | None = None
        # _full: reading paused on a full buffer, _full_logged: when that was last logged;
        # _ready: what chunk_ready answers, _held_bytes: _buffered_bytes(), as of the latest
        # packet or extraction (set under _lock); _extracting: extract_data waits for _lock, the
        # connection thread lets it in before its next packet (a busy connection thread would
        # take the lock again before the engine's thread wakes)
        self._full, self._full_logged = False, -FULL_LOG_INTERVAL_S
        self._ready, self._extracting, self._held_bytes = False, False, 0

    @property
    def connected(self) -> bool:
        """Whether a connection to the SMS is open now."""
        with self._lock:
            return self._client is not None

    @property
    def waiting_for_run(self) -> bool:
        """Connected, the SMS has sent packets on this connection, and no run is open."""
        with self._lock:
            return self._waiting_for_run()

    @property
    def chunk_ready(self) -> bool:
        """A chunk should be taken now rather than at the engine's next ``update_every`` tick:
        the chunk holds :data:`READY_SHARE` of the buffer (the SMS sends faster than the chunks
        are taken, so chunks are bounded in events too, and the rest fills while this one is
        processed), or the buffer is full (reading from the SMS waits until a chunk is taken),
        or a run has ended (its last chunk is complete and its result should not wait)."""
        # no lock: the connection thread holds it for every packet and, on a busy stream,
        # takes it again at once; it leaves the answer in _ready (and in _full) instead
        return self._full or self._ready

    @property
    def buffered_bytes(self) -> int:
        """Memory held by what arrived and was not yet handed over (bytes, estimated)."""
        with self._lock:
            return self._buffered_bytes()

    def _buffered_bytes(self) -> int:
        held = sum(segment.nbytes for segment in self._finished)
        for segment in (self._held, self._open):
            if segment is not None:
                held += segment.nbytes
        return held

    def _update_ready(self) -> None:
        """Recount what is held and set what chunk_ready answers (under _lock): once per
        packet and per extraction."""
        self._held_bytes = self._buffered_bytes()
        self._ready = bool(self._finished) or READY_SHARE * self._held_bytes >= self.buffer_bytes

    def _waiting_for_run(self) -> bool:
        return self._client is not None and self._heard and self._open is None

    @property
    def state(self) -> str:
        """What the listener is doing, in words: connecting, waiting for a run, in run N, or
        why the connection ended and when the next attempt comes."""
        with self._lock:
            return self._state

    # ------------------------------------------------------------------ Listener contract

    def start(self, start_from: StartFrom) -> None:
        """Start the connection thread and return at once."""
        if self._thread is not None:
            return
        self._start_from = start_from
        self._state = f"connecting to the SMS at {self.host}:{self.port}"
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def extract_data(self) -> Chunk:
        """What arrived since the previous call, one run at most. Raises NotYet when not in a
        run and nothing is buffered (the message says what the listener waits for), and
        ListenerError once the connection thread has died and what it received is delivered."""
        self._extracting = True
        with self._lock:
            try:
                segment, counts = self._take()
            finally:
                self._extracting = False
                self._room.notify_all()  # the connection thread goes on (or finds room)
            connected, activity = self._client is not None, self._state
        return dataclasses.replace(segment.to_chunk(counts), connected=connected, activity=activity)

    def _take(self) -> tuple[_Segment, dict[str, int]]:
        """The segment to hand over and the input counts since the previous one (under
        _lock); raises as extract_data does (a NotYet carries the counts when no chunk
        does)."""
        if self._finished:
            segment = self._finished.popleft()
        elif self._held is not None:
            # a replay or a continuation, not decided yet: hand over what came before
            segment = self._held
            self._held = segment.continuation()
        elif self._open is not None:
            segment = self._open
            # a dead connection thread adds nothing more: deliver what it had, then fail
            self._open = segment.continuation() if self._failure is None else None
        elif self._failure is not None:
            raise ListenerError(self._failure)
        else:
            raise NotYet(
                self._state, waiting_for_run=self._waiting_for_run(), input_counts=self._taken()
            )
        self._delivered_run = segment.run.number
        self._update_ready()
        return segment, self._taken()

    def _taken(self) -> dict[str, int]:
        """The input counts since they were last handed over, cleared (under _lock)."""
        counts = dict(self._counts)
        self._counts.clear()
        return counts

    def close(self) -> None:
        """Stop the thread and close the connection; returns within about two seconds."""
        self._stop.set()
        with self._lock:
            client = self._client
        if client is not None:
            client.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)

    # ------------------------------------------------------------------ connection thread

    def _run(self) -> None:
        try:
            self._connect_and_consume()
        except Exception as exc:  # reported to the engine, which ends the worker
            log.exception("adara_listener_failed: the connection thread stopped")
            with self._lock:
                self._failure = f"the ADARA connection thread stopped: {type(exc).__name__}: {exc}"

    def _hello_start_ns(self) -> int:
        """The start time of the next client hello (see the module docstring)."""
        if self._skip_to_ns is not None:
            return self._skip_to_ns
        with self._lock:
            run = self._open.run if self._open is not None else None
            seen_a_run = self._seen_a_run
            skipped_to = self._tracking.skip_ns
        if run is not None and run.start_ns is not None:
            # never back before bad bytes already skipped past in this run
            return max(_whole_second_at_or_before(run.start_ns), skipped_to or 0)
        if self.resume is not None and not seen_a_run:
            return _whole_second_at_or_before(self.resume.start_ns)
        if self.connections == 0 and self._start_from is StartFrom.NOW:
            return packets.START_NOW
        return packets.START_OF_RUN

    def _connect_and_consume(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            reconnect = self.connections > 0
            start_ns = self._hello_start_ns()
            client = AdaraClient(
                self.host,
                self.port,
                start_time_ns=start_ns,
                connect_timeout_s=self.connect_timeout_s,
                background=False,
            )
            try:
                client.connect()
            except OSError as exc:
                attempt += 1
                reason = f"cannot connect to the SMS at {self.host}:{self.port}: {exc}"
                self._wait_to_retry(reason, attempt)
                continue
            self.hello_start_ns.append(start_ns)
            skipping_from = self._failure_point if self._skip_to_ns is not None else None
            self._skip_to_ns = None
            self._data_ns = None
            with self._lock:
                # a rejoin the previous connection left undecided (no pulse came): what it
                # brought joins the held run, and this connection decides afresh
                self._decide_continuation()
                self._rejoin = _Rejoin.AWAIT_STATUS if reconnect else _Rejoin.NONE
                self._client = client
                self.connections += 1
                self._heard = False
                self._state = (
                    f"connected to the SMS at {self.host}:{self.port}, nothing received yet"
                )
            log.info(
                "connected to the SMS at %s:%d (connection %d), asking for %s",
                self.host,
                self.port,
                self.connections,
                packets.describe_start_time(start_ns),
            )
            if skipping_from is not None:
                skipped_s = (start_ns - skipping_from) / NS_PER_S
                with self._lock:
                    self._counts["framing_failures"] += 1
                    if self._open is not None:
                        self._tracking.skip_ns = start_ns
                log.error(
                    "stream_skipped: the SMS stream broke framing %d times at the same point "
                    "(packet time %d ns); asked for data from %.0f s on: up to %.3f s of the "
                    "stream skipped",
                    REPEATED_FAILURES,
                    skipping_from,
                    start_ns / NS_PER_S,
                    skipped_s,
                )
            reason, framing_lost = self._consume(client)
            client.close()
            if client.parser.skipped:
                kinds = ", ".join(
                    f"{count} of other formats"
                    if word == OTHER_TYPES
                    else f"{count} of 0x{word:06x}"
                    for word, count in sorted(client.parser.skipped.items())
                )
                log.warning("packets of unknown types skipped on this connection: %s", kinds)
            with self._lock:
                self._client = None
                self._state = (
                    f"the connection to the SMS at {self.host}:{self.port} ended: {reason}"
                )
            if self._stop.is_set():
                break
            attempt = self._next_attempt(attempt, framing_lost)
            self._wait_to_retry(reason, attempt)

    def _next_attempt(self, attempt: int, framing_lost: bool) -> int:
        """The attempt number after a connection ended: it starts over only when the connection
        got past the point where the previous one failed (else the backoff keeps growing), and a
        framing failure repeated at the same point makes the next hello skip past it."""
        point = self._data_ns
        repeated = point is None or (
            self._failure_point is not None and point <= self._failure_point
        )
        if framing_lost:
            same = point is not None and point == self._failure_point
            self._failure_repeats = self._failure_repeats + 1 if same else 1
            if self._failure_repeats >= REPEATED_FAILURES and point is not None:
                skip = _whole_second_at_or_before(point) + NS_PER_S
                if self._last_skip_ns is not None and skip <= self._last_skip_ns:
                    skip = self._last_skip_ns + NS_PER_S  # the same bytes again: further on
                self._skip_to_ns = self._last_skip_ns = skip
                self._failure_repeats = 0
        if point is not None:
            self._failure_point = point
        return attempt + 1 if repeated else 1

    def _wait_to_retry(self, reason: str, attempt: int) -> None:
        delay = backoff_s(attempt, self.reconnect_max_s)
        with self._lock:
            self._state = f"{reason}; reconnecting (attempt {attempt + 1} in {delay:.1f} s)"
        log.warning("%s; reconnection attempt %d in %.1f s", reason, attempt + 1, delay)
        self._stop.wait(delay)

    def _consume(self, client: AdaraClient) -> tuple[str, bool]:
        """Handle packets until the connection ends; returns (why it ended, whether the stream
        lost its framing)."""
        got_packets = False
        framing_lost = False
        while not self._stop.is_set():
            if not self._wait_for_room(client):
                break
            try:
                items = client.receive(_GET_TIMEOUT_S)
            except ConnectionLost as exc:
                return str(exc), framing_lost
            if not items:
                silent_s = time.monotonic() - client.last_packet_monotonic
                if silent_s > self.stale_timeout_s:
                    return (
                        f"stale stream: no complete packet from the SMS at {client.address} for "
                        f"{silent_s:.1f} s (stale_timeout_sec {self.stale_timeout_s:g})",
                        framing_lost,
                    )
                continue
            for item, size in items:
                # the room is checked before every packet; what one read completed waits here
                # meanwhile (at most RECV_BYTES and the one packet that ended in it)
                if not self._wait_for_room(client):
                    return "closed", framing_lost
                if isinstance(item, AdaraProtocolError):
                    framing_lost = framing_lost or isinstance(item, OversizePacketError)
                    with self._lock:
                        self._bad_packet(item, size)
                    continue
                got_packets = self._packet(item, got_packets)
        return "closed", framing_lost

    def _packet(self, packet: packets.Packet, got_packets: bool) -> bool:
        """Handle one packet of the connection (``got_packets``: one came before); returns
        True (one has now)."""
        if not got_packets:
            with self._lock:
                self._heard = True  # the SMS is alive: with no run open, we wait for one
                if self._open is None:
                    self._state = (
                        f"connected to the SMS at {self.host}:{self.port}, waiting for a run"
                    )
        if not isinstance(packet, packets.Heartbeat | packets.ClientHello):
            self._data_ns = packet.timestamp_ns
        try:
            with self._lock:
                self._handle(packet)
                self._update_ready()
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, OSError) as exc:
            # one packet the listener cannot use must not stop the stream
            with self._lock:
                self._counts["unusable_packets"] += 1
                run = self._open.run.number if self._open is not None else None
                key = ("unusable", int(packet.packet_type), run)
                first = key not in self._logged_faults
                self._logged_faults.add(key)
            if first:
                log.error(
                    "unusable_packet: %s packet (header time %d ns) not used: %s; further "
                    "unusable packets of this type in this run are counted, not logged",
                    type(packet).__name__,
                    packet.timestamp_ns,
                    exc,
                )
        return True

    def _wait_for_room(self, client: AdaraClient) -> bool:
        """Wait while the buffer is full: nothing more is read from the socket, whose buffers
        then fill, so TCP makes the SMS wait. False when the listener is closed meanwhile."""
        with self._room:
            if self._extracting:  # let the engine take its chunk first
                self._room.wait_for(lambda: not self._extracting, _GET_TIMEOUT_S)
            if self._held_bytes < self.buffer_bytes:
                return True
            self._full = True
            self.backpressure_waits += 1
            state = self._state
            held = self._buffered_bytes()
            self._state = (
                f"{state}; buffer full ({held / 1e6:.0f} MB, buffer_bytes "
                f"{self.buffer_bytes / 1e6:.0f} MB): reading paused until a chunk is taken"
            )
            now = time.monotonic()
            if now - self._full_logged >= FULL_LOG_INTERVAL_S:
                log.info(
                    "listener_buffer_full: %.0f MB held (buffer_bytes %.0f MB); reading from "
                    "the SMS paused until the engine takes a chunk (%d times so far)",
                    held / 1e6,
                    self.buffer_bytes / 1e6,
                    self.backpressure_waits,
                )
                self._full_logged = now
            while self._buffered_bytes() >= self.buffer_bytes and not self._stop.is_set():
                self._room.wait(_GET_TIMEOUT_S)
            # the pause was ours, not the SMS's silence: staleness counts from now
            client.last_packet_monotonic = time.monotonic()
            self._full = False
            if self._state.startswith(state):
                self._state = state
            return not self._stop.is_set()

    def _bad_packet(self, error: AdaraProtocolError, skipped_bytes: int) -> None:
        """Count a malformed packet and log it once per packet type and run (under _lock)."""
        run = self._open.run.number if self._open is not None else None
        if isinstance(error, OversizePacketError):
            self._counts["framing_losses"] += 1
            log.error("framing_lost: %s; reconnecting", error)
            return
        self._counts["malformed_packets"] += 1
        self._counts["skipped_bytes"] += skipped_bytes
        key = ("malformed", error.packet_type or 0, run)
        if key not in self._logged_faults:
            self._logged_faults.add(key)
            log.error(
                "malformed_packet: %s; skipped by its declared length (%d bytes)%s; further "
                "malformed packets of this type in this run are counted, not logged",
                error,
                skipped_bytes,
                f" in run {run}" if run is not None else "",
            )

    # ------------------------------------------------------------------ packets (under _lock)

    def _handle(self, packet: packets.Packet) -> None:
        match packet:
            case packets.BankedEvent():
                self._banked_event(packet)
            case packets.BeamMonitorEvent():
                self._beam_monitor(packet)
            case (
                packets.VariableU32()
                | packets.VariableDouble()
                | packets.VariableString()
                | packets.VariableU32Array()
                | packets.VariableDoubleArray()
            ):
                self._variable(packet)
            case packets.RunStatus():
                self._run_status(packet)
            case packets.DeviceDescriptor():
                self._device(packet)
            case packets.RunInfo():
                self._run_info(packet)
            case packets.StreamAnnotation():
                self._annotation(packet)
            case packets.Geometry():
                self._geometry_packet(packet)
            case packets.BeamlineInfo():
                self._instrument = packet.long_name
                self._update_run(instrument=packet.long_name)

    def _update_run(self, **changes: Any) -> None:
        if self._open is not None:
            self._open.run = dataclasses.replace(self._open.run, **changes)

    def _geometry_packet(self, packet: packets.Geometry) -> None:
        xml, replaced = clean_text(packet.xml)
        if replaced:
            log.warning("geometry XML has bytes that are not UTF-8: replaced")
        if xml != self._geometry:
            try:
                ranges = pixel_id_ranges(xml)
            except MetadataXmlError as exc:
                log.warning("instrument geometry not read: %s", exc)
                ranges = ()
            self._pixels = _PixelRange(ranges) if ranges else self._table_pixels
        self._geometry = xml
        self._update_run(geometry_xml=xml)

    def _run_status(self, packet: packets.RunStatus) -> None:
        code = packet.status
        if (
            code in (packets.RunStatusCode.NEW_RUN, packets.RunStatusCode.STATE)
            and packet.run_number
        ):
            self._begin(packet)
        elif code is packets.RunStatusCode.END_RUN:
            if self._open is not None and self._open.run.number == packet.run_number:
                self._decide_continuation()
                self._first_data(packet.timestamp_ns)
                log.info("run %d ended", packet.run_number)
                self._close_open()
        elif code is packets.RunStatusCode.NO_RUN:
            if self._open is not None:
                self._decide_continuation()
                log.warning("the SMS reports no run; run %d ended unseen", self._open.run.number)
                self._close_open()
            self._rejoin = _Rejoin.NONE
            self._state = f"connected to the SMS at {self.host}:{self.port}, waiting for a run"

    def _begin(self, packet: packets.RunStatus) -> None:
        number = packet.run_number
        current = self._open
        if current is not None and current.run.number == number:
            if self._rejoin is _Rejoin.AWAIT_STATUS:
                # the same run after a reconnect: hold what we have until the first pulse
                # says whether the SMS replays the run or continues it
                self._rejoin = _Rejoin.AWAIT_PULSE
                self._rejoined_by_state = packet.status is packets.RunStatusCode.STATE
                self._held = current
                self._open = _Segment(current.run, self._capacity, begins_run=False)
            return  # else a repeated status of the run we are in
        self._rejoin = _Rejoin.NONE  # another run: nothing to rejoin
        if current is not None:
            self._decide_continuation()
            log.warning(
                "run %d ended without an END_RUN (run %d began)", current.run.number, number
            )
            self._close_open()
        run = RunInfo(
            number=number,
            start_time=datetime.fromtimestamp(packet.run_start_ns / NS_PER_S, tz=UTC),
            instrument=self._instrument,
            geometry_xml=self._geometry,
        )
        self._open = _Segment(run, self._capacity, begins_run=True)
        self._seen_a_run = True
        self._tracking = _RunTracking(
            joined_by_state=packet.status is packets.RunStatusCode.STATE,
            seed=[
                *self._last_pv.values(),
                _PvValue("pause", "integer", "", packet.run_start_ns, 0),
                _PvValue("scan_index", "integer", "", packet.run_start_ns, 0),
            ],
        )
        self._seed(self._open)
        self._state = f"in run {number}"
        log.info("%s run %d", "joined" if self._tracking.joined_by_state else "new", number)
        if self._dropped_outside_run:
            log.info(
                "%d events that arrived outside a run were not kept", self._dropped_outside_run
            )
            self._dropped_outside_run = 0

    def _seed(self, segment: _Segment) -> None:
        """The PV values carried into the run (the last value of every PV before it began)."""
        for pv in self._tracking.seed:
            segment.add_log(pv.name, pv.pv_type, pv.units, pv.time_ns, pv.value)
            segment.provisional.add(pv.name)
        segment.latest_times(self._tracking.log_last_ns)

    def _decide_replay(self, pulse_ns: int) -> None:
        """After a reconnect into the same run, the first pulse decides: the run's first pulse
        (or earlier) means the SMS replays the run (data reset); later than the latest pulse
        received means the data continue it; in between, the SMS re-sends part of the run: what
        was received is kept and the pulses and values that come again are left out."""
        held = self._held
        if held is None or self._open is None:
            return
        latest, first = self._tracking.last_pulse_ns, self._tracking.first_pulse_ns
        if latest is None or pulse_ns > latest:
            self._decide_continuation()
            return
        if first is not None and pulse_ns > first:
            log.info(
                "run %d: the SMS sends again from %.3f s into the run; the %.3f s already "
                "received are kept, not reset",
                held.run.number,
                (pulse_ns - first) / NS_PER_S,
                (latest - pulse_ns) / NS_PER_S,
            )
            self._tracking.resent_until_ns = latest
            self._decide_continuation()
            return
        self._held = None
        self._rejoin = _Rejoin.NONE
        number = held.run.number
        replay = self._open
        if self._delivered_run == number:
            log.info("run %d replayed from its start after the reconnect: data reset", number)
            fresh = _Segment(replay.run, self._capacity, begins_run=False, data_reset=True)
        else:
            log.info("run %d replayed from its start after the reconnect", number)
            fresh = _Segment(replay.run, self._capacity, begins_run=held.begins_run)
        tracking = self._tracking
        tracking.log_last_ns = {}
        self._seed(fresh)
        fresh.absorb(replay)
        fresh.latest_times(tracking.log_last_ns)
        # the replay may bring the start a late join missed: judge the run afresh
        fresh.run = dataclasses.replace(fresh.run, partial=False)
        self._open = fresh
        tracking.last_pulse_ns = tracking.first_pulse_ns = None
        tracking.first_data_seen = False
        tracking.joined_by_state = self._rejoined_by_state

    def _decide_continuation(self) -> None:
        """What arrived since the reconnect continues the held run: join the two."""
        held = self._held
        if held is None or self._open is None:
            return
        self._held = None
        self._rejoin = _Rejoin.NONE
        log.info(
            "run %d goes on after the reconnect with later data: nothing reset", held.run.number
        )
        held.absorb(self._open, newer_than=dict(self._tracking.log_last_ns))
        self._open.latest_times(self._tracking.log_last_ns)
        self._open = held

    def _close_open(self) -> None:
        if self._open is None:
            return
        self._open.ends_run = True
        self._finished.append(self._open)
        self._open = None
        self._state = f"connected to the SMS at {self.host}:{self.port}, waiting for a run"

    def _run_info(self, packet: packets.RunInfo) -> None:
        xml, replaced = clean_text(packet.xml)
        if replaced:
            log.warning("run info XML has bytes that are not UTF-8: replaced by U+FFFD")
            self._counts["text_not_utf8"] += 1
        try:
            info = parse_runinfo_xml(xml)
        except MetadataXmlError as exc:
            log.warning("run info packet ignored: %s", exc)
            return
        self._update_run(title=info.run_title, experiment=info.proposal_id)

    def _device(self, packet: packets.DeviceDescriptor) -> None:
        xml, replaced = clean_text(packet.xml)
        if replaced:
            log.warning(
                "device descriptor %d has bytes that are not UTF-8: replaced", packet.device_id
            )
        try:
            _name, pvs = parse_device_xml(xml)
        except MetadataXmlError as exc:
            log.warning("device descriptor %d ignored: %s", packet.device_id, exc)
            return
        for pv in pvs:
            self._pvs[(packet.device_id, pv.pv_id)] = pv

    def _annotation(self, packet: packets.StreamAnnotation) -> None:
        marker = packet.marker_type
        if marker in (packets.MarkerType.PAUSE, packets.MarkerType.RESUME):
            self._tracking.paused = marker is packets.MarkerType.PAUSE
            name, value = "pause", int(self._tracking.paused)
        elif marker is packets.MarkerType.SCAN_START:
            name, value = "scan_index", packet.scan_index
        elif marker is packets.MarkerType.SCAN_STOP:
            name, value = "scan_index", 0
        else:
            return
        self._keep_value(_PvValue(name, "integer", "", packet.timestamp_ns, value))

    def _keep_value(self, pv: _PvValue) -> bool:
        """Remember ``pv`` as the PV's latest value and add it to the open run's logs; False
        when it does not fit the log's type."""
        self._last_pv[pv.name] = pv
        if self._open is None:
            return True
        if (
            self._tracking.resent_until_ns is not None
            and pv.time_ns <= self._tracking.log_last_ns.get(pv.name, pv.time_ns - 1)
        ):
            return True  # sent again after a reconnect: the run has it already
        added = self._open.add_log(pv.name, pv.pv_type, pv.units, pv.time_ns, pv.value)
        if added and self._rejoin is not _Rejoin.AWAIT_PULSE:
            self._tracking.log_last_ns[pv.name] = max(
                self._tracking.log_last_ns.get(pv.name, pv.time_ns), pv.time_ns
            )
        return added

    def _variable(self, packet: _VariablePacket) -> None:
        key = (packet.device_id, packet.variable_id)
        pv = self._pvs.get(key)
        if pv is None:
            if key not in self._unknown_pvs and len(self._unknown_pvs) < MAX_REPORTED_UNKNOWN_PVS:
                self._unknown_pvs.add(key)
                log.warning(
                    "variable value of device %d variable %d ignored: no device "
                    "descriptor names it%s",
                    *key,
                    "; further unknown variables are not logged"
                    if len(self._unknown_pvs) == MAX_REPORTED_UNKNOWN_PVS
                    else "",
                )
            return
        value: object = packet.value
        pv_type = pv.pv_type
        if isinstance(packet, packets.VariableU32):
            if pv_type in INTEGER_PV_TYPES or pv_type.startswith("enum"):
                value = int(np.array(packet.value, dtype=np.uint32).view(np.int32))
            pv_type = "integer"
        elif isinstance(packet, packets.VariableString):
            pv_type = "string"
            value, replaced = clean_text(packet.value)
            if replaced:
                self._counts["text_not_utf8"] += 1
                if pv.name not in self._warned_text:
                    self._warned_text.add(pv.name)
                    log.warning(
                        "string value of PV %s has bytes that are not UTF-8: replaced by "
                        "U+FFFD (%r); further such values of this PV are not logged",
                        pv.name,
                        value,
                    )
        elif isinstance(packet, packets.VariableU32Array):
            pv_type = "u32 array"
        elif isinstance(packet, packets.VariableDoubleArray):
            pv_type = "double array"
        else:
            pv_type = "double"
        added = self._keep_value(_PvValue(pv.name, pv_type, pv.units, packet.timestamp_ns, value))
        if not added:
            self._counts["mistyped_values"] += 1
        if not added and pv.name not in self._mistyped and self._open is not None:
            self._mistyped.add(pv.name)
            log.warning(
                "%s value %r of PV %s (device %d variable %d) ignored: the log holds %s values; "
                "further mismatches of this PV are not logged",
                type(packet).__name__,
                packet.value,
                pv.name,
                *key,
                self._open.logs[pv.name].pv_type,
            )

    def _pulse(self, pulse_ns: int) -> _Segment | None:
        """The segment a pulse at ``pulse_ns`` goes to (deciding a pending replay first), None
        outside a run and for a pulse sent again after a reconnect. Marks a run first met as
        STATE and first pulsed long after its start as partial."""
        if self._rejoin is _Rejoin.AWAIT_STATUS:
            self._rejoin = _Rejoin.NONE  # data flow: a later run status is a repeat
        if self._open is None:
            return None
        if self._rejoin is _Rejoin.AWAIT_PULSE:
            self._decide_replay(pulse_ns)
        if self._tracking.resent_until_ns is not None:
            if pulse_ns <= self._tracking.resent_until_ns:
                return None  # a pulse sent again after a reconnect: the run has it already
            self._tracking.resent_until_ns = None
        self._open.provisional.clear()
        self._first_data(pulse_ns)
        if self._tracking.first_pulse_ns is None:
            self._tracking.first_pulse_ns = pulse_ns
        if self._tracking.last_pulse_ns is None or pulse_ns > self._tracking.last_pulse_ns:
            self._tracking.last_pulse_ns = pulse_ns
        return self._open

    def _first_data(self, time_ns: int) -> None:
        """At the run's first pulse (or its END_RUN when no pulse came): a run first met as
        STATE whose data begin more than PARTIAL_JOIN_S after its start was joined late."""
        if self._tracking.first_data_seen or self._open is None:
            return
        self._tracking.first_data_seen = True
        run = self._open.run
        start_ns = run.start_ns
        late_s = (time_ns - start_ns) / NS_PER_S if start_ns is not None else 0.0
        if self._tracking.joined_by_state and late_s > PARTIAL_JOIN_S and not run.partial:
            log.warning(
                "run %d joined %.1f s after its start: its result is partial", run.number, late_s
            )
            self._update_run(partial=True)

    def _banked_event(self, packet: packets.BankedEvent) -> None:
        segment = self._pulse(packet.timestamp_ns)
        if segment is None:
            if self._open is None:
                self._dropped_outside_run += packet.event_count
            return
        counts = self._counts
        if packet.flags & packets.BankedEventFlag.DUPLICATE_PULSE:
            counts["duplicate_pulses"] += 1
            counts["duplicate_pulse_events"] += packet.event_count
            return
        paused = self._tracking.paused and not self.keep_paused_events
        dropped = segment.events.add_banked(packet, self._screen, keep=not paused)
        if dropped.error_bank:
            counts["error_events"] += dropped.error_bank
        if dropped.unmapped_bank:
            counts["unmapped_events"] += dropped.unmapped_bank
        if paused:
            counts["paused_events"] += dropped.not_kept
            counts["paused_pulses"] += 1
            return
        segment.add_log(
            "proton_charge",
            "double",
            "pC",
            packet.timestamp_ns,
            packet.pulse_charge_10pc * 10.0,
        )

    def _screen(self, pixel_id: np.ndarray) -> np.ndarray | None:
        """The mask of a bank's pixel IDs to leave out (None: keep all), counting them as
        error events (the error bit) or out of range (under _lock)."""
        invalid = self._pixels.invalid(pixel_id)
        if invalid is not None:
            flagged = int(np.count_nonzero(pixel_id[invalid] >= PIXEL_ERROR_BIT))
            self._counts["error_events"] += flagged
            self._counts["out_of_range_events"] += int(np.count_nonzero(invalid)) - flagged
        return invalid

    def _beam_monitor(self, packet: packets.BeamMonitorEvent) -> None:
        segment = self._pulse(packet.timestamp_ns)
        if segment is None:
            return
        if packet.flags & packets.BankedEventFlag.DUPLICATE_PULSE or (
            self._tracking.paused and not self.keep_paused_events
        ):
            return
        for monitor in packet.monitors:
            name = f"monitor{monitor.monitor_id}"
            events = segment.monitors.get(name)
            if events is None:
                events = segment.monitors[name] = PulseEvents()
            events.add_pulse(packet.timestamp_ns)
            events.add_monitor_events(monitor.monitor_id, monitor.tof_100ns)


_VariablePacket = (
    packets.VariableU32
    | packets.VariableDouble
    | packets.VariableString
    | packets.VariableU32Array
    | packets.VariableDoubleArray
)


def _whole_second_at_or_before(unix_ns: int) -> int:
    """``unix_ns`` rounded down to a whole second (the client hello carries whole seconds)."""
    return unix_ns - unix_ns % NS_PER_S


def event_capacity(buffer_bytes: int) -> int:
    """The detector events a segment of a listener bounded by ``buffer_bytes`` can hold:
    reading pauses at the bound, and one more packet may come before the check. Under strict
    overcommit (no reservations: reserved address space counts as used) the table starts small
    and doubles instead."""
    if not RESERVE_BYTES:
        return FIRST_CAPACITY
    return buffer_bytes // EVENT_BYTES + MAX_PAYLOAD_BYTES // 8


def default_buffer_bytes(limit_bytes: int) -> int:
    """``buffer_bytes`` for a worker memory limit of ``limit_bytes``: the limit over
    :data:`BUFFER_SHARE`, within [:data:`MIN_BUFFER_BYTES`, :data:`MAX_BUFFER_BYTES`]."""
    return max(MIN_BUFFER_BYTES, min(MAX_BUFFER_BYTES, limit_bytes // BUFFER_SHARE))


def from_config(config: Config, resume: Resume | None = None) -> AdaraListener:
    """The adara listener for ``config.address`` and ``config.listener_options``
    (``stale_timeout_sec``, ``reconnect_max_sec``, ``connect_timeout_sec``,
    ``keep_paused_events``, ``buffer_bytes``: by default the memory guard's limit, which is
    ``system_mem_limit_perc`` of the smaller of RAM and the cgroup limit, or all of it when the
    guard is off, over :data:`BUFFER_SHARE`), completing ``resume`` first when given. Raises
    ConfigError when the address is not ``host:port``."""
    try:
        host, port = parse_host_port(config.address)
    except ValueError as exc:
        raise ConfigError(config.path, "address", str(exc)) from exc
    options = config.listener_options
    buffer_bytes = options.get("buffer_bytes")
    if buffer_bytes is None:
        percent = config.system_mem_limit_perc or 100.0
        buffer_bytes = default_buffer_bytes(memory_limit(percent).limit_bytes)
    return AdaraListener(
        host,
        port,
        stale_timeout_s=float(options.get("stale_timeout_sec", STALE_TIMEOUT_S)),
        reconnect_max_s=float(options.get("reconnect_max_sec", RECONNECT_MAX_S)),
        connect_timeout_s=float(options.get("connect_timeout_sec", CONNECT_TIMEOUT_S)),
        keep_paused_events=bool(options.get("keep_paused_events", False)),
        resume=resume,
        pixel_ids=config.instrument.pixel_ids,
        buffer_bytes=int(buffer_bytes),
    )
