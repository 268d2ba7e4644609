"""What the live figures cost the processing loop, against writing the result file.

For outputs of the sizes instruments use (a 1-D pattern of 4,000 bins, a 512 x 512 detector
image, drawn coarsened to 256 x 256, and raw events of 10^5 to 10^7 accumulated events drawn as
a time-of-flight spectrum), it times: making the default figures, writing the figures file
(what the view page reads), the upload div, and the result file write of the same output (the
ceiling: the loop already spends at most WRITE_SHARE of its time on that). A ratio below 1
means the figures cost less than the write they accompany. Figures are written at most once a
second and kept to the same share of the loop (livereduce.worker.outputs.live), so a slow one
slows the view, not the data.
Run: ``python bench/outputs_cost.py``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import scipp as sc

from livereduce.worker.listeners.base import make_events
from livereduce.worker.outputs.figures import (
    FigureCaption,
    default_figures,
    figure_div,
    write_figures,
)

REPEATS = 5
CAPTION = FigureCaption(instrument="BENCH", run_number=1, title="bench", events=1)


def best(action) -> float:
    times = []
    for _ in range(REPEATS):
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def outputs() -> dict[str, sc.DataArray]:
    rng = np.random.default_rng(1)
    pattern = sc.DataArray(
        sc.array(dims=["dspacing"], values=rng.random(4000), variances=rng.random(4000)),
        coords={"dspacing": sc.linspace("dspacing", 0.5, 10.0, 4001, unit="angstrom")},
    )
    image = sc.DataArray(sc.array(dims=["y", "x"], values=rng.random((512, 512))))
    out = {"pattern 4000 bins": pattern, "image 512x512": image}
    for n in (10**5, 10**6, 10**7):
        pulses = 1000
        out[f"raw events {n:.0e}"] = make_events(
            np.arange(pulses) * 16_666_667,
            np.full(pulses, n // pulses),
            rng.integers(0, 10_000, n),
            (rng.random(n) * 16_000).astype(np.float32),
        )
    return out


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="livereduce-bench-"))
    print(f"{'output':<22} {'figures':>9} {'file':>9} {'div':>9} {'h5 write':>9} {'ratio':>6}")
    for name, output in outputs().items():
        figures = default_figures(output, CAPTION)
        make = best(lambda o=output: default_figures(o, CAPTION))
        write = best(lambda f=figures: write_figures(folder / "f.json", f, CAPTION))
        div = best(lambda f=figures: figure_div(f[0].figure))
        h5 = best(lambda o=output: o.save_hdf5(folder / "r.h5"))
        ratio = (make + write) / h5
        print(
            f"{name:<22} {make * 1e3:8.1f}ms {write * 1e3:8.1f}ms {div * 1e3:8.1f}ms "
            f"{h5 * 1e3:8.1f}ms {ratio:6.2f}"
        )


if __name__ == "__main__":
    main()
