"""Events consumed but not yet given to the engine, kept until run control says whose they are.

Entries are whole messages (per-message Python work only; per-event work is numpy). Taking a
run's share keeps pulses at or after the run's stop for the next run and drops pulses before
its start (no run will claim them). :func:`merge_pulses` then turns the taken pieces into one
event list with one pulse per distinct ``reference_time``, as the ADARA listener's chunks have.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from livereduce.kafka.runs import KafkaRun
from livereduce.kafka.wire import EventMessage

PartitionKey = tuple[str, int]
"""(topic, partition)."""


@dataclass(slots=True)
class _Entry:
    key: PartitionKey
    offset: int
    message: EventMessage


@dataclass(slots=True)
class Taken:
    """What :meth:`PendingEvents.take` handed out: ``pieces`` (messages, or their pulses inside
    the run), ``dropped`` (events before the run's start) and ``offsets`` (partition -> the
    lowest and highest offset of the messages fully handed out or dropped)."""

    pieces: list[EventMessage] = field(default_factory=list)
    dropped: int = 0
    offsets: dict[PartitionKey, tuple[int, int]] = field(default_factory=dict)


class PendingEvents:
    """The buffer of consumed event messages; ``event_count`` is what it holds."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []
        self.event_count = 0

    def add(self, key: PartitionKey, offset: int, message: EventMessage) -> None:
        """Keep ``message`` (from ``key`` at ``offset``) until a run takes it."""
        self._entries.append(_Entry(key, offset, message))
        self.event_count += message.event_count

    def take(self, run: KafkaRun) -> Taken:
        """Hand out the pulses inside ``run``, drop those before its start, keep the rest."""
        taken = Taken()
        kept: list[_Entry] = []
        for entry in self._entries:
            message = entry.message
            times = message.reference_time_ns
            before = times < run.start_ns
            inside = ~before if run.stop_ns is None else ~before & (times < run.stop_ns)
            counts = message.pulse_event_counts
            if before.any():
                taken.dropped += int(counts[before].sum())
            if inside.all():
                taken.pieces.append(message)
            elif inside.any():
                taken.pieces.append(_pulses(message, inside))
            later = ~(before | inside)
            if later.any():
                rest = message if not (before | inside).any() else _pulses(message, later)
                kept.append(_Entry(entry.key, entry.offset, rest))
            else:
                low, high = taken.offsets.get(entry.key, (entry.offset, entry.offset))
                taken.offsets[entry.key] = (min(low, entry.offset), max(high, entry.offset))
        self._entries = kept
        self.event_count = sum(entry.message.event_count for entry in kept)
        return taken

    def drop_oldest(self, keep_events: int) -> int:
        """Drop the oldest messages until at most ``keep_events`` events remain; returns how
        many events were dropped (the bound on memory while no run claims them)."""
        dropped = 0
        while self._entries and self.event_count > keep_events:
            entry = self._entries.pop(0)
            self.event_count -= entry.message.event_count
            dropped += entry.message.event_count
        return dropped

    def drop_partitions(self, keys: set[PartitionKey]) -> int:
        """Forget the messages of ``keys`` (partitions this instance no longer owns: their new
        owner reads them again from the committed offset). Returns the events dropped."""
        dropped = sum(e.message.event_count for e in self._entries if e.key in keys)
        self._entries = [e for e in self._entries if e.key not in keys]
        self.event_count -= dropped
        return dropped

    def lowest_offsets(self) -> dict[PartitionKey, int]:
        """Partition -> the lowest offset still held (a commit must not pass it)."""
        lowest: dict[PartitionKey, int] = {}
        for entry in self._entries:
            if entry.key not in lowest or entry.offset < lowest[entry.key]:
                lowest[entry.key] = entry.offset
        return lowest


def _pulses(message: EventMessage, keep: np.ndarray) -> EventMessage:
    counts = message.pulse_event_counts
    event_keep = np.repeat(keep, counts)
    return EventMessage(
        source_name=message.source_name,
        message_id=message.message_id,
        reference_time_ns=message.reference_time_ns[keep],
        pulse_event_counts=counts[keep],
        event_id=message.event_id[event_keep],
        event_time_offset_us=message.event_time_offset_us[event_keep],
    )


def merge_pulses(
    pieces: list[EventMessage],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One pulse per distinct reference time, in time order: (pulse times ns (P,), events per
    pulse (P,), event_id (N,), event_time_offset µs (N,)). Events of one pulse keep the order
    of ``pieces``."""
    if not pieces:
        return (
            np.empty(0, np.int64),
            np.empty(0, np.int64),
            np.empty(0, np.int32),
            np.empty(0, np.float32),
        )
    times = np.concatenate([p.reference_time_ns for p in pieces])
    counts = np.concatenate([p.pulse_event_counts for p in pieces])
    event_id = np.concatenate([p.event_id for p in pieces])
    tof = np.concatenate([p.event_time_offset_us for p in pieces])
    if times.size <= 1 or bool(np.all(np.diff(times) > 0)):
        return times, counts, event_id, tof
    order = np.argsort(times, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    event_order = np.argsort(np.repeat(rank, counts), kind="stable")
    sorted_times = times[order]
    unique, first = np.unique(sorted_times, return_index=True)
    merged_counts = np.add.reduceat(counts[order], first)
    return unique, merged_counts, event_id[event_order], tof[event_order]
