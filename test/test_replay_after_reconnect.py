"""A start-of-run replay after a reconnect (issue 15 "Done when"): the connection drops a third
into a run of RUN_EVENTS events; the listener reconnects asking for the start of the run and
the SMS replays the whole run as fast as the socket takes it. The daemon processes it as it
arrives, in chunks bounded by the listener's buffer, without a restart (before back-pressure
the replay was gathered whole and the memory guard restarted the worker in a loop), and the
result holds every event of the run exactly once (the replay is a data reset).
"""

from __future__ import annotations

import re
import socket
import struct
import threading

import numpy as np
import scipp as sc

from livereduce.adara import packets
from test_adara_client import T0, FakeSms
from test_e2e_replay import Daemon
from test_flood import EVENTS_PER_PULSE, PROC, encoded_pulses, peak_rss

RUN = 515151
RUN_EVENTS = 10**8


def _status(code: packets.RunStatusCode, timestamp_ns: int = T0) -> bytes:
    return packets.encode(
        packets.RunStatus(timestamp_ns=timestamp_ns, run_number=RUN, run_start_ns=T0, status=code)
    )


class ReconnectingSms:
    """Connection 1: the run's first third, then the connection drops. Connection 2 (which
    must ask for the start of the run): the whole run from its first pulse, END_RUN, idle."""

    def __init__(self, run_events: int) -> None:
        self.pulses = run_events // EVENTS_PER_PULSE
        self.encoded = encoded_pulses(seed=5, bank_id=2)
        self.connections = 0
        self.replayed = threading.Event()
        self.sms: FakeSms | None = None

    def __call__(self, sock: socket.socket) -> None:
        self.connections += 1
        assert self.sms is not None
        start = self.sms.hellos[-1].start_time_ns
        sock.sendall(_status(packets.RunStatusCode.NEW_RUN))
        if self.connections == 1:
            self._pulses(sock, self.pulses // 3)
            sock.shutdown(socket.SHUT_RDWR)
            return
        # the start of the run: asked as such, or as a time at or before the run's start
        assert start == packets.START_OF_RUN or packets.START_OF_RUN < start <= T0, start
        self._pulses(sock, self.pulses)
        sock.sendall(_status(packets.RunStatusCode.END_RUN, _pulse_ns(self.pulses)))
        self.replayed.set()
        while sock.recv(1 << 16):
            pass

    def _pulses(self, sock: socket.socket, count: int) -> None:
        """Pulses 0 .. count - 1 of the run, each with its own pulse time (60 Hz from T0)."""
        for pulse in range(count):
            packet = bytearray(self.encoded[pulse % len(self.encoded)])
            seconds, nanoseconds = divmod(_pulse_ns(pulse), 10**9)
            struct.pack_into("<II", packet, 8, seconds - packets.EPICS_EPOCH_OFFSET_S, nanoseconds)
            sock.sendall(packet)


def _pulse_ns(pulse: int) -> int:
    return T0 + pulse * 16_666_667


def replay_after_reconnect(folder, run_events: int, buffer_bytes: int) -> dict:
    """Run the scenario; returns the events in the result, the log and the worker's peak RSS."""
    server = ReconnectingSms(run_events)
    sms = server.sms = FakeSms(server)
    daemon = Daemon(
        folder,
        {
            "address": f"127.0.0.1:{sms.port}",
            "update_every": 1,
            "listener_options": {"buffer_bytes": buffer_bytes, "reconnect_max_sec": 1},
            "heartbeat_timeout_sec": 120,
        },
        PROC,
    )
    try:
        assert server.replayed.wait(600), daemon.log()
        daemon.wait_for(lambda s: "run_ended:" in daemon.log(), timeout_s=600)
        peak = peak_rss(daemon.status()["worker_pid"])
        log = daemon.log()
        result = sc.io.load_hdf5(daemon.out / "result.h5")
    finally:
        daemon.close()
        sms.close()
    return {
        "events": result.values.astype(np.float64).sum(),
        "log": log,
        "peak_rss": peak,
        "connections": server.connections,
    }


def test_a_start_of_run_replay_of_1e8_events_after_a_reconnect_is_processed_once(tmp_path):
    outcome = replay_after_reconnect(tmp_path / "daemon", RUN_EVENTS, 100_000_000)
    log = outcome["log"]
    assert outcome["connections"] == 2
    assert "run 515151 replayed from its start after the reconnect: data reset" in log
    assert log.count("worker_started") == 1, log  # no restart, let alone a loop
    assert "memory_exceeded" not in log
    assert outcome["events"] == RUN_EVENTS  # every event once: the replay replaced the third
    stages = re.search(r"run_stages: run 515151: (\d+) chunks, (\d+) events", log)
    chunks, processed = int(stages[1]), int(stages[2])
    assert chunks >= 8  # processed as it arrived, in bounded chunks
    # the third before the drop was processed too, then replaced by the replay
    assert RUN_EVENTS < processed < 1.5 * RUN_EVENTS
    assert outcome["peak_rss"] <= 2 * 2**30
    print(
        f"replay after reconnect: {RUN_EVENTS:.0e} events, {chunks} "
        f"chunks, worker peak RSS {outcome['peak_rss'] / 2**20:.0f} MiB"
    )
