"""The Kafka pieces that need no broker: wire decoding, run control keyed to data time, the
pending-event buffer, partials and their covers, client settings, configuration checks."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipp as sc
from streaming_data_types import serialise_6s4t, serialise_ev42, serialise_ev44, serialise_pl72

from livereduce.config import ConfigError, config_from_mapping
from livereduce.kafka import client
from livereduce.kafka.partials import (
    MergeError,
    Partial,
    check_covers,
    decode_partial,
    encode_partial,
    latest_per_instance,
    sum_partials,
)
from livereduce.kafka.pending import PendingEvents, merge_pulses
from livereduce.kafka.runs import KafkaRun, RunTable
from livereduce.kafka.wire import (
    EventMessage,
    IgnoredMessage,
    MalformedMessage,
    RunStart,
    RunStop,
    decode,
    encode_events,
    encode_run_start,
    encode_run_stop,
)


def events(times, counts, ids=None, tofs=None) -> EventMessage:
    n = int(sum(counts))
    return EventMessage(
        source_name="s",
        message_id=0,
        reference_time_ns=np.asarray(times, np.int64),
        pulse_event_counts=np.asarray(counts, np.int64),
        event_id=np.asarray(ids if ids is not None else np.arange(n), np.int32),
        event_time_offset_us=np.asarray(tofs if tofs is not None else np.ones(n), np.float32),
    )


# -- wire ------------------------------------------------------------------------------


def test_ev44_decodes_pulses_ids_and_tof_in_microseconds():
    value = serialise_ev44("bank", 7, [1000, 2000], [0, 2], [1500, 2500, 100], [5, 6, 7])
    message = decode(value)
    assert message.reference_time_ns.tolist() == [1000, 2000]
    assert message.pulse_event_counts.tolist() == [2, 1]
    assert message.event_id.tolist() == [5, 6, 7]
    assert message.event_time_offset_us.tolist() == pytest.approx([1.5, 2.5, 0.1])
    assert message.source_name == "bank"


def test_ev42_is_read_as_one_pulse():
    message = decode(serialise_ev42("old", 1, 5_000, [2000, 3000], [11, 12]))
    assert message.reference_time_ns.tolist() == [5_000]
    assert message.pulse_event_counts.tolist() == [2]
    assert message.event_time_offset_us.tolist() == [2.0, 3.0]


def test_run_control_times_are_milliseconds_on_the_wire():
    start = decode(encode_run_start(178921, 1_509_587_278_543_570_000, title="MnO"))
    assert start == RunStart(
        run_number=178921,
        run_name="178921",
        start_ns=1_509_587_278_543_000_000,
        job_id="livereduce-178921",
        title="MnO",
    )
    stop = decode(encode_run_stop(178921, 1_509_587_278_543_000_001))
    assert stop.stop_ns == 1_509_587_278_544_000_000  # rounded up: the last pulse stays inside


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"1234",
        b"\x00\x00\x00\x00hs00" + b"\x00" * 16,
        b"\x00\x00\x00\x00zzzz",
    ],
)
def test_unknown_or_unused_schemas_are_ignored(value):
    with pytest.raises(IgnoredMessage):
        decode(value)


def test_truncated_and_inconsistent_messages_are_malformed():
    good = serialise_ev44("bank", 1, [1000], [0], [1, 2], [3, 4])
    with pytest.raises(MalformedMessage, match="ev44"):
        decode(good[:24])
    with pytest.raises(MalformedMessage, match="pixel_id"):
        decode(serialise_ev44("bank", 1, [1000], [0], [1, 2], [3]))
    with pytest.raises(MalformedMessage, match="reference_time_index"):
        decode(serialise_ev44("bank", 1, [1000, 2000], [1, 0], [1, 2], [3, 4]))


# -- run table -------------------------------------------------------------------------


def start(name: str, at: int) -> RunStart:
    return RunStart(run_number=int(name), run_name=name, start_ns=at)


def test_missing_stop_ends_a_run_at_the_next_start_and_order_does_not_matter():
    table = RunTable()
    table.add(start("2", 200))
    table.add(start("1", 100))  # announced late
    assert [(r.number, r.stop_ns) for r in table.runs] == [(1, 200), (2, None)]
    table.add(RunStop(run_name="2", stop_ns=300))
    table.add(RunStop(run_name="1", stop_ns=150))
    assert [(r.number, r.stop_ns, r.stop_explicit) for r in table.runs] == [
        (1, 150, True),
        (2, 300, True),
    ]
    assert table.add(start("1", 100)) is None  # repeated pl72
    assert table.ignored == 1
    assert table.add(RunStop(run_name="3", stop_ns=400)) is None  # before its pl72
    assert table.add(start("3", 350)) == KafkaRun(
        start=start("3", 350), stop_ns=400, stop_explicit=True
    )
    assert table.after(table.runs[0]).number == 2


def test_a_stop_past_the_next_start_is_cut_there():
    table = RunTable()
    table.add(start("1", 100))
    table.add(start("2", 200))
    table.add(RunStop(run_name="1", stop_ns=250))
    assert table.get("1").stop_ns == 200


# -- pending events --------------------------------------------------------------------


def test_take_splits_messages_at_run_boundaries_and_drops_pulses_before_the_start():
    pending = PendingEvents()
    pending.add(("t", 0), 5, events([50, 100, 150, 200], [1, 2, 3, 4]))
    run = KafkaRun(start=start("1", 100), stop_ns=200)
    taken = pending.take(run)
    assert taken.dropped == 1
    assert [p.reference_time_ns.tolist() for p in taken.pieces] == [[100, 150]]
    assert taken.pieces[0].event_id.tolist() == [1, 2, 3, 4, 5]
    assert taken.offsets == {}  # offset 5 still holds pulses of a later run
    assert pending.event_count == 4
    assert pending.lowest_offsets() == {("t", 0): 5}
    later = pending.take(KafkaRun(start=start("2", 200)))
    assert later.pieces[0].event_id.tolist() == [6, 7, 8, 9]
    assert later.offsets == {("t", 0): (5, 5)}
    assert pending.event_count == 0


def test_merge_pulses_one_bin_per_reference_time_in_time_order():
    a = events([300, 100], [1, 1], ids=[30, 10])
    b = events([100, 200], [2, 1], ids=[11, 12, 20])
    times, counts, ids, _ = merge_pulses([a, b])
    assert times.tolist() == [100, 200, 300]
    assert counts.tolist() == [3, 1, 1]
    assert ids.tolist() == [10, 11, 12, 20, 30]


def test_drop_partitions_and_oldest_bound_the_buffer():
    pending = PendingEvents()
    pending.add(("t", 0), 1, events([1], [3]))
    pending.add(("t", 1), 1, events([2], [4]))
    assert pending.drop_partitions({("t", 0)}) == 3
    assert pending.drop_oldest(0) == 4
    assert pending.event_count == 0


# -- partials --------------------------------------------------------------------------


def test_partials_sum_and_round_trip():
    hist = sc.DataArray(sc.array(dims=["x"], values=[1.0, 2.0], unit="counts"))
    total = sum_partials([decode_partial(encode_partial(hist)), hist])
    assert total.values.tolist() == [2.0, 4.0]
    with pytest.raises(MergeError, match="partial 1"):
        sum_partials([hist, sc.DataArray(sc.array(dims=["y"], values=[1.0], unit="counts"))])
    with pytest.raises(MergeError, match="no partial"):
        sum_partials([])


def test_covers_report_overlaps_and_gaps():
    a = Partial(run=1, instance="a", sequence=3, covers={"t:0": [0, 10], "t:1": [0, 5]})
    b = Partial(run=1, instance="b", sequence=9, covers={"t:0": [10, 20], "t:1": [7, 9]})
    assert check_covers([a, b]) == ["t:1: offsets 5..6 in no partial (lost)"]
    c = Partial(run=1, instance="c", sequence=1, covers={"t:0": [15, 30]})
    assert check_covers([a, b, c]) == [
        "t:0: offsets 15..19 in the partials of both b and c (counted twice)",
        "t:1: offsets 5..6 in no partial (lost)",
    ]
    older = Partial(run=1, instance="a", sequence=2, covers={})
    other_run = Partial(run=2, instance="a", sequence=5, covers={})
    latest = latest_per_instance([(a, b"3"), (older, b"2"), (other_run, b"5"), (b, b"9")], 1)
    assert {k: v[1] for k, v in latest.items()} == {"a": b"3", "b": b"9"}
    assert Partial.from_json(a.to_json()) == a


# -- settings and configuration --------------------------------------------------------


def test_settings_take_secrets_from_the_environment_and_hide_them_in_logs():
    merged = client.settings(
        "h:9092",
        {"security.protocol": "SASL_SSL", "sasl.username": "file"},
        role="consumer",
        environ={
            "LIVEREDUCE_KAFKA_SASL_PASSWORD": "s3cret",
            "LIVEREDUCE_KAFKA_SASL_USERNAME": "env",
        },
    )
    assert merged["sasl.password"] == "s3cret"
    assert merged["sasl.username"] == "env"
    assert merged["bootstrap.servers"] == "h:9092"
    shown = client.redacted(merged)
    assert shown["sasl.password"] == "***"
    assert "logger" not in shown
    with pytest.raises(ValueError, match="role"):
        client.settings("h:1", None, role="admin")


def kafka_config(options, **more):
    raw = {
        "instrument": "HYSPEC",
        "listener": "kafka",
        "address": "127.0.0.1:9092",
        "listener_options": options,
        **more,
    }
    return config_from_mapping(raw, None, check_scripts=False)


def test_kafka_configuration_is_checked_key_by_key():
    config = kafka_config(
        {"run_topic": "r", "event_topics": ["e"], "kafka": {"sasl.mechanism": "PLAIN"}}
    )
    assert config.listener_options["event_topics"] == ["e"]
    with pytest.raises(ConfigError, match=r"listener_options.run_topic"):
        kafka_config({"event_topics": ["e"]})
    with pytest.raises(ConfigError, match=r"listener_options.event_topics"):
        kafka_config({"run_topic": "r", "event_topics": "e"})
    with pytest.raises(ConfigError, match=r"listener_options.kafka"):
        kafka_config({"run_topic": "r", "kafka": {"a": [1]}})
    with pytest.raises(ConfigError, match=r"listener_options.source_names"):
        kafka_config({"run_topic": "r", "source_names": {"pixels": ["x"]}})
    with pytest.raises(ConfigError, match=r"listener_options.run_end_grace_sec"):
        kafka_config({"run_topic": "r", "run_end_grace_sec": 0})
    with pytest.raises(ConfigError, match="'address'"):
        kafka_config({"run_topic": "r"}, address="")


def test_scale_out_needs_rename():
    from livereduce.worker.listeners.kafka import from_config  # noqa: PLC0415

    with pytest.raises(ConfigError, match="run_transition"):
        from_config(kafka_config({"run_topic": "r", "group_id": "g"}))
    listener = from_config(
        kafka_config({"run_topic": "r", "group_id": "g"}, run_transition="Rename")
    )
    assert listener.name == "kafka 127.0.0.1:9092"


def test_a_consumer_used_outside_start_and_close_is_a_listener_error():
    from livereduce.worker.listeners.base import ListenerError  # noqa: PLC0415
    from livereduce.worker.listeners.kafka import KafkaListener, from_config  # noqa: PLC0415

    listener = from_config(kafka_config({"run_topic": "r", "event_topics": ["e"]}))
    with pytest.raises(ListenerError, match=r"before start\(\) or after close\(\)"):
        KafkaListener._started(listener._events)  # not started: no consumer yet
    listener.close()


def test_pl72_from_another_writer_without_metadata():
    message = decode(serialise_pl72("job", "f.nxs", start_time=1000, run_name="abc"))
    assert message.run_number == 0
    assert (
        decode(serialise_pl72("j", "f", start_time=1, run_name="dream_run_0042")).run_number == 42
    )
    assert message.start_ns == 1_000_000_000
    assert decode(serialise_6s4t("job", run_name="abc", stop_time=2000)).stop_ns == 2_000_000_000


def test_encode_events_round_trip():
    value = encode_events("s", 3, [10], [0], [1000, 2000], [1, 2])
    assert decode(value).event_time_offset_us.tolist() == [1.0, 2.0]


def test_kafka_runs_on_the_embedded_engine():
    from livereduce.config import Engine  # noqa: PLC0415
    from livereduce.worker.engine import EngineUnavailable, choose_engine  # noqa: PLC0415

    choice, why = choose_engine(kafka_config({"run_topic": "r"}))
    assert choice is Engine.EMBEDDED
    assert "kafka" in why
    with pytest.raises(EngineUnavailable, match="ev44"):
        choose_engine(kafka_config({"run_topic": "r"}, engine="mantid"))


def test_pulses_far_in_the_future_are_malformed_and_never_buffered():
    from livereduce.worker.listeners.kafka import KafkaListener  # noqa: PLC0415

    listener = KafkaListener("h:1", run_topic="r", event_topics=["e"], wall_clock_ns=lambda: 10**18)
    listener._owned.add(("e", 0))
    listener._route_events(("e", 0), 7, events([10**18 + 10**9], [2]))
    listener._route_events(("e", 0), 8, events([10**18 + 10**13], [3]))
    assert listener.counts["malformed"] == 1
    assert listener._pending.event_count == 2
    assert listener._latest_time[("e", 0)] == 10**18 + 10**9


def test_a_run_that_begins_with_no_pulses_accumulates_to_nothing():
    """A Kafka run can begin and end with no events (pl72 and 6s4t only)."""
    from livereduce.config import AccumulationMethod  # noqa: PLC0415
    from livereduce.worker.engine.accumulation import Accumulation  # noqa: PLC0415
    from livereduce.worker.listeners.base import empty_events  # noqa: PLC0415

    accumulation = Accumulation()
    accumulation.accumulate(AccumulationMethod.ADD, empty_events(), replace=True)
    assert accumulation.value().bins.size().sum().value == 0


def test_between_runs_only_the_latest_log_values_are_kept():
    from livereduce.kafka.wire import LogMessage  # noqa: PLC0415
    from livereduce.worker.listeners.kafka import KafkaListener  # noqa: PLC0415

    listener = KafkaListener("h:1", run_topic="r", log_topics=["l"])
    listener._pending_logs = [
        LogMessage(name=name, time_ns=t, value=float(t)) for t in range(1000) for name in "ab"
    ]
    listener._keep_last_log_values()
    assert sorted((m.name, m.time_ns) for m in listener._pending_logs) == [("a", 999), ("b", 999)]


def test_replay_and_merge_commands_refuse_bad_input(tmp_path, capsys):
    from livereduce.adara.replay import main as replay  # noqa: PLC0415
    from livereduce.kafka.merge import main as merge  # noqa: PLC0415

    assert replay([str(tmp_path / "missing.nxs.h5"), "--kafka", "127.0.0.1:1"]) == 2
    assert "missing.nxs.h5" in capsys.readouterr().err
    assert replay([str(tmp_path / "x.h5"), "--kafka", "h:1", "--kafka-option", "novalue"]) == 2
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    assert merge(["--output", str(tmp_path / "out.h5"), str(tmp_path / "bad.h5")]) == 2
    assert "cannot read partial" in capsys.readouterr().err
    assert not (tmp_path / "out.h5").exists()
    with pytest.raises(SystemExit):
        merge(["--output", str(tmp_path / "out.h5")])  # neither files nor --bootstrap


def test_status_shows_lag_and_rate_per_topic():
    from livereduce.supervisor.status import FIELDS, format_status  # noqa: PLC0415

    assert "streams" in FIELDS
    status = {
        "state": "running",
        "updated": 100.0,
        "supervisor_pid": None,
        "streams": {
            "dream_detector": {"lag": 1234.0, "events_per_s": 2.5e7, "malformed": 0.0},
            "dream_monitor": {"lag": 0.0, "events_per_s": 10.0, "malformed": 3.0},
        },
    }
    text = format_status(status, now=100.5)
    assert "kafka:        dream_detector: lag 1,234 messages, 25,000,000 events/s\n" in text
    assert "kafka:        dream_monitor: lag 0 messages, 10 events/s, 3 malformed" in text


def test_event_mode_partials_concatenate_events_bin_by_bin():
    from livereduce.worker.listeners.base import make_events  # noqa: PLC0415

    def part(ids):
        binned = make_events(np.array([1, 2]), np.array([1, len(ids) - 1]), ids, np.ones(len(ids)))
        return binned.bins.concat("event_time_zero")  # one bin: the same binning everywhere

    total = sum_partials([part([1, 2, 3]), part([4, 5])])
    assert sorted(total.bins.constituents["data"].coords["event_id"].values.tolist()) == [
        1, 2, 3, 4, 5,
    ]  # fmt: skip
    assert total.bins.size().value == 5
    with pytest.raises(MergeError):
        sum_partials([make_events(np.array([1]), np.array([1]), [1], [1.0]), part([4, 5])])


def test_a_broker_that_honours_time_lookups_is_seeked_before_the_run_start():
    """No broker here honours offsets_for_times (Tansu answers 0): a stand-in consumer that
    does checks what is asked and what is assigned."""
    from confluent_kafka import OFFSET_END, TopicPartition  # noqa: PLC0415

    from livereduce.worker.listeners.kafka import SEEK_MARGIN_MS, KafkaListener  # noqa: PLC0415

    class Honouring:
        def __init__(self):
            self.asked = []

        def offsets_for_times(self, partitions, timeout):
            self.asked.extend(partitions)
            return [
                TopicPartition(
                    p.topic, p.partition, -1 if p.offset > time.time() * 1000 else 40 + p.partition
                )
                for p in partitions
            ]

    listener = KafkaListener("h:1", run_topic="r", event_topics=["e"])
    consumer = listener._events = Honouring()
    assert listener._probe_time_lookup()  # a year ahead: "no such offset"
    listener._start_ns, listener._seek_by_time = 5_000_000_000_000, True
    seeked = listener._seek(
        [TopicPartition("e", 0, OFFSET_END), TopicPartition("e", 1, OFFSET_END)]
    )
    assert [(p.partition, p.offset) for p in seeked] == [(0, 40), (1, 41)]
    assert {p.offset for p in consumer.asked[1:]} == {5_000_000 - SEEK_MARGIN_MS}
