"""Default figures of the output workspace, and when LiveOutputs writes and publishes them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipp as sc

from livereduce.config import ConfigError, config_from_mapping
from livereduce.worker.listeners.base import make_events
from livereduce.worker.outputs.figures import (
    MAX_HEATMAP_CELLS,
    TOF_BINS,
    FigureCaption,
    default_figures,
    figure_div,
)
from livereduce.worker.outputs.live import STOP_FLUSH_S, LiveOutputs, combined_div

CAPTION = FigureCaption(
    instrument="HYSPEC", run_number=178921, title="MnO", events=1234, proton_charge=2.0e11,
    updated=1509587510.0,
)  # fmt: skip


def line() -> sc.DataArray:
    return sc.DataArray(
        sc.array(dims=["tof"], values=[1.0, 4.0, np.nan], variances=[1.0, 4.0, 1.0], unit="counts"),
        coords={"tof": sc.array(dims=["tof"], values=[0.0, 10.0, 20.0, 30.0], unit="us")},
    )


def test_caption_says_run_title_events_charge_and_time():
    assert CAPTION.text() == (
        "HYSPEC run 178921: MnO | 1,234 events, 2e+11 pC, updated 2017-11-02 01:51:50 UTC"
    )
    assert FigureCaption(events=3).text("tof") == "tof · no run | 3 events"


def test_1d_is_a_line_with_error_bars_at_bin_centres():
    (figure,) = default_figures(line(), CAPTION)
    trace = figure.figure["data"][0]
    assert trace["type"] == "scatter"
    assert trace["x"] == [5.0, 15.0, 25.0]
    assert trace["y"] == [1.0, 4.0, None]  # NaN is a gap: JSON has no NaN
    assert trace["error_y"]["array"] == [1.0, 2.0, 1.0]
    assert figure.figure["layout"]["xaxis"]["title"]["text"] == "tof [µs]"
    assert "run 178921" in figure.figure["layout"]["title"]["text"]
    json.dumps(figure.figure, allow_nan=False)


def test_2d_is_a_heatmap_and_a_group_gives_one_figure_per_item():
    image = sc.DataArray(sc.array(dims=["y", "x"], values=np.arange(6.0).reshape(2, 3)))
    group = sc.DataGroup({"tof": line(), "image": image, "total": sc.scalar(3.0), "n": 5})
    figures = default_figures(sc.DataGroup({"inner": group}), CAPTION)
    assert [f.name for f in figures] == ["inner/tof", "inner/image"]
    heatmap = figures[1].figure["data"][0]
    assert heatmap["type"] == "heatmap"
    assert heatmap["z"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert heatmap["x"] == [0, 1, 2]


def test_raw_events_become_a_time_of_flight_spectrum():
    events = make_events(
        np.array([0, 16_666_667]), np.array([2, 1]), np.array([1, 2, 3]),
        np.array([100.0, 200.0, 300.0]),
    )  # fmt: skip
    (figure,) = default_figures(events, CAPTION)
    trace = figure.figure["data"][0]
    assert len(trace["y"]) == TOF_BINS
    assert sum(trace["y"]) == 3


def test_more_dims_are_summed_and_big_images_coarsened():
    cube = sc.DataArray(sc.ones(dims=["t", "y", "x"], shape=[3, 2, 2]))
    (figure,) = default_figures(cube, CAPTION)
    assert figure.figure["data"][0]["z"] == [[3.0, 3.0], [3.0, 3.0]]
    side = int(np.sqrt(MAX_HEATMAP_CELLS)) * 2
    big = sc.DataArray(sc.ones(dims=["y", "x"], shape=[side, side]))
    (figure,) = default_figures(big, CAPTION)
    z = np.array(figure.figure["data"][0]["z"])
    assert z.size <= MAX_HEATMAP_CELLS
    assert z.sum() == side * side  # coarsened, nothing lost


def test_nothing_to_draw_gives_no_figure():
    assert default_figures(sc.scalar(1.0), CAPTION) == []
    assert default_figures(sc.DataArray(sc.zeros(dims=["x"], shape=[0])), CAPTION) == []
    assert default_figures(sc.DataGroup({}), CAPTION) == []


def test_div_starts_with_div_as_the_server_needs():
    (figure,) = default_figures(line(), CAPTION)
    assert figure_div(figure.figure).startswith("<div")
    two = default_figures(sc.DataGroup({"a": line(), "b": line()}), CAPTION)
    combined = combined_div(two)
    assert combined.startswith("<div>")
    assert combined.count("Plotly.newPlot") == 2


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.published = self.errors = 0
        self.last_error = ""

    def submit(self, instrument, run_number, files, *, config):
        del config
        self.sent.append((instrument, str(run_number)))
        assert files["file"].startswith("<div")

    def flush(self, timeout_s=None):
        self.flushed_within = timeout_s
        return True

    def close(self, timeout_s=None):
        pass


def outputs_for(tmp_path, **raw):
    config = config_from_mapping(
        {"instrument": "HYSPEC", "listener": "fake", "output_dir": "out", **raw},
        tmp_path / "c.conf",
        check_scripts=False,
    )
    clock = Clock()
    publisher = FakePublisher()
    return LiveOutputs(config, publisher=publisher, clock=clock), clock, publisher


def test_default_publishing_every_sec_and_at_the_end_of_a_run(tmp_path):
    outputs, clock, publisher = outputs_for(tmp_path, publish={"every_sec": 30})
    try:
        outputs.after_output(line(), 1, CAPTION, run_ended=False)
        clock.now += 10
        outputs.after_output(line(), 2, CAPTION, run_ended=False)  # too soon
        assert publisher.sent == [("HYS", "178921")]
        clock.now += 25
        outputs.after_output(line(), 3, CAPTION, run_ended=False)
        clock.now += 1
        outputs.after_output(line(), 4, CAPTION, run_ended=True)  # the run's last: always
        outputs.after_output(line(), 4, CAPTION, run_ended=True)  # the same version: once
        assert len(publisher.sent) == 3
        no_run = FigureCaption(run_number=0)
        outputs.after_output(line(), 5, no_run, run_ended=True)
        assert len(publisher.sent) == 3  # nothing to publish outside a run
        assert not (tmp_path / "out" / "result_figures.json").exists()  # no view: no file
    finally:
        outputs.close()


def test_figures_file_for_the_view(tmp_path):
    outputs, clock, publisher = outputs_for(tmp_path, view_address="0")
    path = tmp_path / "out" / "result_figures.json"
    try:
        outputs.after_output(line(), 1, CAPTION, run_ended=False)
        first = json.loads(path.read_text())
        clock.now += 0.5
        outputs.after_output(line() * 2.0, 2, CAPTION, run_ended=False)  # within a second
        assert json.loads(path.read_text()) == first
        clock.now += 1
        outputs.after_output(line() * 2.0, 3, CAPTION, run_ended=False)
        second = json.loads(path.read_text())
        assert second["figures"][0]["figure"]["data"][0]["y"][1] == 8.0
        assert second["run_number"] == 178921
        assert publisher.sent == []  # no 'publish' key: the default figure is not published
    finally:
        outputs.close()


def test_figure_failures_are_counted_not_raised(tmp_path):
    (tmp_path / "out").write_text("a file where the folder should be")
    outputs, _, _ = outputs_for(tmp_path, view_address="0")
    try:
        outputs.after_output(line(), 1, CAPTION, run_ended=False)
    finally:
        outputs.close()
    assert outputs.counters()["publish_errors"] == 1
    assert "cannot write" in outputs.counters()["last_publish_error"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"every": 3}, "unknown key"),
        ({"every_sec": 0}, "publish.every_sec"),
        ("yes", "expected false or an object"),
    ],
)
def test_publish_key_errors_name_the_key(tmp_path, value, message):
    with pytest.raises(ConfigError, match=message):
        outputs_for(tmp_path, publish=value)


def test_odd_coords_and_dtypes_do_not_break_the_figures():
    labelled = sc.DataArray(
        sc.array(dims=["bank"], values=[1.0, 2.0]),
        coords={"bank": sc.array(dims=["bank"], values=["north", "south"])},
    )
    vectors = sc.DataArray(sc.vectors(dims=["x"], values=[[1.0, 0, 0], [0, 1.0, 0]]))
    figures = default_figures(sc.DataGroup({"l": labelled, "v": vectors}), CAPTION)
    assert [f.name for f in figures] == ["l"]
    assert figures[0].figure["data"][0]["x"] == [0, 1]


def test_queued_plots_get_a_bounded_time_at_the_end(tmp_path):
    outputs, _, publisher = outputs_for(tmp_path, publish={"timeout_sec": 30}, stop_timeout=8)
    outputs.close()
    assert publisher.flushed_within == 4.0  # half the stop timeout, below the upload timeout
    outputs, _, publisher = outputs_for(tmp_path)
    outputs.close(STOP_FLUSH_S)  # a stop: the result file first, the plots get a second
    assert publisher.flushed_within == STOP_FLUSH_S
