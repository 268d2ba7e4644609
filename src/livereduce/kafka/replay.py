"""``livereduce-replay --kafka BOOTSTRAP FILE...``: NeXus runs published as ESS streams.

Each file (an SNS event file, read by :mod:`livereduce.adara.runfile`) becomes, on one timeline
in the files' own times: a pl72 on the run topic (start: the file's start time or its first
pulse, whichever is earlier), one ev44 per pulse on the event topic (the events of every
detector bank at that pulse; the error and unmapped pseudo-banks are left out, as Mantid's
LoadEventNexus does), spread round-robin over the topic's partitions and stamped with the
pulse's time, the numeric DASlogs as f144 on the log topic (each value just before the first
pulse at or after its time; f144 has no strings) and a 6s4t after the last pulse (stop: the
last pulse + 1 ns, rounded up to ms). Event monitors are not published. Time of flight goes
on the wire in ns (the files' 100 ns steps, so it comes back exactly).

``speed`` 1 paces pulses at real time, 100 a hundred times faster, 0 as fast as the broker takes
them. Topics that do not exist are created (``partitions`` for the event topic, 1 for the run
and log topics). In tests: ``publish_runs(bootstrap, [path], topics=KafkaTopics(...))``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from livereduce.adara.runfile import ERROR_BANK_ID, RunFile, RunFileError, read_run_file
from livereduce.kafka import client
from livereduce.kafka.wire import (
    NS_PER_MS,
    encode_events,
    encode_log,
    encode_run_start,
    encode_run_stop,
)

log = logging.getLogger(__name__)

SOURCE_NAME = "livereduce-replay"
"""The ev44 ``source_name`` of replayed events."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaTopics:
    """Where the replay publishes: ``events`` (ev44), ``runs`` (pl72 / 6s4t), ``logs`` (f144)
    and the event topic's partition count when the replay creates it."""

    events: str
    runs: str
    logs: str
    partitions: int = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Published:
    """What :func:`publish_run` sent: message and event counts, the run's start and stop."""

    run_number: int
    pulses: int
    events: int
    logs: int
    start_ns: int
    stop_ns: int


def ensure_topics(bootstrap: str, topics: KafkaTopics, options: dict[str, Any] | None) -> None:
    """Create the topics that do not exist yet. Raises KafkaException when the broker refuses."""
    admin = AdminClient(
        {k: v for k, v in client.settings(bootstrap, options, role="producer").items()
         if not k.startswith(("message.", "linger."))}
    )  # fmt: skip
    existing = admin.list_topics(timeout=10).topics
    wanted = [
        NewTopic(name, partitions, 1)
        for name, partitions in (
            (topics.events, topics.partitions),
            (topics.runs, 1),
            (topics.logs, 1),
        )
        if name not in existing
    ]
    for name, future in admin.create_topics(wanted).items() if wanted else ():
        future.result(10)
        log.info("kafka_topic_created: %s", name)


def pulse_events(run: RunFile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The detector events of ``run`` grouped by pulse: (begin (P+1,) int64, pixel (N,) int32,
    time of flight (N,) int32 ns), banks in file order within each pulse."""
    banks = [b for b in run.banks if b.ident < ERROR_BANK_ID]
    pulses = run.pulse_count
    if not banks:
        return np.zeros(pulses + 1, np.int64), np.empty(0, np.int32), np.empty(0, np.int32)
    pulse_of_event = np.concatenate(
        [np.repeat(np.arange(pulses), np.diff(b.pulse_begin)) for b in banks]
    )
    order = np.argsort(pulse_of_event, kind="stable")
    pixel = np.concatenate([b.event_id for b in banks])[order].astype(np.int32)
    tof_ns = (np.concatenate([b.tof_100ns for b in banks])[order].astype(np.int64) * 100).astype(
        np.int32
    )
    begin = np.zeros(pulses + 1, np.int64)
    np.cumsum(np.bincount(pulse_of_event, minlength=pulses), out=begin[1:])
    return begin, pixel, tof_ns


def publish_run(
    producer: Producer,
    run: RunFile,
    topics: KafkaTopics,
    *,
    speed: float = 0.0,
    partitions: int = 1,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Published:
    """Publish one run (module docstring) and flush; returns what was sent."""
    pulses_ns = run.pulse_times_ns
    start_ns = min(run.start_time_ns, int(pulses_ns.min())) if len(pulses_ns) else run.start_time_ns
    stop_ns = int(pulses_ns.max()) + 1 if len(pulses_ns) else start_ns + 1
    _send(
        producer,
        topics.runs,
        encode_run_start(run.run_number, start_ns, instrument=run.instrument_name, title=run.title),
        start_ns,
    )
    begin, pixel, tof_ns = pulse_events(run)
    logs = _log_messages(run)
    log_times = np.array([t for t, _ in logs], dtype=np.int64)
    sent_logs = 0
    began = clock()
    first = int(pulses_ns[0]) if len(pulses_ns) else start_ns
    for index, pulse_ns in enumerate(pulses_ns.tolist()):
        if speed > 0:
            delay = began + (pulse_ns - first) / 1e9 / speed - clock()
            if delay > 0:
                sleep(delay)
        due = int(np.searchsorted(log_times, pulse_ns, side="right"))
        for time_ns, value in logs[sent_logs:due]:
            _send(producer, topics.logs, value, time_ns)
        sent_logs = max(sent_logs, due)
        low, high = begin[index], begin[index + 1]
        value = encode_events(
            SOURCE_NAME, index, [pulse_ns], [0], tof_ns[low:high], pixel[low:high]
        )
        _send(producer, topics.events, value, pulse_ns, partition=index % partitions)
    for time_ns, value in logs[sent_logs:]:
        _send(producer, topics.logs, value, time_ns)
    _send(producer, topics.runs, encode_run_stop(run.run_number, stop_ns), stop_ns)
    left = producer.flush(60)
    if left:
        raise KafkaException(f"{left} messages of run {run.run_number} were not delivered")
    return Published(
        run_number=run.run_number,
        pulses=len(pulses_ns),
        events=int(begin[-1]),
        logs=len(logs),
        start_ns=start_ns,
        stop_ns=stop_ns,
    )


def _log_messages(run: RunFile) -> list[tuple[int, bytes]]:
    messages = []
    for series in run.logs:
        if series.kind == "string":
            continue  # f144 carries numbers only
        for time_ns, value in zip(series.times_ns.tolist(), series.values.tolist(), strict=True):
            messages.append((int(time_ns), encode_log(series.name, value, int(time_ns))))
    messages.sort(key=lambda item: item[0])
    return messages


def _send(
    producer: Producer, topic: str, value: bytes, time_ns: int, partition: int | None = None
) -> None:
    while True:
        try:
            if partition is None:
                producer.produce(topic, value=value, timestamp=time_ns // NS_PER_MS)
            else:
                producer.produce(
                    topic, value=value, timestamp=time_ns // NS_PER_MS, partition=partition
                )
            break
        except BufferError:
            producer.poll(0.1)  # the local queue is full: let deliveries drain it
    producer.poll(0)


def publish_runs(
    bootstrap: str,
    paths: Sequence[Path],
    *,
    topics: KafkaTopics,
    speed: float = 0.0,
    options: dict[str, Any] | None = None,
) -> list[Published]:
    """Create missing topics, then publish the files as consecutive runs. Raises
    RunFileError for an unreadable file, KafkaException when the broker fails."""
    runs = [read_run_file(path) for path in paths]
    ensure_topics(bootstrap, topics, options)
    producer = Producer(client.settings(bootstrap, options, role="producer"))
    partitions = len(
        producer.list_topics(topics.events, timeout=10).topics[topics.events].partitions
    )
    done = []
    for run in runs:
        published = publish_run(producer, run, topics, speed=speed, partitions=partitions)
        log.info(
            "kafka_run_published: run %d, %d pulses, %d events, %d log values on %d partitions",
            published.run_number, published.pulses, published.events, published.logs, partitions,
        )  # fmt: skip
        done.append(published)
    return done


def default_topics(paths: Sequence[Path], partitions: int) -> KafkaTopics:
    """Mantid's topic names for the first file's instrument: ``<INST>_events``,
    ``<INST>_runInfo``, ``<INST>_sampleEnv``."""
    short = read_run_file(paths[0]).short_name if paths else "LIVE"
    return KafkaTopics(
        events=f"{short}_events",
        runs=f"{short}_runInfo",
        logs=f"{short}_sampleEnv",
        partitions=partitions,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--kafka`` options of ``livereduce-replay``."""
    group = parser.add_argument_group("Kafka (ESS streams instead of an ADARA server)")
    group.add_argument(
        "--kafka", metavar="BOOTSTRAP", help="publish the files to these Kafka servers and exit"
    )
    group.add_argument("--event-topic", help="ev44 topic (default <INST>_events)")
    group.add_argument("--run-topic", help="pl72/6s4t topic (default <INST>_runInfo)")
    group.add_argument("--log-topic", help="f144 topic (default <INST>_sampleEnv)")
    group.add_argument(
        "--partitions", type=int, default=4, help="event topic partitions if created (default 4)"
    )
    group.add_argument(
        "--kafka-option", action="append", default=[], metavar="KEY=VALUE",
        help="librdkafka property (secrets also from LIVEREDUCE_KAFKA_*)",
    )  # fmt: skip


def run_from_args(args: argparse.Namespace) -> int:
    """Publish ``args.files`` to ``args.kafka``; returns the exit status (0 published, 1 the
    broker failed, 2 an unreadable file or bad option)."""
    if args.partitions < 1 or any("=" not in item for item in args.kafka_option):
        print("livereduce-replay: --partitions >= 1 and --kafka-option KEY=VALUE", file=sys.stderr)
        return 2
    try:
        defaults = default_topics(args.files, args.partitions)
    except RunFileError as error:
        print(f"livereduce-replay: {error}", file=sys.stderr)
        return 2
    topics = KafkaTopics(
        events=args.event_topic or defaults.events,
        runs=args.run_topic or defaults.runs,
        logs=args.log_topic or defaults.logs,
        partitions=args.partitions,
    )
    options = dict(item.split("=", 1) for item in args.kafka_option)
    try:
        done = publish_runs(
            args.kafka, args.files, topics=topics, speed=args.speed, options=options
        )
    except RunFileError as error:
        print(f"livereduce-replay: {error}", file=sys.stderr)
        return 2
    except KafkaException as error:
        print(f"livereduce-replay: Kafka at {args.kafka}: {error}", file=sys.stderr)
        return 1
    for published in done:
        print(
            f"run {published.run_number}: {published.pulses} pulses, {published.events} events, "
            f"{published.logs} log values published to {topics.events}, {topics.runs}, "
            f"{topics.logs}",
            flush=True,
        )
    return 0
