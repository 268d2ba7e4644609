"""Events of consecutive pulses, decoded from ADARA event packets as they arrive straight into
the memory of the chunk's scipp variables.

:class:`PulseEvents` preallocates the chunk's event table (``event_id`` int32,
``event_time_offset`` float32 µs, data float32 counts) with room for ``capacity`` events. The
memory is not touched before it is written, so the room costs address space only, and resident
memory grows with the events actually held. Each bank's ``(tof_100ns, pixel_id)`` pairs (a
view on the packet's bytes, as the parser gives them) are written with one vectorised call per
field for all the banks of a packet: pixel IDs cast, times of flight gathered for
:func:`tof_to_us` (whose division by 10, and the counts set to one, wait for the engine's
thread: see :class:`PulseEvents`). That is a bounded number of numpy calls per packet and no
Python work per event (a loop over the banks collects the views to gather). When the
room runs out the table grows (doubling, one copy of what is held); the ADARA listener gives
its detector buffer the room its byte bound allows, so that only happens to beam monitors (and,
under strict overcommit, where reserved address space counts as used, to every buffer).

:meth:`PulseEvents.to_events` then makes the chunk's binned variable over the filled part of
the table without a copy (scipp shares the memory of a sliced buffer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import scipp as sc

from livereduce.adara import packets
from livereduce.worker.listeners.base import bin_by_pulse

EVENT_BYTES = 12
"""Memory per held event: int32 pixel ID, float32 time of flight, float32 count."""
FIRST_CAPACITY = 1 << 12
"""Default room (events) of a new buffer, as the listener's beam monitors get it: they are
quiet (real runs carry about one monitor event per pulse), so they start small and grow."""
FLOAT32_EXACT = 1 << 24
"""Integers below 2**24 are exact in float32 (24-bit significand)."""
PULSE_BYTES = 72
"""Memory held per buffered pulse: its time and first-event index, each an int in a list
(a list slot of 8 bytes and an int object of 28, CPython 3.11)."""

_TEN = np.float32(10.0)
_FLOAT32_EXACT_BITS = np.float32(FLOAT32_EXACT).view(np.uint32)


class BankDrops(NamedTuple):
    """Events of a banked event packet that :meth:`PulseEvents.add_banked` did not keep:
    in the error pseudo-bank, in the unmapped pseudo-bank, and (with ``keep`` False) the
    events it would have kept."""

    error_bank: int
    unmapped_bank: int
    not_kept: int


def tof_to_us(tof_100ns: np.ndarray | Sequence[np.ndarray], out: np.ndarray) -> None:
    """Write ``tof_100ns`` ((N,) uint32, 100 ns units, any stride; or a sequence of such arrays,
    taken one after the other) as float32 µs into ``out`` ((N,) float32, N the total length),
    equal bit for bit to ``float32(float64(t) / 10)``.

    Below 2**24 a tof is exact in float32, and a float32 division of two exact float32 operands
    is correctly rounded, as is the float64 division then rounded to float32: float64 has more
    than 2 * 24 + 2 significand bits, so the double rounding cannot differ (Figueroa, "When is
    double rounding innocuous?", SIGNUM 1995). So the float32 division gives the float64 result
    without a float64 temporary. (A float32 multiplication by 0.1 would not: 0.1 is inexact.)
    Larger values (over 1.67 s, only a broken or hostile stream sends them) take the float64
    path. The arrays are gathered and cast in one pass into ``out``, then divided in place
    there (``out`` is still in the cache). Raises ValueError when the lengths differ.
    """
    parts = [tof_100ns] if isinstance(tof_100ns, np.ndarray) else list(tof_100ns)
    if _gather_exact(parts, out):
        np.divide(out, _TEN, out=out)
    else:
        _to_us_float64(parts, out)


def _gather_exact(parts: list[np.ndarray], out: np.ndarray) -> bool:
    """The first half of :func:`tof_to_us`: ``parts`` gathered into ``out`` as float32 in 100
    ns units, in one pass; True when all are below 2**24, so exact (``out`` then only needs
    the float32 division by 10), False when ``out`` needs :func:`_to_us_float64`. Raises
    ValueError when the lengths differ."""
    if sum(len(part) for part in parts) != len(out) or any(p.ndim != 1 for p in parts):
        shapes = [part.shape for part in parts]
        raise ValueError(f"tof of shapes {shapes} into an output of shape {out.shape}")
    if not len(out):
        return True
    # Read as int32 (numpy converts int32 to float32 twice as fast as uint32): equal below
    # 2**31, negative above. Exact below 2**24, and monotonic; and the bits of a float32 of
    # [0, 2**24), read as uint32, are below those of 2**24 (a negative one has the sign bit):
    # one maximum tells whether all are in [0, 2**24).
    np.concatenate([part.view(np.int32) for part in parts], out=out, casting="unsafe")
    return bool(out.view(np.uint32).max() < _FLOAT32_EXACT_BITS)


def _to_us_float64(parts: list[np.ndarray], out: np.ndarray) -> None:
    """``float32(float64(t) / 10)`` of ``parts`` into ``out``, for values of 2**24 and more."""
    np.divide(np.concatenate(parts), 10.0, out=out, casting="unsafe")


class PulseEvents:
    """Events of consecutive pulses of one chunk: detector events of banked event packets or
    the events of one beam monitor, with room for ``capacity`` events before the table grows.

    ``add_pulse(pulse_ns)`` opens a pulse (one ``event_time_zero`` bin, Unix ns); every
    ``add_events`` until the next ``add_pulse`` adds to it. Not thread-safe: the listener holds
    its lock around both sides. After :meth:`to_events` the buffer must not be added to (the
    chunk shares its memory).

    Two steps of the conversion wait for :meth:`to_events`, which the engine's thread calls on
    a buffer the listener has let go: the times of flight are gathered as exact float32 in
    100 ns units and divided by 10 there (one pass over the chunk; a packet with values of
    2**24 or more is converted at once, by the float64 path, and what waited before it with
    it), and the counts are set to one there. That takes over a quarter of the per-event work
    off the listener's thread, the busier one under a light script; the chunk is the same.
    """

    def __init__(self, capacity: int = FIRST_CAPACITY) -> None:
        self._pulse_ns: list[int] = []
        self._pulse_begin: list[int] = []
        self._events = 0
        self._scaled = 0  # times of flight [0, _scaled) are in µs, the rest in 100 ns
        self._weighted = 0  # counts [0, _weighted) are set
        self._ids: np.ndarray = np.empty(0, dtype=np.int32)
        self._tofs: np.ndarray = np.empty(0, dtype=np.float32)
        self._weights: np.ndarray = np.empty(0, dtype=np.float32)
        self._allocate(max(1, capacity))

    def _allocate(self, capacity: int) -> None:
        """A new table of ``capacity`` events holding the events so far (one copy of them)."""
        ids = sc.empty(dims=["event"], shape=[capacity], dtype="int32", unit=None)
        tofs = sc.empty(dims=["event"], shape=[capacity], dtype="float32", unit="us")
        weights = sc.empty(dims=["event"], shape=[capacity], dtype="float32", unit="counts")
        held = self._events
        if held:
            ids.values[:held] = self._ids[:held]
            tofs.values[:held] = self._tofs[:held]
            weights.values[: self._weighted] = self._weights[: self._weighted]
        self._table = sc.DataArray(weights, coords={"event_id": ids, "event_time_offset": tofs})
        self._ids, self._tofs, self._weights = ids.values, tofs.values, weights.values

    @property
    def events(self) -> int:
        """Events held."""
        return self._events

    @property
    def pulses(self) -> int:
        """Pulses held."""
        return len(self._pulse_ns)

    @property
    def capacity(self) -> int:
        """Room of the table, in events."""
        return len(self._ids)

    @property
    def nbytes(self) -> int:
        """Memory held, in bytes: :data:`EVENT_BYTES` per event and :data:`PULSE_BYTES` per
        pulse (the free room of the table is not resident until written)."""
        return EVENT_BYTES * self._events + PULSE_BYTES * len(self._pulse_ns)

    def add_pulse(self, pulse_ns: int) -> None:
        """Open the next pulse, at Unix time ``pulse_ns``."""
        self._pulse_ns.append(pulse_ns)
        self._pulse_begin.append(self._events)

    def add_events(self, pairs: np.ndarray, tof_offset_100ns: int = 0) -> None:
        """Add ``pairs`` ((K, 2) uint32 ``(tof_100ns, pixel_id)``, e.g. a bank section's
        ``events``) to the open pulse, ``tof_offset_100ns`` added to each time of flight
        (modulo 2**32, as uint32 arithmetic on the wire values). Pixel IDs become int32 as
        ``astype(int32)`` makes them (values over 2**31 wrap). Raises RuntimeError when no
        pulse is open."""
        tof = pairs[:, 0]
        if tof_offset_100ns:
            tof = tof + np.uint32(tof_offset_100ns)
        self._add_columns([tof], [pairs[:, 1]])

    def _add_columns(
        self,
        tofs: list[np.ndarray],
        pixels: list[np.ndarray],
        screen: Callable[[np.ndarray], np.ndarray | None] | None = None,
    ) -> None:
        """Add the events whose times of flight (100 ns) and pixel IDs are the arrays of
        ``tofs`` and ``pixels`` ((K_i,) uint32 each, any stride), one after the other, to the
        open pulse: one gathering numpy call per field for all of them. ``screen`` as for
        :meth:`add_banked`; the events it marks are taken out again."""
        if not self._pulse_ns:
            raise RuntimeError("events added before any pulse")
        count = sum(len(part) for part in pixels)
        if not count:
            return
        begin, end = self._events, self._events + count
        if end > len(self._ids):
            self._allocate(max(end, 2 * len(self._ids)))
        ids = self._ids[begin:end]
        # the int32 bits of a uint32 are what astype(int32) makes of it: a plain copy
        np.concatenate(pixels, out=ids.view(np.uint32))
        exact = _gather_exact(tofs, self._tofs[begin:end])
        if not exact:
            self._scale()  # what waited, so that [0, end) is all in µs
            _to_us_float64(tofs, self._tofs[begin:end])
        invalid = screen(ids.view(np.uint32)) if screen is not None else None
        if invalid is not None:
            kept = ~invalid
            end = begin + int(np.count_nonzero(kept))
            self._ids[begin:end] = ids[kept]
            self._tofs[begin:end] = self._tofs[begin : begin + count][kept]
        self._events = end
        if not exact:
            self._scaled = end

    def _scale(self) -> None:
        """Divide the times of flight that wait by 10 (100 ns -> µs)."""
        waiting = self._tofs[self._scaled : self._events]
        np.divide(waiting, _TEN, out=waiting)
        self._scaled = self._events

    def _finish(self) -> None:
        """Complete the held events: times of flight in µs, counts set to one."""
        self._scale()
        self._weights[self._weighted : self._events] = 1.0
        self._weighted = self._events

    def add_banked(
        self,
        packet: packets.BankedEvent,
        screen: Callable[[np.ndarray], np.ndarray | None] | None = None,
        *,
        keep: bool = True,
    ) -> BankDrops:
        """Add one banked event packet as a pulse (header time = pulse time): the events of
        its real banks, each source's TOF offset added where the source has not applied it.
        ``screen(pixel_id)`` ((K,) uint32: the packet's kept pixel IDs, in wire order) may
        return a (K,) bool mask of events to leave out (None: keep all). With ``keep`` False
        nothing is added (a paused pulse), but the screen still runs and the drops are
        counted. Returns what was not kept. A bounded number of numpy calls per packet,
        whatever its banks: the banks' columns are gathered by one call per field."""
        error_bank = unmapped_bank = not_kept = 0
        tofs: list[np.ndarray] = []
        pixels: list[np.ndarray] = []
        for source in packet.sources:
            offset = 0 if source.tof_corrected else source.tof_offset_100ns
            for bank in source.banks:
                pairs = bank.events
                if not len(pairs):
                    continue
                if bank.bank_id == packets.ERROR_BANK_ID:
                    error_bank += len(pairs)
                    continue
                if bank.bank_id == packets.UNMAPPED_BANK_ID:
                    unmapped_bank += len(pairs)
                    continue
                tofs.append(pairs[:, 0] + np.uint32(offset) if offset else pairs[:, 0])
                pixels.append(pairs[:, 1])
        if keep:
            self.add_pulse(packet.timestamp_ns)
            self._add_columns(tofs, pixels, screen)
        elif pixels:
            ids = np.concatenate(pixels)
            invalid = screen(ids) if screen is not None else None
            not_kept = len(ids) - (int(np.count_nonzero(invalid)) if invalid is not None else 0)
        return BankDrops(error_bank, unmapped_bank, not_kept)

    def extend(self, later: PulseEvents) -> None:
        """Append the pulses of ``later`` (received after these): one copy of its events."""
        self._finish()
        later._finish()
        count = later.events
        begin, end = self._events, self._events + count
        if end > len(self._ids):
            self._allocate(max(end, 2 * len(self._ids)))
        self._ids[begin:end] = later._ids[:count]
        self._tofs[begin:end] = later._tofs[:count]
        self._weights[begin:end] = later._weights[:count]
        self._pulse_ns.extend(later._pulse_ns)
        self._pulse_begin.extend(first + begin for first in later._pulse_begin)
        self._events = self._scaled = self._weighted = end

    def add_monitor_events(self, monitor_id: int, tof_100ns: np.ndarray) -> None:
        """Add monitor events to the open pulse: ``tof_100ns`` ((K,) uint32), ``event_id`` =
        ``monitor_id``."""
        pairs = np.empty((len(tof_100ns), 2), np.uint32)
        pairs[:, 0] = tof_100ns
        pairs[:, 1] = monitor_id
        self.add_events(pairs)

    def to_events(self) -> sc.DataArray:
        """The events in the scippnexus NXevent_data layout of
        :func:`~livereduce.worker.listeners.base.make_events`, over the filled part of the
        table (no copy), after the conversion steps that waited (see the class docstring)."""
        self._finish()
        begin = np.array(self._pulse_begin, dtype=np.int64)
        end = np.empty_like(begin)
        end[:-1] = begin[1:]
        end[-1:] = self._events
        table = self._table["event", : self._events]
        return bin_by_pulse(np.array(self._pulse_ns, dtype=np.int64), begin, end, table)
