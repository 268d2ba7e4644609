"""``livereduce plot RESULT.h5 -o OUT``: draw a result file.

The result file is the output workspace in scipp HDF5 (``sc.io.load_hdf5``) with the run's
metadata (:mod:`livereduce.worker.outputs.metadata`) as the title. The same parts as the live
figures are drawn (:func:`livereduce.worker.outputs.figures.drawable`: a 1-D line with error
bars, a 2-D image, one panel per item of a DataGroup), with plopp on matplotlib for ``.png``,
``.svg`` and ``.pdf``; ``.html`` writes the plotly figures of the live view instead, with
plotly.js inside, to open anywhere. Exit status 0, or 1 with one message naming the file.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

MATPLOTLIB_FORMATS = {".png", ".svg", ".pdf"}


def parser() -> argparse.ArgumentParser:
    """The ``livereduce plot`` argument parser."""
    out = argparse.ArgumentParser(prog="livereduce plot", description=__doc__.splitlines()[0])
    out.add_argument("result", type=Path, help="a result file (e.g. result.h5)")
    out.add_argument(
        "-o",
        "--output",
        type=Path,
        help="image to write (.png .svg .pdf .html); default RESULT.png",
    )
    return out


def plot_result(result: Path, output: Path) -> int:
    """Draw ``result`` to ``output``; returns the number of panels. Raises OSError when a
    file cannot be read or written, ValueError when the file holds nothing to draw or the
    format is unknown."""
    import scipp as sc  # noqa: PLC0415 - heavy; the daemon's command does not need it

    from livereduce.worker.outputs.figures import FigureCaption, default_figures, drawable  # noqa: PLC0415
    from livereduce.worker.outputs.metadata import describe, read_metadata  # noqa: PLC0415

    suffix = output.suffix.lower()
    if suffix not in MATPLOTLIB_FORMATS | {".html"}:
        raise ValueError(
            f"{output}: unknown image format {suffix!r}; use .png, .svg, .pdf or .html"
        )
    try:
        workspace = sc.io.load_hdf5(result)
        metadata = read_metadata(result)
    except (OSError, KeyError, ValueError, RuntimeError) as error:
        raise ValueError(f"{result} is not a scipp HDF5 result file: {error}") from None
    title = describe(metadata).replace(" | ", "\n") if metadata else result.name
    parts = drawable(workspace)
    if not parts:
        raise ValueError(f"{result}: nothing to draw (no 1-D or 2-D data)")
    if suffix == ".html":
        import plotly.io  # noqa: PLC0415

        charge = metadata.get("proton_charge")
        caption = FigureCaption(
            instrument=str(metadata.get("instrument", "")),
            run_number=int(metadata.get("run_number", 0)),
            title=str(metadata.get("title", "")),
            events=int(metadata.get("events", 0)),
            proton_charge=charge if isinstance(charge, float) and math.isfinite(charge) else None,
        )
        figures = default_figures(workspace, caption)
        body = "".join(
            plotly.io.to_html(f.figure, include_plotlyjs=(i == 0), full_html=False)
            for i, f in enumerate(figures)
        )
        head = f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        output.write_text(f"{head}<body>{body}</body></html>", encoding="utf-8")
        return len(figures)
    import matplotlib as mpl  # noqa: PLC0415

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(len(parts), 1, figsize=(8, 1 + 3.5 * len(parts)), squeeze=False)
    for (name, array), ax in zip(parts, axes[:, 0], strict=True):
        array.plot(ax=ax)
        if name:
            ax.set_title(name, fontsize=10)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return len(parts)


def main(argv: Sequence[str]) -> int:
    """``livereduce plot``; returns the exit status."""
    args = parser().parse_args(list(argv))
    output = args.output or args.result.with_suffix(".png")
    try:
        panels = plot_result(args.result, output)
    except (OSError, ValueError) as error:
        print(f"livereduce plot: {error}", file=sys.stderr)
        return 1
    print(f"{output}: {panels} panel(s) of {args.result}")
    return 0
