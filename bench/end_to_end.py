"""End to end: livereduce-replay -> socket -> daemon (adara listener, embedded engine) -> result
file, on a generated high-rate run, beside its ceilings measured in the same run.

    python bench/end_to_end.py [--events 2e7] [--rate 1e7] [--repeat 3] [--preserve-events]

The run has HYS_178921's layout (its metadata and logs, 20 banks of 1024 pixels) with
``--events`` synthetic events at ``--rate`` events/s (one banked event packet per 60 Hz pulse:
1.67x10^5 events per packet at 10^7 events/s). Every figure is the median of ``--repeat`` runs.

Ceilings, measured in this process on the same bytes and events:

- ``memcpy``: one copy of the run's ADARA stream bytes;
- ``bare socket``: livereduce-replay --speed 0 to a client that only receives the bytes;
- ``scipp histogram``: the processing script's histogram of all the run's events at once, in
  one process (the events already in memory as one chunk).

Stages:

- ``parse``: StreamParser fed 64 KiB pieces as a socket delivers them, the events gathered into
  the listener's buffers (:class:`~livereduce.worker.listeners.pulse_events.PulseEvents`);
- ``chunk``: the buffers made into the chunk's scipp events (which completes the conversion:
  times of flight divided by 10, counts set to one, both left for the engine's thread);
- ``parse + chunk``: the two, from the bytes to the finished flat event arrays, and the ratio
  to ``memcpy`` (goal: at most 3x);
- from the daemon's ``run_stages`` log line: extract (chunk), processing script,
  accumulate, post-processing and write, summed over the run's chunks.

End to end: from the worker's "connected to the SMS" log line to its ``run_ended`` line (the
result file of the whole run is written just before it), in events/s, and its ratio to the
scipp histogram (goal: at least 0.5, and at least 5x10^7 events/s; with ``--preserve-events``
and ``output = input``: at least 3x10^7 events/s). The result file is checked to hold every
event.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import scipp as sc

from adara_throughput import replay_process, stop_process
from livereduce.adara import packets as pk
from livereduce.adara.parser import StreamParser
from livereduce.adara.playlist import build_run_stream
from livereduce.adara.runfile import read_run_file
from livereduce.worker.listeners.pulse_events import PulseEvents

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TEMPLATE = DATA / "HYS_178921.nxs.h5"
PULSE_HZ = 60
BANKS = 20
PIXELS_PER_BANK = 1024
TOF_MAX_100NS = 166_667
"""One 60 Hz frame in 100 ns units."""
PIECE = 64 * 1024
EDGES = "sc.linspace('event_time_offset', 0.0, 16666.7, 1001, unit='us')"
HIST_SCRIPT = f"output = input.hist(event_time_offset={EDGES}).sum('event_time_zero')\n"
"""The processing script: a time-of-flight histogram of the chunk (fixed edges, so chunks add)."""
EVENTS_SCRIPT = "output = input\n"


def generate_run(path: Path, events: int, rate: float, seed: int = 0) -> None:
    """Write a run with TEMPLATE's metadata and logs and ``events`` uniformly spread events
    (pixels of 20 banks, tof over one frame) at ``rate`` events/s in 60 Hz pulses."""
    rng = np.random.default_rng(seed)
    per_pulse = max(1, round(rate / PULSE_HZ))
    pulses = -(-events // per_pulse)
    per_bank = np.full(BANKS, events // BANKS)
    per_bank[: events % BANKS] += 1
    with h5py.File(TEMPLATE, "r") as src, h5py.File(path, "w") as dst:
        entry = dst.create_group("entry")
        for key, value in src["entry"].attrs.items():
            entry.attrs[key] = value
        for name in src["entry"]:
            if not re.fullmatch(r"bank\d+_events|monitor\d+|DASlogs", name):
                src.copy(src["entry"][name], entry, name)
        zero_attrs = dict(src["entry/bank1_events/event_time_zero"].attrs)
        pulse_s = np.arange(pulses, dtype=np.float64) / PULSE_HZ
        _copy_logs(src["entry/DASlogs"], entry.create_group("DASlogs"), pulse_s)
        for bank in range(1, BANKS + 1):
            n = int(per_bank[bank - 1])
            group = entry.create_group(f"bank{bank}_events")
            group.attrs["NX_class"] = "NXevent_data"
            low = (bank - 1) * PIXELS_PER_BANK
            group["event_id"] = rng.integers(low, low + PIXELS_PER_BANK, n, dtype=np.uint32)
            tof = rng.integers(0, TOF_MAX_100NS, n, dtype=np.uint32)
            group["event_time_offset"] = (tof.astype(np.float64) / 10).astype(np.float32)
            group["event_time_offset"].attrs["units"] = "microsecond"
            zero = group.create_dataset("event_time_zero", data=pulse_s)
            for key, value in zero_attrs.items():
                zero.attrs[key] = value
            # events of the bank spread evenly over the pulses
            group["event_index"] = (np.arange(pulses, dtype=np.int64) * n) // pulses


def _copy_logs(src: h5py.Group, dst: h5py.Group, pulse_s: np.ndarray) -> None:
    """The template's logs cut to the generated run's duration (a PV's first value kept), as
    the DAS would have logged them in a run that short; proton_charge one value per pulse."""
    for key, value in src.attrs.items():
        dst.attrs[key] = value
    for name, group in src.items():
        if name == "proton_charge" or not isinstance(group, h5py.Group) or "time" not in group:
            continue
        out = dst.create_group(name)
        for key, value in group.attrs.items():
            out.attrs[key] = value
        keep = max(1, int(np.count_nonzero(group["time"][()] <= pulse_s[-1])))
        for item, dataset in group.items():
            if item in ("time", "value") and isinstance(dataset, h5py.Dataset):
                copy = out.create_dataset(item, data=dataset[:keep])
                for key, value in dataset.attrs.items():
                    copy.attrs[key] = value
            else:
                group.copy(dataset, out, item)
    charge = dst.create_group("proton_charge")
    for key, value in src["proton_charge"].attrs.items():
        charge.attrs[key] = value
    time_ds = charge.create_dataset("time", data=pulse_s)
    for key, value in src["proton_charge/time"].attrs.items():
        time_ds.attrs[key] = value
    charge.create_dataset("value", data=np.full(len(pulse_s), 1.0e7))


def median(values: list[float]) -> float:
    return statistics.median(values)


def _met(met: bool) -> str:
    return "met" if met else "NOT met"


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{value:.1f}" for value in load)


def stream_bytes(path: Path) -> tuple[bytes, int]:
    """The run's ADARA stream as one client starting with the run gets it, and its events."""
    run = read_run_file(path)
    stream = build_run_stream(run)
    return b"".join([*stream.prologue, *stream.items]), run.detector_event_count


def parse_and_gather(pieces: list[bytes], capacity: int) -> tuple[PulseEvents, float]:
    """What the listener's threads do with the bytes: the parser fed ``pieces`` (64 KiB, as a
    socket delivers them), each banked event packet's real banks decoded into PulseEvents (room
    for ``capacity`` events, as the listener gives it its buffer bound). Returns the buffer and
    the seconds taken."""
    began = time.perf_counter()
    parser = StreamParser()
    events = PulseEvents(capacity)
    for piece in pieces:
        for packet in parser.feed(piece):
            if isinstance(packet, pk.BankedEvent):
                events.add_banked(packet)
    parser.close()
    return events, time.perf_counter() - began


def bare_socket(path: Path, total_bytes: int) -> float:
    """Seconds for livereduce-replay to send the run to a client that only receives."""
    with (
        replay_process([path], loop=False) as port,
        socket.create_connection(("127.0.0.1", port)) as sock,
    ):
        hello = pk.ClientHello(
            timestamp_ns=time.time_ns(), start_time_ns=pk.START_OF_RUN, version=0
        )
        buffer = bytearray(1 << 20)
        sock.sendall(pk.encode(hello))
        began = time.perf_counter()
        received = 0
        while received < total_bytes:
            n = sock.recv_into(buffer)
            if not n:
                raise SystemExit("the replay closed the connection early")
            received += n
        return time.perf_counter() - began


_LINE_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
_STAGES = re.compile(
    r"run_stages: run \d+: (\d+) chunks, (\d+) events; extract ([\d.]+) s, processing "
    r"script ([\d.]+) s, accumulate ([\d.]+) s, post-processing ([\d.]+) s, write ([\d.]+) s"
)


def _line_time(line: str) -> float:
    match = _LINE_TIME.match(line)
    if not match:
        raise ValueError(f"no time in log line {line!r}")
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def daemon_run(
    path: Path, folder: Path, events: int, preserve_events: bool, buffer_bytes: int
) -> dict:
    """The daemon fed by livereduce-replay until the run ended; returns seconds, stages and
    the events found in the result file."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    script = EVENTS_SCRIPT if preserve_events else HIST_SCRIPT
    (folder / "reduce_HYS_live_proc.py").write_text("import scipp as sc\n" + script)
    out = folder / "out"
    log_path = out / "livereduce.log"
    with replay_process([path], loop=False) as port:
        config = {
            "instrument": "HYSPEC",
            "listener": "adara",
            "address": f"127.0.0.1:{port}",
            "engine": "embedded",
            "script_dir": ".",
            "update_every": 1,
            "preserve_events": preserve_events,
            "run_transition": "Stop",
            "listener_options": {"buffer_bytes": buffer_bytes},
            "output_dir": "out",
            "status_file": "out/status.json",
            "log_file": "out/livereduce.log",
        }
        (folder / "livereduce.conf").write_text(json.dumps(config))
        with (folder / "stderr.txt").open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, str(REPO / "scripts" / "livereduce.py"), "livereduce.conf"],
                cwd=folder,
                stdout=stderr,
                stderr=stderr,
            )
            try:
                deadline = time.monotonic() + 600
                while "run_ended:" not in (log_path.read_text() if log_path.exists() else ""):
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"the daemon did not finish the run; see {folder}")
                    time.sleep(0.2)
            finally:
                stop_process(process)
    lines = log_path.read_text().splitlines()
    began = next(_line_time(x) for x in lines if "connected to the SMS at" in x)
    ended = next(_line_time(x) for x in lines if "run_ended:" in x)
    match = next(m for m in map(_STAGES.search, lines) if m)
    names = ("chunks", "events", "extract", "script", "accumulate", "post", "write")
    stages = dict(zip(names, map(float, match.groups()), strict=True))
    result = sc.io.load_hdf5(out / "result.h5")
    found = (
        int(result.bins.size().sum().value)
        if result.bins is not None
        else round(float(result.sum().value))
    )
    if found != events:
        raise SystemExit(f"the result holds {found} events of {events}; see {folder}")
    return {"seconds": ended - began, **stages}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=float, default=2e7, help="events in the run")
    parser.add_argument("--rate", type=float, default=1e7, help="events/s of the run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--preserve-events", action="store_true", help="output = input, events")
    parser.add_argument(
        "--buffer-bytes",
        type=float,
        default=256e6,
        help="the daemon's listener_options.buffer_bytes (chunks of an eighth of it)",
    )
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary)")
    args = parser.parse_args(argv)
    if not TEMPLATE.is_file():
        print(f"skipped: {TEMPLATE} is missing")
        return 0
    events = int(args.events)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="livereduce-bench-") as temporary:
        work = args.keep or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        run_path = work / "HYS_high_rate.nxs.h5"
        generate_run(run_path, events, args.rate)
        data, file_events = stream_bytes(run_path)
        assert file_events == events
        pieces = [data[start : start + PIECE] for start in range(0, len(data), PIECE)]
        edges = eval(EDGES, {"sc": sc})
        figures: dict[str, list[float]] = defaultdict(list)
        stage_runs: list[dict] = []
        for attempt in range(args.repeat):
            began = time.perf_counter()
            np.frombuffer(data, np.uint8).copy()
            figures["memcpy"].append(time.perf_counter() - began)
            buffer, seconds = parse_and_gather(pieces, events)
            figures["parse"].append(seconds)
            began = time.perf_counter()
            chunk = buffer.to_events()
            figures["chunk"].append(time.perf_counter() - began)
            figures["parse + chunk"].append(figures["parse"][-1] + figures["chunk"][-1])
            del buffer
            began = time.perf_counter()
            chunk.hist(event_time_offset=edges).sum("event_time_zero")
            figures["scipp histogram"].append(time.perf_counter() - began)
            del chunk
            figures["bare socket"].append(bare_socket(run_path, len(data)))
            stage_runs.append(
                daemon_run(
                    run_path,
                    work / f"daemon{attempt}",
                    events,
                    args.preserve_events,
                    int(args.buffer_bytes),
                )
            )
            figures["end to end"].append(stage_runs[-1]["seconds"])
    mode = "preserve_events, output = input" if args.preserve_events else "histogram script"
    print(
        f"{events:.2e} events at {args.rate:.1e} events/s ({len(data) / 1e6:.0f} MB of ADARA), "
        f"{mode}, update_every 1, buffer_bytes {args.buffer_bytes:.3g}; median of "
        f"{args.repeat}; cpus {os.cpu_count()}; load average (1, 5, 15 min) before "
        f"{_load(load_before)}, after {_load(os.getloadavg())}"
    )
    print(f"{'figure':<18} {'seconds':>8} {'events/s':>10}  ratio")
    med = {name: median(values) for name, values in figures.items()}
    names = ("memcpy", "bare socket", "scipp histogram", "parse", "chunk", "parse + chunk")
    rate = events / med["end to end"]
    of_scipp = med["scipp histogram"] / med["end to end"]
    for name in (*names, "end to end"):
        ratio = ""
        if name == "parse + chunk":
            times = med[name] / med["memcpy"]
            ratio = f"{times:.2f}x memcpy (goal <= 3: {_met(times <= 3)})"
        elif name == "end to end" and args.preserve_events:
            ratio = f"{of_scipp:.2f} of scipp histogram (goal 3e7 events/s: {_met(rate >= 3e7)})"
        elif name == "end to end":
            ratio = (
                f"{of_scipp:.2f} of scipp histogram (goal 0.5: {_met(of_scipp >= 0.5)}), "
                f"{med['bare socket'] / med['end to end']:.2f} of bare socket "
                f"(goal 5e7 events/s: {_met(rate >= 5e7)})"
            )
        print(f"{name:<18} {med[name]:8.3f} {events / med[name]:10.3e}  {ratio}")
    print("daemon stages (summed over the run's chunks, median of the runs):")
    for name in ("chunks", "extract", "script", "accumulate", "post", "write"):
        print(f"  {name:<12} {median([run[name] for run in stage_runs]):8.3f}")
    print("raw:", json.dumps({k: [round(x, 3) for x in v] for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
