"""The incremental stream parser: any split of the bytes gives the same packets, unknown types
are skipped and counted, malformed packets raise the specific error at the right stream
offset, memory stays bounded, and a hostile-wire corpus never stops good data coming out."""

from __future__ import annotations

import itertools
import logging
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livereduce.adara import packets as pk
from livereduce.adara.errors import (
    AdaraProtocolError,
    BadFieldError,
    BadPayloadLengthError,
    OversizePacketError,
    TruncatedPacketError,
)
from livereduce.adara.packets import codec
from livereduce.adara.parser import MAX_PAYLOAD_BYTES, MAX_SKIPPED_KINDS, OTHER_TYPES, StreamParser
from test_adara_packets import SAMPLES, T_NS

STREAM = b"".join(pk.encode(p) for p in SAMPLES)
OFFSETS = np.cumsum([0] + [len(pk.encode(p)) for p in SAMPLES]).tolist()


def _raw(packet_type: int, payload: bytes, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return struct.pack("<IIII", size, packet_type, 100, 0) + payload


def parse_all(pieces, parser: StreamParser | None = None) -> list[pk.Packet]:
    parser = parser or StreamParser()
    out = []
    for piece in pieces:
        out.extend(parser.feed(piece))
    parser.close()
    return out


def test_whole_stream_at_once():
    parser = StreamParser()
    assert list(parser.feed(STREAM)) == SAMPLES
    assert parser.packets == len(SAMPLES)
    assert parser.offset == len(STREAM)
    assert parser.buffered == 0


def test_split_at_every_byte_boundary():
    for cut in range(len(STREAM) + 1):
        assert parse_all([STREAM[:cut], STREAM[cut:]]) == SAMPLES, cut


def test_one_byte_at_a_time():
    parser = StreamParser()
    out = []
    for i in range(len(STREAM)):
        out.extend(parser.feed(STREAM[i : i + 1]))
        assert parser.offset == max(o for o in OFFSETS if o <= i + 1)
    parser.close()
    assert out == SAMPLES


@settings(max_examples=50, deadline=None)
@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=30))
def test_random_multi_splits(cuts):
    bounds = [0, *sorted(cuts), len(STREAM)]
    assert parse_all([STREAM[a:b] for a, b in itertools.pairwise(bounds)]) == SAMPLES


def test_packets_not_iterated_come_out_of_the_next_feed():
    parser = StreamParser()
    parser.feed(STREAM[:100])  # iterator dropped: the bytes stay buffered
    assert list(parser.feed(STREAM[100:])) == SAMPLES


def test_accepts_bytearray_and_memoryview():
    assert parse_all([bytearray(STREAM[:50]), memoryview(STREAM)[50:]]) == SAMPLES


def test_unknown_types_are_skipped_and_counted():
    pixel_map = _raw(0x410201, b"\0" * 8)
    heartbeat_v1 = _raw(0x400901, b"")  # a newer heartbeat: read with the v0 layout
    made_up = _raw(0x123456, b"")
    heartbeat = pk.encode(pk.Heartbeat(timestamp_ns=T_NS))
    stream = pixel_map + heartbeat + made_up + pixel_map + heartbeat
    parser = StreamParser()
    out = parse_all([stream[i : i + 3] for i in range(0, len(stream), 3)], parser)
    assert out == [pk.Heartbeat(timestamp_ns=T_NS)] * 2
    assert parser.skipped == {0x410201: 2, 0x123456: 1}
    assert parser.skipped_count == 3
    assert parser.offset == len(stream)
    assert [type(p) for p in parse_all([heartbeat_v1])] == [pk.Heartbeat]


def test_a_newer_banked_event_version_is_read_with_the_latest_layout_and_one_warning(
    caplog, monkeypatch
):
    monkeypatch.setattr(codec, "_WARNED_NEWER", set())  # once per process: start afresh
    v1 = pk.BankedEvent(
        timestamp_ns=T_NS,
        pulse_charge_10pc=5,
        sources=(
            pk.SourceSection(source_id=1, banks=(pk.BankSection.from_arrays(3, [10, 20], [7, 8]),)),
        ),
    )
    v2 = bytearray(pk.encode(v1))
    v2[4] = 0x02  # format word 0x400002: BANKED_EVENT version 2
    stream = bytes(v2) * 3
    with caplog.at_level(logging.WARNING, logger="livereduce.adara.packets"):
        out = parse_all([stream], StreamParser())
        again = parse_all([stream], StreamParser())
    assert out == again == [v1] * 3
    warnings = [r.getMessage() for r in caplog.records if "0x400002" in r.getMessage()]
    assert warnings == [
        "ADARA packet type 0x400002 is version 2 of BANKED_EVENT, newer than this livereduce "
        "knows: read with the version 1 layout"
    ]


def test_oversize_is_rejected_from_the_header_alone():
    parser = StreamParser()
    header = struct.pack("<IIII", MAX_PAYLOAD_BYTES + 4, 0x400001, 0, 0)
    assert list(parser.feed(STREAM[: OFFSETS[2]])) == SAMPLES[:2]
    with pytest.raises(OversizePacketError) as caught:
        list(parser.feed(header))
    assert caught.value.offset == OFFSETS[2]
    assert caught.value.packet_type == 0x400001
    assert f"payload length {MAX_PAYLOAD_BYTES + 4} exceeds the maximum" in str(caught.value)
    assert parser.buffered == 16
    with pytest.raises(OversizePacketError):  # broken: framing is lost for good
        parser.feed(b"\0" * 4)
    with pytest.raises(OversizePacketError):
        parser.close()


def test_maximum_is_inclusive_and_configurable():
    parser = StreamParser(max_payload_bytes=64)
    at_limit = pk.Geometry(timestamp_ns=T_NS, xml="x" * 60)
    assert list(parser.feed(pk.encode(at_limit))) == [at_limit]
    with pytest.raises(OversizePacketError, match="payload length 68 exceeds the maximum 64"):
        list(parser.feed(pk.encode(pk.Geometry(timestamp_ns=T_NS, xml="x" * 61))))


def test_unknown_type_over_the_maximum_is_also_rejected():
    with pytest.raises(OversizePacketError):
        list(StreamParser(max_payload_bytes=8).feed(_raw(0x410201, b"", length=12)))


def test_payload_length_not_multiple_of_4_is_skipped_by_its_declared_length():
    parser = StreamParser()
    bad = _raw(0x400900, b"\0" * 6, length=6)
    packets = parser.feed(STREAM[: OFFSETS[1]] + bad + STREAM[OFFSETS[1] :])
    with pytest.raises(BadPayloadLengthError, match="payload length 6 is not a multiple of 4") as e:
        list(packets)
    assert e.value.offset == OFFSETS[1]
    assert list(parser.feed(b"")) == SAMPLES[1:]  # the connection goes on after it
    assert parser.malformed == {0x400900: 1}
    assert parser.malformed_bytes == 22


@pytest.mark.parametrize("keep", [1, 15, 16, 17, OFFSETS[14] - OFFSETS[13] - 4])
def test_stream_ending_inside_a_packet(keep):
    parser = StreamParser()
    data = STREAM[: OFFSETS[13] + keep]
    assert list(parser.feed(data)) == SAMPLES[:13]
    with pytest.raises(TruncatedPacketError, match=f"ended {keep} bytes into a packet") as caught:
        parser.close()
    assert caught.value.offset == OFFSETS[13]
    assert caught.value.packet_type == (0x400000 if keep >= 16 else None)


def test_parser_goes_on_after_a_bad_payload():
    bad_status = _raw(0x400300, struct.pack("<3I", 1, 0, 9 << 24))
    stream = STREAM[: OFFSETS[3]] + bad_status + STREAM[OFFSETS[3] :]
    parser = StreamParser()
    packets = parser.feed(stream)
    assert [next(packets) for _ in range(3)] == SAMPLES[:3]
    with pytest.raises(BadFieldError) as caught:
        next(packets)
    assert caught.value.offset == OFFSETS[3]
    assert list(parser.feed(b"")) == SAMPLES[3:]
    parser.close()


def test_large_pulse_in_socket_sized_pieces():
    rng = np.random.default_rng(1)
    banks = tuple(
        pk.BankSection.from_arrays(b, rng.integers(0, 166_666, 5000), rng.integers(0, 2**20, 5000))
        for b in range(40)
    )
    packet = pk.BankedEvent(
        timestamp_ns=T_NS, sources=(pk.SourceSection(source_id=1, banks=banks),)
    )
    data = pk.encode(packet) * 3
    parser = StreamParser()
    out = []
    largest = 0
    for i in range(0, len(data), 65536):
        out.extend(parser.feed(data[i : i + 65536]))
        largest = max(largest, parser.buffered)
    parser.close()
    assert out == [packet] * 3
    assert out[2].event_count == 200_000
    assert largest < len(data) // 3 + 65536  # never more than one packet plus one piece


def test_packet_inside_one_piece_is_decoded_in_place():
    packet = pk.BankedEvent(
        timestamp_ns=T_NS,
        sources=(
            pk.SourceSection(
                source_id=1,
                banks=(pk.BankSection.from_arrays(2, np.arange(1000), np.arange(1000)),),
            ),
        ),
    )
    data = pk.encode(pk.Heartbeat(timestamp_ns=T_NS)) + pk.encode(packet)
    _, decoded = StreamParser().feed(data)
    base = decoded.sources[0].banks[0].events
    while not isinstance(base, memoryview):
        base = base.base
    assert base.obj is data  # a view on the fed bytes: no copy at all
    assert decoded == packet


def test_one_byte_feeding_keeps_memory_proportional():
    packet = pk.Geometry(timestamp_ns=T_NS, xml="g" * 40_000)
    data = pk.encode(packet)
    parser = StreamParser()
    tracemalloc.start()
    try:
        for i in range(len(data) - 1):
            parser.feed(data[i : i + 1])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parser.buffered == len(data) - 1
    assert peak < 3 * len(data)  # not ~40 bytes of object overhead per byte fed
    assert list(parser.feed(data[-1:])) == [packet]


# ---------------------------------------------------------------- hostile-wire corpus

GOOD = [
    pk.RunStatus(timestamp_ns=T_NS, run_number=7, run_start_ns=1_500_000_000 * 10**9, status=1),
    pk.BankedEvent(
        timestamp_ns=T_NS,
        sources=(pk.SourceSection(source_id=1, banks=(pk.BankSection.from_arrays(1, [5], [6]),)),),
    ),
    pk.Heartbeat(timestamp_ns=T_NS),
]
GOOD_BYTES = b"".join(pk.encode(p) for p in GOOD)

# name -> (bytes, expected error class or None when the bytes decode, framing_intact)
HOSTILE = {
    "truncated header": (STREAM[:9], TruncatedPacketError, False),
    "truncated payload": (STREAM[: OFFSETS[14] - 8], TruncatedPacketError, False),
    "length over maximum": (_raw(0x400001, b"", length=0xFFFFFFFC), OversizePacketError, False),
    "length 2**32-1": (_raw(0x400001, b"", length=0xFFFFFFFF), OversizePacketError, False),
    "length 6": (_raw(0x400001, b"\0" * 6, length=6), BadPayloadLengthError, True),
    "zero length banked event": (_raw(0x400001, b""), BadPayloadLengthError, True),
    "bank count 2**32-1": (
        _raw(0x400001, b"\0" * 16 + struct.pack("<4I", 0, 0, 0, 0xFFFFFFFF)),
        BadPayloadLengthError,
        True,
    ),
    "event count past the payload": (
        _raw(0x400001, b"\0" * 16 + struct.pack("<4I", 0, 0, 0, 1) + struct.pack("<II", 1, 2**29)),
        BadPayloadLengthError,
        True,
    ),
    "monitor count past the payload": (
        _raw(0x400101, b"\0" * 16 + struct.pack("<3I", 0x3FFFFF, 0, 0)),
        BadPayloadLengthError,
        True,
    ),
    "xml length 4 GB": (_raw(0x400A00, struct.pack("<I", 0xFFFFFFFF)), BadPayloadLengthError, True),
    "string length past the payload": (
        _raw(0x800300, struct.pack("<4I", 1, 1, 0, 0xFFFF)),
        BadPayloadLengthError,
        True,
    ),
    "run status 255": (
        _raw(0x400301, struct.pack("<5I", 1, 0, 0xFF << 24, 0, 0)),
        BadFieldError,
        True,
    ),
    "alarm status 0x8000": (
        _raw(0x800200, struct.pack("<3Id", 1, 1, 0x8000 << 16, 1.0)),
        None,
        True,
    ),
    "rtdl without ring period": (_raw(0x000101, b"\xff" * 120), None, True),
    "hello with 12-byte payload": (_raw(0x400601, b"\0" * 12), BadPayloadLengthError, True),
    "heartbeat with payload": (_raw(0x400900, b"\0" * 4), BadPayloadLengthError, True),
    "timestamp in 2126": (
        struct.pack("<IIII", 0, 0x400900, 0xFFFFFFFF, 999_999_999),
        None,
        True,
    ),
    "nanoseconds over a second": (struct.pack("<IIII", 0, 0x400900, 5, 0xFFFFFFFF), None, True),
    "double NaN and infinity": (
        _raw(0x800200, struct.pack("<3Id", 1, 1, 0, float("nan"))),
        None,
        True,
    ),
    "event words all ones": (
        _raw(
            0x400001,
            b"\xff" * 16
            + struct.pack("<4I", 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 1)
            + struct.pack("<II", 0xFFFFFFFF, 1)
            + b"\xff" * 8,
        ),
        None,
        True,
    ),
    "unknown type": (_raw(0xFFFFFF, b"\0" * 64), None, True),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_packet_then_good_data_still_comes_out(name):
    data, error, framing_intact = HOSTILE[name]
    parser = StreamParser()
    if error is None:
        out = list(parser.feed(data))
        assert all(isinstance(p, pk.Packet) for p in out)
        assert list(parser.feed(GOOD_BYTES)) == GOOD
        parser.close()
        return
    if framing_intact:
        packets = parser.feed(data + GOOD_BYTES)
        with pytest.raises(error) as caught:
            list(packets)
        assert list(parser.feed(b"")) == GOOD  # the same parser goes on after the bad packet
        parser.close()
    else:
        with pytest.raises(error) as caught:
            parse_all([data], parser)
    assert isinstance(caught.value, AdaraProtocolError)
    assert caught.value.offset in OFFSETS
    # a fresh parser (what a reconnect gives) on the good bytes that follow
    assert parse_all([GOOD_BYTES]) == GOOD


def test_hostile_timestamps_decode_to_unix_ns():
    data = HOSTILE["timestamp in 2126"][0]
    (packet,) = StreamParser().feed(data)
    assert packet.timestamp_ns == (631_152_000 + 0xFFFFFFFF) * 10**9 + 999_999_999


def test_made_up_types_cannot_grow_the_skip_counter_without_bound():
    stream = b"".join(_raw(0x100000 + k, b"") for k in range(MAX_SKIPPED_KINDS + 50))
    parser = StreamParser()
    assert parse_all([stream], parser) == []
    assert len(parser.skipped) == MAX_SKIPPED_KINDS + 1
    assert parser.skipped[OTHER_TYPES] == 50
    assert parser.skipped_count == MAX_SKIPPED_KINDS + 50
