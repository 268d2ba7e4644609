"""Cost of adding a chunk of events to a growing accumulation (events kept, joined along pulses).

The accumulation's event buffer is reserved once (address space only) so it grows without
moving what it holds; the old way doubled its capacity and copied everything at each step.
Both are measured in the same run on the same chunks: the slowest chunk against the median
chunk. With the reservation the slowest chunk stays near the median however many events are
held; with doubling, the chunk that triggers a copy costs time proportional to everything held.
Run: ``python bench/accumulation_growth.py [--events 3e7] [--chunk 1e6]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from livereduce.config import AccumulationMethod
from livereduce.worker.engine import accumulation
from livereduce.worker.listeners.base import make_events

PULSE_NS = 16_666_667


def chunks(total: int, size: int, pulses: int = 60):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100_000, size, dtype=np.int32)
    tof = rng.random(size, dtype=np.float32) * 16_000
    for i in range(total // size):
        times = (i * pulses + np.arange(pulses)) * PULSE_NS
        yield make_events(times, np.full(pulses, size // pulses), ids, tof)


def run(total: int, size: int) -> list[float]:
    held = accumulation.Accumulation()
    times = []
    for chunk in chunks(total, size):
        began = time.perf_counter()
        held.accumulate(AccumulationMethod.ADD, chunk)
        times.append(time.perf_counter() - began)
    assert held.value().bins.size().sum().value == (total // size) * (size // 60) * 60
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=float, default=3e7)
    parser.add_argument("--chunk", type=float, default=1e6)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    total, size = int(args.events), int(args.chunk) // 60 * 60
    run(2 * total, size)  # memory first touched is slow on some VMs: touch it once first
    results: dict[str, list[list[float]]] = {"reserved": [], "doubling": []}
    saved = accumulation.RESERVE_BYTES
    for _ in range(args.repeat):  # interleaved: the machine's noise hits both alike
        for name, runs in results.items():
            accumulation.RESERVE_BYTES = saved if name == "reserved" else 0
            try:
                runs.append(run(total, size))
            finally:
                accumulation.RESERVE_BYTES = saved
    print(f"{total:.2g} events in chunks of {size:.2g}, median of {args.repeat} runs")
    for name, runs in results.items():
        median = statistics.median(statistics.median(t) for t in runs)
        slowest = statistics.median(max(t) for t in runs)
        total_s = statistics.median(sum(t) for t in runs)
        print(
            f"  {name:9s} median chunk {median * 1e3:7.2f} ms  slowest {slowest * 1e3:7.2f} ms"
            f"  slowest/median {slowest / median:6.1f}  all chunks {total_s:6.2f} s"
        )


if __name__ == "__main__":
    main()
