"""livereduce-replay: real SNS runs streamed as ADARA, checked against the files themselves.

The expected values are read from the NeXus files here with h5py and scippnexus, independently
of livereduce.adara.runfile, so a mistake in the replay's reading of a file cannot hide itself.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import readadara
import scippnexus as snx

from livereduce.adara import packets
from livereduce.adara.client import AdaraClient
from livereduce.adara.metadata_xml import parse_device_xml, parse_runinfo_xml
from livereduce.adara.replay import ReplayServer, main
from livereduce.adara.runfile import RunFileError, read_run_file

HYS = "HYS_178921.nxs.h5"
REF_L = "REF_L_184977.nxs.h5"
SMALL = "REF_L_184978.nxs.h5"  # 4,583 pulses: the cheapest real run
END_RUN = packets.RunStatusCode.END_RUN


# ----------------------------------------------------------------------- truth from the file


def file_pulse_times_ns(path: Path, group: str) -> np.ndarray:
    """(P,) int64 pulse times of an NXevent_data group as scippnexus reads them."""
    with snx.File(path) as f:
        times = f[f"entry/{group}/event_time_zero"][()]
    return times.values.astype("datetime64[ns]").astype(np.int64)


def file_events(path: Path, *, banks: str = "detector") -> dict[str, np.ndarray]:
    """Every event of the file's banks: ``bank``, ``event_id``, ``tof_100ns``, ``pulse_ns``
    arrays. ``banks``: 'detector' (bank<N>_events) or 'all' (pseudo-banks too)."""
    out = collections.defaultdict(list)
    with h5py.File(path, "r") as h5, snx.File(path) as nx:
        entry = h5["entry"]
        for name in entry:
            match = re.fullmatch(r"bank(\d+)_events", name)
            if not match and not (banks == "all" and name.startswith("bank_")):
                continue
            group = entry[name]
            n = group["event_id"].shape[0]
            index = group["event_index"][()].astype(np.int64)
            counts = np.diff(np.append(index, n))
            pulses = nx[f"entry/{name}/event_time_zero"][()].values.astype("datetime64[ns]")
            bank = (
                int(match.group(1))
                if match
                else {"bank_error_events": 0xFFFFFFFE}.get(name, 0xFFFFFFFF)
            )
            out["bank"].append(np.full(n, bank, dtype=np.int64))
            out["event_id"].append(group["event_id"][()].astype(np.int64))
            tof = group["event_time_offset"][()].astype(np.float64)
            out["tof_100ns"].append(np.rint(tof * 10).astype(np.int64))
            out["pulse_ns"].append(np.repeat(pulses.astype(np.int64), counts))
    return {key: np.concatenate(value) for key, value in out.items()}


def sorted_rows(*columns: np.ndarray) -> np.ndarray:
    """Rows (one per event) sorted lexicographically: a multiset that compares with ==."""
    table = np.stack([np.asarray(c, dtype=np.int64) for c in columns], axis=1)
    return table[np.lexsort(table.T[::-1])]


def file_logs(path: Path) -> dict[str, list]:
    """DASlog name -> values, for every log with a time and a value, proton_charge excepted
    (it travels as the pulse charge)."""
    logs = {}
    with h5py.File(path, "r") as h5:
        for name, group in h5["entry/DASlogs"].items():
            if name == "proton_charge" or "time" not in group or "value" not in group:
                continue
            values = group["value"][()]
            if values.ndim == 2:
                values = values[:, 0]
            logs[name] = [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]
    return logs


# ----------------------------------------------------------------------- stream capture


class Capture:
    """Packets received by one client until the END_RUN of ``runs`` runs."""

    def __init__(self, port: int, *, start_time_ns: int = packets.START_NOW) -> None:
        self.client = AdaraClient("127.0.0.1", port, start_time_ns=start_time_ns)
        self.packets: list[packets.Packet] = []
        self.received_at: list[float] = []

    def __enter__(self) -> Capture:
        self.client.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.client.close()

    def until_end_runs(self, runs: int = 1, timeout_s: float = 60.0) -> Capture:
        deadline = time.monotonic() + timeout_s
        ended = 0
        while ended < runs:
            assert time.monotonic() < deadline, f"only {ended} END_RUN within {timeout_s} s"
            packet = self.client.get(1.0)
            if packet is None:
                continue
            self.keep(packet)
            if isinstance(packet, packets.RunStatus) and packet.status == END_RUN:
                ended += 1
        return self

    def keep(self, packet: packets.Packet) -> None:
        self.packets.append(packet)
        if isinstance(packet, packets.BankedEvent):
            self.received_at.append(time.monotonic())

    def of(self, cls: type) -> list:
        return [p for p in self.packets if isinstance(p, cls)]

    def detector_rows(self) -> np.ndarray:
        cols = collections.defaultdict(list)
        for p in self.of(packets.BankedEvent):
            bank, tof, pixel = p.event_arrays()
            keep = bank < packets.ERROR_BANK_ID
            cols["id"].append(pixel[keep])
            cols["tof"].append(tof[keep])
            cols["pulse"].append(np.full(keep.sum(), p.timestamp_ns, dtype=np.int64))
        return sorted_rows(*(np.concatenate(cols[k]) for k in ("id", "tof", "pulse")))

    def logs(self) -> dict[str, list]:
        """PV name -> values, and the ``pause`` and ``scan_index`` logs a reader makes from the
        stream annotations (each starts the run at 0)."""
        names = {}
        for d in self.of(packets.DeviceDescriptor):
            for pv in parse_device_xml(d.xml)[1]:
                names[(d.device_id, pv.pv_id)] = (pv.name, pv.pv_type)
        values = collections.defaultdict(list, {"pause": [0], "scan_index": [0]})
        markers = {
            packets.MarkerType.PAUSE: ("pause", lambda p: 1),
            packets.MarkerType.RESUME: ("pause", lambda p: 0),
            packets.MarkerType.SCAN_START: ("scan_index", lambda p: p.scan_index),
            packets.MarkerType.SCAN_STOP: ("scan_index", lambda p: 0),
        }
        for p in self.packets:
            if isinstance(p, packets.StreamAnnotation) and p.marker_type in markers:
                name, value_of = markers[p.marker_type]
                values[name].append(value_of(p))
            if isinstance(p, packets.VariableU32 | packets.VariableDouble | packets.VariableString):
                name, pv_type = names[(p.device_id, p.variable_id)]
                value = p.value
                if pv_type == "integer":
                    value = int(np.uint32(value).view(np.int32))
                values[name].append(value)
        return dict(values)


# ----------------------------------------------------------------------- tests


@pytest.mark.slow
@pytest.mark.parametrize(("name", "detector_events"), [(HYS, 26_938), (REF_L, 100_304)])
def test_replay_sends_every_event_monitor_log_and_metadata_of_the_file(
    shared_data, name, detector_events
):
    path = shared_data / name
    with (
        ReplayServer([path], port=0, speed=0, heartbeat_s=0.2) as server,
        Capture(server.port) as capture,
    ):
        capture.until_end_runs(1)
        # idle after the run: heartbeats, nothing else
        packet = capture.client.get(5.0)
        assert isinstance(packet, packets.Heartbeat), packet

    truth = file_events(path)
    assert len(truth["event_id"]) == detector_events
    received = capture.detector_rows()
    assert len(received) == detector_events
    expected = sorted_rows(truth["event_id"], truth["tof_100ns"], truth["pulse_ns"])
    np.testing.assert_array_equal(received, expected)

    # one banked event packet per pulse, in the file's order (REF_L's repeated pulse times too)
    with h5py.File(path, "r") as h5:
        first_bank = next(k for k in h5["entry"] if re.fullmatch(r"bank\d+_events", k))
        title = h5["entry/title"][0].decode()
        instrument = h5["entry/instrument/name"][0].decode()
        xml = h5["entry/instrument/instrument_xml/data"][0].decode()
        charge = h5["entry/DASlogs/proton_charge/value"][()]
        monitor_tof = monitor_counts = None
        if "monitor2" in h5["entry"]:
            monitor = h5["entry/monitor2"]
            monitor_tof = np.rint(monitor["event_time_offset"][()] * 10)
            index = monitor["event_index"][()].astype(np.int64)
            monitor_counts = np.diff(np.append(index, len(monitor_tof)))
    pulses = file_pulse_times_ns(path, first_bank)
    banked = capture.of(packets.BankedEvent)
    np.testing.assert_array_equal([p.timestamp_ns for p in banked], pulses)
    np.testing.assert_array_equal([p.pulse_charge_10pc * 10 for p in banked], charge)

    # packet versions as a current SMS sends them (readadara expects exactly these)
    versions = {type(p).__name__: p.packet_type.version for p in capture.packets}
    assert versions == {
        "RunStatus": 1,
        "RunInfo": 0,
        "Geometry": 0,
        "BeamlineInfo": 1,
        "DeviceDescriptor": 0,
        "VariableDouble": 0,
        "VariableU32": 0,
        "VariableString": 0,
        "BankedEvent": 1,
        **({} if monitor_tof is None else {"BeamMonitorEvent": 1}),
    }
    statuses = capture.of(packets.RunStatus)
    assert [(s.status, s.run_number) for s in statuses] == [
        (packets.RunStatusCode.NEW_RUN, int(name.split("_")[-1].split(".")[0])),
        (END_RUN, int(name.split("_")[-1].split(".")[0])),
    ]
    (run_info,) = capture.of(packets.RunInfo)
    assert parse_runinfo_xml(run_info.xml).run_title == title
    (geometry,) = capture.of(packets.Geometry)
    assert geometry.xml.encode() == xml.encode()
    (beamline,) = capture.of(packets.BeamlineInfo)
    assert (beamline.version, beamline.long_name) == (1, instrument)

    assert capture.logs() == file_logs(path)

    monitors = capture.of(packets.BeamMonitorEvent)
    if monitor_tof is None:
        assert monitors == []
    else:
        received = sorted_rows(
            np.concatenate([p.event_arrays()[1] for p in monitors]),
            np.concatenate([np.full(p.event_count, p.timestamp_ns) for p in monitors]),
        )
        monitor_pulses = np.repeat(file_pulse_times_ns(path, "monitor2"), monitor_counts)
        np.testing.assert_array_equal(received, sorted_rows(monitor_tof, monitor_pulses))
        assert {m.monitor_id for p in monitors for m in p.monitors} == {2}


def test_runfile_keeps_untidy_pulses_as_they_are(shared_data):
    run = read_run_file(shared_data / REF_L)
    times = run.pulse_times_ns
    assert run.pulse_count == 9_879
    assert int((np.diff(times) < 0).sum()) == 4  # the four backward steps stay
    _, repeats = np.unique(times, return_counts=True)
    assert repeats.max() == 5  # the five pulses sharing one time stay five pulses
    assert run.detector_event_count == 100_304


def test_readadara_reads_the_same_events_per_bank(shared_data):
    path = shared_data / SMALL
    with ReplayServer([path], port=0, speed=0) as server:
        reader = readadara.AdaraLiveStreamReader("127.0.0.1", server.port)
        reader.buffered_stream.sd.settimeout(20)  # readadara never stops by itself: bound it
        per_bank = collections.defaultdict(list)
        for packet in reader.read_generator():
            kind = packet.get_format_int()
            if kind == 0x400001:
                for source in packet.get_source_sections():
                    for bank in source["bank_sections"]:
                        per_bank[bank.get_bank_id()].append(bank.get_np_events().copy())
            elif kind == 0x400301 and packet.get_status() == END_RUN:
                break
        reader.buffered_stream.sd.close()
    truth = file_events(path, banks="all")
    expected_banks = set(np.unique(truth["bank"]).tolist()) - {0xFFFFFFFF}  # no unmapped events
    assert set(per_bank) == expected_banks
    for bank, chunks in per_bank.items():
        events = np.concatenate(chunks)
        mine = truth["bank"] == bank
        assert sorted(map(tuple, events.tolist())) == sorted(
            zip(truth["tof_100ns"][mine].tolist(), truth["event_id"][mine].tolist(), strict=True)
        )


def run_statuses(port: int, runs: int, timeout_s: float = 60.0) -> list[tuple[int, int]]:
    """(status, run number) of every run status until the ``runs``-th END_RUN, reading only
    packet headers otherwise (cheap enough for several whole runs)."""
    found = []
    buffer = bytearray()
    deadline = time.monotonic() + timeout_s
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(packets.encode(packets.ClientHello(timestamp_ns=time.time_ns())))
        while sum(code == END_RUN for code, _ in found) < runs:
            assert time.monotonic() < deadline, f"run statuses so far: {found}"
            data = sock.recv(1 << 20)
            assert data, f"connection closed; run statuses so far: {found}"
            buffer += data
            while len(buffer) >= packets.HEADER_SIZE:
                header = packets.decode_header(bytes(buffer[: packets.HEADER_SIZE]))
                size = packets.HEADER_SIZE + header.payload_length
                if len(buffer) < size:
                    break
                if header.packet_type == packets.PacketType.RUN_STATUS_V1:
                    status = packets.decode(bytes(buffer[:size]))
                    found.append((status.status, status.run_number))
                del buffer[:size]
    return found


def test_three_files_back_to_back_are_three_runs(shared_data):
    files = [shared_data / f"HYS_17892{i}.nxs.h5" for i in (1, 2, 3)]
    with ReplayServer(files, port=0, speed=0) as server:
        statuses = run_statuses(server.port, 3)
    assert statuses == [
        (code, run)
        for run in (178921, 178922, 178923)
        for code in (packets.RunStatusCode.NEW_RUN, END_RUN)
    ]


def test_hello_start_of_run_mid_run_replays_from_the_first_pulse(shared_data):
    path = shared_data / SMALL  # 76 s of pulses, 100,328 events
    first_pulse = int(file_pulse_times_ns(path, "bank1_events")[0])
    speed = 20
    with ReplayServer([path], port=0, speed=speed) as server, Capture(server.port) as live:
        # the live clock starts with this first hello; wait until well into the run
        while True:
            packet = live.client.get(5.0)
            assert packet is not None
            live.keep(packet)
            if isinstance(packet, packets.BankedEvent) and packet.timestamp_ns > (
                first_pulse + 30 * 10**9
            ):
                break
        with (
            Capture(server.port, start_time_ns=packets.START_OF_RUN) as again,
            Capture(server.port, start_time_ns=packets.START_NOW) as late,
        ):
            again.until_end_runs(1)
            late.until_end_runs(1)
        live.until_end_runs(1)

    assert again.of(packets.RunStatus)[0].status == packets.RunStatusCode.NEW_RUN
    assert again.of(packets.BankedEvent)[0].timestamp_ns == first_pulse
    np.testing.assert_array_equal(again.detector_rows(), live.detector_rows())
    assert len(again.detector_rows()) == 100_328
    # a client saying "now" joins at the live position with a STATE status and the metadata
    assert late.of(packets.RunStatus)[0].status == packets.RunStatusCode.STATE
    assert late.of(packets.BankedEvent)[0].timestamp_ns > first_pulse + 30 * 10**9
    assert len(late.of(packets.Geometry)) == 1
    assert set(late.logs()) == set(file_logs(path))  # the latest value of every PV first
    assert 0 < len(late.detector_rows()) < 100_328
    # pacing: the live client got the run no faster than 1/speed of its duration
    pulses = live.of(packets.BankedEvent)
    span_s = (pulses[-1].timestamp_ns - pulses[0].timestamp_ns) / 1e9
    received_s = live.received_at[-1] - live.received_at[0]
    assert received_s > 0.9 * span_s / speed


def test_loop_starts_over_and_nothing_is_sent_before_the_hello(shared_data):
    with ReplayServer([shared_data / SMALL], port=0, speed=0, loop=True) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.settimeout(0.5)
            with pytest.raises(TimeoutError):
                raw.recv(16)
            # a first packet that is not a client hello: the server hangs up, sending nothing
            raw.settimeout(5)
            raw.sendall(packets.encode(packets.Heartbeat(timestamp_ns=time.time_ns())))
            assert raw.recv(16) == b""
        with Capture(server.port) as capture:
            capture.until_end_runs(2)
    assert [(s.status, s.run_number) for s in capture.of(packets.RunStatus)] == [
        (packets.RunStatusCode.NEW_RUN, 184978),
        (END_RUN, 184978),
        (packets.RunStatusCode.NEW_RUN, 184978),
        (END_RUN, 184978),
    ]


def _start_cli(*args: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "livereduce.adara.replay", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    line = proc.stdout.readline()
    match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
    if not match:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"unexpected first line {line!r}: {err}")
    return proc, int(match.group(1))


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_cli_serves_on_loopback_logs_clients_and_runs_and_stops_on_a_signal(
    shared_data, stop_signal
):
    proc, port = _start_cli(str(shared_data / SMALL), "--port", "0", "--speed", "0")
    try:
        with Capture(port) as capture:
            capture.until_end_runs(1)
        proc.send_signal(stop_signal)
        _, log = proc.communicate(timeout=10)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert re.search(r"client 127\.0\.0\.1:\d+ connected", log)
    assert "run 184978 started (REF_L_184978.nxs.h5)" in log
    assert "run 184978 ended (REF_L_184978.nxs.h5)" in log
    assert re.search(r"client 127\.0\.0\.1:\d+ disconnected", log)
    assert len(capture.of(packets.BankedEvent)) == 4_583


def test_cli_rejects_a_file_that_is_not_an_event_file(tmp_path):
    bad = tmp_path / "not_a_run.nxs.h5"
    bad.write_bytes(b"not HDF5")
    result = subprocess.run(
        [sys.executable, "-m", "livereduce.adara.replay", str(bad), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert str(bad) in result.stderr


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_cli_rejects_a_port_out_of_range(tmp_path, port, capsys):
    with pytest.raises(SystemExit) as caught:
        main([str(tmp_path / "run.nxs.h5"), "--port", port])
    assert caught.value.code == 2
    assert f"expected a port from 0 to 65535, got '{port}'" in capsys.readouterr().err


def _write_run(path: Path, *, run_number: bytes = b"42", bank: bool = True) -> None:
    with h5py.File(path, "w") as h5:
        entry = h5.create_group("entry")
        entry["run_number"] = [run_number]
        entry.create_group("instrument")["name"] = [b"HYSPEC"]
        if bank:
            group = entry.create_group("bank1_events")
            zero = group.create_dataset("event_time_zero", data=[0.0, 1 / 60])
            zero.attrs["offset"] = b"2017-11-01T21:47:58.5-04:00"
            zero.attrs["units"] = b"second"
            group["event_index"] = np.array([0, 1], dtype=np.uint64)
            group["event_time_offset"] = np.array([100.5, 200.0], dtype=np.float32)
            group["event_id"] = np.array([7, 8], dtype=np.uint32)


@pytest.mark.parametrize(
    ("writer", "problem"),
    [
        (lambda p: h5py.File(p, "w").close(), "/entry is missing"),
        (lambda p: _write_run(p, bank=False), "/entry has no bank<N>_events group"),
        (lambda p: _write_run(p, run_number=b"abc"), "/entry/run_number 'abc' is not a run"),
    ],
    ids=["no-entry", "no-banks", "bad-run-number"],
)
def test_runfile_errors_name_the_file_and_the_part(tmp_path, writer, problem):
    path = tmp_path / "broken.nxs.h5"
    writer(path)
    with pytest.raises(RunFileError, match=re.escape(f"{path}: {problem}")):
        read_run_file(path)


def test_runfile_reads_a_minimal_file(tmp_path):
    path = tmp_path / "minimal.nxs.h5"
    _write_run(path)
    run = read_run_file(path)
    assert run.run_number == 42
    # 21:47:58.5 at UTC-4 is 01:47:58.5 UTC
    assert run.pulse_times_ns[0] == 1_509_587_278_500_000_000
    assert run.pulse_times_ns[1] - run.pulse_times_ns[0] == 16_666_666
    (bank,) = run.banks
    assert bank.tof_100ns.tolist() == [1005, 2000]
    assert bank.pulse_begin.tolist() == [0, 1, 2]


def test_hello_with_a_run_start_after_the_last_run_ended_replays_that_run(shared_data):
    # Found by a worker completing an unfinished run (resume) that connected once the replay of
    # the last file was over: its hello asked for the run's start, the server answered with
    # heartbeats only and the run was never kept. An SMS serves an ended run from its start.
    path = shared_data / SMALL
    with ReplayServer([path], port=0, speed=0, loop=False) as server:
        with Capture(server.port) as first:
            first.until_end_runs(1)
        run_start_ns = first.of(packets.RunStatus)[0].timestamp_ns // 10**9 * 10**9
        with Capture(server.port, start_time_ns=run_start_ns) as late:
            late.until_end_runs(1, timeout_s=20.0)
    statuses = [(p.status, p.run_number) for p in late.of(packets.RunStatus)]
    assert statuses == [(packets.RunStatusCode.NEW_RUN, 184978), (END_RUN, 184978)]
    np.testing.assert_array_equal(late.detector_rows(), first.detector_rows())
    assert len(late.detector_rows()) == 100_328
