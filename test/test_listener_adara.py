"""The adara listener: real runs through livereduce-replay into chunks, and an SMS that goes
away (killed and restarted, closing cleanly, closing inside a header, going silent)."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest
import scipp as sc

from livereduce.adara import packets
from livereduce.adara.metadata_xml import ProcessVariable, device_xml
from livereduce.adara.replay import ReplayServer
from livereduce.adara.runfile import read_run_file
from livereduce.config import StartFrom, config_from_mapping
from livereduce.worker.listeners import adara
from livereduce.worker.listeners.base import Chunk, Listener, ListenerError, NotYet, RunInfo
from test_adara_client import T0, FakeSms, heartbeat, new_run
from test_adara_replay import file_events, file_logs, sorted_rows

SMALL = "REF_L_184978.nxs.h5"


@pytest.fixture
def sms_factory():
    made: list[FakeSms] = []

    def make(script) -> FakeSms:
        made.append(FakeSms(script))
        return made[-1]

    yield make
    for sms in made:
        sms.close()


def collect(listener: adara.AdaraListener, runs: int, timeout_s: float = 60.0) -> list[Chunk]:
    """Chunks until ``runs`` chunks with ends_run, extracting every 0.1 s."""
    chunks: list[Chunk] = []
    deadline = time.monotonic() + timeout_s
    while sum(c.ends_run for c in chunks) < runs:
        assert time.monotonic() < deadline, f"{len(chunks)} chunks, no END_RUN in {timeout_s} s"
        with contextlib.suppress(NotYet):
            chunks.append(listener.extract_data())
        time.sleep(0.1)
    return chunks


def rows(chunks: list[Chunk]) -> np.ndarray:
    """(event_id, tof in 100 ns, pulse ns) of every event of ``chunks``, sorted."""
    ids, tofs, pulses = [], [], []
    for chunk in chunks:
        events = chunk.events.copy()
        events.bins.coords["pulse"] = sc.bins_like(events, events.coords["event_time_zero"])
        table = events.bins.concat().value
        ids.append(table.coords["event_id"].values)
        tofs.append(np.rint(table.coords["event_time_offset"].values.astype(np.float64) * 10))
        pulses.append(table.coords["pulse"].values.astype("datetime64[ns]").astype(np.int64))
    return sorted_rows(np.concatenate(ids), np.concatenate(tofs), np.concatenate(pulses))


def accumulate_like_the_engine(chunks: list[Chunk]) -> dict[int, list[Chunk]]:
    """Run number -> the chunks that make up its accumulation: a chunk with begins_run or
    data_reset starts it over (Replace), every other chunk is added."""
    runs: dict[int, list[Chunk]] = collections.defaultdict(list)
    for chunk in chunks:
        assert chunk.run is not None
        if chunk.begins_run or chunk.data_reset:
            runs[chunk.run.number] = []
        runs[chunk.run.number].append(chunk)
    return runs


def expected_logs(path, previous=None) -> dict[str, list]:
    """The DASlog values of ``path``, as the listener gives them: a PV of the ``previous`` run
    whose first value in this run comes after the run's first pulse starts with the previous
    run's last value (carried into the run, as Mantid does)."""
    expected = file_logs(path)
    if previous is None:
        return expected
    run, before = read_run_file(path), read_run_file(previous)
    previous_logs = file_logs(previous)
    last = {log.name: previous_logs[log.name][-1] for log in before.logs}
    first_pulse = int(run.pulse_times_ns[0])
    for log in run.logs:
        if log.name in last and (not len(log.times_ns) or log.times_ns[0] > first_pulse):
            expected[log.name] = [last[log.name], *expected[log.name]]
    return expected


def expected_rows(path) -> np.ndarray:
    truth = file_events(path)
    return sorted_rows(truth["event_id"], truth["tof_100ns"], truth["pulse_ns"])


@pytest.mark.slow
def test_two_runs_give_chunks_that_never_span_a_run_and_equal_the_files(shared_data):
    files = [shared_data / "REF_L_184977.nxs.h5", shared_data / SMALL]
    with ReplayServer(files, port=0, speed=0) as server:
        listener = adara.AdaraListener("127.0.0.1", server.port)
        assert isinstance(listener, Listener)
        listener.start(StartFrom.START_OF_RUN)
        try:
            chunks = collect(listener, runs=2)
        finally:
            listener.close()
    numbers = [c.run.number for c in chunks]
    assert numbers == sorted(numbers)  # 184977 chunks, then 184978 chunks
    for number, path in zip((184977, 184978), files, strict=True):
        mine = [c for c in chunks if c.run.number == number]
        assert mine[0].begins_run
        assert not any(c.begins_run for c in mine[1:])
        assert mine[-1].ends_run
        assert not any(c.ends_run for c in mine[:-1])
        np.testing.assert_array_equal(rows(mine), expected_rows(path))
        run = mine[-1].run
        assert run.instrument == "REF_L"
        assert run.title == f"Direct Beam thru Air-{3 if number == 184977 else 4}."
        assert run.experiment.startswith("IPTS-")
        with h5py.File(path, "r") as h5:
            assert run.geometry_xml == h5["entry/instrument/instrument_xml/data"][0].decode()
        # logs: every DASlog value, and the pulse charges as proton_charge (pC)
        logs = collections.defaultdict(list)
        for chunk in mine:
            for name, log in chunk.logs.items():
                logs[name].extend(np.asarray(log.values).tolist())
        expected = expected_logs(path, files[0] if number == 184978 else None)
        assert {k: logs[k] for k in expected} == expected
        assert len(logs["proton_charge"]) == sum(c.events.sizes["event_time_zero"] for c in mine)
    assert not any(c.data_reset for c in chunks)


def test_monitor_events_come_as_monitor2(shared_data):
    path = shared_data / "HYS_178921.nxs.h5"
    with ReplayServer([path], port=0, speed=0) as server:
        listener = adara.AdaraListener("127.0.0.1", server.port)
        listener.start(StartFrom.START_OF_RUN)
        try:
            chunks = collect(listener, runs=1)
        finally:
            listener.close()
    with_monitor = [c for c in chunks if "monitor2" in c.monitors]
    monitor_counts = sum(int(c.monitors["monitor2"].bins.size().sum().value) for c in with_monitor)
    assert monitor_counts == 692
    first = next(i for i, c in enumerate(chunks) if "monitor2" in c.monitors)
    assert len(with_monitor) == len(chunks) - first  # every chunk after the first one has it
    assert sum(c.event_count for c in chunks) == 26_938


def _start_replay(path, port: int, speed: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "livereduce.adara.replay",
            str(path),
            "--port",
            str(port),
            "--speed",
            str(speed),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    line = proc.stdout.readline()
    assert line.startswith("listening on 127.0.0.1:"), line
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


@pytest.mark.slow
def test_replay_killed_and_restarted_mid_run_loses_nothing_and_counts_nothing_twice(
    shared_data, caplog
):
    caplog.set_level(logging.INFO, logger="livereduce.listener.adara")
    path = shared_data / SMALL
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    first = _start_replay(path, port, speed=20)  # 76 s of pulses in about 4 s
    listener = adara.AdaraListener("127.0.0.1", port, reconnect_max_s=1.0)
    listener.start(StartFrom.START_OF_RUN)
    chunks: list[Chunk] = []
    second = None
    try:
        deadline = time.monotonic() + 30
        while sum(c.event_count for c in chunks) < 20_000:  # well into the run
            assert time.monotonic() < deadline
            with contextlib.suppress(NotYet):
                chunks.append(listener.extract_data())
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        second = _start_replay(path, port, speed=20)
        chunks += collect(listener, runs=1)
    finally:
        listener.close()
        _stop(first)
        if second is not None:
            _stop(second)

    resets = [c for c in chunks if c.data_reset]
    assert len(resets) == 1
    assert not resets[0].begins_run
    (run,) = accumulate_like_the_engine(chunks).values()
    np.testing.assert_array_equal(rows(run), expected_rows(path))
    messages = [r.getMessage() for r in caplog.records]
    assert any(re.search(r"closed the connection.*reconnection attempt 2 in", m) for m in messages)
    assert any("replayed from its start after the reconnect" in m for m in messages)


def _listener_for(sms: FakeSms, **options) -> adara.AdaraListener:
    listener = adara.AdaraListener("127.0.0.1", sms.port, **options)
    listener.start(StartFrom.NOW)
    return listener


def _wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("tail", "logged"),
    [
        (heartbeat(), "closed the connection"),
        (heartbeat()[:9], "closed the connection; 9 bytes of an incomplete packet dropped"),
    ],
    ids=["clean-close", "close-mid-header"],
)
def test_sms_closing_is_logged_and_the_listener_reconnects_asking_for_the_run_start(
    sms_factory, caplog, tail, logged
):
    caplog.set_level(logging.INFO, logger="livereduce.listener.adara")
    closed_at: list[float] = []

    def script(sock: socket.socket) -> None:
        sock.sendall(new_run() + tail)
        sock.close()
        closed_at.append(time.time())

    sms = sms_factory(script)
    listener = _listener_for(sms, reconnect_max_s=0.5)
    try:
        _wait_for(lambda: len(sms.hellos) >= 3)
        chunk = listener.extract_data()
        assert chunk.run.number == 7
        assert chunk.activity.startswith("connected" if chunk.connected else ("the ", "cannot "))
    finally:
        started = time.monotonic()
        listener.close()
        closed_s = time.monotonic() - started
    assert closed_s < 2.5
    assert sms.hellos[0].start_time_ns == packets.START_NOW  # start_from now
    # in run 7: a reconnect asks for data from the run's start (whole seconds)
    assert {h.start_time_ns for h in sms.hellos[1:]} == {T0}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    first = next(r for r in warnings if "reconnection attempt 2 in 0.5 s" in r.getMessage())
    assert logged in first.getMessage()
    # logged as it happens, well within any update_every (the listener polls every 0.25 s)
    assert first.created - closed_at[0] < 2.0


def test_silent_sms_is_a_stale_stream_and_reconnects_with_growing_backoff(sms_factory, caplog):
    caplog.set_level(logging.INFO, logger="livereduce.listener.adara")
    quiet = threading.Event()
    sms = sms_factory(lambda sock: quiet.wait(20))
    listener = _listener_for(sms, stale_timeout_s=0.3, reconnect_max_s=30)
    try:
        _wait_for(lambda: len(sms.hellos) >= 3)
        with pytest.raises(NotYet, match=r"stale stream|connected to the SMS"):
            listener.extract_data()  # nothing ever arrived: NotYet, at once
    finally:
        started = time.monotonic()
        listener.close()
        closed_s = time.monotonic() - started
        quiet.set()
    assert closed_s < 2.5
    stale = [r.getMessage() for r in caplog.records if "stale stream" in r.getMessage()]
    assert len(stale) >= 2
    delays = [float(re.search(r"in ([\d.]+) s$", m).group(1)) for m in stale]
    assert delays[:2] == [0.5, 1.0]


def test_waiting_for_a_run_only_once_the_sms_has_spoken(sms_factory):
    speak, done = threading.Event(), threading.Event()

    def script(sock):
        speak.wait(10)
        sock.sendall(heartbeat())
        done.wait(10)  # connected until the test is done

    sms = sms_factory(script)
    listener = _listener_for(sms, stale_timeout_s=30)
    try:
        _wait_for(lambda: listener.connected)
        assert not listener.waiting_for_run  # a silent SMS is not a run-wait state
        assert listener.state.endswith("nothing received yet")
        with pytest.raises(NotYet, match="nothing received yet") as silent:
            listener.extract_data()
        assert not silent.value.waiting_for_run
        speak.set()
        _wait_for(lambda: listener.waiting_for_run)
        with pytest.raises(NotYet, match="waiting for a run") as waiting:
            listener.extract_data()
        assert waiting.value.waiting_for_run  # handed over with the NotYet, under the lock
    finally:
        done.set()
        listener.close()


def test_a_dead_connection_thread_is_a_listener_error(caplog):
    # An address that passes the configuration's host:port check but that the socket layer
    # rejects with an exception other than OSError (the host label is over 63 characters).
    listener = adara.AdaraListener("x" * 70 + ".invalid", 31415)
    listener.start(StartFrom.NOW)
    try:
        _wait_for(lambda: "adara_listener_failed" in caplog.text)
        with pytest.raises(ListenerError, match="connection thread stopped: UnicodeError"):
            listener.extract_data()
    finally:
        listener.close()


def test_bytes_that_never_complete_a_packet_are_a_stale_stream(sms_factory, caplog):
    caplog.set_level(logging.INFO, logger="livereduce.listener.adara")
    quit_drip = threading.Event()

    def drip(sock):  # a header announcing 1 MiB, then one byte every 50 ms
        sock.sendall(heartbeat()[:4].replace(b"\0\0\0\0", (1 << 20).to_bytes(4, "little")))
        while not quit_drip.wait(0.05):
            sock.sendall(b"\0")

    sms = sms_factory(drip)
    listener = _listener_for(sms, stale_timeout_s=0.5)
    try:
        _wait_for(lambda: "stale stream: no complete packet" in caplog.text)
    finally:
        quit_drip.set()
        listener.close()


def test_unknown_packets_and_events_outside_a_run_are_reported(sms_factory, caplog):
    caplog.set_level(logging.INFO, logger="livereduce.listener.adara")
    unknown = struct.pack("<IIII", 4, 0x12345600, 0, 0) + b"\0" * 4
    pulse = packets.BankedEvent(
        timestamp_ns=T0,
        sources=(
            packets.SourceSection(
                source_id=1,
                banks=(packets.BankSection.from_arrays(1, [100, 200, 300], [5, 6, 7]),),
            ),
        ),
    )
    stream = unknown + unknown + packets.encode(pulse) + new_run() + heartbeat()
    sms = sms_factory(lambda sock: (sock.sendall(stream), sock.close()))
    listener = _listener_for(sms, reconnect_max_s=30)
    try:
        _wait_for(lambda: "unknown types skipped" in caplog.text)
    finally:
        listener.close()
    assert "3 events that arrived outside a run were not kept" in caplog.text
    assert "packets of unknown types skipped on this connection: 2 of 0x12345600" in (caplog.text)


def test_refused_connection_is_retried_and_extract_data_says_why(caplog):
    caplog.set_level(logging.INFO, logger="livereduce.listener.adara")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        listener = adara.AdaraListener("127.0.0.1", port, reconnect_max_s=0.2)
        listener.start(StartFrom.START_OF_RUN)
        try:
            _wait_for(lambda: sum("cannot connect" in r.getMessage() for r in caplog.records) >= 2)
            with pytest.raises(NotYet, match="cannot connect to the SMS"):
                listener.extract_data()
        finally:
            listener.close()


def test_from_config_reads_address_and_listener_options(tmp_path):
    config = config_from_mapping(
        {
            "instrument": "HYSPEC",
            "listener": "adara",
            "address": "127.0.0.1:31999",
            "script_dir": str(tmp_path),
            "listener_options": {
                "stale_timeout_sec": 7,
                "reconnect_max_sec": 3,
                "connect_timeout_sec": 2,
            },
        },
        None,
        check_scripts=False,
    )
    listener = adara.from_config(config)
    assert (listener.host, listener.port) == ("127.0.0.1", 31999)
    assert (listener.stale_timeout_s, listener.reconnect_max_s, listener.connect_timeout_s) == (
        7.0,
        3.0,
        2.0,
    )
    assert listener.name == "adara 127.0.0.1:31999"


def test_backoff_doubles_up_to_the_maximum():
    assert [adara.backoff_s(a, 3.0) for a in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(
    ("pv_type", "first", "bad"),
    [
        ("double", packets.VariableDouble, ("VariableString", "abc")),
        ("integer", packets.VariableU32, ("VariableDouble", float("nan"))),
        ("integer", packets.VariableU32, ("VariableDouble", 1e30)),
        ("integer", packets.VariableU32, ("VariableDouble", 2.7)),
    ],
)
def test_a_value_of_the_wrong_type_is_skipped_not_the_chunk(
    sms_factory, caplog, pv_type, first, bad
):
    caplog.set_level(logging.INFO, logger="livereduce.listener.adara")
    pv = ProcessVariable(pv_id=1, name="SampleTemp", pv_type=pv_type, units="K")
    bad_kind, bad_value = bad
    stream = b"".join(
        packets.encode(p)
        for p in (
            packets.DeviceDescriptor(timestamp_ns=T0, device_id=6, xml=device_xml("dev", [pv])),
            first(timestamp_ns=T0 + 1, device_id=6, variable_id=1, value=4),
            getattr(packets, bad_kind)(
                timestamp_ns=T0 + 2, device_id=6, variable_id=1, value=bad_value
            ),
            first(timestamp_ns=T0 + 3, device_id=6, variable_id=1, value=5),
        )
    )
    done = threading.Event()
    sms = sms_factory(lambda sock: (sock.sendall(new_run() + stream), done.wait(10)))
    listener = _listener_for(sms)
    values = []

    def got_both() -> bool:
        with contextlib.suppress(NotYet):
            log = listener.extract_data().logs.get("SampleTemp")
            values.extend([] if log is None else log.values.tolist())
        return len(values) >= 2

    try:
        _wait_for(got_both)
    finally:
        listener.close()
        done.set()
    assert values == [4, 5]
    assert f"{bad_kind} value {bad_value!r} of PV SampleTemp (device 6 variable 1) ignored" in (
        caplog.text
    )


def test_bad_descriptor_and_unknown_variables_are_logged_and_the_stream_goes_on(
    sms_factory, caplog
):
    caplog.set_level(logging.INFO, logger="livereduce.listener.adara")
    good = device_xml(
        "dev", [ProcessVariable(pv_id=1, name="SampleTemp", pv_type="double", units="K")]
    )
    stream = b"".join(
        packets.encode(p)
        for p in (
            packets.DeviceDescriptor(timestamp_ns=T0, device_id=5, xml="<device><oops"),
            packets.VariableDouble(timestamp_ns=T0, device_id=5, variable_id=1, value=1.0),
            packets.DeviceDescriptor(timestamp_ns=T0, device_id=6, xml=good),
            packets.VariableDouble(timestamp_ns=T0 + 1, device_id=6, variable_id=1, value=4.5),
        )
    )
    done = threading.Event()
    sms = sms_factory(lambda sock: (sock.sendall(new_run() + stream), done.wait(10)))
    listener = _listener_for(sms)
    temperatures = []

    def got_temperature() -> bool:
        with contextlib.suppress(NotYet):
            log = listener.extract_data().logs.get("SampleTemp")
            temperatures.extend([] if log is None else log.values.tolist())
        return bool(temperatures)

    try:
        _wait_for(got_temperature)
    finally:
        listener.close()
        done.set()
    messages = [r.getMessage() for r in caplog.records]
    assert any("device descriptor 5 ignored" in m and "not well-formed" in m for m in messages)
    assert any("device 5 variable 1 ignored" in m for m in messages)
    assert temperatures == [4.5]
    assert len(sms.hellos) == 1  # the connection stayed up


def _with_pause_and_scan(source, target) -> tuple[int, int]:
    """Copy ``source`` to ``target`` with the run paused over its middle third and scan 5
    running from the pause on: ``pause`` 0, 1, 0 and ``scan_index`` 0, 5, 0 (as the DAS writes
    them). Returns the pause and resume times (Unix ns)."""
    shutil.copy(source, target)
    run = read_run_file(target)
    first, last = int(run.pulse_times_ns[0]), int(run.pulse_times_ns[-1])
    pause_ns, resume_ns = first + (last - first) // 3, first + 2 * (last - first) // 3
    (base,) = next(log.times_ns for log in run.logs if log.name == "pause")  # time 0 s
    with h5py.File(target, "r+") as h5:
        for name, values in (("pause", [0, 1, 0]), ("scan_index", [0, 5, 0])):
            group = h5[f"entry/DASlogs/{name}"]
            time_attrs, value_attrs = dict(group["time"].attrs), dict(group["value"].attrs)
            del group["time"], group["value"]
            seconds = [0.0, (pause_ns - base) / 1e9, (resume_ns - base) / 1e9]
            group.create_dataset("time", data=np.array(seconds)).attrs.update(time_attrs)
            group.create_dataset("value", data=np.array(values, np.uint16)).attrs.update(
                value_attrs
            )
    return pause_ns, resume_ns


@pytest.mark.slow
@pytest.mark.parametrize("keep", [False, True], ids=["paused-dropped", "paused-kept"])
def test_replayed_pause_and_scan_annotations_reach_the_run(shared_data, tmp_path, keep):
    path = tmp_path / SMALL
    pause_ns, resume_ns = _with_pause_and_scan(shared_data / SMALL, path)
    truth = file_events(path)
    keys = np.maximum.accumulate(read_run_file(path).pulse_times_ns)
    paused_pulses = (keys >= pause_ns) & (keys < resume_ns)
    pulse_of_event = np.searchsorted(read_run_file(path).pulse_times_ns, truth["pulse_ns"])
    paused = int(np.count_nonzero(paused_pulses[pulse_of_event]))
    assert 0 < paused < len(truth["event_id"])
    with ReplayServer([path], port=0, speed=0) as server:
        listener = adara.AdaraListener("127.0.0.1", server.port, keep_paused_events=keep)
        listener.start(StartFrom.START_OF_RUN)
        try:
            chunks = collect(listener, runs=1)
        finally:
            listener.close()
    events = sum(c.event_count for c in chunks)
    counts = collections.Counter()
    logs = collections.defaultdict(list)
    for chunk in chunks:
        counts.update(chunk.input_counts)
        for name, series in chunk.logs.items():
            logs[name].extend(np.asarray(series.values).tolist())
    assert events == len(truth["event_id"]) - (0 if keep else paused)
    assert counts["paused_events"] == (0 if keep else paused)
    assert logs["pause"] == [0, 1, 0]
    assert logs["scan_index"] == [0, 5, 0]


def test_a_segment_counts_its_log_values_as_they_come_and_go():
    run = RunInfo(number=1, start_time=None)
    segment = adara._Segment(run, 16, begins_run=True)
    segment.add_log("carried", "double", "K", 1, 1.0)
    segment.provisional.add("carried")
    for time_ns in range(3):
        segment.add_log("temp", "double", "K", time_ns, float(time_ns))
    segment.add_log("temp", "double", "K", 2, 2.0)  # a repeat: kept once
    assert not segment.add_log("temp", "double", "K", 3, "warm")  # mistyped: not kept
    assert segment.log_values == 4
    segment.add_log("carried", "double", "K", 5, 2.0)  # the run's own value replaces it
    assert segment.log_values == 4 == sum(len(e.values) for e in segment.logs.values())
    assert segment.nbytes == adara.LOG_VALUE_BYTES * 4 + segment.events.nbytes


def test_every_real_run_through_the_listener_gives_the_file_events(shared_data):
    """The listener's thread reads, frames and gathers each run straight into the chunks'
    tables: on every real SNS run the events are the file's, to the value, pulse by pulse."""
    files = sorted(path for path in shared_data.glob("*.nxs.h5") if "SANS2D" not in path.name)
    assert len(files) >= 5
    with ReplayServer(files, port=0, speed=0) as server:
        listener = adara.AdaraListener("127.0.0.1", server.port)
        listener.start(StartFrom.START_OF_RUN)
        try:
            chunks = collect(listener, runs=len(files), timeout_s=120)
        finally:
            listener.close()
    runs = accumulate_like_the_engine(chunks)
    assert len(runs) == len(files)
    for path in files:
        number = read_run_file(path).run_number
        np.testing.assert_array_equal(rows(runs[number]), expected_rows(path), path.name)
