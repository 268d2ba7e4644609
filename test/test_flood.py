"""A flood through the socket (issue 15 "Done when"): our own SMS sends banked events as fast as
the socket takes them for FLOOD_S seconds into the real daemon. The worker's peak resident
memory stays bounded (the listener's buffer is bounded and TCP pushes back on the SMS) and
every event sent is in the result file.

FLOOD_S is 30 s, the issue's figure: a shorter flood would not show that memory stays flat
over many chunks. This is the one test of this file and it is slow by design. The processing
script sleeps 0.5 s per chunk, so the engine falls behind the flood on any machine and the
back-pressure is what is tested (without it, on a loaded machine the engine may keep up).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import scipp as sc

from livereduce.adara import packets
from test_adara_client import T0, FakeSms, new_run
from test_e2e_replay import Daemon

pytestmark = pytest.mark.slow  # real daemons, brokers or servers: seconds each

FLOOD_S = 30.0
PEAK_RSS_LIMIT = 2 * 2**30
EVENTS_PER_PULSE = 100_000
TOF_BINS = 1000
RUN = 424242
PROC = f"""import scipp as sc
edges = sc.linspace("event_time_offset", 0.0, 16666.7, {TOF_BINS + 1}, unit="us")
output = input.hist(event_time_offset=edges).sum("event_time_zero")
"""
SLOW_PROC = f"""import time
time.sleep(0.5)  # an engine that falls behind whatever the machine: the flood outruns it
{PROC}"""


def encoded_pulses(seed: int, bank_id: int, count: int = 4) -> list[bytes]:
    """``count`` encoded banked event packets of EVENTS_PER_PULSE random events in bank
    ``bank_id``, for an SMS to send over and over."""
    rng = np.random.default_rng(seed)
    encoded = []
    for k in range(count):
        bank = packets.BankSection.from_arrays(
            bank_id,
            rng.integers(0, 166_000, EVENTS_PER_PULSE, dtype=np.uint32),
            rng.integers(0, 20_000, EVENTS_PER_PULSE, dtype=np.uint32),
        )
        source = packets.SourceSection(source_id=1, banks=(bank,))
        pulse = packets.BankedEvent(timestamp_ns=T0 + k * 16_666_667, sources=(source,))
        encoded.append(packets.encode(pulse))
    return encoded


class FloodSms:
    """Sends NEW_RUN, then pulses of EVENTS_PER_PULSE events as fast as the socket takes
    them for FLOOD_S seconds, then END_RUN; counts the events it sent."""

    def __init__(self) -> None:
        self.encoded = encoded_pulses(seed=3, bank_id=1)
        self.sent_events = 0
        self.done = threading.Event()

    def __call__(self, sock: socket.socket) -> None:
        sock.sendall(new_run(RUN))
        pulse = 0
        until = time.monotonic() + FLOOD_S
        while time.monotonic() < until:
            sock.sendall(self.encoded[pulse % len(self.encoded)])
            self.sent_events += EVENTS_PER_PULSE
            pulse += 1
        sock.sendall(
            packets.encode(
                packets.RunStatus(
                    timestamp_ns=T0 + 10**9,
                    run_number=RUN,
                    run_start_ns=T0,
                    status=packets.RunStatusCode.END_RUN,
                )
            )
        )
        self.done.set()
        while True:  # stay connected (idle) until the test closes the server
            if not sock.recv(1 << 16):
                return


def peak_rss(pid: int) -> int:
    """The peak resident memory (VmHWM) of ``pid``, bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_a_30_s_flood_keeps_the_worker_under_2_gb_and_every_event_reaches_the_result(tmp_path):
    flood = FloodSms()
    sms = FakeSms(flood)
    daemon = Daemon(
        tmp_path / "daemon",
        {
            "address": f"127.0.0.1:{sms.port}",
            "update_every": 1,
            "listener_options": {"buffer_bytes": 200_000_000},
            "heartbeat_timeout_sec": 120,
        },
        SLOW_PROC,
    )
    try:
        assert flood.done.wait(FLOOD_S + 60), daemon.log()
        daemon.wait_for(lambda s: "run_ended:" in daemon.log(), timeout_s=120)
        status = daemon.status()
        pid = status["worker_pid"]
        peak = peak_rss(pid)
        log = daemon.log()
        result = sc.io.load_hdf5(daemon.out / "result.h5")
    finally:
        daemon.close()
        sms.close()
    assert "memory_exceeded" not in log, log
    assert log.count("worker_started") == 1, log
    assert "listener_buffer_full" in log  # the flood outran the engine: back-pressure held it
    assert flood.sent_events > 20 * EVENTS_PER_PULSE
    counts = result.values.astype(np.float64)
    assert counts.sum() == flood.sent_events, (counts.sum(), flood.sent_events)
    assert peak <= PEAK_RSS_LIMIT, f"worker peak RSS {peak / 2**20:.0f} MiB"
    print(
        f"flood: {flood.sent_events:.3e} events in {FLOOD_S:.0f} s "
        f"({flood.sent_events / FLOOD_S:.3e} events/s), worker peak RSS {peak / 2**20:.0f} MiB"
    )
