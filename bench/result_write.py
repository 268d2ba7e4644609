"""Result file writes as events accumulate: the whole rewrite (scipp's save_hdf5, what every
write cost before) against the incremental write (OutputWriter appending the new pulses).

    python bench/result_write.py [--total 5e7] [--chunk 1e7] [--repeat 3]

Chunks of ``--chunk`` events (the raw layout, 60 Hz pulses) are accumulated with Add up to
``--total`` events; after each chunk the accumulation is written both ways. Printed per step:
the accumulated events, the seconds of each write (median of ``--repeat``) and their ratio.
At 10^7 events/s and ``update_every`` 1, a chunk of 10^7 events comes every second: the
incremental write must take well under a second whatever has accumulated, for the file to stay
within 2 x ``update_every`` of the accumulation. Memory: about 3 x 12 bytes per accumulated
event (the accumulation's buffer with spare room); ``--total 1e8`` needs about 4 GB.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from livereduce.config import AccumulationMethod
from livereduce.worker.engine.accumulation import Accumulation
from livereduce.worker.listeners.base import make_events
from livereduce.worker.outputs.result import OutputWriter

T0 = 1_700_000_000 * 10**9
PULSE_HZ = 60


def chunk(rng: np.random.Generator, first_pulse: int, events: int, per_pulse: int):
    pulses = max(1, events // per_pulse)
    counts = np.full(pulses, events // pulses)
    counts[: events % pulses] += 1
    return make_events(
        T0 + np.arange(first_pulse, first_pulse + pulses) * 16_666_667,
        counts,
        rng.integers(0, 100_000, events, dtype=np.int32),
        (rng.integers(0, 166_667, events) / 10).astype(np.float32),
    ), pulses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total", type=float, default=5e7, help="events accumulated at the end")
    parser.add_argument("--chunk", type=float, default=1e7, help="events per chunk")
    parser.add_argument("--rate", type=float, default=1e7, help="events/s (pulse size)")
    parser.add_argument("--repeat", type=int, default=3, help="timings per write (median)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    per_pulse = max(1, int(args.rate // PULSE_HZ))
    accumulation = Accumulation()
    pulse = 0
    version = 0
    print(f"{'accumulated':>12} {'whole s':>8} {'append s':>9} {'ratio':>6}")
    with tempfile.TemporaryDirectory(prefix="livereduce-bench-") as folder:
        whole_path = Path(folder) / "whole.h5"
        writer = OutputWriter(Path(folder), "result")
        writer.output_grows = True
        while accumulation.empty or _events(accumulation) < args.total:
            data, pulses = chunk(rng, pulse, int(args.chunk), per_pulse)
            pulse += pulses
            accumulation.accumulate(AccumulationMethod.ADD, data)
            output = accumulation.value()
            whole, append = [], []
            for _ in range(args.repeat):
                began = time.perf_counter()
                output.save_hdf5(whole_path)
                whole.append(time.perf_counter() - began)
            # the incremental write of this step; further repeats time the same append to
            # the other working file (each file lags one write behind), so keep the first
            version += 1
            began = time.perf_counter()
            writer.write(output, version, force=True)
            append.append(time.perf_counter() - began)
            if writer.failure:
                raise SystemExit(writer.failure)
            whole_s, append_s = statistics.median(whole), statistics.median(append)
            mode = "appended" if writer.appended else "whole"
            print(
                f"{_events(accumulation):12.3e} {whole_s:8.3f} {append_s:9.3f} "
                f"{whole_s / append_s:5.1f}x  ({mode})"
            )
    return 0


def _events(accumulation: Accumulation) -> int:
    return int(accumulation.value().bins.size().sum().value)


if __name__ == "__main__":
    sys.exit(main())
