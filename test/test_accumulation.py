"""The accumulation workspace on its own: exact float64 counts, the union of labels that change
from chunk to chunk, and an event buffer that grows without moving what it holds."""

from __future__ import annotations

import numpy as np
import pytest
import scipp as sc

from livereduce.config import AccumulationMethod
from livereduce.worker.engine.accumulation import (
    Accumulation,
    AccumulationError,
    read_only,
    reserve_bytes,
    sum_bins,
)
from livereduce.worker.listeners.base import make_events

ADD = AccumulationMethod.ADD


def test_a_histogram_bin_above_2_to_the_24_counts_is_exact():
    chunk = sc.DataArray(
        sc.array(dims=["tof"], values=[2.0**24, 1.0], unit="counts", dtype="float32"),
        coords={"tof": sc.array(dims=["tof"], values=[0.0, 1.0, 2.0], unit="us")},
    )
    accumulation = Accumulation()
    for _ in range(3):
        accumulation.accumulate(ADD, chunk)
    one = chunk.copy()
    one.values = [1.0, 0.0]
    for _ in range(5):
        accumulation.accumulate(ADD, one)
    result = accumulation.value()
    assert result.dtype == sc.DType.float64
    assert result.values.tolist() == [3 * 2**24 + 5, 3.0]
    assert chunk.values.tolist() == [2.0**24, 1.0]  # the script's object is not modified


def test_variances_accumulate_in_float64():
    chunk = sc.DataArray(
        sc.array(dims=["x"], values=[2.0**24], variances=[2.0**24], dtype="float32")
    )
    accumulation = Accumulation()
    accumulation.accumulate(ADD, chunk)
    accumulation.accumulate(ADD, chunk / chunk)
    assert accumulation.value().variances.dtype == np.float64
    assert accumulation.value().values.tolist() == [2**24 + 1]


def test_bin_sums_of_more_than_2_to_the_24_events_are_exact():
    n = (1 << 24) + 5
    events = make_events(np.array([0]), np.array([n]), np.zeros(n), np.zeros(n))
    summed = sum_bins(events)
    assert summed.dtype == sc.DType.float64
    assert summed.values.tolist() == [n]


def grouped(pixels: list[int], per_pixel: int = 1) -> sc.DataArray:
    ids = np.repeat(pixels, per_pixel)
    return (
        make_events(np.array([0]), np.array([len(ids)]), ids, np.arange(len(ids)))
        .bins.concat()
        .group("event_id")
    )


def test_add_of_events_grouped_by_other_pixels_keeps_every_event():
    accumulation = Accumulation()
    for pixels in ([3, 7], [7, 9, 1], [2], [3, 7]):
        accumulation.accumulate(ADD, grouped(pixels, 2))
    result = accumulation.value()
    assert result.coords["event_id"].values.tolist() == [1, 2, 3, 7, 9]
    assert result.bins.size().values.tolist() == [2, 2, 4, 6, 2]
    # each event stays with its pixel: pixel 9's came with chunk 2, at offsets 2 and 3
    assert result["event_id", 4].values.coords["event_time_offset"].values.tolist() == [2, 3]


def test_add_of_histograms_over_other_pixels_sums_on_the_union():
    accumulation = Accumulation()
    for pixels in ([3, 7], [7, 9], [3]):
        accumulation.accumulate(ADD, grouped(pixels, 3).bins.sum())
    result = accumulation.value()
    assert result.coords["event_id"].values.tolist() == [3, 7, 9]
    assert result.values.tolist() == [6.0, 6.0, 3.0]
    assert result.dtype == sc.DType.float64


def test_add_of_other_bin_edges_is_refused_in_one_line():
    accumulation = Accumulation()
    events = make_events(np.array([0]), np.array([4]), np.zeros(4), np.arange(4.0))
    events = events.bins.concat()
    accumulation.accumulate(ADD, events.hist(event_time_offset=4))
    with pytest.raises(AccumulationError) as caught:
        accumulation.accumulate(ADD, events.hist(event_time_offset=3))
    assert "\n" not in str(caught.value)
    assert "'event_time_offset'" in str(caught.value)
    assert accumulation.value().sum().value == 4


def test_the_event_buffer_grows_without_moving_what_it_holds():
    accumulation = Accumulation()
    pulses = 1000

    def chunk(i: int) -> sc.DataArray:
        rng = np.random.default_rng(i)
        return make_events(
            (i * pulses + np.arange(pulses)) * 16_666_667,
            np.full(pulses, 100),
            rng.integers(0, 50, 100 * pulses),
            rng.random(100 * pulses),
        )

    chunks = [chunk(i) for i in range(8)]  # 800,000 events: 12 times the smallest capacity
    accumulation.accumulate(AccumulationMethod.APPEND, chunks[0])
    buffer = accumulation.value().bins.constituents["data"].coords["event_time_offset"]
    address = buffer.values.__array_interface__["data"][0]
    for piece in chunks[1:]:
        accumulation.accumulate(AccumulationMethod.APPEND, piece)
        now = accumulation.value().bins.constituents["data"].coords["event_time_offset"]
        assert now.values.__array_interface__["data"][0] == address
    assert sc.identical(accumulation.value(), sc.concat(chunks, "event_time_zero"))


def test_a_first_chunk_without_events_then_events_joins_them():
    def pulses(first: int, count: int, per_pulse: int) -> sc.DataArray:
        n = count * per_pulse
        times = (first + np.arange(count)) * 16_666_667
        return make_events(times, np.full(count, per_pulse), np.zeros(n), np.ones(n))

    accumulation = Accumulation()
    accumulation.accumulate(ADD, pulses(0, 3, 0))  # a run begins with the beam off
    assert accumulation.value().bins.size().sum().value == 0
    accumulation.accumulate(ADD, pulses(3, 2, 5))
    assert accumulation.value().sizes == {"event_time_zero": 5}
    assert accumulation.value().bins.size().values.tolist() == [0, 0, 0, 5, 5]


def test_no_address_space_is_reserved_under_strict_overcommit(tmp_path):
    (tmp_path / "mode").write_text("2\n")
    assert reserve_bytes(tmp_path / "mode") == 0
    (tmp_path / "mode").write_text("0\n")
    assert reserve_bytes(tmp_path / "mode") > 1 << 30


def test_a_chunk_with_variances_is_refused_by_an_accumulation_without():
    accumulation = Accumulation()
    plain = sc.DataArray(sc.array(dims=["x"], values=[1.0], unit="counts"))
    accumulation.accumulate(ADD, plain)
    with pytest.raises(AccumulationError, match="holds data without variances"):
        accumulation.accumulate(
            ADD, sc.DataArray(sc.array(dims=["x"], values=[1.0], variances=[1.0], unit="counts"))
        )
    assert accumulation.value().values.tolist() == [1.0]


def _binned() -> sc.DataArray:
    value = make_events(
        np.arange(3) * 10,
        np.array([2, 0, 3]),
        np.arange(5, dtype=np.int32),
        np.arange(5, dtype=np.float32),
    )
    value.masks["bad"] = sc.array(dims=["event_time_zero"], values=[False, True, False])
    value.coords["run"] = sc.scalar(7)
    value.coords.set_aligned("run", False)
    return value


@pytest.mark.parametrize(
    "make",
    [
        _binned,
        lambda: sc.Dataset({"a": _binned().bins.sum(), "b": _binned().bins.sum() * 2.0}),
        lambda: sc.DataGroup({"events": _binned(), "n": 3, "raw": np.arange(4.0)}),
        lambda: _binned().data,
        lambda: sc.arange("x", 4.0, unit="counts"),
    ],
    ids=["binned", "dataset", "datagroup", "binned variable", "variable"],
)
def test_a_read_only_view_is_identical_shares_memory_and_refuses_changes(make):
    value = make()
    view = read_only(value)
    assert (
        sc.identical(view, value)
        if not isinstance(value, sc.DataGroup)
        else (sc.identical(view["events"], value["events"]) and view["n"] == 3)
    )
    events = value["events"] if isinstance(value, sc.DataGroup) else value
    viewed = view["events"] if isinstance(view, sc.DataGroup) else view
    if isinstance(events, sc.Dataset):
        events, viewed = events["a"], viewed["a"]
    if events.bins is not None:
        held = events.bins.constituents["data"].coords["event_time_offset"].values
        seen = viewed.bins.constituents["data"].coords["event_time_offset"].values
        with pytest.raises(ValueError, match="read-only"):
            seen[0] = 9.0
        with pytest.raises(sc.VariableError, match="Read-only flag is set"):
            viewed.bins.coords["event_time_offset"] *= 2.0
    else:
        held, seen = events.values, viewed.values
        with pytest.raises(ValueError, match="read-only"):
            seen[0] = 9.0
        with pytest.raises(sc.VariableError, match="Read-only flag is set"):
            viewed *= 2.0
    assert np.shares_memory(held, seen)
    if isinstance(view, sc.DataGroup):
        with pytest.raises(ValueError, match="read-only"):
            view["raw"][0] = 1.0
    assert sc.identical(make(), value)  # nothing changed


def test_events_of_every_field_kind_are_kept_exactly():
    def chunk(i: int) -> sc.DataArray:
        rng = np.random.default_rng(i)
        value = make_events(
            (10 * i + np.arange(10)) * 16_666_667,
            np.full(10, 30),
            rng.integers(0, 50, 300),
            rng.random(300),
        )
        table = value.bins.constituents["data"]
        table.variances = rng.random(300).astype(np.float32)  # weights with variances
        table.coords["wall"] = sc.datetimes(
            dims=["event"], values=rng.integers(0, 10**12, 300), unit="ns"
        )
        table.coords["q"] = sc.array(dims=["event"], values=rng.random(300), unit="1/angstrom")
        table.coords["tag"] = sc.array(dims=["event"], values=[f"t{k % 3}" for k in range(300)])
        table.masks["late"] = table.coords["event_time_offset"] > sc.scalar(0.5, unit="us")
        return value

    chunks = [chunk(i) for i in range(3)]
    accumulation = Accumulation()
    for piece in chunks:
        accumulation.accumulate(ADD, piece)
    assert sc.identical(accumulation.value(), sc.concat(chunks, "event_time_zero"))


def test_events_binned_by_time_edges_join_at_the_shared_edge():
    def chunk(i: int) -> sc.DataArray:
        rng = np.random.default_rng(i)
        starts = (5 * i + np.arange(6)) * 166_666_670  # bins of ten pulses
        events = make_events(starts[:-1], np.full(5, 40), rng.integers(0, 50, 200), rng.random(200))
        events.coords["event_time_zero"] = sc.datetimes(
            dims=["event_time_zero"], values=starts, unit="ns"
        )
        return events

    chunks = [chunk(i) for i in range(3)]
    accumulation = Accumulation()
    for piece in chunks:
        accumulation.accumulate(ADD, piece)
    result = accumulation.value()
    assert sc.identical(result, sc.concat(chunks, "event_time_zero"))
    assert result.sizes == {"event_time_zero": 15}
    assert result.coords["event_time_zero"].sizes == {"event_time_zero": 16}
