"""The memory guard against a process that allocates 1 GB/s: its peak and the cost of a check.

    python bench/memory_guard.py [--limits-mib 400 1000] [--interval-s 0.1] [--rate-gb-s 1.0]

For each limit it starts a child that allocates ``rate`` (100 MB per 0.1 s at 1 GB/s, every page
touched), runs :class:`livereduce.supervisor.memory.MemoryGuard` every ``interval`` as the
supervisor does, SIGKILLs the child at the first overrun (as the supervisor does), and prints the
child's peak resident memory as the kernel measured it (``wait4`` ``ru_maxrss``) against the
ceiling of issue 15: ``peak / limit`` must stay at or below 1.3. It also prints the time one
check takes here (the supervisor pays it every ``mem_check_interval_sec``), with the number of
processes on the machine (listing a worker's descendants walks all of them).

Keep the limits under 3 GB on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from livereduce.supervisor.memory import MemoryGuard, memory_limit

CEILING = 1.3
"""Issue 15: a script allocating 1 GB/s peaks at no more than 1.3x the limit."""

HOG = """
import sys, time
step = int(float(sys.argv[1]) * 1e8)  # bytes per 0.1 s
held = []
print("ready", flush=True)
while True:
    held.append(bytearray(step))
    time.sleep(0.1)
"""


def peak_ratio(limit_mib: int, interval_s: float, rate_gb_s: float) -> tuple[float, float]:
    """(peak RSS / limit, seconds until the kill) for one hog against ``limit_mib``."""
    physical = memory_limit(100).base_bytes
    guard = MemoryGuard(100 * limit_mib * 2**20 / physical, interval_s)
    hog = subprocess.Popen(
        [sys.executable, "-c", HOG, str(rate_gb_s)], stdout=subprocess.PIPE, text=True
    )
    assert hog.stdout is not None
    hog.stdout.readline()
    started = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            if guard.check(hog.pid, now) is not None:
                os.kill(hog.pid, signal.SIGKILL)
                break
            time.sleep(max(guard.next_check_s - time.monotonic(), 0.0))
            if now - started > 60:
                raise RuntimeError("the guard never fired")
    finally:
        if hog.poll() is None:
            hog.kill()
    _, _, usage = os.wait4(hog.pid, 0)
    hog.returncode = -signal.SIGKILL
    hog.stdout.close()
    return usage.ru_maxrss * 1024 / (limit_mib * 2**20), time.monotonic() - started


def check_cost_s(interval_s: float, repeat: int = 200) -> float:
    """Mean seconds of one MemoryGuard.check of this process."""
    guard = MemoryGuard(90, interval_s)
    began = time.perf_counter()
    for n in range(repeat):
        guard.check(os.getpid(), n * interval_s)
    return (time.perf_counter() - began) / repeat


def main() -> None:
    """Print one line per limit and the cost of a check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limits-mib", type=int, nargs="+", default=[400, 1000])
    parser.add_argument("--interval-s", type=float, default=0.1)
    parser.add_argument("--rate-gb-s", type=float, default=1.0)
    args = parser.parse_args()
    for limit in args.limits_mib:
        ratio, took = peak_ratio(limit, args.interval_s, args.rate_gb_s)
        verdict = "ok" if ratio <= CEILING else "OVER"
        print(
            f"limit {limit} MiB, {args.rate_gb_s:g} GB/s, checks every {args.interval_s:g} s: "
            f"peak/limit {ratio:.3f} (ceiling {CEILING}) {verdict}, killed after {took:.2f} s"
        )
    processes = sum(1 for name in os.listdir("/proc") if name.isdigit())
    cost = check_cost_s(args.interval_s)
    print(
        f"one check: {cost * 1e3:.2f} ms with {processes} processes on the machine, "
        f"{cost / args.interval_s:.2%} of a core at one check every {args.interval_s:g} s"
    )


if __name__ == "__main__":
    main()
