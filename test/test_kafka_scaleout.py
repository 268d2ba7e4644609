"""Scale-out: two worker processes in one consumer group on a 4-partition event topic, each
publishing its partial histogram; ``livereduce-merge`` sums them (from the results topic and
from the partial files). One instance killed mid-run: the other takes its partitions over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import scipp as sc

from kafka_broker import Broker, unique
from livereduce.kafka.replay import KafkaTopics, publish_runs
from livereduce.protocol import Progress, WorkerState
from test_e2e_replay import offline_events
from test_kafka_listener import EDGES, HISTOGRAM

pytestmark = pytest.mark.slow  # real daemons, brokers or servers: seconds each

EVENTS = 26938


class Instance:
    """``python -m livereduce.worker`` reading its reports in a thread."""

    def __init__(self, folder: Path, raw: dict) -> None:
        folder.mkdir(parents=True)
        (folder / "reduce_HYS_live_proc.py").write_text(HISTOGRAM)
        raw = {**raw, "script_dir": str(folder), "output_dir": str(folder / "out")}
        (folder / "out").mkdir()
        self.folder = folder
        self.last: Progress | None = None
        read, write = os.pipe()
        self.log = (folder / "worker.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "livereduce.worker", "--report-fd", str(write)],
            stdin=subprocess.PIPE, stdout=self.log, stderr=self.log, pass_fds=(write,),
        )  # fmt: skip
        os.close(write)
        self.process.stdin.write(json.dumps({"path": None, "raw": raw}).encode())
        self.process.stdin.close()
        self._reader = threading.Thread(target=self._read, args=(read,), daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as pipe:
            for line in pipe:
                self.last = Progress.from_line(line)

    @property
    def events(self) -> int:
        return self.last.events if self.last else 0

    def text(self) -> str:
        return (self.folder / "worker.log").read_text()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


@pytest.fixture
def group(tmp_path, shared_data):
    broker = Broker().start()
    names = KafkaTopics(events=unique("ev"), runs=unique("run"), logs=unique("log"))
    results = unique("results")
    broker.create_topics(**{names.events: 4, names.runs: 1, names.logs: 1, results: 1})
    raw = {
        "instrument": "HYSPEC",
        "listener": "kafka",
        "engine": "embedded",
        "address": broker.bootstrap,
        "update_every": 0.2,
        "preserve_events": False,
        "run_transition": "Rename",
        "listener_options": {
            "run_topic": names.runs,
            "event_topics": [names.events],
            "log_topics": [names.logs],
            "group_id": unique("group"),
            "results_topic": results,
            "run_end_grace_sec": 0.5,
            "kafka": {"session.timeout.ms": 1500, "heartbeat.interval.ms": 500},
        },
    }
    instances = [Instance(tmp_path / name, raw) for name in ("a", "b")]
    yield broker, names, results, instances
    for instance in instances:
        instance.close()
    broker.stop()


def wait(predicate, instances, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            logs = "\n".join(i.text()[-3000:] for i in instances)
            raise AssertionError(f"timed out: {[i.last for i in instances]}\n{logs}")
        time.sleep(0.1)


def merge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "livereduce.kafka.merge", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def offline_histogram(path: Path) -> np.ndarray:
    return offline_events(path).bins.concat().hist(event_time_offset=EDGES).values


def run_done(instance: Instance) -> bool:
    return (
        instance.last is not None
        and instance.last.state is WorkerState.WAITING_FOR_RUN
        and (instance.folder / "out" / "result_178921.h5").exists()
    )


def test_two_instances_in_a_group_merge_to_the_offline_histogram(tmp_path, shared_data, group):
    broker, names, results, instances = group
    path = shared_data / "HYS_178921.nxs.h5"
    wait(lambda: all("kafka_partitions_assigned" in i.text() for i in instances), instances)
    publish_runs(broker.bootstrap, [path], topics=names)
    wait(lambda: sum(i.events for i in instances) == EVENTS and all(map(run_done, instances)),
         instances)  # fmt: skip
    out = tmp_path / "merged.h5"
    merged = merge("--output", str(out), "--bootstrap", broker.bootstrap,
                   "--results-topic", results, "--run", "178921")  # fmt: skip
    assert merged.returncode == 0, merged.stderr
    expected = offline_histogram(path)
    assert np.array_equal(sc.io.load_hdf5(out).values, expected)
    files = [str(i.folder / "out" / "result_178921.h5") for i in instances]
    from_files = merge("--output", str(tmp_path / "files.h5"), *files)
    assert from_files.returncode == 0, from_files.stderr
    assert np.array_equal(sc.io.load_hdf5(tmp_path / "files.h5").values, expected)
    assert all(i.events > 0 for i in instances), [i.events for i in instances]


def test_instance_killed_mid_run_the_other_takes_over(tmp_path, shared_data, group):
    broker, names, results, instances = group
    path = shared_data / "HYS_178921.nxs.h5"
    wait(lambda: all("kafka_partitions_assigned" in i.text() for i in instances), instances)
    # 232 s of beam at 60x: ~4 s, longer than the group takes to notice a dead member (1.5 s).
    publisher = threading.Thread(
        target=publish_runs, args=(broker.bootstrap, [path]), kwargs={"topics": names, "speed": 60}
    )
    publisher.start()
    try:
        first, second = instances
        # killed once its partial is on the results topic, so the merge has two to add
        wait(lambda: "kafka_partial_published" in first.text() and second.events > 0, instances)
        assigned = second.text().count("kafka_partitions_assigned")
        first.process.kill()
        first.process.wait(10)
        wait(lambda: second.text().count("kafka_partitions_assigned") > assigned, instances)
    finally:
        publisher.join(60)
    wait(lambda: run_done(second), instances)
    out = tmp_path / "merged.h5"
    merged = merge("--output", str(out), "--bootstrap", broker.bootstrap,
                   "--results-topic", results, "--run", "178921")  # fmt: skip
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout.count(" (#") == 2, merged.stdout  # the dead instance's partial counts
    assert np.array_equal(sc.io.load_hdf5(out).values, offline_histogram(path))
