"""Kafka streams (ESS, ISIS): Mantid's KafkaEventListener on confluent-kafka (docs/kafka.md).

``address`` is the bootstrap server list. ``listener_options``:

- ``event_topics`` (list of topic names; ev44, ev42 read as well), ``log_topics`` (f144),
  ``run_topic`` (pl72 / 6s4t; required), ``source_names`` (``{"events": [...], "logs": [...]}``,
  only those sources are kept; absent: all);
- ``kafka``: librdkafka properties (security, SASL, ...), see :mod:`livereduce.kafka.client`
  for the environment variables that carry secrets;
- ``group_id``: join this consumer group on the event topics and reduce only the partitions it
  assigns (scale-out); with it, ``results_topic`` gets this instance's partial result after
  every chunk and ``<output_dir>/<output_workspace>_<run>.h5`` holds it on disk;
- ``run_end_grace_sec`` (default 2): after a run's stop is known, how long a partition whose
  data have not yet passed the stop time may stay silent before the run counts as ended;
- ``max_pending_events`` (default 2e7): events held while no announced run claims them.

Runs come from run control, keyed to data time (:mod:`livereduce.kafka.runs`). At start the run
topic is read from its earliest retained offset; ``start_from`` ``start_of_run`` then starts with
the run that started last (finished or not, as Mantid's FromStartOfRun), a :class:`Resume` with
the run it names, ``now`` with the current run from the live position. Event and log partitions
are positioned with ``offsets_for_times`` where the broker honours it (probed once: a lookup far
in the future must answer "no such offset"), else at their earliest retained offset, and events
are filtered by time either way. The high watermark is never taken as the end of a run: a run
ends when its stop is known and every assigned partition has passed it, or has been read to
its end and stayed there for ``run_end_grace_sec`` (in a consumer group, not before the session
timeout has passed too, so that a dead member's partitions have been handed over). Chunks
carry what was left out or unreadable in ``input_counts`` (kinds: :data:`INPUT_KINDS`).

A broker down at start or later is retried by librdkafka with backoff (200 ms to 5 s); the
listener logs ``kafka_broker_down`` / ``kafka_reconnected`` and raises NotYet while it has not
reached the broker yet. ``streams`` gives per event topic the lag (high watermark minus
position, summed over partitions, never below 0), events/s and malformed messages for the
status.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import scipp as sc
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka import Message as KafkaMessage

from livereduce.atomic import write_atomically
from livereduce.config import Config, ConfigError, RunTransitionBehavior, StartFrom
from livereduce.delays import doubling_delay_s
from livereduce.kafka import client
from livereduce.kafka.partials import Partial, encode_partial
from livereduce.kafka.pending import PartitionKey, PendingEvents, merge_pulses
from livereduce.kafka.runs import KafkaRun, RunTable
from livereduce.kafka.wire import (
    NS_PER_MS,
    EventMessage,
    IgnoredMessage,
    LogMessage,
    MalformedMessage,
    RunStart,
    RunStop,
    decode,
)
from livereduce.protocol import Resume
from livereduce.worker.listeners.base import (
    Chunk,
    ListenerBase,
    ListenerError,
    NotYet,
    RunInfo,
    empty_events,
    make_events,
)

log = logging.getLogger(__name__)

POLL_BUDGET_S = 1.0
"""Longest one extract spends draining the consumers: well under the heartbeat interval, so a
fast stream shows up as lag, never as a silent worker."""
CONNECT_TIMEOUT_S = 1.0
"""One metadata request while the broker has not been reached; NotYet after it."""
CONNECT_RETRY_FIRST_S = 0.5
CONNECT_RETRY_MAX_S = 10.0
"""Backoff between metadata attempts before the broker was ever reached (then librdkafka's own
reconnection backoff takes over)."""
SEEK_MARGIN_MS = 10_000
"""Seek this much before a run's start by message timestamp: producers stamp a pulse's message
when they send it, which can be later than the pulse."""
MAX_AHEAD_NS = 3600 * 10**9
"""Pulses this far ahead of the wall clock are insane (a corrupt time, not clock skew): their
message is dropped and counted as malformed, so it can neither end a run nor sit in the buffer."""
RESUMABLE = True
"""This listener honours a :class:`~livereduce.protocol.Resume` (``from_config(resume=...)``):
it reaches back to that run's start and completes it first."""

INPUT_KINDS = {
    "malformed": "malformed_messages",
    "ignored": "ignored_messages",
    "outside_runs": "events_outside_runs",
    "revoked": "events_handed_over",
}
"""``counts`` -> the kinds of ``Chunk.input_counts`` (malformed_messages is a stream fault)."""

MALFORMED_LOG_FIRST = 10
MALFORMED_LOG_EVERY = 1000
"""Bad messages logged: the first ten, then every thousandth (each line gives the count)."""
PROBE_FUTURE_MS = 86_400_000 * 365
"""A lookup this far ahead must answer "no such offset" from a broker that honours it."""


class ListenerState(StrEnum):
    """What the Kafka listener is doing."""

    CONNECTING = "connecting"  # broker not reached, topics not found
    READING_RUNS = "reading_runs"  # reading the run topic's history
    WAITING_FOR_RUN = "waiting_for_run"
    IN_RUN = "in_run"


class KafkaListener(ListenerBase):
    """Chunks from Kafka; see the module docstring. ``clock``: monotonic seconds (tests)."""

    def __init__(  # noqa: PLR0915 - one line per piece of explicit state
        self,
        bootstrap: str,
        *,
        run_topic: str,
        event_topics: Sequence[str] = (),
        log_topics: Sequence[str] = (),
        event_sources: Sequence[str] | None = None,
        log_sources: Sequence[str] | None = None,
        kafka_options: Mapping[str, Any] | None = None,
        group_id: str | None = None,
        results_topic: str | None = None,
        partial_dir: Path | None = None,
        output_workspace: str = "result",
        run_end_grace_s: float = 2.0,
        max_pending_events: int = 20_000_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
        resume: Resume | None = None,
    ) -> None:
        self.name = f"kafka {bootstrap}"
        self._bootstrap = bootstrap
        self._run_topic = run_topic
        self._event_topics = tuple(event_topics)
        self._log_topics = tuple(log_topics)
        self._event_sources = frozenset(event_sources) if event_sources is not None else None
        self._log_sources = frozenset(log_sources) if log_sources is not None else None
        self._options = dict(kafka_options or {})
        self._group_id = group_id
        self._results_topic = results_topic
        self._partial_dir = partial_dir
        self._output_workspace = output_workspace
        self._grace_s = run_end_grace_s
        self._max_pending = max_pending_events
        self._clock = clock
        self._wall_clock_ns = wall_clock_ns
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        self.lstate = ListenerState.CONNECTING
        self.connected = False
        self.state = f"connecting to the Kafka broker at {bootstrap}"
        self.runs = RunTable()
        self.counts = {"ignored": 0, "malformed": 0, "outside_runs": 0, "revoked": 0}
        self._streams: dict[str, dict[str, float]] = {}
        self._pending = PendingEvents()
        self._malformed_by_topic: dict[str, int] = {}
        self._pending_logs: list[LogMessage] = []
        self._control: Consumer | None = None
        self._events: Consumer | None = None
        self._producer: Producer | None = None
        self._start_from = StartFrom.START_OF_RUN
        self._resume = resume
        self._reported: dict[str, int] = {}
        self._attempts = 0
        self._next_attempt = 0.0
        self._run_partitions: list[TopicPartition] = []
        self._run_eof: set[int] = set()
        self._start_ns: int | None = None
        self._seek_by_time = False
        self._metadata: Any = None
        self._positioned_ns = 0
        self._from_now = False
        self._current: KafkaRun | None = None
        self._previous: KafkaRun | None = None
        self._begins = False
        self._stop_known_at: float | None = None
        self._owned: set[PartitionKey] = set()
        self._latest_time: dict[PartitionKey, int] = {}
        self._at_end: set[PartitionKey] = set()
        self._assigned = False
        session_ms = self._options.get(
            "session.timeout.ms", client.CONSUMER_DEFAULTS["session.timeout.ms"]
        )
        self._group_settle_s = float(session_ms) / 1000 + run_end_grace_s
        self._caught_up = False
        self._next_offset: dict[PartitionKey, int] = {}
        self._covers: dict[PartitionKey, list[int]] = {}
        self._rate_counts: dict[str, int] = {}
        self._rate_since = clock()
        self._partial_sequence = 0

    # -- start -------------------------------------------------------------------------

    def start(self, start_from: StartFrom) -> None:
        """Create the consumers; connecting happens in :meth:`extract_data` (never blocks)."""
        self._start_from = start_from
        base = client.settings(self._bootstrap, self._options, role="consumer")
        control = dict(base, **{"group.id": f"livereduce-control-{self.instance}"})
        control["error_cb"] = self._on_error
        self._control = Consumer(control)
        events = dict(base)
        events["group.id"] = self._group_id or f"livereduce-{self.instance}"
        events["error_cb"] = self._on_error
        self._events = Consumer(events)
        if self._results_topic:
            producer = client.settings(self._bootstrap, self._options, role="producer")
            producer["error_cb"] = self._on_error
            self._producer = Producer(producer)
        log.info(
            "kafka_listener_started: %s, run topic %s, event topics %s, log topics %s, group %s, "
            "settings %s",
            self._bootstrap, self._run_topic, ", ".join(self._event_topics) or "none",
            ", ".join(self._log_topics) or "none", self._group_id or "none (all partitions)",
            client.redacted(base),
        )  # fmt: skip

    def _on_error(self, error: KafkaError) -> None:
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            if self.connected:
                log.warning("kafka_broker_down: %s; librdkafka reconnects with backoff", error)
            self.connected = False
            self.state = f"reconnecting to the Kafka broker at {self._bootstrap}: {error.str()}"
        else:
            log.warning("kafka_error: %s", error)

    def _mark_connected(self) -> None:
        if not self.connected:
            verb = "kafka_connected" if self._attempts <= 1 else "kafka_reconnected"
            log.info("%s: broker %s answers", verb, self._bootstrap)
            self.connected = True
            self.state = f"connected to {self._bootstrap}"

    def _connect(self) -> None:
        """Find the topics; on success assign the run topic from its earliest offset."""
        control = self._started(self._control)
        now = self._clock()
        if now < self._next_attempt:
            raise NotYet(self.state)
        self._attempts += 1
        try:
            metadata = control.list_topics(timeout=CONNECT_TIMEOUT_S)
        except KafkaException as error:
            delay = doubling_delay_s(self._attempts, CONNECT_RETRY_FIRST_S, CONNECT_RETRY_MAX_S)
            self._next_attempt = now + delay
            self.state = (
                f"cannot reach the Kafka broker at {self._bootstrap} "
                f"(attempt {self._attempts}, next in {delay:g} s): {error}"
            )
            log.warning("kafka_broker_unreachable: %s", self.state)
            raise NotYet(self.state) from None
        self._mark_connected()
        topics = (self._run_topic, *self._event_topics, *self._log_topics)
        missing = [t for t in topics if t not in metadata.topics or metadata.topics[t].error]
        if missing:
            self._next_attempt = now + 2.0
            self.state = f"topic(s) {', '.join(missing)} not on the broker {self._bootstrap} yet"
            log.warning("kafka_topics_missing: %s", self.state)
            raise NotYet(self.state)
        self._metadata = metadata
        self._run_partitions = [
            TopicPartition(self._run_topic, p, OFFSET_BEGINNING)
            for p in sorted(metadata.topics[self._run_topic].partitions)
        ]
        control.assign(self._run_partitions)
        self.lstate = ListenerState.READING_RUNS
        self.state = f"reading run history from {self._run_topic}"

    def _position_streams(self) -> None:
        """The run history is read: choose the first run and the start time, then assign or
        subscribe the event topics and add the log topics."""
        control = self._started(self._control)
        events = self._started(self._events)
        first = self._first_run()
        self._current = first
        self._begins = first is not None
        if first is not None:
            log.info(
                "kafka_first_run: run %d (started %s)%s",
                first.number, _iso(first.start_ns),
                f", stopped {_iso(first.stop_ns)}" if first.stop_ns is not None else "",
            )  # fmt: skip
        self._from_now = self._start_from is StartFrom.NOW and self._resume is None
        if self._from_now:
            self._start_ns = None
        else:
            # No run yet: from the earliest retained offset, so a run announced later still
            # gets its events however its pl72 and its first pulses race each other.
            self._start_ns = first.start_ns if first is not None else 0
        self._seek_by_time = bool(self._start_ns) and self._probe_time_lookup()
        logs = [
            TopicPartition(topic, p, self._start_offset_for_time())
            for topic in self._log_topics
            for p in sorted(self._metadata.topics[topic].partitions)
        ]
        if logs:
            control.incremental_assign(self._seek(logs))
        if self._group_id:
            events.subscribe(
                list(self._event_topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_revoke,
            )
        else:
            partitions = [
                TopicPartition(topic, p, self._start_offset_for_time())
                for topic in self._event_topics
                for p in sorted(self._metadata.topics[topic].partitions)
            ]
            events.assign(self._seek(partitions))
            self._own(partitions)
        self._positioned_ns = time.time_ns()
        self.lstate = ListenerState.IN_RUN if first is not None else ListenerState.WAITING_FOR_RUN
        log.info(
            "kafka_streams_positioned: %s",
            "from now"
            if self._start_ns is None
            else f"from {_iso(self._start_ns)} "
            + ("by offsets_for_times" if self._seek_by_time else "(earliest offsets, by time)"),
        )

    def _first_run(self) -> KafkaRun | None:
        if self._resume is not None:
            run = self.runs.by_number(self._resume.run_number)
            if run is None:
                log.warning(
                    "kafka_resume_run_unknown: run %d (start %s) is not on %s; starting with "
                    "the latest run",
                    self._resume.run_number, _iso(self._resume.start_ns), self._run_topic,
                )  # fmt: skip
            else:
                return run
        latest = self.runs.latest()
        if self._start_from is StartFrom.NOW and latest is not None and latest.stop_explicit:
            return None  # between runs: wait for the next pl72
        return latest

    def _probe_time_lookup(self) -> bool:
        events = self._started(self._events)
        topic = self._event_topics[0] if self._event_topics else self._run_topic
        probe = TopicPartition(topic, 0, int(time.time() * 1000) + PROBE_FUTURE_MS)
        try:
            found = events.offsets_for_times([probe], timeout=5.0)[0]
        except KafkaException as error:
            log.info("kafka_time_lookup_unavailable: %s", error)
            return False
        honoured = found.offset < 0
        if not honoured:
            log.info(
                "kafka_time_lookup_not_honoured: a lookup a year ahead on %s answered offset %d; "
                "reading from the earliest offsets and filtering by time",
                topic, found.offset,
            )  # fmt: skip
        return honoured

    def _start_offset_for_time(self) -> int:
        if self._start_ns is None:
            return OFFSET_END
        return OFFSET_BEGINNING

    def _seek(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """With a time lookup the broker honours, start ``partitions`` just before the run."""
        if not self._seek_by_time or self._start_ns is None or not partitions:
            return partitions
        events = self._started(self._events)
        wanted = [
            TopicPartition(p.topic, p.partition, self._start_ns // NS_PER_MS - SEEK_MARGIN_MS)
            for p in partitions
        ]
        try:
            found = events.offsets_for_times(wanted, timeout=5.0)
        except KafkaException as error:
            log.warning("kafka_time_lookup_failed: %s; reading from the earliest offsets", error)
            return partitions
        return [
            TopicPartition(p.topic, p.partition, f.offset if f.offset >= 0 else OFFSET_END)
            for p, f in zip(partitions, found, strict=True)
        ]

    def _own(self, partitions: list[TopicPartition]) -> None:
        self._owned.update((p.topic, p.partition) for p in partitions)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed = consumer.committed(partitions, timeout=5.0)
        fresh = [p for p in committed if p.offset < 0]
        start = {(p.topic, p.partition): p.offset for p in self._seek(fresh)} if fresh else {}
        chosen = []
        for p in committed:
            if p.offset >= 0:
                offset = p.offset
            elif self._start_ns is None:
                offset = OFFSET_END
            else:
                offset = start.get((p.topic, p.partition), OFFSET_BEGINNING)
            chosen.append(TopicPartition(p.topic, p.partition, offset))
        consumer.assign(chosen)
        self._own(chosen)
        self._assigned = True
        log.info(
            "kafka_partitions_assigned: group %s gives this instance %s",
            self._group_id, ", ".join(f"{p.topic}[{p.partition}]@{p.offset}" for p in chosen),
        )  # fmt: skip

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(p.topic, p.partition) for p in partitions}
        dropped = self._pending.drop_partitions(keys)
        self.counts["revoked"] += dropped
        for key in keys:
            self._owned.discard(key)
            self._latest_time.pop(key, None)
            self._at_end.discard(key)
            self._next_offset.pop(key, None)
        consumer.unassign()
        log.info(
            "kafka_partitions_revoked: %s; %d consumed events not yet reduced are left to the "
            "next owner (it reads them again from the committed offset)",
            ", ".join(f"{t}[{p}]" for t, p in sorted(keys)), dropped,
        )  # fmt: skip

    # -- extract -----------------------------------------------------------------------

    def extract_data(self) -> Chunk:
        """Everything of the current run consumed since the previous call (module docstring).
        Raises NotYet until the broker is reached and the run history read."""
        if self._control is None or self._events is None:
            raise NotYet("the Kafka listener is not started")
        if self.lstate is ListenerState.CONNECTING:
            self._connect()
        if self.lstate is ListenerState.READING_RUNS:
            self._read_run_history()
            if self.lstate is ListenerState.READING_RUNS:
                raise NotYet(self.state)
        self._drain()
        self._update_streams()
        return self._chunk()

    def _read_run_history(self) -> None:
        control = self._started(self._control)
        deadline = self._clock() + POLL_BUDGET_S
        while self._clock() < deadline:
            message = control.poll(0.1)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._run_eof.add(_where(message)[1])
                    if len(self._run_eof) == len(self._run_partitions):
                        self._mark_connected()
                        log.info(
                            "kafka_run_history_read: %d run(s) on %s",
                            len(self.runs), self._run_topic,
                        )  # fmt: skip
                        self._position_streams()
                        return
                else:
                    log.warning("kafka_error: %s", error)
                continue
            self._route(message)

    def _drain(self) -> None:
        control = self._started(self._control)
        events = self._started(self._events)
        deadline = self._clock() + POLL_BUDGET_S
        busy = [control, events]
        self._caught_up = False
        while busy and self._clock() < deadline:
            for consumer in list(busy):
                batch = consumer.consume(2_000, timeout=0.02)
                if not batch:
                    busy.remove(consumer)
                for message in batch:
                    self._route(message)
        self._caught_up = events not in busy
        overflow = self._pending.event_count - self._max_pending
        if overflow > 0:
            dropped = self._pending.drop_oldest(self._max_pending)
            self.counts["outside_runs"] += dropped
            log.warning(
                "kafka_pending_overflow: %d events no announced run claims were dropped "
                "(max_pending_events %d)",
                dropped, self._max_pending,
            )  # fmt: skip

    def _route(self, message: KafkaMessage) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("kafka_error: %s", error)
            else:
                self._mark_connected()
                self._at_end.add(_where(message)[:2])
            return
        self._mark_connected()
        topic, partition, offset = _where(message)
        value = message.value() or b""
        try:
            decoded = decode(value)
        except IgnoredMessage:
            self.counts["ignored"] += 1
            return
        except MalformedMessage as bad:
            self._malformed(topic, f"{topic}[{partition}]@{offset}: {bad}")
            return
        if topic == self._run_topic and isinstance(decoded, RunStart | RunStop):
            changed = self.runs.add(decoded)
            if changed is not None:
                log.info("kafka_run_control: %s", _describe(decoded))
            return
        if topic in self._event_topics and isinstance(decoded, EventMessage):
            self._route_events((topic, partition), offset, decoded)
            return
        if topic in self._log_topics and isinstance(decoded, LogMessage):
            if self._log_sources is None or decoded.name in self._log_sources:
                self._pending_logs.append(decoded)
            return
        self.counts["ignored"] += 1

    def _malformed(self, topic: str, what: str) -> None:
        """Count a bad message (in total and per topic, for the status); log the first few,
        then one in MALFORMED_LOG_EVERY (a hostile stream must not fill the disk)."""
        self.counts["malformed"] += 1
        self._malformed_by_topic[topic] = self._malformed_by_topic.get(topic, 0) + 1
        count = self.counts["malformed"]
        if count <= MALFORMED_LOG_FIRST or count % MALFORMED_LOG_EVERY == 0:
            log.warning("kafka_message_malformed: %s (%d so far)", what, count)

    def _route_events(self, key: PartitionKey, offset: int, message: EventMessage) -> None:
        if key not in self._owned:
            return  # a fetch that raced a revoke
        self._next_offset[key] = offset + 1
        self._at_end.discard(key)
        if message.reference_time_ns.size:
            latest = int(message.reference_time_ns.max())
            if latest > self._wall_clock_ns() + MAX_AHEAD_NS:
                self._malformed(key[0], f"{key[0]}[{key[1]}]@{offset}: pulse {_iso(latest)} ahead")
                return
            self._latest_time[key] = max(self._latest_time.get(key, 0), latest)
        if self._event_sources is not None and message.source_name not in self._event_sources:
            self.counts["ignored"] += 1
            return
        self._rate_counts[key[0]] = self._rate_counts.get(key[0], 0) + message.event_count
        self._pending.add(key, offset, message)

    # -- chunks ------------------------------------------------------------------------

    def _chunk(self) -> Chunk:
        run = self._current
        if run is None:
            run = self._next_run()
            if run is None:
                self.lstate = ListenerState.WAITING_FOR_RUN
                self.state = f"waiting for a run start (pl72) on {self._run_topic}"
                self._keep_last_log_values()
                return Chunk(events=empty_events(), **self._chunk_status())
            self._current, self._begins = run, True
            self.lstate = ListenerState.IN_RUN
        run = self.runs.get(run.start.run_name) or run
        self._current = run
        taken = self._pending.take(run)
        self.counts["outside_runs"] += taken.dropped
        if taken.dropped:
            log.info(
                "kafka_events_outside_runs: %d events with pulse times before run %d's start "
                "dropped (%d so far): before the first run reduced, or late for the previous one",
                taken.dropped, run.number, self.counts["outside_runs"],
            )  # fmt: skip
        for key, (low, high) in taken.offsets.items():
            cover = self._covers.setdefault(key, [low, high + 1])
            cover[0], cover[1] = min(cover[0], low), max(cover[1], high + 1)
        times, counts, event_id, tof = merge_pulses(taken.pieces)
        ends = self._run_over(run)
        # A run begins with its first pulse (or its end): until then the engine stays idle and
        # keeps showing the previous run's output instead of replacing it with nothing.
        begins = self._begins and (times.size > 0 or ends)
        chunk = Chunk(
            events=make_events(times, counts, event_id, tof),
            logs=self._take_logs(run),
            run=_run_info(run),
            begins_run=begins,
            ends_run=ends,
            **self._chunk_status(),
        )
        self._begins = self._begins and not begins
        if ends:
            log.info(
                "kafka_run_complete: run %d, every partition past its stop %s",
                run.number, _iso(run.stop_ns or 0),
            )  # fmt: skip
            self._previous = run
            self._current = self._next_run()
            self._begins = self._current is not None
            self._stop_known_at = None
            if self._current is None:
                self.lstate = ListenerState.WAITING_FOR_RUN
        self.state = f"in run {run.number}" if not ends else f"run {run.number} ended"
        return chunk

    def _chunk_status(self) -> dict[str, Any]:
        """A chunk's ``connected``, ``activity`` and ``input_counts`` (what was left out or
        unreadable since the previous chunk, under the kinds of :data:`INPUT_KINDS`)."""
        counts = {}
        for name, kind in INPUT_KINDS.items():
            new = self.counts[name] - self._reported.get(name, 0)
            if new:
                counts[kind] = new
            self._reported[name] = self.counts[name]
        return {"connected": self.connected, "activity": self.state, "input_counts": counts}

    def _next_run(self) -> KafkaRun | None:
        """The run after the one given last. Before any: the first announced run, or from now
        the first that started after the listener did, or the current one."""
        if self._previous is not None:
            return self.runs.after(self._previous)
        if not self._from_now:
            return self.runs.runs[0] if len(self.runs) else None
        for run in self.runs.runs:
            if run.start_ns >= self._positioned_ns:
                return run
        latest = self.runs.latest()
        return latest if latest is not None and not latest.stop_explicit else None

    def _run_over(self, run: KafkaRun) -> bool:
        if run.stop_ns is None:
            return False
        now = self._clock()
        if self._stop_known_at is None:
            self._stop_known_at = now
        if self._group_id and (
            not self._assigned or now - self._stop_known_at < self._group_settle_s
        ):
            # A member that died shortly before the stop still owns partitions whose events
            # have not passed it; the group hands them over within the session timeout.
            return False
        lagging = [k for k in self._owned if self._latest_time.get(k, -1) < run.stop_ns]
        if not lagging:
            return True
        # A partition that has not passed the stop yet counts as done when it has nothing
        # more to give (drained to its end) for the grace time: never by the watermark alone.
        quiet = self._caught_up and all(key in self._at_end for key in lagging)
        return quiet and now - self._stop_known_at >= self._grace_s

    def _keep_last_log_values(self) -> None:
        """Between runs only each log's latest value matters (the next run starts with it):
        months without a run must not grow the buffer."""
        latest: dict[str, LogMessage] = {}
        for message in self._pending_logs:
            known = latest.get(message.name)
            if known is None or message.time_ns >= known.time_ns:
                latest[message.name] = message
        self._pending_logs = list(latest.values())

    def _take_logs(self, run: KafkaRun) -> dict[str, sc.DataArray]:
        mine: list[LogMessage] = []
        later: list[LogMessage] = []
        for message in self._pending_logs:
            (mine if run.stop_ns is None or message.time_ns < run.stop_ns else later).append(
                message
            )
        self._pending_logs = later
        by_name: dict[str, list[LogMessage]] = {}
        for message in mine:
            by_name.setdefault(message.name, []).append(message)
        logs = {}
        for name, messages in by_name.items():
            messages.sort(key=lambda m: m.time_ns)
            before = [m for m in messages if m.time_ns < run.start_ns]
            series = [*before[-1:], *(m for m in messages if m.time_ns >= run.start_ns)]
            array = _log_array(series)
            if array is not None:
                logs[name] = array
        return logs

    # -- status and scale-out ----------------------------------------------------------

    def _update_streams(self) -> None:
        events = self._started(self._events)
        now = self._clock()
        elapsed = max(now - self._rate_since, 1e-9)
        lag: dict[str, int] = {}
        for topic, partition in self._owned:
            try:
                _, high = events.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
            position = self._next_offset.get((topic, partition))
            if high >= 0 and position is not None:
                lag[topic] = lag.get(topic, 0) + max(0, high - position)
        self._streams = {
            topic: {
                "lag": float(lag.get(topic, 0)),
                "events_per_s": self._rate_counts.get(topic, 0) / elapsed,
                "malformed": float(self._malformed_by_topic.get(topic, 0)),
            }
            for topic in self._event_topics
        }
        self._rate_counts = {}
        self._rate_since = now

    @property
    def streams(self) -> Mapping[str, Mapping[str, float]]:
        """Per event topic: ``lag`` (messages) and ``events_per_s``, as of the last extract."""
        return self._streams

    def accumulated(self, output: object, chunk: Chunk) -> None:
        """Called by the engine with the output workspace after each processed chunk. In a
        consumer group: write it as this instance's partial file, publish it with the offsets
        it covers to ``results_topic``, wait for the broker to acknowledge it, then commit
        those offsets (in that order, so a restarted or new owner never starts past what a
        published partial holds). A partial the broker does not take within 10 s is logged
        and its offsets are not committed; the next chunk's partial covers them."""
        if not self._group_id or chunk.run is None or self._events is None:
            return
        number = chunk.run.number
        covers = {f"{t}:{p}": list(span) for (t, p), span in sorted(self._covers.items())}
        data = encode_partial(output)
        if self._partial_dir is not None:
            target = self._partial_dir / f"{self._output_workspace}_{number}.h5"
            write_atomically(target, lambda temporary: temporary.write_bytes(data))
        if self._producer is not None and self._results_topic:
            self._partial_sequence += 1
            partial = Partial(
                run=number, instance=self.instance, sequence=self._partial_sequence, covers=covers
            )
            self._producer.produce(
                self._results_topic,
                value=data,
                key=f"{number}:{self.instance}".encode(),
                headers={"livereduce-partial": json.dumps(partial.to_json()).encode()},
            )
            left = self._producer.flush(10.0)
            if left:
                log.error("kafka_partial_not_published: run %d, broker did not take it", number)
                return
            log.info(
                "kafka_partial_published: run %d, partial %d of instance %s",
                number,
                self._partial_sequence,
                self.instance,
            )
        self._commit()
        if chunk.ends_run:
            self._covers = {}

    def _commit(self) -> None:
        events = self._started(self._events)
        lowest = self._pending.lowest_offsets()
        offsets = [
            TopicPartition(topic, partition, lowest.get((topic, partition), following))
            for (topic, partition), following in self._next_offset.items()
            if (topic, partition) in self._owned
        ]
        if not offsets:
            return
        try:
            # Synchronous while the broker answers (milliseconds: the window in which a kill
            # leaves a published partial uncommitted stays that short); asynchronous when it is
            # down, since a synchronous commit has no timeout and would stall the loop. The
            # partial is acknowledged first either way; a lost commit shows up as an overlap.
            if self.connected:
                events.commit(offsets=offsets, asynchronous=False)
            else:
                events.commit(offsets=offsets, asynchronous=True)
        except KafkaException as error:
            log.warning("kafka_commit_failed: %s", error)

    @staticmethod
    def _started(consumer: Consumer | None) -> Consumer:
        """``consumer``, made by :meth:`start`; ListenerError before then or after
        :meth:`close` (the engine calls nothing in between, so this means a bug)."""
        if consumer is None:
            raise ListenerError("the Kafka listener is used before start() or after close()")
        return consumer

    def close(self) -> None:
        """Leave the group and close the consumers and producer. Safe to call twice."""
        for consumer in (self._events, self._control):
            if consumer is not None:
                try:
                    consumer.close()
                except (KafkaException, RuntimeError) as error:
                    log.debug("kafka_close: %s", error)
        if self._producer is not None:
            self._producer.flush(5.0)
        self._events = self._control = None
        self._producer = None


def _where(message: KafkaMessage) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed message (never None once consumed)."""
    return message.topic() or "", message.partition() or 0, message.offset() or 0


def _log_array(series: list[LogMessage]) -> sc.DataArray | None:
    values = [np.asarray(m.value) for m in series]
    if not values or any(v.ndim for v in values):
        return None  # array-valued f144 logs are not given to scripts
    times = np.array([m.time_ns for m in series], dtype="datetime64[ns]")
    if values[0].dtype.kind in "SUO":
        data = sc.array(dims=["time"], values=[str(v) for v in values])
    else:
        data = sc.array(dims=["time"], values=np.array(values, dtype=np.float64))
    return sc.DataArray(data, coords={"time": sc.array(dims=["time"], values=times, unit="ns")})


def _run_info(run: KafkaRun) -> RunInfo:
    return RunInfo(
        number=run.number,
        title=run.start.title,
        start_time=datetime.fromtimestamp(run.start_ns / 1e9, tz=UTC),
        instrument=run.start.instrument,
    )


def _iso(time_ns: int | None) -> str:
    if time_ns is None:
        return "?"
    return datetime.fromtimestamp(time_ns / 1e9, tz=UTC).isoformat(timespec="milliseconds")


def _describe(message: RunStart | RunStop) -> str:
    if isinstance(message, RunStart):
        return f"run {message.run_name} started {_iso(message.start_ns)} (pl72)"
    return f"run {message.run_name} stopped {_iso(message.stop_ns)} (6s4t)"


def _strings(config: Config, key: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(
            config.path, f"listener_options.{key}", f"expected a list of topic names, got {value!r}"
        )
    return value


def from_config(config: Config, resume: Resume | None = None) -> KafkaListener:
    """The Kafka listener for ``config`` (address: bootstrap servers), completing ``resume``
    first when given. Raises ConfigError for a missing run topic or event topics, or scale-out
    without run_transition Rename."""
    options = config.listener_options
    if not config.address:
        raise ConfigError(config.path, "address", "the kafka listener needs bootstrap servers")
    run_topic = options.get("run_topic")
    if not isinstance(run_topic, str) or not run_topic:
        raise ConfigError(
            config.path, "listener_options.run_topic", "the kafka listener needs a run topic"
        )
    event_topics = _strings(config, "event_topics", options.get("event_topics", []))
    log_topics = _strings(config, "log_topics", options.get("log_topics", []))
    sources = options.get("source_names") or {}
    group_id = options.get("group_id")
    if group_id and config.run_transition is not RunTransitionBehavior.RENAME:
        raise ConfigError(
            config.path,
            "run_transition",
            "scale-out (listener_options.group_id) keeps each run's partial: needs Rename",
        )
    return KafkaListener(
        config.address,
        run_topic=run_topic,
        event_topics=event_topics,
        log_topics=log_topics,
        event_sources=sources.get("events"),
        log_sources=sources.get("logs"),
        kafka_options=options.get("kafka"),
        group_id=group_id,
        results_topic=options.get("results_topic"),
        partial_dir=config.output_dir if group_id else None,
        output_workspace=config.output_workspace,
        run_end_grace_s=float(options.get("run_end_grace_sec", 2.0)),
        max_pending_events=int(options.get("max_pending_events", 20_000_000)),
        resume=resume,
    )
