"""ADARA throughput: banked event decoding, and replay -> client end to end.

    python bench/adara_throughput.py [--repeat N] [--no-replay] [--replay-file FILE ...]
                                     [--replay-runs N]

Part 1, decoding. For banked event packets of realistic size (one packet per pulse at 60 Hz
for 10**6, 10**7 and 10**8 events/s, spread over 48 banks of one source section) it prints,
in events per second:

- ``ceiling``: ``numpy.frombuffer(packet, uint8).copy()``, a plain copy of the same bytes;
- ``decode``: ``packets.decode`` (header, sections and numpy views on the events);
- ``decode+flat``: ``decode`` then ``BankedEvent.event_arrays()`` (three flat uint32 arrays);
- ``parser+flat``: ``StreamParser.feed`` in 1 MiB pieces (it copies each payload out of its
  buffer) then ``event_arrays()``: what a client does per pulse;

and each one's ratio to the ceiling (goal: within 3x of it and over 5e7 events/s).

Allocator note: glibc gives the top of the heap back to the OS once more than twice the
dynamic mmap threshold is free there, so a loop that allocates and frees two pulse-sized
buffers (the parser's joined packet and the flat arrays) pays page faults on every pulse,
which the one-buffer ceiling does not. ``MALLOC_TRIM_THRESHOLD_=268435456
MALLOC_MMAP_THRESHOLD_=268435456`` in the environment removes that cost; the bench prints
which setting it ran under.

Part 2, end to end. ``livereduce-replay --speed 0 --loop`` (its own process) plays
real NeXus files (default: HYS_178921 looped, then all files of ../shared/data) to a
``livereduce.adara.client.AdaraClient``; it prints the events/s and bytes/s the client
received, beside the frombuffer-copy ceiling of the same bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from livereduce.adara import packets as pk
from livereduce.adara.parser import StreamParser

PULSE_HZ = 60
BANKS = 48
RATES = (10**6, 10**7, 10**8)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_pulse(events: int, rng: np.random.Generator) -> bytes:
    """One banked event v1 packet of ``events`` events spread evenly over BANKS banks."""
    per_bank = np.full(BANKS, events // BANKS)
    per_bank[: events % BANKS] += 1
    banks = tuple(
        pk.BankSection.from_arrays(
            bank,
            rng.integers(0, 166_667, n, dtype=np.uint32),
            rng.integers(bank * 65536, (bank + 1) * 65536, n, dtype=np.uint32),
        )
        for bank, n in enumerate(per_bank)
    )
    packet = pk.BankedEvent(
        timestamp_ns=1_700_000_000 * 10**9,
        pulse_charge_10pc=1_000_000,
        sources=(pk.SourceSection(source_id=1, banks=banks),),
    )
    return pk.encode(packet)


def best_time(function, repeat: int) -> float:
    """Median of ``repeat`` timings of ``function()`` in seconds (after one warm-up)."""
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def parse_in_pieces(data: bytes, piece: int = 1 << 20) -> None:
    parser = StreamParser()
    for start in range(0, len(data), piece):
        for packet in parser.feed(data[start : start + piece]):
            packet.event_arrays()
    parser.close()


def bench_decode(repeat: int) -> list[tuple[str, float, float]]:
    rng = np.random.default_rng(0)
    results = []
    trim = os.environ.get("MALLOC_TRIM_THRESHOLD_", "glibc default")
    print(f"Banked event decoding, one packet per pulse at {PULSE_HZ} Hz, {BANKS} banks")
    print(f"(MALLOC_TRIM_THRESHOLD_: {trim})")
    header = (
        f"{'rate':>8} {'events/pkt':>10} {'MB/pkt':>7}  {'path':<12} {'events/s':>10} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for rate in RATES:
        events = rate // PULSE_HZ
        data = make_pulse(events, rng)
        timings = {
            "ceiling": best_time(lambda d=data: np.frombuffer(d, np.uint8).copy(), repeat),
            "decode": best_time(lambda d=data: pk.decode(d), repeat),
            "decode+flat": best_time(lambda d=data: pk.decode(d).event_arrays(), repeat),
            "parser+flat": best_time(lambda d=data: parse_in_pieces(d), repeat),
        }
        ceiling = timings["ceiling"]
        for path, seconds in timings.items():
            ratio = seconds / ceiling
            print(
                f"{rate:8.0e} {events:10d} {len(data) / 1e6:7.2f}  {path:<12} "
                f"{events / seconds:10.3e} {ratio:5.2f}x"
            )
            results.append((f"{rate:.0e} {path}", events / seconds, ratio))
    return results


def wire_size(packet: pk.BankedEvent) -> int:
    """Bytes of ``packet`` on the wire, from its counts (no re-encoding in the timed loop)."""
    banks = sum(len(source.banks) for source in packet.sources)
    return 32 + 16 * len(packet.sources) + 8 * banks + 8 * packet.event_count


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL when it has not ended within 20 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def replay_process(files: list[Path], *, loop: bool = True):
    """``livereduce-replay FILE... --port 0 --speed 0 [--loop]`` in its own process; yields
    the port it listens on and stops it with SIGTERM."""
    command = shutil.which("livereduce-replay")
    argv = [command] if command else [sys.executable, "-m", "livereduce.adara.replay"]
    process = subprocess.Popen(
        [*argv, *map(str, files), "--port", "0", "--speed", "0", *(["--loop"] if loop else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=300):
                raise SystemExit("livereduce-replay did not start listening within 300 s")
        line = process.stdout.readline()
        if not line.startswith("listening on "):
            raise SystemExit(f"livereduce-replay said {line!r}")
        yield int(line.rsplit(":", 1)[1])
    finally:
        stop_process(process)


def bench_replay(files: list[Path], runs: int) -> None:
    """End-to-end: livereduce-replay at speed 0 -> AdaraClient, until ``runs`` END_RUNs."""
    from livereduce.adara.client import AdaraClient  # noqa: PLC0415 - optional part

    names = ", ".join(f.name for f in files)
    print(f"\nlivereduce-replay --speed 0 -> AdaraClient: {names}; {runs} run(s)")
    events = 0
    event_bytes = 0
    packets = 0
    ends = 0
    with replay_process(files) as port:
        client = AdaraClient("127.0.0.1", port, start_time_ns=pk.START_OF_RUN, connect_timeout_s=10)
        with client:  # connects and sends the hello
            start = time.perf_counter()
            while ends < runs:
                packet = client.get(timeout_s=60)
                if packet is None:
                    raise SystemExit("no packet from the replay server within 60 s")
                packets += 1
                if isinstance(packet, pk.BankedEvent):
                    events += packet.event_count
                    event_bytes += wire_size(packet)
                elif isinstance(packet, pk.RunStatus) and packet.status == pk.RunStatusCode.END_RUN:
                    ends += 1
            seconds = time.perf_counter() - start
    same_bytes = bytes(event_bytes)
    ceiling = best_time(lambda: np.frombuffer(same_bytes, np.uint8).copy(), 5)
    print(f"{'path':<16} {'events/s':>10} {'packets/s':>10} {'MB/s':>8} {'ratio':>7}")
    print(
        f"{'replay->client':<16} {events / seconds:10.3e} {packets / seconds:10.3e} "
        f"{event_bytes / seconds / 1e6:8.1f} {seconds / ceiling:6.0f}x"
    )
    print(f"{'ceiling':<16} {events / ceiling:10.3e} {'':>10} {event_bytes / ceiling / 1e6:8.1f}")
    print(
        f"({events} events in {packets} packets, {event_bytes / 1e6:.2f} MB of banked event "
        f"packets, {seconds:.2f} s; the ceiling copies the same number of bytes once)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timings per measurement")
    parser.add_argument("--no-replay", action="store_true", help="decode figures only")
    parser.add_argument("--replay-file", type=Path, action="append", help="NeXus event file")
    parser.add_argument("--replay-runs", type=int, default=3, help="runs to receive")
    args = parser.parse_args(argv)
    bench_decode(args.repeat)
    if args.no_replay:
        return 0
    try:
        import livereduce.adara.client  # noqa: PLC0415
        import livereduce.adara.replay  # noqa: F401, PLC0415
    except ImportError as error:
        print(f"\nreplay -> client skipped: {error}")
        return 0
    if args.replay_file:
        bench_replay(args.replay_file, args.replay_runs)
    elif (DATA / "HYS_178921.nxs.h5").is_file():
        bench_replay([DATA / "HYS_178921.nxs.h5"], args.replay_runs)
        bench_replay(sorted(DATA.glob("*.nxs.h5")), len(sorted(DATA.glob("*.nxs.h5"))))
    else:
        print(f"\nreplay -> client skipped: no data in {DATA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
