"""The ADARA client against a scripted SMS on a real socket: hello, packets in order, every
way a connection can end delivered to the consumer, prompt close."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest

from livereduce.adara import packets
from livereduce.adara.client import AdaraClient, ConnectionLost
from livereduce.adara.errors import (
    AdaraProtocolError,
    BadFieldError,
    BadPayloadLengthError,
    OversizePacketError,
)
from waiting import wait_for

T0 = 1_700_000_000 * 10**9


def heartbeat(i: int = 0) -> bytes:
    return packets.encode(packets.Heartbeat(timestamp_ns=T0 + i))


def new_run(run: int = 7) -> bytes:
    return packets.encode(
        packets.RunStatus(
            timestamp_ns=T0, run_number=run, run_start_ns=T0, status=packets.RunStatusCode.NEW_RUN
        )
    )


class FakeSms:
    """Accepts connections on a free loopback port; for each one reads the client hello and
    runs ``script(sock)``. ``hellos`` records the hello of every connection."""

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self.script = script
        self.hellos: list[packets.ClientHello] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            head = _recv_exactly(sock, packets.HEADER_SIZE)
            size = packets.decode_header(head).payload_length
            self.hellos.append(packets.decode(head + _recv_exactly(sock, size)))
            self.script(sock)
        except OSError:
            pass

    def close(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        for sock in self.connections:
            sock.close()
        self._thread.join(5)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise OSError("closed")
        data += more
    return data


@pytest.fixture
def sms_factory():
    made: list[FakeSms] = []

    def make(script: Callable[[socket.socket], None]) -> FakeSms:
        made.append(FakeSms(script))
        return made[-1]

    yield make
    for sms in made:
        sms.close()


def drain(client: AdaraClient, timeout_s: float = 5.0) -> tuple[list, BaseException]:
    """Packets until the first exception; returns (packets, the exception)."""
    got = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            packet = client.get(0.5)
        except (ConnectionLost, AdaraProtocolError) as exc:
            return got, exc
        if packet is not None:
            got.append(packet)
    raise AssertionError(f"no failure within {timeout_s} s; got {got}")


def test_hello_carries_the_start_time_and_packets_arrive_in_order(sms_factory):
    sms = sms_factory(lambda sock: (sock.sendall(new_run() + heartbeat(1)), sock.close()))
    with AdaraClient("127.0.0.1", sms.port, start_time_ns=packets.START_OF_RUN) as client:
        got, failure = drain(client)
    assert sms.hellos[0].start_time_ns == packets.START_OF_RUN
    assert [type(p) for p in got] == [packets.RunStatus, packets.Heartbeat]
    assert got[0].run_number == 7
    assert isinstance(failure, ConnectionLost)
    assert failure.dropped_bytes == 0
    assert "closed the connection" in str(failure)


def test_connection_lost_is_repeated_after_it_was_delivered(sms_factory):
    sms = sms_factory(lambda sock: sock.close())
    with AdaraClient("127.0.0.1", sms.port) as client:
        _, failure = drain(client)
        with pytest.raises(ConnectionLost):
            client.get(0.1)
    assert client.ended is failure


def test_close_in_the_middle_of_a_header_drops_the_half_packet(sms_factory):
    sms = sms_factory(lambda sock: (sock.sendall(heartbeat() + heartbeat(2)[:7]), sock.close()))
    with AdaraClient("127.0.0.1", sms.port) as client:
        got, failure = drain(client)
    assert len(got) == 1
    assert isinstance(failure, ConnectionLost)
    assert failure.dropped_bytes == 7
    assert "7 bytes of an incomplete packet dropped" in str(failure)


def test_a_bad_field_is_reported_and_reading_goes_on(sms_factory):
    bad_status = bytearray(new_run())
    bad_status[packets.HEADER_SIZE + 11] = 99  # run status code 99 does not exist
    sms = sms_factory(
        lambda sock: (sock.sendall(bytes(bad_status) + heartbeat(3)), time.sleep(0.2), sock.close())
    )
    with AdaraClient("127.0.0.1", sms.port) as client:
        got, failure = drain(client)
        assert isinstance(failure, BadFieldError)
        assert "run status" in str(failure)
        after, end = drain(client)
    assert got == []
    assert [p.timestamp_ns for p in after] == [T0 + 3]
    assert isinstance(end, ConnectionLost)


def test_a_length_not_a_multiple_of_4_is_skipped_and_the_connection_goes_on(sms_factory):
    odd = struct.pack("<IIII", 6, packets.PacketType.HEARTBEAT_V0, 0, 0) + b"\0" * 6
    done = threading.Event()  # the SMS stays connected until the test has its packets
    sms = sms_factory(lambda sock: (sock.sendall(heartbeat() + odd + heartbeat(1)), done.wait(10)))
    with AdaraClient("127.0.0.1", sms.port) as client:
        got, failure = drain(client)
        assert isinstance(failure, BadPayloadLengthError)
        assert client.get(2.0) == packets.Heartbeat(timestamp_ns=T0 + 1)
        done.set()
    assert len(got) == 1
    assert client.parser.malformed_bytes == 22


def test_a_framing_error_ends_the_connection(sms_factory):
    broken = struct.pack("<IIII", 1 << 31, packets.PacketType.HEARTBEAT_V0, 0, 0) + b"\0" * 8
    done = threading.Event()  # the SMS stays connected: the client is the one that ends it
    sms = sms_factory(lambda sock: (sock.sendall(heartbeat() + broken), done.wait(10)))
    with AdaraClient("127.0.0.1", sms.port) as client:
        got, failure = drain(client)
        assert isinstance(failure, OversizePacketError)
        _, end = drain(client)
        done.set()
    assert len(got) == 1
    assert isinstance(end, ConnectionLost)
    assert "cannot be framed" in str(end)


def test_a_full_queue_holds_the_reader_back_without_losing_packets(sms_factory):
    sms = sms_factory(
        lambda sock: (sock.sendall(b"".join(heartbeat(i) for i in range(500))), sock.close())
    )
    with AdaraClient("127.0.0.1", sms.port, queue_packets=4) as client:
        wait_for(lambda: client.queued_bytes == 4 * len(heartbeat()), "the reader to fill 4 slots")
        got, failure = drain(client)
    assert [p.timestamp_ns - T0 for p in got] == list(range(500))
    assert isinstance(failure, ConnectionLost)


def test_close_with_a_full_queue_stops_the_reader_at_once(sms_factory, caplog):
    sms = sms_factory(lambda sock: sock.sendall(b"".join(heartbeat(i) for i in range(2000))))
    client = AdaraClient("127.0.0.1", sms.port, queue_packets=4)
    client.connect()
    wait_for(lambda: client.queued_bytes == 4 * len(heartbeat()), "the reader to fill 4 slots")
    wait_for(lambda: client.parser.packets > 4, "the reader to hold more packets than fit")
    client.close()
    assert "did not stop" not in caplog.text
    assert not [t for t in threading.enumerate() if t.name.startswith("adara-client-")]


def test_connecting_twice_is_refused(sms_factory):
    sms = sms_factory(lambda sock: sock.sendall(heartbeat()))
    with AdaraClient("127.0.0.1", sms.port) as client:
        with pytest.raises(RuntimeError, match="already connected"):
            client.connect()
        assert isinstance(client.get(2.0), packets.Heartbeat)


def test_connect_refused_raises_oserror():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        client = AdaraClient("127.0.0.1", port, connect_timeout_s=2)
        with pytest.raises(ConnectionRefusedError):
            client.connect()


def test_close_is_prompt_while_the_sms_is_silent(sms_factory):
    silent = threading.Event()
    sms = sms_factory(lambda sock: silent.wait(10))
    client = AdaraClient("127.0.0.1", sms.port)
    client.connect()
    assert client.get(0.3) is None
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 2.0
    silent.set()
    with pytest.raises(ConnectionLost, match="closed by the client"):
        client.get(1.0)


def receive_all(client: AdaraClient, timeout_s: float = 5.0) -> tuple[list, ConnectionLost]:
    """Every (item, bytes) pair receive() returns until the connection ends."""
    got: list = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            got.extend(client.receive(0.5))
        except ConnectionLost as end:
            return got, end
    raise AssertionError(f"the connection did not end within {timeout_s} s; got {got}")


def test_without_a_reader_thread_receive_returns_packets_and_errors_in_order_then_the_end(
    sms_factory,
):
    odd = struct.pack("<IIII", 6, packets.PacketType.HEARTBEAT_V0, 0, 0) + b"\0" * 6
    stream = heartbeat() + odd + heartbeat(1) + odd + heartbeat(2) + heartbeat(3)[:5]
    sms = sms_factory(lambda sock: (sock.sendall(stream), sock.close()))
    with AdaraClient("127.0.0.1", sms.port, background=False) as client:
        got, end = receive_all(client)
        with pytest.raises(ConnectionLost) as again:
            client.receive(0.1)
    assert not [t for t in threading.enumerate() if t.name.startswith("adara-client-")]
    kinds = [type(item).__name__ for item, _ in got]
    assert kinds == ["Heartbeat", "BadPayloadLengthError"] * 2 + ["Heartbeat"]
    assert [item.timestamp_ns - T0 for item, _ in got[::2]] == [0, 1, 2]
    # each packet's wire bytes, each malformed packet's bytes skipped: the stream, once
    assert [size for _, size in got] == [16, 22, 16, 22, 16]
    assert client.parser.malformed_bytes == 44
    assert again.value is end
    assert end.dropped_bytes == 5
    assert "closed the connection" in str(end)


def test_without_a_reader_thread_a_framing_error_is_returned_then_ends_the_connection(
    sms_factory,
):
    broken = struct.pack("<IIII", 1 << 31, packets.PacketType.HEARTBEAT_V0, 0, 0) + b"\0" * 8
    sms = sms_factory(lambda sock: (sock.sendall(heartbeat() + broken), time.sleep(2)))
    with AdaraClient("127.0.0.1", sms.port, background=False) as client:
        got, end = receive_all(client)
    assert [type(item) for item, _ in got] == [packets.Heartbeat, OversizePacketError]
    assert "cannot be framed" in str(end)


def test_without_a_reader_thread_receive_times_out_empty_and_close_ends_it(sms_factory):
    silent = threading.Event()
    sms = sms_factory(lambda sock: silent.wait(10))
    client = AdaraClient("127.0.0.1", sms.port, background=False)
    with pytest.raises(RuntimeError, match="after connect"):
        client.receive(0.1)
    client.connect()
    assert client.receive(0.2) == []
    with pytest.raises(RuntimeError, match="queue of a reader thread"):
        client.get(0.1)
    client.close()
    silent.set()
    with pytest.raises(ConnectionLost, match="closed by the client"):
        client.receive(1.0)
