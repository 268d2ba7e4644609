"""The incremental result file (issue 11): accumulated events appended to resizable datasets,
the file identical (``sc.identical`` once loaded) to a whole write."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipp as sc

from livereduce.config import AccumulationMethod
from livereduce.worker.engine.accumulation import Accumulation
from livereduce.worker.listeners.base import make_events
from livereduce.worker.outputs.appendable import AppendableFile, appendable
from livereduce.worker.outputs.result import OutputWriter

T0 = 1_700_000_000 * 10**9


def chunk(rng: np.random.Generator, first_pulse: int, pulses: int) -> sc.DataArray:
    counts = rng.integers(0, 40, pulses)
    n = int(counts.sum())
    return make_events(
        T0 + np.arange(first_pulse, first_pulse + pulses) * 16_666_667,
        counts,
        rng.integers(0, 5000, n),
        (rng.integers(0, 166_667, n) / 10).astype(np.float32),
    )


def whole(workspace, tmp_path) -> sc.DataArray:
    """``workspace`` written whole by scipp and read back."""
    path = tmp_path / "whole.h5"
    workspace.save_hdf5(path)
    return sc.io.load_hdf5(path)


def test_a_result_written_incrementally_is_identical_to_one_written_whole(tmp_path):
    rng = np.random.default_rng(0)
    writer = OutputWriter(tmp_path / "out", "result")
    writer.output_grows = True
    accumulation = Accumulation()
    pulse = 0
    appended = []
    for version in range(1, 8):
        pulses = int(rng.integers(1, 200))
        accumulation.accumulate(AccumulationMethod.ADD, chunk(rng, pulse, pulses))
        pulse += pulses
        output = accumulation.value()
        assert appendable(output)
        assert writer.write(output, version, force=True)
        appended.append(writer.appended)
        loaded = sc.io.load_hdf5(writer.path)
        assert sc.identical(loaded, output)
        assert sc.identical(loaded, whole(output, tmp_path))
    # the first write is whole and copied to the other working file: every later one appends
    assert appended == [False, True, True, True, True, True, True]
    assert int(sc.io.load_hdf5(writer.path).bins.size().sum().value) == int(
        accumulation.value().bins.size().sum().value
    )


def three_writes(rng, folder) -> tuple[OutputWriter, Accumulation]:
    """A writer of a growing output after three writes of an accumulation of three chunks."""
    writer = OutputWriter(folder, "result")
    writer.output_grows = True
    accumulation = Accumulation()
    for version in (1, 2, 3):
        accumulation.accumulate(AccumulationMethod.ADD, chunk(rng, 100 * version, 50))
        writer.write(accumulation.value(), version, force=True)
    return writer, accumulation


def test_a_replace_is_written_whole_and_a_kept_run_never_changes_again(tmp_path):
    rng = np.random.default_rng(1)
    writer, accumulation = three_writes(rng, tmp_path)
    kept = writer.keep_run(7)
    kept_before = sc.io.load_hdf5(kept)
    assert sc.identical(kept_before, accumulation.value())
    writer.replaced()
    accumulation.accumulate(AccumulationMethod.ADD, chunk(rng, 1000, 30), replace=True)
    for version in (4, 5, 6):
        if version > 4:
            accumulation.accumulate(AccumulationMethod.ADD, chunk(rng, 1000 + 30 * version, 30))
        writer.write(accumulation.value(), version, force=True)
        assert sc.identical(sc.io.load_hdf5(writer.path), accumulation.value())
    assert writer.appended
    assert sc.identical(sc.io.load_hdf5(kept), kept_before)
    assert os.stat(kept).st_ino != os.stat(writer.path).st_ino


def test_an_output_that_is_not_known_to_grow_is_written_whole(tmp_path):
    rng = np.random.default_rng(2)
    writer = OutputWriter(tmp_path, "result")  # output_grows False: post-processing present
    first = chunk(rng, 0, 20)
    writer.write(first, 1, force=True)
    second = sc.concat(
        [first * sc.scalar(2.0, unit="", dtype="float32"), chunk(rng, 20, 20)], "event_time_zero"
    )
    writer.write(second, 2, force=True)
    writer.write(second, 3, force=True)  # same version skipped; a new version:
    third = sc.concat([second, chunk(rng, 40, 5)], "event_time_zero")
    writer.write(third, 4, force=True)
    assert not writer.appended
    assert sc.identical(sc.io.load_hdf5(writer.path), third)


def test_histograms_are_written_whole_by_scipp(tmp_path):
    writer = OutputWriter(tmp_path, "result")
    writer.output_grows = True
    histogram = sc.DataArray(
        sc.array(dims=["tof"], values=[1.0, 2.0], variances=[1.0, 2.0], unit="counts"),
        coords={"tof": sc.array(dims=["tof"], values=[0.0, 1.0, 2.0], unit="us")},
    )
    assert not appendable(histogram)
    assert writer.write(histogram, 1, force=True)
    assert not writer.appended
    assert sc.identical(sc.io.load_hdf5(writer.path), histogram)


def test_appends_check_what_they_can_and_rewrite_otherwise(tmp_path):
    rng = np.random.default_rng(3)
    first = chunk(rng, 0, 30)
    first.coords["run"] = sc.scalar(1)
    first.bins.masks["late"] = first.bins.coords["event_time_offset"] > sc.scalar(1000.0, unit="us")
    file = AppendableFile(tmp_path / "a.h5")
    assert not file.write(first, extends=True)  # nothing there yet: whole
    grown = sc.concat([first, chunk_like(rng, first, 30, 10)], "event_time_zero")
    grown.coords["run"] = sc.scalar(2)  # a scalar changes: rewritten in place
    assert file.write(grown, extends=True)
    assert sc.identical(sc.io.load_hdf5(file.path), grown)
    # not an extension (other events in the written pulses): the check sees it
    other = sc.concat(
        [chunk_like(rng, first, 0, 30), chunk_like(rng, first, 30, 10)], "event_time_zero"
    )
    assert not file.write(other, extends=True)
    assert sc.identical(sc.io.load_hdf5(file.path), other)
    # fewer pulses than written: whole
    assert not file.write(first, extends=True)
    assert sc.identical(sc.io.load_hdf5(file.path), first)


def chunk_like(rng, template: sc.DataArray, first_pulse: int, pulses: int) -> sc.DataArray:
    """A chunk with ``template``'s fields (the scalar coord and the event mask)."""
    new = chunk(rng, first_pulse, pulses)
    new.coords["run"] = template.coords["run"]
    new.bins.masks["late"] = new.bins.coords["event_time_offset"] > sc.scalar(1000.0, unit="us")
    return new


@pytest.mark.parametrize("fault", ["mid-append"])
def test_a_failed_append_leaves_the_published_file_intact(tmp_path, monkeypatch, fault):
    rng = np.random.default_rng(4)
    writer, accumulation = three_writes(rng, tmp_path)
    published = sc.io.load_hdf5(writer.path)
    accumulation.accumulate(AccumulationMethod.ADD, chunk(rng, 900, 40))

    def broken(*_args, **_kwargs):
        raise OSError(f"disk full ({fault})")

    monkeypatch.setattr("livereduce.worker.outputs.appendable._append_events", broken)
    assert not writer.write(accumulation.value(), 4, force=True)
    assert "disk full" in writer.failure
    assert sc.identical(sc.io.load_hdf5(writer.path), published)
    monkeypatch.undo()
    assert writer.write(accumulation.value(), 5, force=True)
    assert sc.identical(sc.io.load_hdf5(writer.path), accumulation.value())


def test_without_hard_links_the_result_is_written_whole(tmp_path, monkeypatch, caplog):
    rng = np.random.default_rng(5)

    def no_links(*_args):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    writer, accumulation = three_writes(rng, tmp_path)
    assert not writer.failure
    assert not writer.appended
    assert sc.identical(sc.io.load_hdf5(writer.path), accumulation.value())
    assert caplog.text.count("output_links_unsupported") == 1
    assert not list(tmp_path.glob(".result.h5.*.tmp"))  # no working file left


def test_close_removes_the_working_files_and_keeps_the_result(tmp_path):
    rng = np.random.default_rng(6)
    writer, accumulation = three_writes(rng, tmp_path)
    assert len(list(tmp_path.glob(".result.h5.*.tmp"))) == 2  # the two working files
    writer.close()
    assert not list(tmp_path.glob(".result.h5.*.tmp"))
    assert sc.identical(sc.io.load_hdf5(writer.path), accumulation.value())


def test_after_a_whole_write_the_other_working_file_is_a_copy_the_next_write_appends_to(
    tmp_path,
):
    rng = np.random.default_rng(7)
    writer = OutputWriter(tmp_path, "result")
    writer.output_grows = True
    accumulation = Accumulation()
    accumulation.accumulate(AccumulationMethod.ADD, chunk(rng, 0, 50))
    assert writer.write(accumulation.value(), 1, force=True)
    assert not writer.appended
    working = sorted(tmp_path.glob(".result.h5.*.tmp"), key=lambda p: p.stat().st_ino)
    assert len(working) == 2
    published = os.stat(writer.path).st_ino
    copy = next(p for p in working if p.stat().st_ino != published)
    assert copy.read_bytes() == writer.path.read_bytes()
    accumulation.accumulate(AccumulationMethod.ADD, chunk(rng, 50, 50))
    assert writer.write(accumulation.value(), 2, force=True)
    assert writer.appended
    assert os.stat(writer.path).st_ino == os.stat(copy).st_ino
    assert sc.identical(sc.io.load_hdf5(writer.path), accumulation.value())


def test_a_failed_copy_makes_the_next_write_whole_and_nothing_else(tmp_path, monkeypatch, caplog):
    rng = np.random.default_rng(8)

    def no_room(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("livereduce.worker.outputs.appendable.copy_into", no_room)
    writer, accumulation = three_writes(rng, tmp_path)
    assert not writer.failure
    assert caplog.text.count("output_copy_failed") == 2  # after the whole writes 1 and 2
    assert writer.appended  # write 3 appended to write 1's file, kept when the copy failed
    assert sc.identical(sc.io.load_hdf5(writer.path), accumulation.value())
    assert len(list(tmp_path.glob(".result.h5.*.tmp"))) == 2
