"""Events of consecutive pulses, gathered from ADARA event packets as they arrive and turned
into a chunk's scipp events with one pass per field.

The reader side (:meth:`PulseEvents.add_pulse`, :meth:`PulseEvents.add_events`) costs a bounded
number of numpy calls per packet and section and none per event: each bank's ``(tof_100ns,
pixel_id)`` pairs (a view on the packet's bytes, as the parser gives them) are copied with one
memcpy into the free end of a preallocated block. Blocks are never moved or copied when more
events come: a full block is kept and a new one, twice the size up to :data:`BLOCK_EVENTS`, is
started, so growth costs no copy of what is held and at most one partly filled block is spare.

The extraction side (:meth:`PulseEvents.to_events`) allocates the chunk's scipp variables once
and fills their memory directly, block by block: ``event_id`` by a cast of the pixel column,
``event_time_offset`` by :func:`tof_to_us` (100 ns units -> µs). There is no concatenated
temporary and no second copy when the scipp variables are made.
"""

from __future__ import annotations

import numpy as np
import scipp as sc

from livereduce.worker.listeners.base import bin_by_pulse

BLOCK_EVENTS = 1 << 20
"""Events of the largest block (8 MiB of pairs): large enough that the per-block Python work of
an extraction is nothing beside its copies, small enough that the spare room of a partly filled
block is small beside what a busy stream buffers."""
FIRST_BLOCK_EVENTS = 1 << 12
"""Events of the first block: a quiet stream (real runs carry about one event per pulse) keeps
a small buffer per chunk."""
FLOAT32_EXACT = 1 << 24
"""Integers below 2**24 are exact in float32 (24-bit significand)."""
PULSE_BYTES = 72
"""Memory held per buffered pulse: its time and first-event index, each an int in a list
(a list slot of 8 bytes and an int object of 28, CPython 3.11)."""

_TEN = np.float32(10.0)


def tof_to_us(tof_100ns: np.ndarray, out: np.ndarray) -> None:
    """Write ``tof_100ns`` ((N,) uint32, 100 ns units, any stride) as float32 µs into ``out``
    ((N,) float32), equal bit for bit to ``float32(float64(t) / 10)``.

    Below 2**24 a tof is exact in float32, and a float32 division of two exact float32 operands
    is correctly rounded, as is the float64 division then rounded to float32: float64 has more
    than 2 * 24 + 2 significand bits, so the double rounding cannot differ (Figueroa, "When is
    double rounding innocuous?", SIGNUM 1995). So the float32 division gives the float64 result
    without a float64 temporary. (A float32 multiplication by 0.1 would not: 0.1 is inexact.)
    Larger values (over 1.67 s, only a broken or hostile stream sends them) take the float64
    path. Raises ValueError when the shapes differ.
    """
    if tof_100ns.shape != out.shape:
        raise ValueError(f"tof of shape {tof_100ns.shape} into an output of shape {out.shape}")
    if not len(tof_100ns):
        return
    if int(tof_100ns.max()) < FLOAT32_EXACT:
        np.divide(tof_100ns, _TEN, out=out, dtype=np.float32)
    else:
        np.divide(tof_100ns, 10.0, out=out, casting="unsafe")


class PulseEvents:
    """Events of consecutive pulses of one chunk: detector events of banked event packets or
    the events of one beam monitor.

    ``add_pulse(pulse_ns)`` opens a pulse (one ``event_time_zero`` bin, Unix ns); every
    ``add_events`` until the next ``add_pulse`` adds to it. Not thread-safe: the listener holds
    its lock around both sides.
    """

    def __init__(self) -> None:
        self._pulse_ns: list[int] = []
        self._pulse_begin: list[int] = []
        self._blocks: list[np.ndarray] = []
        self._fill = 0  # events in the last block
        self._full = 0  # events in the blocks before the last

    @property
    def events(self) -> int:
        """Events held."""
        return self._full + self._fill

    @property
    def pulses(self) -> int:
        """Pulses held."""
        return len(self._pulse_ns)

    @property
    def nbytes(self) -> int:
        """Memory held, in bytes: 8 per event and :data:`PULSE_BYTES` per pulse. The free room
        of the last block is not counted: its pages are not resident until written (blocks of
        a busy stream are large enough to be fresh mmaps), and it is at most one block."""
        return 8 * self.events + PULSE_BYTES * len(self._pulse_ns)

    def add_pulse(self, pulse_ns: int) -> None:
        """Open the next pulse, at Unix time ``pulse_ns``."""
        self._pulse_ns.append(pulse_ns)
        self._pulse_begin.append(self._full + self._fill)

    def add_events(self, pairs: np.ndarray, tof_offset_100ns: int = 0) -> None:
        """Add ``pairs`` ((K, 2) uint32 ``(tof_100ns, pixel_id)``, e.g. a bank section's
        ``events``) to the open pulse, ``tof_offset_100ns`` added to each time of flight
        (modulo 2**32, as uint32 arithmetic on the wire values). Raises RuntimeError when no
        pulse is open."""
        if not self._pulse_ns:
            raise RuntimeError("events added before any pulse")
        done, total = 0, len(pairs)
        while done < total:
            room = len(self._blocks[-1]) - self._fill if self._blocks else 0
            if not room:
                self._new_block()
                continue
            take = min(room, total - done)
            target = self._blocks[-1][self._fill : self._fill + take]
            target[...] = pairs[done : done + take]
            if tof_offset_100ns:
                target[:, 0] += np.uint32(tof_offset_100ns)
            self._fill += take
            done += take

    def add_monitor_events(self, monitor_id: int, tof_100ns: np.ndarray) -> None:
        """Add monitor events to the open pulse: ``tof_100ns`` ((K,) uint32), ``event_id`` =
        ``monitor_id``."""
        pairs = np.empty((len(tof_100ns), 2), np.uint32)
        pairs[:, 0] = tof_100ns
        pairs[:, 1] = monitor_id
        self.add_events(pairs)

    def _new_block(self) -> None:
        size = min(BLOCK_EVENTS, 2 * len(self._blocks[-1])) if self._blocks else FIRST_BLOCK_EVENTS
        self._full += self._fill
        self._blocks.append(np.empty((size, 2), np.uint32))
        self._fill = 0

    def to_events(self) -> sc.DataArray:
        """The events in the scippnexus NXevent_data layout of
        :func:`~livereduce.worker.listeners.base.make_events`: ``event_id`` int32 (the wire's
        uint32 reinterpreted, as ``astype(int32)`` does), ``event_time_offset`` float32 µs from
        :func:`tof_to_us`, data float32 ones."""
        n = self.events
        event_id = sc.empty(dims=["event"], shape=[n], dtype="int32", unit=None)
        offset_us = sc.empty(dims=["event"], shape=[n], dtype="float32", unit="us")
        ids, tofs = event_id.values, offset_us.values
        position = 0
        for index, block in enumerate(self._blocks):
            used = self._fill if index == len(self._blocks) - 1 else len(block)
            stop = position + used
            np.copyto(ids[position:stop], block[:used, 1], casting="unsafe")
            tof_to_us(block[:used, 0], tofs[position:stop])
            position = stop
        begin = np.array(self._pulse_begin, dtype=np.int64)
        end = np.empty_like(begin)
        end[:-1] = begin[1:]
        end[-1:] = n
        return bin_by_pulse(
            np.array(self._pulse_ns, dtype=np.int64), begin, end, event_id, offset_us
        )
