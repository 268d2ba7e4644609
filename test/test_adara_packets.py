"""ADARA packets: every type encodes and decodes to the same values, the bytes follow the ADARA
layout (checked against hand-built words and against readadara, the SNS's own Python reader),
and malformed payloads raise the specific protocol errors."""

from __future__ import annotations

import dataclasses
import io
import logging
import pathlib
import pickle
import re
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from readadara import adara_reader

from livereduce.adara import packets as pk
from livereduce.adara.errors import (
    AdaraProtocolError,
    BadFieldError,
    BadPayloadLengthError,
    TruncatedPacketError,
    UnknownPacketTypeError,
)
from livereduce.adara.packets import rtdl
from livereduce.adara.packets.wire import PayloadContext, check_trusted

T_NS = 1_509_557_000_123_456_789  # 2017-11-01, a HYSPEC pulse time with nanoseconds
RUN_START_NS = 1_509_556_000 * 1_000_000_000
EPICS_T = (1_509_557_000 - 631_152_000, 123_456_789)


def _bank(bank_id, tof, pixel):
    return pk.BankSection.from_arrays(bank_id, np.array(tof), np.array(pixel))


def sample_packets() -> list[pk.Packet]:
    """One instance of every packet type and version, with non-default values in every field."""
    xml = '<?xml version="1.0"?><runinfo><run_title>MnO xtal, T=5K é</run_title></runinfo>'
    return [
        pk.ClientHello(timestamp_ns=T_NS, start_time_ns=pk.START_NOW, version=0),
        pk.ClientHello(timestamp_ns=T_NS, start_time_ns=pk.START_OF_RUN, version=0),
        pk.ClientHello(timestamp_ns=T_NS, start_time_ns=RUN_START_NS, client_flags=2, version=1),
        pk.RunStatus(
            timestamp_ns=T_NS,
            run_number=178921,
            run_start_ns=RUN_START_NS,
            status=pk.RunStatusCode.NEW_RUN,
            file_number=3,
            version=0,
        ),
        pk.RunStatus(
            timestamp_ns=T_NS,
            run_number=178922,
            run_start_ns=RUN_START_NS,
            status=pk.RunStatusCode.END_RUN,
            file_number=0xFFFFFF,
            paused=1,
            pause_file_number=7,
            addendum=1,
            addendum_file_number=9,
        ),
        pk.RunInfo(timestamp_ns=T_NS, xml=xml),
        pk.Geometry(
            timestamp_ns=T_NS, xml="<instrument name='HYSPEC'>" + "x" * 1001 + "</instrument>"
        ),
        pk.BeamlineInfo(
            timestamp_ns=T_NS, beamline_id="BL14B", short_name="HYS", long_name="HYSPEC", version=1
        ),
        pk.BeamlineInfo(
            timestamp_ns=T_NS,
            beamline_id="BL4B",
            short_name="REF_L",
            long_name="REF_L",
            target_station=0,
            version=0,
        ),
        pk.DeviceDescriptor(
            timestamp_ns=T_NS, device_id=8193, xml="<device><name>s</name></device>"
        ),
        pk.VariableU32(
            timestamp_ns=T_NS,
            device_id=8193,
            variable_id=4,
            value=0xFFFFFFFF,
            status=pk.VariableStatus.UPSTREAM_DISCONNECTED,
            severity=pk.VariableSeverity.INVALID,
        ),
        pk.VariableDouble(timestamp_ns=T_NS, device_id=1, variable_id=2, value=-273.15),
        pk.VariableString(
            timestamp_ns=T_NS,
            device_id=1,
            variable_id=3,
            value="Si 111 \udcff",  # a stray non-UTF-8 byte survives the round trip
            status=pk.VariableStatus.HIHI_LIMIT,
            severity=pk.VariableSeverity.MAJOR_ALARM,
        ),
        pk.BankedEvent(
            timestamp_ns=T_NS,
            pulse_charge_10pc=1_234_567,
            pulse_energy_ev=939_000_000,
            cycle=123,
            flags=0xFFFFFFFF,
            sources=(
                pk.SourceSection(source_id=1, banks=(_bank(3, [10, 20], [100, 200]),)),
                pk.SourceSection(source_id=2, banks=()),
            ),
            version=0,
        ),
        pk.BankedEvent(
            timestamp_ns=T_NS,
            pulse_charge_10pc=55,
            pulse_energy_ev=9,
            cycle=0x3FF,
            flags=int(pk.BankedEventFlag.PCHARGE_UNCORRECTED | pk.BankedEventFlag.PARTIAL_DATA),
            veto_flags=0xABC,
            sources=(
                pk.SourceSection(
                    source_id=7,
                    intra_pulse_time_100ns=166_666,
                    tof_offset_100ns=0x7FFFFFFF,
                    tof_corrected=False,
                    banks=(
                        _bank(1, [1, 2, 3], [4, 5, 6]),
                        _bank(2, [], []),
                        _bank(pk.UNMAPPED_BANK_ID, [0xFFFFFFFF], [0]),
                        _bank(pk.ERROR_BANK_ID, [5], [0xFFFFFFFF]),
                    ),
                ),
            ),
        ),
        pk.BeamMonitorEvent(
            timestamp_ns=T_NS,
            pulse_charge_10pc=3,
            flags=1,
            monitors=(
                pk.MonitorSection.from_arrays(1, [5, 6], cycle=3, rising_edge=[True, False]),
            ),
            version=0,
        ),
        pk.BeamMonitorEvent(
            timestamp_ns=T_NS,
            veto_flags=1,
            monitors=(
                pk.MonitorSection.from_arrays(
                    2, [0, (1 << 21) - 1], source_id=4, tof_offset_100ns=12, tof_corrected=False
                ),
                pk.MonitorSection(monitor_id=1023),
            ),
        ),
        pk.Heartbeat(timestamp_ns=T_NS),
        pk.DataDone(timestamp_ns=T_NS),
        pk.Rtdl(
            timestamp_ns=T_NS,
            flavor=1,
            pulse_charge_10pc=0xFFFFFF,
            bad_veto=True,
            timing_status=0x81,
            veto_flags=0xFFF,
            cycle=600,
            intra_pulse_time_100ns=166_000,
            tof_corrected=True,
            tof_offset_100ns=3,
            ring_period_ps=945_000,
            frames=tuple((i, i * 1000) for i in range(25)),
            version=0,
        ),
        pk.Rtdl(timestamp_ns=T_NS, data_flags=3, bad_cycle=True, ring_period_ps=1),
        pk.StreamAnnotation(
            timestamp_ns=T_NS,
            marker_type=pk.MarkerType.SCAN_START,
            reset_hint=True,
            scan_index=42,
            comment="scan 42",
        ),
        pk.Sync(timestamp_ns=T_NS, file_offset=2**40 + 3, comment="file 0007"),
        pk.VariableU32Array(
            timestamp_ns=T_NS, device_id=3, variable_id=9, value=np.array([1, 2**32 - 1, 7])
        ),
        pk.VariableDoubleArray(
            timestamp_ns=T_NS,
            device_id=3,
            variable_id=10,
            severity=pk.VariableSeverity.MINOR_ALARM,
            value=np.array([0.5, -1.25]),
        ),
    ]


SAMPLES = sample_packets()


def test_samples_cover_every_decodable_type():
    assert {p.packet_type for p in SAMPLES} == set(pk.DECODABLE)
    assert len(pk.DECODABLE) == 24


@pytest.mark.parametrize("packet", SAMPLES, ids=lambda p: p.packet_type.name)
def test_round_trip_same_values_and_bytes(packet):
    data = pk.encode(packet)
    assert len(data) % 4 == 0
    length, word, _, _ = struct.unpack_from("<IIII", data)
    assert length == len(data) - 16
    assert word == packet.packet_type
    decoded = pk.decode(data)
    assert type(decoded) is type(packet)
    assert decoded == packet
    assert pk.encode(decoded) == data


def test_header_layout_and_epics_epoch():
    data = pk.encode(pk.Heartbeat(timestamp_ns=T_NS))
    assert data == struct.pack("<IIII", 0, 0x400900, *EPICS_T)
    assert pk.decode(struct.pack("<IIII", 0, 0x400900, 0, 0)).timestamp_ns == 631_152_000 * 10**9
    header = pk.decode_header(data)
    assert header == pk.Header(
        payload_length=0, packet_type=pk.PacketType.HEARTBEAT_V0, timestamp_ns=T_NS
    )
    assert pk.HEADER_SIZE == 16


def test_packet_type_splits_base_type_and_version():
    assert pk.PacketType.BANKED_EVENT_V1 == 0x400001
    assert pk.PacketType.BANKED_EVENT_V1.base_type == 0x4000
    assert pk.PacketType.BANKED_EVENT_V1.version == 1
    assert pk.PacketType.VARIABLE_STRING_V0.base_type == 0x8003


def test_run_status_v1_words():
    packet = SAMPLES[4]
    epics_start = RUN_START_NS // 10**9 - 631_152_000
    expected_payload = struct.pack(
        "<5I", 178922, epics_start, (4 << 24) | 0xFFFFFF, (1 << 24) | 7, (1 << 24) | 9
    )
    assert pk.encode(packet) == struct.pack("<IIII", 20, 0x400301, *EPICS_T) + expected_payload


def test_client_hello_words():
    assert pk.encode(SAMPLES[1])[16:] == struct.pack("<I", 1)
    epics = RUN_START_NS // 10**9 - 631_152_000
    assert pk.encode(SAMPLES[2])[16:] == struct.pack("<II", epics, 2)
    # Mantid sends v0 hellos whose nanosecond word can exceed 10**9; decoding tolerates it
    mantid_hello = struct.pack("<IIIII", 4, 0x400600, 100, 4_000_000_000, 0)
    assert pk.decode(mantid_hello).timestamp_ns == (631_152_100 + 4) * 10**9


def test_banked_event_words():
    packet = pk.BankedEvent(
        timestamp_ns=T_NS,
        pulse_charge_10pc=1,
        pulse_energy_ev=2,
        cycle=3,
        flags=4,
        veto_flags=5,
        sources=(
            pk.SourceSection(
                source_id=6,
                intra_pulse_time_100ns=7,
                tof_offset_100ns=8,
                tof_corrected=True,
                banks=(_bank(9, [10, 11], [12, 13]),),
            ),
        ),
    )
    words = [1, 2, 3, (5 << 20) | 4, 6, 7, (1 << 31) | 8, 1, 9, 2, 10, 12, 11, 13]
    expected = struct.pack("<IIII", 56, 0x400001, *EPICS_T) + struct.pack("<14I", *words)
    assert pk.encode(packet) == expected


def test_beam_monitor_event_words():
    section = pk.MonitorSection.from_arrays(
        5, [7, 8], cycle=[1, 2], rising_edge=[True, False], source_id=3, tof_offset_100ns=4
    )
    packet = pk.BeamMonitorEvent(timestamp_ns=T_NS, monitors=(section,))
    words = [0, 0, 0, 0, (5 << 22) | 2, 3, (1 << 31) | 4, (1 << 31) | (1 << 21) | 7, (2 << 21) | 8]
    assert pk.encode(packet)[16:] == struct.pack("<9I", *words)
    assert section.tof_100ns.tolist() == [7, 8]
    assert section.cycle.tolist() == [1, 2]
    assert section.rising_edge.tolist() == [True, False]


def test_variable_and_beamline_words():
    double = pk.encode(SAMPLES[11])[16:]
    assert double == struct.pack("<IIId", 1, 2, 0, -273.15)
    u32 = pk.encode(SAMPLES[10])[16:]
    assert u32 == struct.pack("<4I", 8193, 4, (0xFFFE << 16) | 3, 0xFFFFFFFF)
    beamline = pk.encode(SAMPLES[7])[16:]
    assert (
        beamline == struct.pack("<I", (1 << 24) | (5 << 16) | (3 << 8) | 6) + b"BL14BHYSHYSPEC\0\0"
    )


def test_event_arrays_flatten_banks_in_wire_order():
    packet = pk.BankedEvent(
        timestamp_ns=T_NS,
        sources=(
            pk.SourceSection(source_id=1, banks=(_bank(3, [1, 2], [30, 31]), _bank(4, [], []))),
            pk.SourceSection(source_id=2, banks=(_bank(8, [5], [80]),)),
        ),
    )
    decoded = pk.decode(pk.encode(packet))
    bank_id, tof, pixel = decoded.event_arrays()
    assert bank_id.tolist() == [3, 3, 8]
    assert tof.tolist() == [1, 2, 5]
    assert pixel.tolist() == [30, 31, 80]
    assert decoded.event_count == 3
    assert [b.bank_id for b in decoded.banks] == [3, 4, 8]
    assert decoded.banks[0].tof_100ns.tolist() == [1, 2]
    assert decoded.banks[0].pixel_id.tolist() == [30, 31]


def test_decoded_events_are_read_only_views_on_the_packet_bytes():
    data = pk.encode(SAMPLES[14])
    decoded = pk.decode(data)
    events = decoded.sources[0].banks[0].events
    assert events.base is not None
    assert not events.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        events[0, 0] = 1


def test_monitor_event_arrays():
    decoded = pk.decode(pk.encode(SAMPLES[16]))
    monitor_id, tof = decoded.event_arrays()
    assert monitor_id.tolist() == [2, 2]
    assert tof.tolist() == [0, (1 << 21) - 1]
    assert decoded.event_count == 2


@settings(max_examples=60, deadline=None)
@given(
    banks=st.lists(
        st.tuples(
            st.integers(0, 2**32 - 1),
            st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=20),
        ),
        max_size=6,
    ),
    timestamp_ns=st.integers(
        pk.EPICS_EPOCH_OFFSET_S * 10**9, (pk.EPICS_EPOCH_OFFSET_S + 2**32 - 1) * 10**9
    ),
    charge=st.integers(0, 2**32 - 1),
)
def test_banked_event_round_trip_property(banks, timestamp_ns, charge):
    sections = tuple(
        pk.BankSection(bank_id=b, events=np.array(ev, dtype=np.uint32).reshape(-1, 2))
        for b, ev in banks
    )
    packet = pk.BankedEvent(
        timestamp_ns=timestamp_ns,
        pulse_charge_10pc=charge,
        sources=(pk.SourceSection(source_id=1, banks=sections),),
    )
    decoded = pk.decode(pk.encode(packet))
    assert decoded == packet
    bank_id, tof, pixel = decoded.event_arrays()
    assert tof.tolist() == [t for _, ev in banks for t, _ in ev]
    assert pixel.tolist() == [p for _, ev in banks for _, p in ev]
    assert bank_id.tolist() == [b for b, ev in banks for _ in ev]


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(max_size=300),
    device_id=st.integers(0, 2**32 - 1),
    value=st.floats(allow_nan=False),
)
def test_text_and_double_round_trip_property(text, device_id, value):
    for packet in (
        pk.RunInfo(timestamp_ns=T_NS, xml=text),
        pk.DeviceDescriptor(timestamp_ns=T_NS, device_id=device_id, xml=text),
        pk.VariableString(timestamp_ns=T_NS, device_id=device_id, variable_id=1, value=text),
        pk.VariableDouble(timestamp_ns=T_NS, device_id=device_id, variable_id=1, value=value),
        pk.StreamAnnotation(timestamp_ns=T_NS, comment=text),
    ):
        assert pk.decode(pk.encode(packet)) == packet


# ---------------------------------------------------------------- readadara interoperability


def test_readadara_reads_banked_and_monitor_events():
    banked = pk.encode(SAMPLES[14])
    reader = adara_reader.AdaraBankedEventPacket(banked)
    sections = reader.get_source_sections_dict()
    assert [s["source_id"] for s in sections] == [7]
    assert sections[0]["tof_offset"] == 0x7FFFFFFF
    assert sections[0]["cor"] == 0
    banks = sections[0]["bank_sections"]
    assert [b["bank_id"] for b in banks] == [1, 2, pk.UNMAPPED_BANK_ID, pk.ERROR_BANK_ID]
    assert banks[0]["banked_events"] == [(1, 4), (2, 5), (3, 6)]
    assert reader.get_flags() == 0x42
    assert reader.get_veto_flags() == 0xABC
    assert reader.get_charge() == 55

    monitor = adara_reader.AdaraBeamMonitorEventPacket(pk.encode(SAMPLES[16]))
    sections = monitor.get_beam_monitor_sections_dict()
    assert [(s["monitor_id"], s["event_count"], s["source_id"]) for s in sections] == [
        (2, 2, 4),
        (1023, 0, 0),
    ]
    assert [e["tof"] for e in sections[0]["monitor_events"]] == [0, (1 << 21) - 1]


def test_readadara_reads_a_whole_stream_of_our_packets():
    stream = b"".join(pk.encode(p) for p in SAMPLES)
    read = list(adara_reader.read_packets_generator(io.BytesIO(stream), lazy=False))
    assert [r.get_format_int() for r in read] == [int(p.packet_type) for p in SAMPLES]
    by_type = {r.get_format_int(): r for r in read}
    status = by_type[0x400301].to_dict()
    assert (status["run_number"], status["status"], status["paused"]) == (178922, 4, 1)
    assert status["run_start"] == RUN_START_NS // 10**9 - 631_152_000
    beamline = by_type[0x400B01].to_dict()
    assert (beamline["id_length"], beamline["short_length"], beamline["long_length"]) == (5, 3, 6)
    assert beamline["target_station_num"] == 1
    double = by_type[0x800200].to_dict()
    assert (double["device_id"], double["variable_id"], double["value"]) == (1, 2, -273.15)
    string = by_type[0x800300].to_dict()
    assert (string["status"], string["severity"]) == (3, 2)
    assert by_type[0x800000].get_xml() == "<device><name>s</name></device>"
    assert by_type[0x400400].get_xml_length() == len(SAMPLES[5].xml.encode())
    annotation = by_type[0x400700].to_dict()
    assert (annotation["type"], annotation["rst"], annotation["scan_index"]) == (1, 1, 42)
    sync = by_type[0x400800].to_dict()
    assert (sync["signature"], sync["file_offset"]) == (pk.SYNC_SIGNATURE, 2**40 + 3)


# ---------------------------------------------------------------- malformed payloads


def _raw(packet_type: int, payload: bytes, seconds: int = 1) -> bytes:
    return struct.pack("<IIII", len(payload), packet_type, seconds, 0) + payload


@pytest.mark.parametrize(
    ("data", "error", "fragment"),
    [
        (_raw(0x400600, b"\0" * 8), BadPayloadLengthError, "exactly 4"),
        (_raw(0x400601, b"\0" * 4), BadPayloadLengthError, "exactly 8"),
        (_raw(0x400301, b"\0" * 12), BadPayloadLengthError, "exactly 20"),
        (_raw(0x400900, b"\0" * 4), BadPayloadLengthError, "exactly 0"),
        (_raw(0x000101, b"\0" * 116), BadPayloadLengthError, "exactly 120"),
        (_raw(0x400300, struct.pack("<3I", 1, 2, 9 << 24)), BadFieldError, "run status 9"),
        (_raw(0x400700, struct.pack("<II", 7 << 16, 0)), BadFieldError, "marker type 7"),
        (_raw(0x400400, struct.pack("<I", 5) + b"abcd"), BadPayloadLengthError, "declares 5 bytes"),
        (_raw(0x400B01, struct.pack("<I", 0x00FFFFFF)), BadPayloadLengthError, "beamline names"),
        (_raw(0x800300, struct.pack("<4I", 1, 2, 0, 100)), BadPayloadLengthError, "string value"),
        (_raw(0x400001, b"\0" * 12), BadPayloadLengthError, "at least 16"),
        (
            _raw(0x400001, b"\0" * 16 + struct.pack("<4I", 1, 0, 0, 0xFFFFFFFF)),
            BadPayloadLengthError,
            "declares 4294967295 banks",
        ),
        (
            _raw(0x400001, b"\0" * 16 + struct.pack("<4I", 1, 0, 0, 1) + struct.pack("<II", 3, 2)),
            BadPayloadLengthError,
            "bank 3 declares 2 events",
        ),
        (_raw(0x400001, b"\0" * 20), BadPayloadLengthError, "too few for a 16-byte source"),
        (
            _raw(0x400101, b"\0" * 16 + struct.pack("<3I", (1 << 22) | 5, 0, 0)),
            BadPayloadLengthError,
            "monitor 1 declares 5 events",
        ),
        (_raw(0x400800, b"\0" * 24), BadPayloadLengthError, "at least 28"),
    ],
)
def test_malformed_payload_raises_specific_error(data, error, fragment):
    with pytest.raises(error, match=fragment) as caught:
        pk.decode(data, offset=4096)
    assert caught.value.offset == 4096
    assert caught.value.packet_type == struct.unpack_from("<I", data, 4)[0]
    assert "stream offset 4096" in str(caught.value)
    assert f"0x{caught.value.packet_type:06x}" in str(caught.value)


def test_error_names_the_packet_type():
    with pytest.raises(BadFieldError) as caught:
        pk.decode(_raw(0x400300, struct.pack("<3I", 1, 2, 9 << 24)), offset=12)
    assert str(caught.value) == (
        "ADARA packet 0x400300 (RUN_STATUS_V0) at stream offset 12: "
        "run status 9 is not a defined RunStatusCode"
    )


def test_framing_errors_of_decode():
    good = pk.encode(SAMPLES[0])
    with pytest.raises(TruncatedPacketError, match="of the 16 header bytes"):
        pk.decode(good[:10])
    with pytest.raises(TruncatedPacketError, match="0 of 4 payload bytes"):
        pk.decode(good[:16])
    with pytest.raises(BadPayloadLengthError, match="4 bytes follow"):
        pk.decode(good + b"\0" * 4)
    with pytest.raises(BadPayloadLengthError, match="not a multiple of 4"):
        pk.decode(struct.pack("<IIII", 3, 0x400900, 0, 0) + b"abc")
    with pytest.raises(UnknownPacketTypeError, match="0x410201"):
        pk.decode(_raw(0x410201, b""))
    assert issubclass(UnknownPacketTypeError, AdaraProtocolError)


def test_errors_survive_pickling():
    error = BadFieldError("bad", packet_type=0x400300, offset=5)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.offset) == (BadFieldError, str(error), 5)


@pytest.mark.parametrize(
    ("packet", "fragment"),
    [
        (pk.Heartbeat(timestamp_ns=0), "outside the EPICS u32 range"),
        (pk.Heartbeat(timestamp_ns=(pk.EPICS_EPOCH_OFFSET_S + 2**32) * 10**9), "EPICS u32"),
        (pk.ClientHello(timestamp_ns=T_NS, client_flags=1, version=0), "no client_flags"),
        (pk.ClientHello(timestamp_ns=T_NS, version=2), "no version 2"),
        (
            pk.RunStatus(timestamp_ns=T_NS, run_number=1, run_start_ns=RUN_START_NS + 1, status=1),
            "not a whole second",
        ),
        (
            pk.RunStatus(
                timestamp_ns=T_NS,
                run_number=1,
                run_start_ns=RUN_START_NS,
                status=1,
                paused=1,
                version=0,
            ),
            "no pause",
        ),
        (
            pk.BeamlineInfo(timestamp_ns=T_NS, beamline_id="x" * 256, short_name="", long_name=""),
            "len\\(beamline_id\\)=256",
        ),
        (pk.BankedEvent(timestamp_ns=T_NS, veto_flags=1, version=0), "no veto_flags"),
        (pk.BankedEvent(timestamp_ns=T_NS, flags=1 << 20), "flags=1048576"),
        (pk.VariableU32(timestamp_ns=T_NS, device_id=1, variable_id=1, value=-1), "value=-1"),
        (pk.Rtdl(timestamp_ns=T_NS, frames=((0, 0),)), "25 frames"),
        (pk.Sync(timestamp_ns=T_NS, signature=b"short"), "16 bytes"),
    ],
)
def test_encode_rejects_values_that_do_not_fit(packet, fragment):
    with pytest.raises(ValueError, match=fragment):
        pk.encode(packet)


def test_sections_reject_bad_event_arrays():
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        pk.BankSection(bank_id=1, events=np.zeros(4, np.uint32))
    with pytest.raises(ValueError, match="unsigned 32-bit"):
        pk.BankSection.from_arrays(1, [-1], [0])
    with pytest.raises(ValueError, match="2\\*\\*21"):
        pk.MonitorSection.from_arrays(1, [1 << 21])


def test_unknown_alarm_status_and_severity_are_kept_as_raw_numbers():
    packet = pk.decode(_raw(0x800100, struct.pack("<4I", 1, 2, (22 << 16) | 4, 9)))
    assert (packet.status, packet.severity, packet.value) == (22, 4, 9)
    assert not isinstance(packet.status, pk.VariableStatus)
    assert pk.decode(pk.encode(packet)) == packet


def test_rtdl_without_ring_period_is_kept_with_one_warning(caplog, monkeypatch):
    monkeypatch.setattr(rtdl, "_warned_missing_ring_period", False)
    data = _raw(0x000100, b"\0" * 16 + struct.pack("<I", 123) + b"\0" * 100)
    with caplog.at_level(logging.WARNING, logger="livereduce.adara.packets"):
        first, second = pk.decode(data), pk.decode(data)
    assert first == second
    assert first.ring_period_ps == 123
    assert sum("missing ring period" in r.getMessage() for r in caplog.records) == 1


def test_array_variables_decode_to_arrays():
    u32, doubles = SAMPLES[-2], SAMPLES[-1]
    decoded = pk.decode(pk.encode(u32))
    assert decoded.value.dtype == np.uint32
    assert decoded.value.tolist() == [1, 2**32 - 1, 7]
    assert pk.decode(pk.encode(doubles)).value.tolist() == [0.5, -1.25]
    short = _raw(0x800500, struct.pack("<4I", 1, 2, 0, 3) + b"\0" * 16)
    with pytest.raises(BadPayloadLengthError, match="declares 3 elements"):
        pk.decode(short)


@pytest.mark.parametrize("packet", SAMPLES, ids=lambda p: p.packet_type.name)
def test_every_field_of_a_decoded_packet_is_set(packet):
    decoded = pk.decode(pk.encode(packet))
    for f in dataclasses.fields(decoded):
        getattr(decoded, f.name)  # AttributeError for a slot the decoder left unset
    for section in [*getattr(decoded, "sources", ()), *getattr(decoded, "banks", ())]:
        for f in dataclasses.fields(section):
            getattr(section, f.name)  # AttributeError for a slot the decoder left unset
    for section in getattr(decoded, "monitors", ()):
        for f in dataclasses.fields(section):
            getattr(section, f.name)


def test_a_field_added_without_decoding_fails_the_decode():
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class BankedEventWithMore(pk.BankedEvent):
        extra: int = 0  # a new field, with a default, that the decoder does not read

    data = pk.encode(SAMPLES[14])
    payload = memoryview(data)[pk.HEADER_SIZE :]
    ctx = PayloadContext(pk.PacketType.BANKED_EVENT_V1, 0)
    with pytest.raises(TypeError, match=r"decoded without its fields \['extra'\]"):
        BankedEventWithMore._decode(pk.PacketType.BANKED_EVENT_V1, T_NS, payload, ctx)


def test_a_section_field_missing_from_its_fast_constructor_fails_at_import():
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True, eq=False)
    class BankWithMore(pk.BankSection):
        extra: int = 0

    with pytest.raises(TypeError, match="_trusted sets"):
        check_trusted(BankWithMore, ("bank_id", "events"))


def test_errors_and_packets_do_not_import_each_other():
    import livereduce.adara.errors as errors_module  # noqa: PLC0415

    source = pathlib.Path(errors_module.__file__).read_text()
    assert not re.search(r"^\s*(from|import) livereduce\.adara\.packets", source, re.MULTILINE)
