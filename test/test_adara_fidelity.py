"""Nothing lost, nothing doubled: the adara listener against hostile SMSs written here (issue 9).

Each scripted SMS serves one run of known content; the chunks are accumulated as the engine
does (a chunk with ``begins_run`` or ``data_reset`` starts the run over) and compared with what
was sent, to the value.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable

import h5py
import numpy as np
import pytest
import scipp as sc

from livereduce.adara import packets
from livereduce.adara.metadata_xml import ProcessVariable, device_xml, runinfo_xml
from livereduce.adara.packets import codec
from livereduce.config import StartFrom, config_from_mapping
from livereduce.protocol import Progress, Resume, WorkerExit, WorkerState
from livereduce.worker.engine.embedded import EmbeddedEngine
from livereduce.worker.listeners import adara
from livereduce.worker.listeners.base import Chunk, NotYet
from livereduce.worker.stop import StopToken
from test_adara_client import FakeSms

T0 = 1_700_000_000 * 10**9
"""Run start (a whole second, as on the wire)."""
S = 10**9
RUN = 42
CHARGE_10PC = 1000
"""Every pulse carries 10,000 pC."""


# ----------------------------------------------------------------------- packets of the run


def status(code: packets.RunStatusCode, run: int = RUN, start_ns: int = T0) -> bytes:
    return packets.encode(
        packets.RunStatus(timestamp_ns=start_ns, run_number=run, run_start_ns=start_ns, status=code)
    )


def descriptor(pv_type: str = "double") -> bytes:
    pvs = [
        ProcessVariable(pv_id=1, name="SampleTemp", pv_type=pv_type, units="K"),
        ProcessVariable(pv_id=2, name="Comment", pv_type="string"),
    ]
    return packets.encode(
        packets.DeviceDescriptor(timestamp_ns=T0, device_id=3, xml=device_xml("env", pvs))
    )


def temperature(t_ns: int, value: float) -> bytes:
    return packets.encode(
        packets.VariableDouble(timestamp_ns=t_ns, device_id=3, variable_id=1, value=value)
    )


def pulse(
    t_ns: int,
    pixels: list[int],
    *,
    extra_banks: tuple[packets.BankSection, ...] = (),
    flags: int = 0,
    version: int = 1,
) -> bytes:
    banks = (
        packets.BankSection.from_arrays(1, np.full(len(pixels), 500), np.array(pixels)),
        *extra_banks,
    )
    packet = packets.BankedEvent(
        timestamp_ns=t_ns,
        pulse_charge_10pc=CHARGE_10PC,
        flags=flags,
        sources=(packets.SourceSection(source_id=1, banks=banks),),
    )
    data = bytearray(packets.encode(packet))
    data[4] = version  # the format word's version byte
    return bytes(data)


def annotation(t_ns: int, marker: packets.MarkerType, scan_index: int = 0) -> bytes:
    return packets.encode(
        packets.StreamAnnotation(timestamp_ns=t_ns, marker_type=marker, scan_index=scan_index)
    )


def heartbeat() -> bytes:
    return packets.encode(packets.Heartbeat(timestamp_ns=T0))


def oversize_header() -> bytes:
    return struct.pack("<IIII", 1 << 31, packets.PacketType.BANKED_EVENT_V1, 0, 0)


# ----------------------------------------------------------------------- the run and its SMS


class Run:
    """One run's data items, ``(time_ns, bytes)`` in time order, and the totals sent."""

    def __init__(self, pulses: int = 6, events_per_pulse: int = 100, values: int = 3) -> None:
        self.items: list[tuple[int, bytes]] = []
        for k in range(1, pulses + 1):
            t = T0 + k * S
            self.items.append((t, pulse(t, list(range(events_per_pulse)))))
            if k <= values:
                self.items.append((t + S // 2, temperature(t + S // 2, 280.0 + k)))
        self.pulses = pulses
        self.events = pulses * events_per_pulse
        self.values = values

    def from_time(self, start_ns: int) -> tuple[bool, list[bytes]]:
        """(from the run's start, the items at or after ``start_ns``) as an SMS serves a hello:
        START_NOW and START_OF_RUN give the whole run here."""
        if start_ns in (packets.START_NOW, packets.START_OF_RUN) or start_ns <= T0:
            return True, [data for _, data in self.items]
        return False, [data for t, data in self.items if t >= start_ns]


def serve_run(
    run: Run,
    sock: socket.socket,
    hello: packets.ClientHello,
    *,
    prologue: bytes = b"",
    after: dict[int, bytes] | None = None,
) -> None:
    """Send the run to one client from its hello's start time: status (NEW_RUN from the start,
    STATE mid-run), the descriptor and ``prologue``, the items (each followed by the bytes
    ``after`` holds for its time: the hostile part), END_RUN."""
    whole, _ = run.from_time(hello.start_time_ns)
    code = packets.RunStatusCode.NEW_RUN if whole else packets.RunStatusCode.STATE
    sock.sendall(status(code) + descriptor() + prologue)
    for t, data in run.items:
        if t >= hello.start_time_ns or whole:
            sock.sendall(data + (after or {}).get(t, b""))
    sock.sendall(status(packets.RunStatusCode.END_RUN))


@pytest.fixture
def sms_factory():
    made: list[FakeSms] = []
    release = threading.Event()

    def make(script: Callable[[int, socket.socket, packets.ClientHello], None]) -> FakeSms:
        holder: list[FakeSms] = []

        def per_connection(sock: socket.socket) -> None:
            sms = holder[0]
            script(len(sms.hellos) - 1, sock, sms.hellos[-1])
            release.wait(30)  # keep the connection open until the test ends

        sms = FakeSms(per_connection)
        holder.append(sms)
        made.append(sms)
        return sms

    make.release = release
    yield make
    release.set()
    for sms in made:
        sms.close()


def listen(sms: FakeSms, **options) -> adara.AdaraListener:
    options.setdefault("reconnect_max_s", 0.5)
    listener = adara.AdaraListener("127.0.0.1", sms.port, **options)
    listener.start(StartFrom.START_OF_RUN)
    return listener


class Handed:
    """The chunks :func:`collect` has extracted so far, for a fake SMS that must not go away
    before the listener has handed something on."""

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self._changed = threading.Condition()

    def add(self, chunk: Chunk) -> None:
        with self._changed:
            self.chunks.append(chunk)
            self._changed.notify_all()

    def wait(self, events: int = 0, log: str | None = None, timeout_s: float = 10.0) -> None:
        """Until at least ``events`` events (and, given ``log``, a value of that log) were
        handed on; AssertionError after ``timeout_s``."""

        def done() -> bool:
            handed = sum(c.event_count for c in self.chunks)
            return handed >= events and (log is None or any(log in c.logs for c in self.chunks))

        with self._changed:
            assert self._changed.wait_for(done, timeout_s), f"not handed on: {events}, {log}"


def collect(
    listener: adara.AdaraListener, timeout_s: float = 20.0, handed: Handed | None = None
) -> list[Chunk]:
    """Chunks until the run's END_RUN, extracting every 50 ms (each also given to
    ``handed``)."""
    chunks: list[Chunk] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not (chunks and chunks[-1].ends_run):
            assert time.monotonic() < deadline, f"no END_RUN in {timeout_s} s: {listener.state}"
            with contextlib.suppress(NotYet):
                chunks.append(listener.extract_data())
                if handed is not None:
                    handed.add(chunks[-1])
            time.sleep(0.05)
    finally:
        listener.close()
    return chunks


def accumulated(chunks: list[Chunk]) -> tuple[int, dict[str, list], collections.Counter]:
    """(events, logs name -> values, input counts) of the run as the engine accumulates it."""
    events, logs, counts = 0, collections.defaultdict(list), collections.Counter()
    for chunk in chunks:
        if chunk.begins_run or chunk.data_reset:
            events, logs = 0, collections.defaultdict(list)
        events += chunk.event_count
        for name, series in chunk.logs.items():
            logs[name].extend(np.asarray(series.values).tolist())
        counts.update(chunk.input_counts)
    return events, logs, counts


def assert_run_complete(run: Run, chunks: list[Chunk]) -> collections.Counter:
    events, logs, counts = accumulated(chunks)
    assert events == run.events
    assert len(logs["proton_charge"]) == run.pulses
    assert sum(logs["proton_charge"]) == run.pulses * CHARGE_10PC * 10.0
    assert logs["SampleTemp"] == [281.0, 282.0, 283.0][: run.values]
    return counts


# ----------------------------------------------------------------------- reconnects


@pytest.mark.parametrize("extract", ["often", "after-the-run"])
@pytest.mark.parametrize("close_inside_a_packet", [False, True], ids=["clean", "inside-a-packet"])
def test_charge_and_pv_counts_equal_the_run_after_a_close(
    sms_factory, close_inside_a_packet, extract
):
    run = Run()
    served = threading.Event()

    def script(connection, sock, hello):
        if connection == 0:
            first = [data for _, data in run.items[:5]]  # 3 pulses, 2 values
            tail = heartbeat()[:9] if close_inside_a_packet else b""
            sock.sendall(b"".join([status(packets.RunStatusCode.NEW_RUN), descriptor(), *first]))
            sock.sendall(tail)
            sock.close()
            return
        serve_run(run, sock, hello)
        served.set()

    sms = sms_factory(script)
    listener = listen(sms)
    if extract == "after-the-run":  # as an engine with a long update_every
        assert served.wait(10)
    chunks = collect(listener)
    assert_run_complete(run, chunks)
    assert len(sms.hellos) == 2
    assert sms.hellos[1].start_time_ns == T0  # asked for the run from its start
    assert sum(c.data_reset for c in chunks) <= 1


def test_charge_and_pv_counts_equal_the_run_after_three_stale_reconnects(sms_factory, caplog):
    caplog.set_level(logging.INFO, logger="livereduce.listener.adara")
    run = Run()

    def script(connection, sock, hello):
        if connection < 3:
            sock.sendall(b"".join([status(packets.RunStatusCode.NEW_RUN), descriptor()]))
            sock.sendall(b"".join(data for _, data in run.items[: 2 + 2 * connection]))
            return  # then silence: a stale stream
        serve_run(run, sock, hello)

    sms = sms_factory(script)
    listener = listen(sms, stale_timeout_s=0.3)
    chunks = collect(listener)
    assert_run_complete(run, chunks)
    assert len(sms.hellos) == 4
    assert sum("stale stream" in r.getMessage() for r in caplog.records) == 3
    assert any(c.data_reset for c in chunks)  # the replays replaced what was handed on


def test_a_reconnect_answered_with_live_data_keeps_the_earlier_events(sms_factory, caplog):
    caplog.set_level(logging.INFO, logger="livereduce.listener.adara")
    run = Run(pulses=6, values=0)
    first = [data for _, data in run.items[:3]]  # 300 events
    later = [data for _, data in run.items[3:]]
    handed = Handed()

    def script(connection, sock, hello):
        if connection == 0:
            sock.sendall(b"".join([status(packets.RunStatusCode.NEW_RUN), descriptor(), *first]))
            handed.wait(events=300)  # the listener has handed the first 300 events on
            sock.close()
            return
        # the SMS answers with the run's state and live data only: no replay
        sock.sendall(b"".join([status(packets.RunStatusCode.STATE), descriptor(), *later]))
        sock.sendall(status(packets.RunStatusCode.END_RUN))

    sms = sms_factory(script)
    listener = listen(sms)
    chunks = collect(listener, handed=handed)
    assert not any(c.data_reset for c in chunks)
    assert_run_complete(run, chunks)
    assert not any("data reset" in r.getMessage() for r in caplog.records)
    assert any("goes on after the reconnect" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------- run semantics


@pytest.mark.parametrize("cache_resent", [False, True], ids=["sent-once", "cache-resent"])
def test_a_pv_sent_before_new_run_is_in_the_run_once(sms_factory, cache_resent):
    run = Run(values=0)
    before = temperature(T0 - 5 * S, 279.0)

    def script(connection, sock, hello):
        sock.sendall(descriptor() + before + status(packets.RunStatusCode.NEW_RUN))
        if cache_resent:  # an SMS sends its variable cache with the run's prologue
            sock.sendall(descriptor() + before)
        sock.sendall(b"".join(data for _, data in run.items))
        sock.sendall(status(packets.RunStatusCode.END_RUN))

    chunks = collect(listen(sms_factory(script)))
    _, logs, _ = accumulated(chunks)
    assert logs["SampleTemp"] == [279.0]
    assert logs["pause"] == [0]
    assert logs["scan_index"] == [0]


def test_a_run_joined_late_is_partial_and_one_from_its_start_is_not(sms_factory):
    run = Run(values=0)

    def script(connection, sock, hello):
        sock.sendall(status(packets.RunStatusCode.STATE) + descriptor())
        sock.sendall(b"".join(data for t, data in run.items if t >= T0 + 4 * S))
        sock.sendall(status(packets.RunStatusCode.END_RUN))
        sock.sendall(status(packets.RunStatusCode.STATE, run=RUN + 1, start_ns=T0 + 10 * S))
        sock.sendall(pulse(T0 + 10 * S + S // 10, [1]))
        sock.sendall(status(packets.RunStatusCode.END_RUN, run=RUN + 1))

    listener = listen(sms_factory(script))
    chunks = collect(listener)
    assert chunks[-1].run.number == RUN
    assert chunks[-1].run.partial
    # the next run, joined within a pulse of its start, is complete
    deadline = time.monotonic() + 10
    while True:
        try:
            chunk = listener.extract_data()
        except NotYet:
            assert time.monotonic() < deadline
            time.sleep(0.05)
            continue
        break
    assert chunk.run.number == RUN + 1
    assert not chunk.run.partial


def test_a_run_joined_at_its_end_without_a_pulse_is_partial(sms_factory):
    def script(connection, sock, hello):
        sock.sendall(status(packets.RunStatusCode.STATE) + descriptor())
        end = packets.RunStatus(
            timestamp_ns=T0 + 100 * S,
            run_number=RUN,
            run_start_ns=T0,
            status=packets.RunStatusCode.END_RUN,
        )
        sock.sendall(packets.encode(end))

    chunks = collect(listen(sms_factory(script)))
    assert chunks[-1].run.partial
    assert sum(c.event_count for c in chunks) == 0


def test_array_variables_become_two_dimensional_logs(sms_factory):
    pvs = [ProcessVariable(pv_id=4, name="Slits", pv_type="double array", units="mm")]
    xml = device_xml("slits", pvs)
    stream = [
        status(packets.RunStatusCode.NEW_RUN),
        packets.encode(packets.DeviceDescriptor(timestamp_ns=T0, device_id=5, xml=xml)),
        *(
            packets.encode(
                packets.VariableDoubleArray(
                    timestamp_ns=T0 + k * S, device_id=5, variable_id=4, value=[k, 2.0 * k]
                )
            )
            for k in (1, 2)
        ),
        pulse(T0 + 3 * S, [1]),
        status(packets.RunStatusCode.END_RUN),
    ]
    chunks = collect(listen(sms_factory(lambda c, sock, h: sock.sendall(b"".join(stream)))))
    (log,) = [c.logs["Slits"] for c in chunks if "Slits" in c.logs]
    assert log.dims == ("time", "element")
    assert log.values.tolist() == [[1.0, 2.0], [2.0, 4.0]]
    assert log.unit == "mm"


@pytest.mark.parametrize("first_connection_drops", [False, True], ids=["once", "after-a-drop"])
def test_a_resumed_worker_asks_for_the_unfinished_run_from_its_start(
    sms_factory, first_connection_drops
):
    run = Run()

    def script(connection, sock, hello):
        if first_connection_drops and connection == 0:
            sock.sendall(heartbeat())
            sock.close()
            return
        serve_run(run, sock, hello)

    sms = sms_factory(script)
    listener = listen(sms, resume=Resume(run_number=RUN, start_ns=T0 + 123_456_789))
    chunks = collect(listener)
    # whole seconds, at or before the run start, until the run has been met
    assert {h.start_time_ns for h in sms.hellos} == {T0}
    assert len(sms.hellos) == (2 if first_connection_drops else 1)
    assert_run_complete(run, chunks)
    assert chunks[0].begins_run


# ----------------------------------------------------------------------- bad input


def test_text_that_is_not_utf8_is_replaced_not_dropped(sms_factory, caplog):
    caplog.set_level(logging.WARNING, logger="livereduce.listener.adara")
    latin1 = "5 \udcb0C"  # a Latin-1 degree sign: one byte that is not UTF-8
    info = packets.encode(
        packets.RunInfo(timestamp_ns=T0, xml=runinfo_xml(RUN, "IPTS-1", f"Sample at {latin1}"))
    )
    comment = packets.encode(
        packets.VariableString(timestamp_ns=T0 + S, device_id=3, variable_id=2, value=latin1)
    )
    run = Run(values=0)

    def script(connection, sock, hello):
        sock.sendall(status(packets.RunStatusCode.NEW_RUN) + info + descriptor())
        sock.sendall(comment)
        sock.sendall(b"".join(data for _, data in run.items))
        sock.sendall(status(packets.RunStatusCode.END_RUN))

    sms = sms_factory(script)
    chunks = collect(listen(sms))
    events, logs, counts = accumulated(chunks)
    assert events == run.events
    assert chunks[-1].run.title == "Sample at 5 \ufffdC"
    assert chunks[-1].run.experiment == "IPTS-1"
    assert logs["Comment"] == ["5 \ufffdC"]
    assert counts["text_not_utf8"] == 2
    assert sum("not UTF-8" in r.getMessage() for r in caplog.records) == 2
    assert len(sms.hellos) == 1


def test_a_malformed_packet_in_a_run_is_skipped_by_its_length_on_the_same_connection(
    sms_factory, caplog
):
    caplog.set_level(logging.INFO, logger="livereduce.listener.adara")
    run = Run()
    odd = struct.pack("<IIII", 6, packets.PacketType.BANKED_EVENT_V1, 0, 0) + b"\0" * 6
    short = struct.pack("<IIII", 4, packets.PacketType.BANKED_EVENT_V1, 0, 0) + b"\0" * 4

    def script(connection, sock, hello):
        items = [data for _, data in run.items]
        sock.sendall(status(packets.RunStatusCode.NEW_RUN) + descriptor())
        sock.sendall(b"".join([*items[:4], odd, short, short, *items[4:]]))
        sock.sendall(status(packets.RunStatusCode.END_RUN))

    sms = sms_factory(script)
    chunks = collect(listen(sms))
    counts = assert_run_complete(run, chunks)
    assert counts["malformed_packets"] == 3
    assert counts["skipped_bytes"] == 22 + 20 + 20
    assert len(sms.hellos) == 1  # the connection was kept
    logged = [r.getMessage() for r in caplog.records if "malformed_packet" in r.getMessage()]
    assert len(logged) == 1  # once per packet type and run; the others are counted


def test_a_framing_breaking_packet_in_a_replayed_run_is_skipped_past_after_two_failures(
    sms_factory, caplog
):
    caplog.set_level(logging.INFO, logger="livereduce.listener.adara")
    run = Run(values=0)
    # every connection that passes pulse 3 meets a 2**31-byte header
    bad = {T0 + 3 * S: oversize_header() + b"\0" * 64}
    sms = sms_factory(lambda connection, sock, hello: serve_run(run, sock, hello, after=bad))
    chunks = collect(listen(sms, reconnect_max_s=30))
    counts = assert_run_complete(run, chunks)
    assert [h.start_time_ns for h in sms.hellos] == [packets.START_OF_RUN, T0, T0 + 4 * S]
    assert counts["framing_failures"] == 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("framing_lost" in m for m in messages) == 2
    assert any("stream_skipped" in m and "up to 1.000 s" in m for m in messages)
    # the second failure at the same point doubles the backoff instead of starting it over
    retries = [m for m in messages if "reconnection attempt" in m]
    assert retries[0].endswith("attempt 2 in 0.5 s")
    assert retries[1].endswith("attempt 3 in 1.0 s")


def test_bad_events_are_counted_exactly_and_never_enter_the_data(sms_factory):
    idf = '<instrument><idlist idname="d"><id start="0" end="99"/></idlist></instrument>'
    geometry = packets.encode(packets.Geometry(timestamp_ns=T0, xml=idf))
    error_bank = packets.BankSection.from_arrays(packets.ERROR_BANK_ID, [1, 2, 3], [7, 8, 9])
    unmapped = packets.BankSection.from_arrays(packets.UNMAPPED_BANK_ID, [1, 2], [5000, 6000])
    stream = [
        status(packets.RunStatusCode.NEW_RUN),
        geometry,
        pulse(T0 + S, [5, 50, 150, 0x8000_0005], extra_banks=(error_bank, unmapped)),
        pulse(T0 + 2 * S, [1, 2, 3, 4], flags=packets.BankedEventFlag.DUPLICATE_PULSE),
        pulse(T0 + 3 * S, [10, 99]),
        status(packets.RunStatusCode.END_RUN),
    ]
    chunks = collect(listen(sms_factory(lambda c, sock, h: sock.sendall(b"".join(stream)))))
    events, logs, counts = accumulated(chunks)
    assert events == 4
    ids = np.concatenate([c.events.bins.concat().value.coords["event_id"].values for c in chunks])
    assert sorted(ids.tolist()) == [5, 10, 50, 99]
    assert dict(counts) == {
        "error_events": 4,
        "unmapped_events": 2,
        "out_of_range_events": 1,
        "duplicate_pulses": 1,
        "duplicate_pulse_events": 4,
    }
    assert logs["proton_charge"] == [10000.0, 10000.0]  # the duplicate pulse adds none


def test_banked_events_of_a_newer_version_are_read_with_one_warning(
    sms_factory, caplog, monkeypatch
):
    monkeypatch.setattr(codec, "_WARNED_NEWER", set())  # once per process: start afresh
    caplog.set_level(logging.WARNING, logger="livereduce.adara.packets")
    stream = [
        status(packets.RunStatusCode.NEW_RUN),
        *(pulse(T0 + k * S, [1, 2, 3], version=2) for k in range(1, 5)),
        status(packets.RunStatusCode.END_RUN),
    ]
    chunks = collect(listen(sms_factory(lambda c, sock, h: sock.sendall(b"".join(stream)))))
    events, logs, _ = accumulated(chunks)
    assert events == 12
    assert len(logs["proton_charge"]) == 4
    assert sum("0x400002" in r.getMessage() for r in caplog.records) == 1


# ----------------------------------------------------------------------- pause and scan


@pytest.mark.parametrize("keep", [False, True], ids=["dropped", "kept"])
def test_events_between_pause_and_resume_are_excluded_and_counted(sms_factory, keep):
    stream = [
        status(packets.RunStatusCode.NEW_RUN),
        pulse(T0 + 1 * S, [1, 2]),
        annotation(T0 + 2 * S, packets.MarkerType.SCAN_START, scan_index=3),
        annotation(T0 + 2 * S, packets.MarkerType.PAUSE),
        pulse(T0 + 3 * S, [3, 4, 5]),
        pulse(T0 + 4 * S, [6]),
        annotation(T0 + 5 * S, packets.MarkerType.RESUME),
        pulse(T0 + 6 * S, [7]),
        annotation(T0 + 7 * S, packets.MarkerType.SCAN_STOP),
        status(packets.RunStatusCode.END_RUN),
    ]
    sms = sms_factory(lambda c, sock, h: sock.sendall(b"".join(stream)))
    chunks = collect(listen(sms, keep_paused_events=keep))
    events, logs, counts = accumulated(chunks)
    assert events == (7 if keep else 3)
    assert counts.get("paused_events", 0) == (0 if keep else 4)
    assert counts.get("paused_pulses", 0) == (0 if keep else 2)
    assert logs["pause"] == [0, 1, 0]
    assert logs["scan_index"] == [0, 3, 0]
    assert len(logs["proton_charge"]) == (4 if keep else 2)


def run_engine_until(
    engine: EmbeddedEngine, done: Callable[[Progress], bool], timeout_s: float = 30.0
) -> None:
    """Run ``engine`` until a report makes ``done`` true; AssertionError after ``timeout_s``."""
    stop = StopToken()

    def report(progress: Progress) -> None:
        if done(progress):
            stop.request("done")

    timer = threading.Timer(timeout_s, stop.request, args=("timed out",))
    timer.start()
    try:
        assert engine.run(stop, report) is WorkerExit.STOPPED
    finally:
        timer.cancel()
    assert stop.reason == "done"


def test_bad_bytes_outside_a_run_are_counted_once_in_the_status(sms_factory, tmp_path):
    from test_engine_embedded import make_config  # noqa: PLC0415

    odd = struct.pack("<IIII", 6, packets.PacketType.HEARTBEAT_V0, 0, 0) + b"\0" * 6
    done = threading.Event()

    def script(connection, sock, hello):  # no run: heartbeats and two malformed packets
        sock.sendall(heartbeat() + odd + heartbeat() + odd + heartbeat())
        done.wait(30)

    sms = sms_factory(script)
    listener = adara.AdaraListener("127.0.0.1", sms.port, reconnect_max_s=0.5)
    engine = EmbeddedEngine(make_config(tmp_path, update_every=0.05), listener)
    try:
        run_engine_until(engine, lambda p: p.input_counts.get("malformed_packets", 0) >= 2)
    finally:
        done.set()
    progress = engine.progress
    assert progress.state is WorkerState.WAITING_FOR_RUN
    assert progress.input_counts == {"malformed_packets": 2, "skipped_bytes": 44}
    assert progress.errors == 2
    assert progress.last_error == "bad input from the stream: 2 malformed_packets, 44 skipped_bytes"


def test_a_broken_framing_outside_a_run_is_counted_at_every_connection(sms_factory, tmp_path):
    from test_engine_embedded import make_config  # noqa: PLC0415

    def script(connection, sock, hello):  # e.g. an address that is not an SMS at all
        sock.sendall(heartbeat() + oversize_header() + heartbeat())

    sms = sms_factory(script)
    listener = adara.AdaraListener("127.0.0.1", sms.port, reconnect_max_s=0.2)
    engine = EmbeddedEngine(make_config(tmp_path, update_every=0.05), listener)
    run_engine_until(engine, lambda p: p.input_counts.get("framing_losses", 0) >= 2)
    progress = engine.progress
    assert progress.errors == progress.input_counts["framing_losses"] >= 2
    assert progress.last_error.startswith("bad input from the stream: 1 framing_losses")
    assert len(sms.hellos) >= 2


def test_a_hostile_run_completes_in_the_engine_with_the_faults_in_the_status(sms_factory, tmp_path):
    from test_engine_embedded import make_config  # noqa: PLC0415

    run = Run(values=0)
    latin1 = packets.encode(
        packets.VariableString(timestamp_ns=T0 + S, device_id=3, variable_id=2, value="\udcb0")
    )
    odd = struct.pack("<IIII", 6, packets.PacketType.BANKED_EVENT_V1, 0, 0) + b"\0" * 6

    def script(connection, sock, hello):
        after = {T0 + 3 * S: oversize_header()}
        serve_run(run, sock, hello, prologue=latin1 + odd, after=after)

    sms = sms_factory(script)
    listener = adara.AdaraListener("127.0.0.1", sms.port, reconnect_max_s=0.5)
    config = make_config(tmp_path, run_transition="Rename", update_every=0.05)
    engine = EmbeddedEngine(config, listener)
    result = tmp_path / "out" / f"result_{RUN}.h5"
    run_engine_until(engine, lambda _: result.exists())
    progress = engine.progress
    assert progress.events == run.events  # the replay after the first failure replaced it
    assert progress.errors >= 2  # malformed packets and the framing failure skipped past
    assert progress.input_counts["framing_failures"] == 1
    assert progress.input_counts["skipped_bytes"] >= 22
    assert progress.input_counts["text_not_utf8"] >= 1
    kept = sc.io.load_hdf5(result)
    assert kept.bins.size().sum().value == run.events
    with h5py.File(result) as h5:
        assert json.loads(h5.attrs["livereduce_input_counts"])["framing_failures"] == 1


def test_without_a_geometry_the_instrument_table_gives_the_pixel_range(sms_factory, tmp_path):
    config = config_from_mapping(
        {"instrument": "HYSPEC", "listener": "adara", "address": "127.0.0.1:1"},
        tmp_path / "livereduce.conf",
        check_scripts=False,
    )
    assert config.instrument.pixel_ids == (0, 20479)
    stream = [
        status(packets.RunStatusCode.NEW_RUN),
        pulse(T0 + S, [0, 20479, 20480, 99999]),
        status(packets.RunStatusCode.END_RUN),
    ]
    sms = sms_factory(lambda c, sock, h: sock.sendall(b"".join(stream)))
    listener = adara.AdaraListener(
        "127.0.0.1", sms.port, pixel_ids=config.instrument.pixel_ids, reconnect_max_s=0.5
    )
    listener.start(StartFrom.START_OF_RUN)
    events, _, counts = accumulated(collect(listener))
    assert events == 2
    assert counts["out_of_range_events"] == 2


def test_pv_values_received_before_any_pulse_are_not_doubled_by_a_replay(sms_factory):
    run = Run(values=0)
    values = [temperature(T0 + k * S // 10, 280.0 + k) for k in (1, 2, 3)]
    handed = Handed()

    def script(connection, sock, hello):
        sock.sendall(status(packets.RunStatusCode.NEW_RUN) + descriptor() + b"".join(values))
        if connection == 0:
            handed.wait(log="SampleTemp")  # handed on, then the SMS goes away (beam still off)
            sock.close()
            return
        sock.sendall(b"".join(data for _, data in run.items))
        sock.sendall(status(packets.RunStatusCode.END_RUN))

    sms = sms_factory(script)
    chunks = collect(listen(sms), handed=handed)
    _, logs, _ = accumulated(chunks)
    assert len(sms.hellos) == 2
    assert logs["SampleTemp"] == [281.0, 282.0, 283.0]
    assert len(logs["proton_charge"]) == run.pulses


def test_a_reconnect_answered_from_inside_the_run_keeps_what_came_and_drops_the_repeats(
    sms_factory, caplog
):
    caplog.set_level(logging.INFO, logger="livereduce.listener.adara")
    run = Run()  # pulses at 1..6 s, values at 1.5, 2.5, 3.5 s
    first = [data for t, data in run.items if t <= T0 + 4 * S]
    again = [data for t, data in run.items if t >= T0 + 2 * S]  # overlaps 2..4 s
    handed = Handed()

    def script(connection, sock, hello):
        if connection == 0:
            sock.sendall(b"".join([status(packets.RunStatusCode.NEW_RUN), descriptor(), *first]))
            handed.wait(events=400, log="SampleTemp")  # pulses 1-4 s and their values
            sock.close()
            return
        sock.sendall(b"".join([status(packets.RunStatusCode.STATE), descriptor(), *again]))
        sock.sendall(status(packets.RunStatusCode.END_RUN))

    chunks = collect(listen(sms_factory(script)), handed=handed)
    assert not any(c.data_reset for c in chunks)
    assert_run_complete(run, chunks)
    assert any("sends again from 1.000 s into the run" in r.getMessage() for r in caplog.records)


def test_bad_bytes_at_two_points_are_each_skipped_past_and_never_met_again(sms_factory):
    run = Run(values=0)
    bad = {T0 + 3 * S: oversize_header(), T0 + 4 * S: oversize_header()}
    sms = sms_factory(lambda connection, sock, hello: serve_run(run, sock, hello, after=bad))
    chunks = collect(listen(sms, reconnect_max_s=0.5))
    counts = assert_run_complete(run, chunks)
    assert counts["framing_failures"] == 2
    assert [h.start_time_ns for h in sms.hellos] == [
        packets.START_OF_RUN,
        T0,  # the run again from its start: the same failure at 3 s
        T0 + 4 * S,  # past it; fails after 4 s
        T0 + 4 * S,  # not back before the first bad point: the same failure at 4 s
        T0 + 5 * S,  # past the second one
    ]


def test_a_late_joined_run_replayed_from_its_start_is_complete(sms_factory):
    run = Run(values=0)
    handed = Handed()

    def script(connection, sock, hello):
        if connection == 0:  # joined late: the first pulse is 4 s after the start
            sock.sendall(status(packets.RunStatusCode.STATE) + descriptor())
            sock.sendall(b"".join(data for t, data in run.items if t >= T0 + 4 * S))
            handed.wait(events=300)  # pulses 4-6 s
            sock.close()
            return
        serve_run(run, sock, hello)  # asked for the run's start: all of it, NEW_RUN

    chunks = collect(listen(sms_factory(script)), handed=handed)
    assert_run_complete(run, chunks)
    assert any(c.run.partial for c in chunks)  # as first joined
    assert not chunks[-1].run.partial


def test_a_reconnect_that_ends_before_its_first_pulse_loses_nothing(sms_factory):
    run = Run(values=0)
    first = [data for t, data in run.items if t <= T0 + 3 * S]
    later = [data for t, data in run.items if t > T0 + 3 * S]
    answered = threading.Event()

    def script(connection, sock, hello):
        if connection == 0:
            sock.sendall(b"".join([status(packets.RunStatusCode.NEW_RUN), descriptor(), *first]))
            sock.close()
        elif connection == 1:  # the run's status and metadata again, then gone before a pulse
            sock.sendall(status(packets.RunStatusCode.STATE) + descriptor())
            sock.close()
        else:  # live data only
            sock.sendall(b"".join([status(packets.RunStatusCode.STATE), descriptor(), *later]))
            sock.sendall(status(packets.RunStatusCode.END_RUN))
            answered.set()

    sms = sms_factory(script)
    listener = listen(sms)
    assert answered.wait(10)  # nothing is extracted before (an engine's long update_every)
    chunks = collect(listener)
    assert len(sms.hellos) == 3
    assert_run_complete(run, chunks)


@pytest.mark.parametrize("framed", [False, True], ids=["raw", "in-a-banked-event-header"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_bytes_inside_a_run_never_loop_and_the_run_completes(sms_factory, seed, framed):
    run = Run(values=0)
    garbage = np.random.default_rng(seed).integers(0, 256, 36, dtype=np.uint8).tobytes()
    if framed:  # a plausible header, a payload of noise: malformed, skipped by its length
        garbage = struct.pack("<IIII", 36, packets.PacketType.BANKED_EVENT_V1, 0, 0) + garbage

    bad = {T0 + 2 * S: garbage}
    sms = sms_factory(lambda connection, sock, hello: serve_run(run, sock, hello, after=bad))
    chunks = collect(listen(sms, reconnect_max_s=0.5))
    events, _, counts = accumulated(chunks)
    assert chunks[-1].ends_run
    assert len(sms.hellos) <= 3  # at most two failures at the same point, then past it
    assert counts["framing_failures"] + counts["malformed_packets"] >= 1
    assert events >= run.events - 2 * 100  # at most the pulses around the bad bytes are lost
    if framed:
        assert len(sms.hellos) == 1
        assert events == run.events
