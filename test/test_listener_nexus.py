"""The NeXus file listener: chunks by count or by time, every event exactly once, run info."""

from __future__ import annotations

import numpy as np
import pytest
import scipp as sc
import scippnexus as snx

from livereduce.config import ConfigError, StartFrom, config_from_mapping
from livereduce.worker.listeners import create_listener
from livereduce.worker.listeners.base import ListenerError, NotYet
from livereduce.worker.listeners.nexus import NexusListener


def triples(events: sc.DataArray) -> np.ndarray:
    """(pulse time, pixel, tof) of every event, sorted."""
    flat = events.bins.constituents
    begin, end = flat["begin"].values, flat["end"].values
    pulses = np.repeat(events.coords["event_time_zero"].values.astype(np.int64), end - begin)
    table = flat["data"]
    index = (
        np.concatenate([np.arange(b, e) for b, e in zip(begin, end, strict=True)])
        if len(begin)
        else []
    )
    rows = np.stack(
        [
            pulses,
            table.coords["event_id"].values[index],
            table.coords["event_time_offset"].values[index].view(np.int32),
        ],
        axis=1,
    )
    return rows[np.lexsort(rows.T[::-1])]


def file_events(path) -> sc.DataArray:
    with snx.File(path) as f:
        entry = f["entry"]
        banks = [entry[k][()] for k in entry if k.startswith("bank") and k[4].isdigit()]
    return sc.concat(banks, "bank").bins.concat("bank")


def read_all(listener: NexusListener) -> list:
    chunks = []
    while True:
        try:
            chunks.append(listener.extract_data())
        except NotYet as finished:
            return chunks, str(finished)


def test_chunks_hold_every_event_once(shared_data):
    path = shared_data / "HYS_178921.nxs.h5"
    listener = NexusListener(path, chunks=4)
    listener.start(StartFrom.START_OF_RUN)
    chunks, finished = read_all(listener)
    listener.close()
    assert [c.begins_run for c in chunks] == [True, False, False, False]
    assert [c.ends_run for c in chunks] == [False, False, False, True]
    assert sum(c.event_count for c in chunks) == 26938
    assert "has been read completely (26938 events in 13935 pulses)" in finished
    joined = sc.concat([c.events for c in chunks], "event_time_zero")
    assert np.array_equal(triples(joined), triples(file_events(path)))
    run = chunks[0].run
    assert (run.number, run.instrument) == (178921, "HYSPEC")
    assert run.title.startswith("MnO xtal")
    assert run.start_time.isoformat().startswith("2017-11-02T01:47:58")
    assert "monitor2" in chunks[0].monitors
    assert sum(c.monitors["monitor2"].bins.size().sum().value for c in chunks) == 692
    pc = sum(c.logs["proton_charge"].sizes["time"] for c in chunks if "proton_charge" in c.logs)
    assert pc == 13935


def test_error_and_unmapped_banks_are_left_out(shared_data):
    listener = NexusListener(shared_data / "REF_L_184977.nxs.h5", chunks=2)
    listener.start(StartFrom.START_OF_RUN)
    chunks, _ = read_all(listener)
    listener.close()
    assert sum(c.event_count for c in chunks) == 100304


def test_speed_releases_pulses_as_their_time_comes(shared_data):
    now = [0.0]
    listener = NexusListener(shared_data / "HYS_178921.nxs.h5", speed=10, clock=lambda: now[0])
    listener.start(StartFrom.START_OF_RUN)
    now[0] = 2.0  # 20 s of the run at 10x: 1200 pulses plus the first
    first = listener.extract_data()
    assert first.events.sizes["event_time_zero"] == 1201
    assert first.begins_run
    assert listener.extract_data().events.sizes["event_time_zero"] == 0
    now[0] = 1000.0
    last = listener.extract_data()
    assert last.ends_run
    assert first.event_count + last.event_count == 26938


def test_missing_file_is_a_config_error(tmp_path):
    raw = {"instrument": "HYSPEC", "listener": "nexus", "address": "missing.nxs.h5"}
    with pytest.raises(ConfigError, match=r"missing\.nxs\.h5 does not exist"):
        create_listener(config_from_mapping(raw, tmp_path / "c.conf", check_scripts=False))


def test_unreadable_file_is_a_listener_error(tmp_path):
    bad = tmp_path / "bad.nxs.h5"
    bad.write_bytes(b"not HDF5")
    listener = NexusListener(bad, chunks=1)
    with pytest.raises(ListenerError, match="cannot read NeXus event file"):
        listener.start(StartFrom.START_OF_RUN)
