"""Throughput of the embedded engine on the fake listener, and its behaviour on long runs.

Part 1, throughput: the engine runs a histogram processing script (time of flight, 1000 bins,
preserve_events false, Add) on fake chunks of ``rate x update_every`` events at increasing
rates. A rate is sustained when every chunk is processed within ``update_every`` (the loop is
start-to-start, so a slower chunk delays the next one and the backlog grows). Printed beside
it: the same histogram done directly in scipp on the same events (the ceiling).

Part 2, long runs: preserve_events true, Add, ``output = input``: the time to extract, process
and accumulate a chunk at the start and after 1e8 accumulated events, and the time to write the
output file then.

The data clock is simulated (each chunk holds exactly ``update_every`` seconds of events); the
times are wall-clock. Memory first touched in this process is slow on some VMs, so each part
warms up before it measures. Run: ``python bench/engine_throughput.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import scipp as sc

from livereduce.config import StartFrom, config_from_mapping
from livereduce.worker.engine.embedded import EmbeddedEngine
from livereduce.worker.listeners.fake import FakeListener
from livereduce.worker.outputs.result import WRITE_SHARE

UPDATE_EVERY_S = 1.0
CHUNKS = 8
"""Chunks measured per rate: enough to see a backlog build up."""
HIST_SCRIPT = """
import scipp as sc
edges = sc.linspace("event_time_offset", 0.0, 16667.0, 1001, unit="us")
output = input.hist(event_time_offset=edges).sum("event_time_zero")
"""
EDGES = sc.linspace("event_time_offset", 0.0, 16667.0, 1001, unit="us")


class DataClock:
    """Unix ns that advance only when told: each chunk holds exactly one update interval."""

    def __init__(self) -> None:
        self.now_ns = 1_700_000_000 * 10**9

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * 1e9)


def make_engine(
    folder: Path, proc: str, *, rate: float, preserve_events: bool
) -> tuple[EmbeddedEngine, DataClock]:
    (folder / "reduce_FAKE_live_proc.py").write_text(proc)
    raw = {
        "instrument": "FAKE",
        "listener": "fake",
        "engine": "embedded",
        "script_dir": str(folder),
        "output_dir": str(folder / "out"),
        "update_every": UPDATE_EVERY_S,
        "preserve_events": preserve_events,
        "accum_method": "Add",
    }
    config = config_from_mapping(raw, None, check_scripts=False)
    clock = DataClock()
    listener = FakeListener(event_rate=rate, pixel_count=100_000, clock_ns=clock)
    engine = EmbeddedEngine(config, listener)
    listener.start(StartFrom.START_OF_RUN)
    return engine, clock


def timed_steps(
    engine: EmbeddedEngine, clock: DataClock, count: int
) -> list[tuple[float, float, int]]:
    """(wall seconds, seconds without the listener's extraction, events) of ``count`` steps,
    each on one update interval of data."""
    results = []
    for _ in range(count):
        clock.advance(UPDATE_EVERY_S)
        began = time.perf_counter()
        outcome = engine.step()
        seconds = time.perf_counter() - began
        results.append((seconds, seconds - outcome.extract_s, outcome.events))
    return results


def ceiling(rate: float, repeats: int = 3) -> float:
    """Events/s of the histogram alone, in scipp, on fake chunks of the same size."""
    clock = DataClock()
    listener = FakeListener(event_rate=rate, pixel_count=100_000, clock_ns=clock)
    listener.start(StartFrom.START_OF_RUN)
    rates = []
    for _ in range(repeats + 1):
        clock.advance(UPDATE_EVERY_S)
        chunk = listener.extract_data()
        began = time.perf_counter()
        chunk.events.hist(event_time_offset=EDGES).sum("event_time_zero")
        rates.append(chunk.event_count / (time.perf_counter() - began))
    return statistics.median(rates[1:])


def throughput(rates: list[float], folder: Path) -> None:
    print(
        f"Part 1: histogram processing script, update_every {UPDATE_EVERY_S:g} s, "
        f"Add, preserve_events false "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    print(
        f"{'rate':>8} {'median chunk':>13} {'worst chunk':>12} {'busy':>5} "
        f"{'engine':>9} {'engine w/o listener':>20} {'ceiling':>9} {'sustained':>9}"
    )
    best = 0.0
    warm, warm_clock = make_engine(folder, HIST_SCRIPT, rate=max(rates), preserve_events=False)
    timed_steps(warm, warm_clock, 3)
    del warm
    for rate in rates:
        engine, clock = make_engine(folder, HIST_SCRIPT, rate=rate, preserve_events=False)
        steps = timed_steps(engine, clock, CHUNKS + 1)[1:]  # the first chunk compiles the script
        seconds = [s for s, _, _ in steps]
        events = sum(n for _, _, n in steps)
        busy = sum(seconds) / (len(steps) * UPDATE_EVERY_S)
        # No growing backlog: over the window the loop spends less time than the data took.
        sustained = busy < 1.0
        if sustained:
            best = rate
        print(
            f"{rate:8.3g} {statistics.median(seconds):12.3f}s {max(seconds):11.3f}s {busy:5.2f} "
            f"{events / sum(seconds):9.3g} {events / sum(s for _, s, _ in steps):20.3g} "
            f"{ceiling(rate):9.3g} {'yes' if sustained else 'no':>9}"
        )
    print(
        "rates in events/s; 'engine' includes the fake listener making the events, the ceiling is"
    )
    print("the histogram alone in scipp on chunks of the same size")
    print(f"highest sustained rate: {best:.3g} events/s")


def long_run(rate: float, total: float, folder: Path) -> None:
    print(
        f"\nPart 2: preserve_events true, Add, output = input, {rate:.3g} events per chunk "
        f"(load average {os.getloadavg()[0]:.1f})"
    )
    engine, clock = make_engine(folder, "output = input\n", rate=rate, preserve_events=True)
    works: list[float] = []
    accumulated = 0
    while accumulated < total + 3 * rate:
        clock.advance(UPDATE_EVERY_S)
        outcome = engine.step()
        accumulated += outcome.events
        works.append(outcome.extract_s + outcome.process_s + outcome.accumulate_s)
    # Medians of three: a buffer doubling (amortised O(1) per event) lands on single chunks.
    start, end = statistics.median(works[:3]), statistics.median(works[-3:])
    print(f"extract + process + accumulate per chunk, first 3 chunks (median): {start:.3f} s")
    print(
        f"extract + process + accumulate per chunk, after {accumulated - 3 * rate:.3g} events "
        f"(median of 3): {end:.3f} s"
    )
    print(f"ratio: {end / start:.2f}; every chunk: {' '.join(f'{w:.2f}' for w in works)}")
    began = time.perf_counter()
    value = engine.accumulation.value()
    materialize = time.perf_counter() - began
    began = time.perf_counter()
    engine.writer.write(value, object(), force=True)
    write = time.perf_counter() - began
    size = engine.writer.path.stat().st_size
    print(
        f"reading the accumulation ({value.bins.size().sum().value:.3g} events): "
        f"{materialize:.3f} s"
    )
    print(
        f"writing the output file ({size / 1e9:.2f} GB): {write:.2f} s; unforced writes wait "
        f"{write / WRITE_SHARE:.1f} s after it began, so writing takes at most "
        f"{WRITE_SHARE:.0%} of the time"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer rates and 2e7 instead of 1e8 events"
    )
    args = parser.parse_args()
    rates = [1e7, 2e7, 4e7] if args.quick else [5e6, 1e7, 2e7, 4e7, 6e7, 8e7, 1.2e8, 1.6e8]
    with tempfile.TemporaryDirectory() as tmp:
        throughput(rates, Path(tmp))
    with tempfile.TemporaryDirectory() as tmp:
        long_run(1e7, 2e7 if args.quick else 1e8, Path(tmp))


if __name__ == "__main__":
    main()
