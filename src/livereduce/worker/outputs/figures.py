"""Default figures of the output workspace, as plotly figures (JSON-compatible dicts).

What livereduce shows without any script code (issue 12 item 2): a 1-D DataArray is a line
with error bars, a 2-D one a heatmap, a Dataset or DataGroup gives one figure per item (names
joined with ``/``). Binned (event) data are histogrammed first: over ``event_time_offset``
(200 bins) when the events carry it and the bins' own dims are only pulses
(``event_time_zero``), else the sum of each bin. Parts with more than two dims are summed over
the leading ones; 0-D parts and empty data give no figure.

Figures are plain plotly JSON (``{"data": [...], "layout": {...}}``): the view page draws them
with its own copy of plotly.js, and :func:`figure_div` turns one into the ``<div>`` that
``publish_plot`` uploads to the SNS live data server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipp as sc

from livereduce.atomic import write_atomically

TOF_BINS = 200
"""Bins of the default time-of-flight spectrum of raw events: fine enough to see Bragg peaks
and frame edges, coarse enough to stay readable at a few hundred events a second."""

NUMERIC = (sc.DType.float64, sc.DType.float32, sc.DType.int64, sc.DType.int32, sc.DType.bool)
"""Data a figure can show; vectors, strings and the like are left out."""

MAX_HEATMAP_CELLS = 256 * 256
"""A larger 2-D part is shown coarsened (summed blocks): a figure is JSON sent to a browser,
and a 512 x 512 image costs ~0.1 s to write and ~0.2 s as an upload div (bench/outputs_cost.py)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FigureCaption:
    """What a default figure's title says: ``instrument``, ``run_number`` (0 outside a run),
    ``title`` (the run's), ``events`` (detector events so far), ``proton_charge`` (pC, None
    when unknown) and ``updated`` (Unix seconds)."""

    instrument: str = ""
    run_number: int = 0
    title: str = ""
    events: int = 0
    proton_charge: float | None = None
    updated: float = 0.0

    def text(self, name: str = "") -> str:
        """One line, e.g. ``HYSPEC run 178921: MnO xtal … | 26,938 events, 2.00e+11 pC,
        updated 2017-11-02 01:51:50 UTC``; ``name`` (the item) is put in front when given."""
        run = f"run {self.run_number}" if self.run_number else "no run"
        head = " ".join(part for part in (self.instrument, run) if part)
        if self.title:
            head += f": {self.title}"
        facts = [f"{self.events:,} events"]
        if self.proton_charge is not None:
            facts.append(f"{self.proton_charge:.3g} pC")
        if self.updated:
            stamp = datetime.fromtimestamp(self.updated, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
            facts.append(f"updated {stamp} UTC")
        prefix = f"{name} · " if name else ""
        return f"{prefix}{head} | {', '.join(facts)}"


@dataclass(frozen=True, slots=True)
class NamedFigure:
    """One figure: ``name`` (the item's path in the output, ``""`` for a single array) and the
    plotly ``figure`` dict."""

    name: str
    figure: dict[str, Any]


def default_figures(output: Any, caption: FigureCaption) -> list[NamedFigure]:
    """The default figures of ``output`` (a scipp DataArray, Dataset, DataGroup or Variable);
    see the module docstring. Never raises for an unusual shape: such parts are left out."""
    return [
        NamedFigure(name, _figure(array, caption.text(name))) for name, array in drawable(output)
    ]


def drawable(output: Any) -> list[tuple[str, sc.DataArray]]:
    """The parts of ``output`` a default figure shows, as (name, dense 1-D or 2-D DataArray;
    more dims are summed over the leading ones), in the output's order."""
    parts = []
    for name, array in _parts(output, ""):
        if _figure_dims(array) in (1, 2) and array.dtype in NUMERIC:
            parts.append((name, array.sum(array.dims[:-2]) if array.ndim > 2 else array))
    return parts


def _parts(value: Any, prefix: str) -> Iterator[tuple[str, sc.DataArray]]:
    if isinstance(value, sc.DataGroup | sc.Dataset):
        for key, item in value.items():
            yield from _parts(item, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(value, sc.Variable):
        yield prefix, _dense(sc.DataArray(value))
    elif isinstance(value, sc.DataArray):
        yield prefix, _dense(value)


def _dense(array: sc.DataArray) -> sc.DataArray:
    if array.bins is None:
        return array
    events = array.bins.constituents["data"]
    has_tof = isinstance(events, sc.DataArray) and "event_time_offset" in events.coords
    if has_tof and set(array.dims) <= {"event_time_zero"}:
        flat = array.bins.concat() if array.ndim else array
        if flat.bins.size().value == 0:
            return sc.DataArray(sc.zeros(dims=["event_time_offset"], shape=[0]))
        return flat.hist(event_time_offset=TOF_BINS)
    return array.bins.sum()


def _figure_dims(array: sc.DataArray) -> int:
    if array.ndim == 0 or array.size == 0:
        return 0
    return min(array.ndim, 2)


def _centres(array: sc.DataArray, dim: str) -> tuple[np.ndarray, str]:
    """Coordinate values along ``dim`` for plotting (bin centres for edges) and the axis label."""
    coord = array.coords.get(dim)
    if coord is None or coord.ndim != 1 or coord.dims[0] != dim:
        return np.arange(array.sizes[dim]), dim
    values = coord.values
    if coord.dtype == sc.DType.datetime64:
        values = values.astype("datetime64[ms]").astype(str)
        if array.coords.is_edges(dim):
            values = values[:-1]
        return np.asarray(values), dim
    if coord.dtype not in NUMERIC:
        return np.arange(array.sizes[dim]), dim
    values = np.asarray(values, dtype=float)
    if array.coords.is_edges(dim):
        values = 0.5 * (values[:-1] + values[1:])
    unit = (
        f" [{coord.unit}]" if coord.unit is not None and str(coord.unit) != "dimensionless" else ""
    )
    return values, f"{dim}{unit}"


def _finite(values: np.ndarray) -> list[Any]:
    """``values`` as (nested) lists for JSON, which has no NaN or infinity: they become gaps
    (null). Vectorised: an image has up to MAX_HEATMAP_CELLS values."""
    numbers = np.asarray(values, dtype=float)
    out = numbers.astype(object)
    out[~np.isfinite(numbers)] = None
    return out.tolist()


def _figure(array: sc.DataArray, title: str) -> dict[str, Any]:
    unit = f" [{array.unit}]" if array.unit is not None else ""
    layout: dict[str, Any] = {"title": {"text": title, "font": {"size": 13}}, "margin": {"t": 50}}
    if array.ndim == 1:
        (dim,) = array.dims
        x, xlabel = _centres(array, dim)
        trace: dict[str, Any] = {
            "type": "scatter",
            "mode": "lines",
            "x": x.tolist() if x.dtype.kind in "U" else _finite(x),
            "y": _finite(array.values),
            "name": array.name or "data",
        }
        if array.variances is not None:
            trace["error_y"] = {
                "type": "data",
                "array": _finite(np.sqrt(array.variances)),
                "visible": True,
            }
        layout["xaxis"] = {"title": {"text": xlabel}}
        layout["yaxis"] = {"title": {"text": f"{array.name or 'intensity'}{unit}"}}
        return {"data": [trace], "layout": layout}
    array = _coarsen(array)
    ydim, xdim = array.dims
    x, xlabel = _centres(array, xdim)
    y, ylabel = _centres(array, ydim)
    trace = {
        "type": "heatmap",
        "x": x.tolist() if x.dtype.kind in "U" else _finite(x),
        "y": y.tolist() if y.dtype.kind in "U" else _finite(y),
        "z": _finite(array.values),
        "colorbar": {"title": {"text": unit.strip(" []") or "counts"}},
    }
    layout["xaxis"] = {"title": {"text": xlabel}}
    layout["yaxis"] = {"title": {"text": ylabel}}
    return {"data": [trace], "layout": layout}


def _coarsen(array: sc.DataArray) -> sc.DataArray:
    """Sum blocks of a 2-D array until it has at most MAX_HEATMAP_CELLS cells; coords that do
    not fit the coarse grid are dropped (the axes then count cells)."""
    factor = 1
    while (array.sizes[array.dims[0]] // factor) * (array.sizes[array.dims[1]] // factor) > (
        MAX_HEATMAP_CELLS
    ):
        factor *= 2
    if factor == 1:
        return array
    ny, nx = (array.sizes[d] // factor for d in array.dims)
    values = np.asarray(array.values, dtype=float)[: ny * factor, : nx * factor]
    coarse = values.reshape(ny, factor, nx, factor).sum(axis=(1, 3))
    return sc.DataArray(sc.array(dims=list(array.dims), values=coarse, unit=array.unit))


def figure_div(figure: Mapping[str, Any], *, div_id: str = "livereduce-plot") -> str:
    """``figure`` as the HTML the live data server stores: it starts with ``<div`` (the server
    stores anything else as JSON) and needs plotly.js on the page that shows it, which
    monitor.sns.gov provides."""
    import plotly.io  # noqa: PLC0415 - plotly is needed only when a figure is published

    return plotly.io.to_html(
        dict(figure), include_plotlyjs=False, full_html=False, div_id=div_id, validate=False
    ).lstrip()


def write_figures(
    path: Path, figures: list[NamedFigure], caption: FigureCaption, *, updated: float | None = None
) -> None:
    """Write ``figures`` as JSON ``{"updated": Unix s, "caption": str, "run_number", "events",
    "figures": [{"name", "figure"}]}`` to ``path`` atomically
    (:func:`livereduce.atomic.write_atomically`). Raises OSError."""
    document = {
        "updated": time.time() if updated is None else updated,
        "caption": caption.text(),
        "run_number": caption.run_number,
        "events": caption.events,
        "figures": [{"name": f.name, "figure": f.figure} for f in figures],
    }
    text = json.dumps(document, separators=(",", ":"))
    write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
