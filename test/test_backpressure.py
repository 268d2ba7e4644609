"""Back-pressure (issue 15.1): the ADARA listener's buffer is bounded in bytes; when it is full
the listener stops reading, TCP makes the SMS wait, and nothing is lost."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

import numpy as np
import pytest

from livereduce.adara import packets
from livereduce.config import ConfigError, StartFrom, config_from_mapping
from livereduce.worker.engine.embedded import EmbeddedEngine
from livereduce.worker.listeners import adara, pulse_events
from livereduce.worker.listeners.base import NotYet
from livereduce.worker.stop import StopToken
from test_adara_client import T0, FakeSms, new_run
from test_engine_embedded import ChunkList, make_config, run_chunks
from waiting import wait_for

RUN = 4242


def pulse_packet(events: int, pulse: int) -> bytes:
    rng = np.random.default_rng(pulse)
    bank = packets.BankSection.from_arrays(
        3,
        rng.integers(0, 166_667, events, dtype=np.uint32),
        rng.integers(0, 100_000, events, dtype=np.uint32),
    )
    return packets.encode(
        packets.BankedEvent(
            timestamp_ns=T0 + pulse * 16_666_667,
            sources=(packets.SourceSection(source_id=1, banks=(bank,)),),
        )
    )


def end_run() -> bytes:
    return packets.encode(
        packets.RunStatus(
            timestamp_ns=T0 + 10**9,
            run_number=RUN,
            run_start_ns=T0,
            status=packets.RunStatusCode.END_RUN,
        )
    )


class Flood:
    """An SMS script that sends ``pulses`` pulse packets of ``events`` events with a
    non-blocking socket and sets ``pushed_back`` the first time the kernel refuses bytes
    (the client stopped reading and the socket buffers are full)."""

    def __init__(self, pulses: int, events: int) -> None:
        self.pulses = pulses
        self.events = events
        self.pushed_back = threading.Event()
        self.sent_pulses = 0
        self.done = threading.Event()
        self._packets = [pulse_packet(events, p) for p in range(8)]

    def __call__(self, sock: socket.socket) -> None:
        self._send(sock, new_run(RUN))
        for pulse in range(self.pulses):
            self._send(sock, self._packets[pulse % len(self._packets)])
            self.sent_pulses += 1
        self._send(sock, end_run())
        self.done.set()

    def _send(self, sock: socket.socket, data: bytes) -> None:
        sock.setblocking(False)
        view = memoryview(data)
        while view:
            try:
                view = view[sock.send(view) :]
            except BlockingIOError:
                self.pushed_back.set()
                select.select([], [sock], [], 1.0)


def test_a_full_buffer_stops_reading_pushes_back_on_the_sms_and_loses_nothing():
    # 64 MB of events against a 1 MB buffer: the socket buffers cannot hold the difference
    flood = Flood(pulses=2000, events=4000)
    sms = FakeSms(flood)
    listener = adara.AdaraListener("127.0.0.1", sms.port, buffer_bytes=1 << 20)
    listener.start(StartFrom.START_OF_RUN)
    try:
        # chunk_ready comes at an eighth of the buffer; nothing is taken, so it fills
        wait_for(lambda: listener.chunk_ready, "a chunk ready")
        wait_for(lambda: "buffer full" in listener.state, "a full buffer")
        wait_for(flood.pushed_back.is_set, "TCP to push back on the SMS")
        packet_bytes = len(flood._packets[0])
        assert listener.buffered_bytes <= (1 << 20) + 8 * packet_bytes
        assert not flood.done.is_set()
        assert "buffer full" in listener.state
        assert "reading paused" in listener.state
        total, chunks, ended = 0, 0, False
        while not ended:
            with contextlib.suppress(NotYet):
                chunk = listener.extract_data()
                total += chunk.event_count
                chunks += 1
                ended = chunk.ends_run
                # every chunk is bounded by the buffer: 1 MB of 8-byte events plus a block
                assert chunk.event_count <= (1 << 20) // 8 + (1 << 20)
            wait_for(lambda: listener.chunk_ready or flood.done.is_set(), "more data")
    finally:
        listener.close()
        sms.close()
    assert total == flood.pulses * flood.events == 8_000_000
    assert chunks > 8
    assert listener.backpressure_waits >= 8
    assert listener.connections == 1  # no reconnect, no replay: back-pressure is not stale


def test_buffer_bytes_defaults_to_an_eighth_of_the_memory_limit_within_bounds():
    assert adara.default_buffer_bytes(8 << 30) == 1 << 30
    assert adara.default_buffer_bytes(64 << 30) == adara.MAX_BUFFER_BYTES == 1 << 30
    assert adara.default_buffer_bytes(2 << 30) == 256 << 20
    assert adara.default_buffer_bytes(100 << 20) == adara.MIN_BUFFER_BYTES == 32 << 20
    base = {"instrument": "HYSPEC", "listener": "adara", "address": "127.0.0.1:1"}
    configured = adara.from_config(
        config_from_mapping(
            {**base, "listener_options": {"buffer_bytes": 5_000_000}}, None, check_scripts=False
        )
    )
    assert configured.buffer_bytes == 5_000_000
    default = adara.from_config(config_from_mapping(base, None, check_scripts=False))
    assert adara.MIN_BUFFER_BYTES <= default.buffer_bytes <= adara.MAX_BUFFER_BYTES


@pytest.mark.parametrize("value", [-1, "big"])
def test_a_bad_buffer_bytes_is_a_config_error_naming_the_key(value):
    base = {"instrument": "HYSPEC", "listener": "adara", "address": "127.0.0.1:1"}
    with pytest.raises(ConfigError, match=r"listener_options\.buffer_bytes"):
        config_from_mapping(
            {**base, "listener_options": {"buffer_bytes": value}}, None, check_scripts=False
        )


class ReadyWhenStaged(ChunkList):
    """A listener whose ``chunk_ready`` is True while chunks are staged; counts extractions."""

    hands_over_early = True

    def __init__(self, chunks) -> None:
        super().__init__([])
        self.staged = list(chunks)
        self.extractions = 0

    @property
    def chunk_ready(self) -> bool:
        return bool(self.chunks)

    def extract_data(self):
        self.extractions += 1
        return super().extract_data()


def test_the_engine_takes_a_ready_chunk_at_once_not_at_its_next_tick(tmp_path):
    config = make_config(tmp_path, update_every=3600)
    listener = ReadyWhenStaged(run_chunks(7, 2))
    engine = EmbeddedEngine(config, listener)
    stop = StopToken()
    reports = []
    thread = threading.Thread(target=engine.run, args=(stop, reports.append))
    thread.start()
    try:
        wait_for(lambda: listener.extractions >= 1, "the first tick")
        listener.chunks = listener.staged  # the buffer fills long before the next tick
        wait_for(lambda: engine.progress.chunks == 2, "both chunks taken early")
    finally:
        stop.request("test")
        thread.join(10)
    assert not thread.is_alive()
    assert listener.extractions >= 3  # the first tick, then one per ready chunk
    assert engine.progress.events == 2 * 70


def test_a_paused_reading_is_not_a_stale_stream():
    flood = Flood(pulses=400, events=4000)
    sms = FakeSms(flood)
    listener = adara.AdaraListener("127.0.0.1", sms.port, buffer_bytes=1 << 20, stale_timeout_s=0.3)
    listener.start(StartFrom.START_OF_RUN)
    try:
        wait_for(lambda: "buffer full" in listener.state, "a full buffer")
        client = listener._client
        # no packet taken for well over stale_timeout_sec: the wait is ours, not the SMS's
        wait_for(lambda: time.monotonic() - client.last_packet_monotonic > 1.0, "a long pause")
        assert listener.connections == 1
        assert "buffer full" in listener.state
        total, ended = 0, False
        while not ended:
            with contextlib.suppress(NotYet):
                chunk = listener.extract_data()
                total += chunk.event_count
                ended = chunk.ends_run
            wait_for(lambda: listener.chunk_ready or flood.done.is_set(), "more data")
    finally:
        listener.close()
        sms.close()
    assert total == 400 * 4000
    assert listener.connections == 1


def test_under_strict_overcommit_the_event_table_starts_small_and_grows(monkeypatch):
    reserving = adara.AdaraListener("127.0.0.1", 1, buffer_bytes=120_000_000)
    assert reserving._capacity == 10_000_000 + (32 << 20) // 8
    monkeypatch.setattr(adara, "RESERVE_BYTES", 0)
    strict = adara.AdaraListener("127.0.0.1", 1, buffer_bytes=120_000_000)
    assert strict._capacity == pulse_events.FIRST_CAPACITY


def test_chunk_ready_at_an_eighth_of_the_buffer_answered_while_the_lock_is_held():
    events = 1000  # 12 kB of table per pulse
    # an eighth: five pulses, with their times, charges and the run's first logs, and a bit
    buffer_bytes = 8 * (5 * 12 * events + 5000)
    more = threading.Event()

    def script(sock: socket.socket) -> None:
        sock.sendall(new_run(RUN) + b"".join(pulse_packet(events, p) for p in range(5)))
        more.wait(10)
        sock.sendall(pulse_packet(events, 5))
        more.wait(10)  # stays connected

    sms = FakeSms(script)
    listener = adara.AdaraListener("127.0.0.1", sms.port, buffer_bytes=buffer_bytes)
    listener.start(StartFrom.START_OF_RUN)
    try:
        wait_for(lambda: listener.buffered_bytes >= 5 * 12 * events, "five pulses")
        assert not listener.chunk_ready
        more.set()
        wait_for(lambda: listener.buffered_bytes >= 6 * 12 * events, "the sixth pulse")
        answers: list[bool] = []
        with listener._lock:  # as the busy connection thread holds it, packet after packet
            asking = threading.Thread(target=lambda: answers.append(listener.chunk_ready))
            asking.start()
            asking.join(5)
        assert answers == [True]
        chunk = listener.extract_data()
        assert chunk.event_count == 6 * events
        assert not listener.chunk_ready  # extract_data counted what is left: nothing
    finally:
        more.set()
        listener.close()
        sms.close()
