"""The result file as events accumulate to 10^8: how far ``result.h5`` lags behind the
accumulation, what an incremental write costs, and the peak transient memory against what is
kept.

    python bench/result_write.py [--total 1e8] [--chunk 1e7] [--rate 1e7] [--repeat 3]

The engine's loop (accumulate with Add, write through the engine's OutputWriter with its
rate limit) runs on chunks of ``--chunk`` events in the raw layout (60 Hz pulses) taken every
``update_every = chunk / rate`` seconds (start to start, as the engine: a slow step delays the
next one). Time is the real time of the work, with the idle waits between steps skipped (and
the time spent generating each chunk, the listener's work, left out).

Printed per step (from the last repeat): accumulated events, seconds to accumulate and to
write, appended, whole or deferred (by the rate limit: then written when the budget allows,
as the engine's loop does), and how far the file was behind just before the write landed.
Behind: at any moment, the time since the newest chunk the file holds was taken; largest just
before a write lands. Goal (issue 11): never more than 2 x update_every at 10^8
accumulated events.

Then, median of ``--repeat`` runs: the largest lag over the run and the lag and incremental
write at the end, the ceiling of one whole rewrite of the final accumulation (scipp's
``save_hdf5``, what every write cost before), and memory: the process's peak resident memory
while accumulating and writing (sampled every 5 ms) less its resident memory before the first
chunk, against the bytes of events kept (goal: at most 1.5x). Memory: about 2.2 GB at 10^8
events of int32 + float32 + float32; disk: 3x1.2 GB in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from livereduce.config import AccumulationMethod
from livereduce.worker.engine.accumulation import Accumulation
from livereduce.worker.listeners.base import make_events
from livereduce.worker.outputs.result import OutputWriter

T0 = 1_700_000_000 * 10**9
PULSE_HZ = 60
PULSE_NS = 16_666_667
EVENT_BYTES = 4 + 4 + 4
"""event_id int32, event_time_offset float32, weight float32."""


def chunk(rng: np.random.Generator, first_pulse: int, events: int, per_pulse: int):
    pulses = max(1, events // per_pulse)
    counts = np.full(pulses, events // pulses)
    counts[: events % pulses] += 1
    return make_events(
        T0 + np.arange(first_pulse, first_pulse + pulses) * PULSE_NS,
        counts,
        rng.integers(0, 100_000, events, dtype=np.int32),
        rng.integers(0, 166_667, events, dtype=np.int32).astype(np.float32) / np.float32(10),
    ), pulses


class SkippingClock:
    """Monotonic seconds of work: real time, less the periods :meth:`skip` and :meth:`pause`
    leave out."""

    def __init__(self) -> None:
        self._left_out = 0.0
        self._paused_at: float | None = None

    def __call__(self) -> float:
        return time.perf_counter() - self._left_out

    def skip_to(self, when: float) -> None:
        """Idle until ``when`` (at once)."""
        self._left_out -= max(0.0, when - self())

    def pause(self) -> None:
        self._paused_at = time.perf_counter()

    def resume(self) -> None:
        assert self._paused_at is not None
        self._left_out += time.perf_counter() - self._paused_at
        self._paused_at = None


class PeakRss:
    """Samples this process's resident memory every 5 ms in a thread; ``peak`` in bytes."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def live_run(args: argparse.Namespace, folder: Path, *, verbose: bool) -> dict[str, float]:
    """One run of the engine's accumulate-and-write loop up to ``args.total`` events."""
    rng = np.random.default_rng(0)
    per_pulse = max(1, int(args.rate // PULSE_HZ))
    update_every = args.chunk / args.rate
    clock = SkippingClock()
    writer = OutputWriter(folder, "result", clock=clock)
    writer.output_grows = True
    accumulation = Accumulation()
    taken: list[float] = []
    """When each chunk (version) was taken."""
    in_file = None
    """Version the file holds (index into ``taken``)."""
    worst_behind = last_write = last_behind = 0.0
    pulse = events = 0
    output = None
    start = clock()
    baseline = psutil.Process().memory_info().rss
    if verbose:
        print(f"{'accumulated':>12} {'accum s':>8} {'write s':>8} {'how':>9} {'behind s':>9}")
    with PeakRss() as rss:
        next_step = start
        while events < args.total or (writer.pending and hasattr(writer, "due_in")):
            # (an OutputWriter without due_in, before issue 11's fix, writes only with chunks)
            due_in = writer.due_in() if hasattr(writer, "due_in") else None
            due = clock() + due_in if due_in is not None else None
            if due is not None and (due <= next_step or events >= args.total):
                # the engine's loop writes a deferred output as soon as the budget allows
                clock.skip_to(due)
                accumulated = clock()
                wrote = writer.write(output, len(taken) - 1)
                what = "(deferred)"
            else:
                clock.skip_to(next_step)
                clock.pause()
                data, pulses = chunk(rng, pulse, int(args.chunk), per_pulse)
                clock.resume()
                began = clock()
                next_step = began + update_every
                taken.append(began)
                pulse += pulses
                events += data.bins.size().sum().value
                accumulation.accumulate(AccumulationMethod.ADD, data)
                del data
                output = accumulation.value()
                accumulated = clock()
                wrote = writer.write(output, len(taken) - 1)
                what = f"{events:12.3e} {accumulated - began:8.3f}"
            written = clock()
            if writer.failure:
                raise SystemExit(writer.failure)
            if not wrote:
                if verbose:
                    print(f"{what:>21} {'':>8} {'deferred':>9}")
                continue
            # just before this write landed, the file held the chunk it held before
            behind = written - taken[in_file] if in_file is not None else float("nan")
            if in_file is not None:
                worst_behind = max(worst_behind, behind)
            in_file, last_write, last_behind = len(taken) - 1, written - accumulated, behind
            if verbose:
                how = "appended" if writer.appended else "whole"
                print(f"{what:>21} {last_write:8.3f} {how:>9} {behind:9.3f}")
        if writer.pending and in_file is not None:
            # a writer that writes only with chunks: behind until the next chunk at least
            last_behind = max(last_behind, next_step - taken[in_file])
            worst_behind = max(worst_behind, last_behind)
        writer.close()
        began = time.perf_counter()
        output.save_hdf5(folder / "whole.h5")
        whole = time.perf_counter() - began
    (folder / "whole.h5").unlink()
    return {
        "update_every": update_every,
        "behind": worst_behind,
        "behind at the end": last_behind,
        "last write": last_write,
        "whole": whole,
        "kept": int(events) * EVENT_BYTES,
        "growth": rss.peak - baseline,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total", type=float, default=1e8, help="events accumulated at the end")
    parser.add_argument("--chunk", type=float, default=1e7, help="events per chunk")
    parser.add_argument("--rate", type=float, default=1e7, help="events/s of the stream")
    parser.add_argument("--repeat", type=int, default=3, help="runs (median)")
    args = parser.parse_args(argv)
    runs = []
    for attempt in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="livereduce-bench-") as folder:
            runs.append(live_run(args, Path(folder), verbose=attempt == args.repeat - 1))
    med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    every = med["update_every"]
    print(
        f"{args.total:.2g} events in chunks of {args.chunk:.2g} at {args.rate:.2g} events/s "
        f"(update_every {every:g} s); median of {args.repeat}; cpus {os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"  behind at most {med['behind']:.3f} s = {med['behind'] / every:.2f} x update_every "
        f"over the run, {med['behind at the end'] / every:.2f} x at the last write (goal <= 2)"
    )
    print(
        f"  last incremental write {med['last write']:.3f} s; one whole rewrite of it "
        f"{med['whole']:.3f} s ({med['whole'] / max(med['last write'], 1e-9):.1f}x)"
    )
    print(
        f"  memory: kept {med['kept'] / 1e9:.2f} GB, peak resident growth "
        f"{med['growth'] / 1e9:.2f} GB = {med['growth'] / med['kept']:.2f}x kept "
        "(goal <= 1.5)"
    )
    print("raw:", [{k: round(v, 3) for k, v in run.items()} for run in runs])
    return 0


if __name__ == "__main__":
    sys.exit(main())
