"""``livereduce-replay``: an SMS stand-in that streams NeXus event files as ADARA.

``livereduce-replay FILE [FILE ...] [--host 127.0.0.1] [--port 31415] [--speed X] [--loop]``
(``--kafka BOOTSTRAP`` publishes the files to Kafka instead: :mod:`livereduce.kafka.replay`)

The files are played as consecutive runs on one live timeline, as an SMS (Stream Management
Service) would have sent them: :mod:`livereduce.adara.playlist` turns each file into its packets.
The timeline starts when the first client says hello. A client gets nothing before its client
hello; hello start time 0 joins the live position (mid-run it first gets a run status STATE and
the run's geometry, descriptors and latest variable values, as an SMS sends a late joiner),
1 replays the current run from its first pulse, any other EPICS time starts at the first packet
at or after it, in the current run or an earlier run that ended after it, also after the last
file (as an SMS serves a client that asks for the past from its stored runs). Each client has
its own position and thread; a client behind the live position catches up as fast as its socket
takes the packets.

``--speed 1`` paces pulses at real time, ``--speed 100`` a hundred times faster, ``--speed 0``
sends as fast as the sockets take them (the live position is then the leading client's). Idle
clients get a heartbeat every ``heartbeat_s``. After the last file the server idles (heartbeats),
or starts over with ``--loop``. SIGTERM / SIGINT stop it cleanly (exit status 0).

In tests: ``with ReplayServer([path], port=0, speed=0) as server: server.port``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livereduce import __version__
from livereduce.adara import packets
from livereduce.adara.errors import AdaraProtocolError
from livereduce.adara.parser import StreamParser
from livereduce.adara.playlist import RunStream, build_run_stream, heartbeat_packet, join_packets
from livereduce.adara.runfile import RunFileError, read_run_file
from livereduce.kafka import replay as kafka_replay
from livereduce.worker.stop import StopToken

log = logging.getLogger("livereduce.replay")

DEFAULT_PORT = 31415
"""The SMS live-stream port (smsd.conf ``[livestream] service``; mantid-live-data.md §3.2.1)."""
HEARTBEAT_S = 1.0
"""Idle time after which a client gets a heartbeat; well under any stale-stream timeout."""
SEND_BATCH_BYTES = 256 * 1024
"""Packets are joined into sends of about this size: few syscalls, prompt pacing and stop."""
PULSE_PERIOD_S = 1 / 60
"""The SNS accelerator's pulse period: the shortest time a run takes on the timeline."""
HELLO_TIMEOUT_S = 60.0
"""A connection that has not said hello by then is closed (a port scan, a wrong client)."""


@dataclass(frozen=True, slots=True)
class _Position:
    """Run ``n`` of the timeline (file ``n % len(files)``), item ``i`` of its data packets;
    ``n == -1`` is the end of the timeline (no ``--loop``)."""

    n: int
    i: int


class _Timeline:
    """The live position shared by all clients, and the run start / end log lines."""

    def __init__(self, streams: Sequence[RunStream], speed: float, loop: bool) -> None:
        self.streams = streams
        self.speed = speed
        self.loop = loop
        self._lock = threading.Lock()
        self._t0: float | None = None
        self._leader = _Position(0, 0)
        self._logged_start = -1
        self._logged_end = -1
        self._durations = [self._duration(s) for s in streams]

    def _duration(self, stream: RunStream) -> float:
        # at least one 60 Hz pulse period, so that --loop over one-pulse files still advances
        return (
            max(float(stream.offsets_s[-1]), PULSE_PERIOD_S) / self.speed if self.speed > 0 else 0.0
        )

    def stream(self, n: int) -> RunStream:
        """The run at timeline position ``n``."""
        return self.streams[n % len(self.streams)]

    def start(self) -> bool:
        """Start the live clock (first client hello); True for the call that started it."""
        with self._lock:
            if self._t0 is None:
                self._t0 = time.monotonic()
                return True
            return False

    def live(self) -> _Position:
        """The live position now."""
        if self.speed <= 0:
            with self._lock:
                return self._leader
        with self._lock:
            t0 = self._t0
        elapsed = 0.0 if t0 is None else (time.monotonic() - t0)
        n = 0
        while True:
            if n >= len(self.streams) and not self.loop:
                self._observe(_Position(len(self.streams) - 1, len(self.stream(n - 1).items)))
                return _Position(-1, 0)
            duration = self._durations[n % len(self.streams)]
            if elapsed < duration:
                break
            elapsed -= duration
            self._observe(_Position(n, len(self.stream(n).items)))
            n += 1
        offsets = self.stream(n).offsets_s / self.speed
        position = _Position(n, int(np.searchsorted(offsets, elapsed, side="right")))
        self._observe(position)
        return position

    def due_time(self, position: _Position) -> float:
        """Monotonic time at which the item at ``position`` is live (speed > 0)."""
        with self._lock:
            t0 = self._t0 if self._t0 is not None else time.monotonic()
        before = sum(self._durations[k % len(self.streams)] for k in range(position.n))
        return t0 + before + float(self.stream(position.n).offsets_s[position.i]) / self.speed

    def advance(self, position: _Position) -> None:
        """A client reached ``position`` (speed 0: the leader defines the live position)."""
        self._observe(position)
        if self.speed > 0:
            return
        with self._lock:
            if (position.n, position.i) > (self._leader.n, self._leader.i):
                self._leader = position

    def end_of_timeline(self, n: int) -> bool:
        """True when run ``n`` is past the last file and there is no loop."""
        return n >= len(self.streams) and not self.loop

    def _observe(self, position: _Position) -> None:
        stream = self.stream(position.n)
        with self._lock:
            if position.n > self._logged_start:
                self._logged_start = position.n
                log.info("run %d started (%s)", stream.run_number, stream.source)
            if position.i >= len(stream.items) and position.n > self._logged_end:
                self._logged_end = position.n
                log.info("run %d ended (%s)", stream.run_number, stream.source)


class _ClientGone(Exception):
    """The client closed its socket or the server is stopping."""


class _Client:
    """One connected client: waits for its hello, then streams from its own position."""

    def __init__(self, server: ReplayServer, sock: socket.socket, peer: str) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.sent_packets = 0
        self.start_request = "no hello"
        self._last_send = time.monotonic()
        self.thread = threading.Thread(target=self._run, name=f"replay-{peer}", daemon=True)

    def _run(self) -> None:
        reason = "closed by the server"
        try:
            start = self._read_hello()
            self.start_request = packets.describe_start_time(start)
            log.debug("client %s said hello (start %s)", self.peer, self.start_request)
            if self.server.timeline.start():
                self._stream(_Position(0, 0))  # the first client starts the timeline
            else:
                self._stream(self._start_position(start))
        except _ClientGone as exc:
            reason = str(exc) or reason
        except AdaraProtocolError as exc:
            reason = f"protocol error: {exc}"
        except OSError as exc:
            reason = f"connection error: {exc}"
        finally:
            with contextlib.suppress(OSError):
                self.sock.close()
            log.info(
                "client %s disconnected (%s) after %d packets (start %s)",
                self.peer,
                reason,
                self.sent_packets,
                self.start_request,
            )
            self.server._forget(self)

    def _read_hello(self) -> int:
        parser = StreamParser()
        self.sock.settimeout(HELLO_TIMEOUT_S)
        while not self.server.stopping:
            try:
                data = self.sock.recv(4096)
            except TimeoutError as exc:
                raise _ClientGone(f"no client hello within {HELLO_TIMEOUT_S:.0f} s") from exc
            if not data:
                raise _ClientGone(
                    "server stopping" if self.server.stopping else "closed before its hello"
                )
            for packet in parser.feed(data):
                if isinstance(packet, packets.ClientHello):
                    self.sock.settimeout(None)
                    return packet.start_time_ns
                raise _ClientGone(f"first packet was {type(packet).__name__}, not a client hello")
        raise _ClientGone("server stopping")

    def _start_position(self, start_ns: int) -> _Position:
        timeline = self.server.timeline
        live = timeline.live()
        if live.n >= 0 and live.i >= len(timeline.stream(live.n).items):
            # the run just ended: the current run is the next one
            live = (
                _Position(-1, 0)
                if timeline.end_of_timeline(live.n + 1)
                else _Position(live.n + 1, 0)
            )
        if start_ns == packets.START_NOW or (live.n < 0 and start_ns == packets.START_OF_RUN):
            return live
        if live.n < 0:
            # the timeline is over, but an SMS still serves the runs it recorded: an absolute
            # time reaches back from the end of the last run
            last = len(timeline.streams) - 1
            if timeline.stream(last).keys_ns[-1] < start_ns:
                return live
            live = _Position(last, len(timeline.stream(last).items))
        elif start_ns == packets.START_OF_RUN:
            return _Position(live.n, 0)
        # an absolute time: the first packet at or after it, going back through earlier runs
        # that ended after it (while the timeline's times increase: not across a --loop)
        n = live.n
        while n > 0:
            earlier, later = timeline.stream(n - 1), timeline.stream(n)
            if earlier.keys_ns[-1] < start_ns or earlier.keys_ns[0] >= later.keys_ns[0]:
                break
            n -= 1
        stream = timeline.stream(n)
        i = int(np.searchsorted(stream.keys_ns, start_ns, side="left"))
        return _Position(n, min(i, live.i) if n == live.n else i)

    def _send(self, chunks: Sequence[bytes]) -> None:
        if self.server.stopping:
            raise _ClientGone("server stopping")
        try:
            self.sock.sendall(b"".join(chunks))
        except OSError as exc:
            raise _ClientGone(f"closed by the client ({exc.strerror or exc})") from exc
        self.sent_packets += len(chunks)
        self._last_send = time.monotonic()

    def _stream(self, position: _Position) -> None:
        timeline = self.server.timeline
        n, i = position.n, position.i
        entered = False
        while not self.server.stopping:
            if n < 0 or timeline.end_of_timeline(n):
                self._idle(None)
                continue
            stream = timeline.stream(n)
            due = self._due(n)
            if not entered:
                if i == 0 and due == 0:
                    self._idle(timeline.due_time(_Position(n, 0)))
                    continue
                self._send(stream.prologue if i == 0 else join_packets(stream, i))
                entered = True
            if i < due:
                i = self._send_items(stream, i, due)
                timeline.advance(_Position(n, i))
            elif i >= len(stream.items):
                n, i, entered = n + 1, 0, False
            else:
                self._idle(timeline.due_time(_Position(n, i)))

    def _due(self, n: int) -> int:
        timeline = self.server.timeline
        stream = timeline.stream(n)
        if timeline.speed <= 0:
            return len(stream.items)
        live = timeline.live()
        if live.n < 0 or live.n > n:
            return len(stream.items)
        return live.i if live.n == n else 0

    def _send_items(self, stream: RunStream, i: int, due: int) -> int:
        batch: list[bytes] = []
        size = 0
        while i < due:
            item = stream.items[i]
            batch.append(item)
            size += len(item)
            i += 1
            if size >= SEND_BATCH_BYTES:
                break
        self._send(batch)
        return i

    def _idle(self, until: float | None) -> None:
        """Wait until monotonic ``until`` (None: forever), with heartbeats meanwhile."""
        heartbeat_at = self._last_send + self.server.heartbeat_s
        wake = heartbeat_at if until is None else min(until, heartbeat_at)
        if self.server.stop_event.wait(max(0.0, wake - time.monotonic())):
            raise _ClientGone("server stopping")
        if time.monotonic() >= heartbeat_at:
            self._send([heartbeat_packet(time.time_ns())])


class ReplayServer:
    """The replay server: ``start()`` binds and accepts in a background thread, ``stop()``
    closes every socket and joins every thread. ``port`` is the bound port (useful with
    ``port=0``). Raises RunFileError from the constructor when a file cannot be streamed."""

    def __init__(
        self,
        files: Sequence[str | Path],
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        speed: float = 1.0,
        loop: bool = False,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        if not files:
            raise ValueError("livereduce-replay needs at least one NeXus event file")
        if speed < 0:
            raise ValueError(f"speed must be >= 0, got {speed}")
        streams = [build_run_stream(read_run_file(path)) for path in files]
        self.timeline = _Timeline(streams, speed, loop)
        self.host = host
        self.port = port
        self.heartbeat_s = heartbeat_s
        self.stop_event = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._clients: set[_Client] = set()
        self._lock = threading.Lock()

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self.stop_event.is_set()

    def start(self) -> ReplayServer:
        """Bind, listen and accept clients in a background thread; returns self."""
        sock = socket.create_server((self.host, self.port), reuse_port=False, backlog=16)
        self._listener = sock
        self.port = sock.getsockname()[1]
        runs = ", ".join(str(s.run_number) for s in self.timeline.streams)
        log.info(
            "replaying runs %s on %s:%d (speed %g%s)",
            runs,
            self.host,
            self.port,
            self.timeline.speed,
            ", loop" if self.timeline.loop else "",
        )
        self._accept_thread = threading.Thread(
            target=self._accept, args=(sock,), name="replay-accept", daemon=True
        )
        self._accept_thread.start()
        return self

    def _accept(self, listening: socket.socket) -> None:
        while not self.stopping:
            try:
                sock, address = listening.accept()
            except OSError as exc:
                if self.stopping:
                    return  # the listening socket was closed by stop()
                # out of file descriptors, an aborted handshake: the server goes on serving
                log.warning("accept failed: %s; accepting again in 0.5 s", exc)
                time.sleep(0.5)
                continue
            peer = f"{address[0]}:{address[1]}"
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = _Client(self, sock, peer)
            with self._lock:
                if self.stopping:
                    sock.close()
                    return
                self._clients.add(client)
            log.info("client %s connected", peer)
            client.thread.start()

    def _forget(self, client: _Client) -> None:
        with self._lock:
            self._clients.discard(client)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the listening socket and every client connection; join all threads."""
        self.stop_event.set()
        if self._listener is not None:
            # close() alone does not wake a thread blocked in accept() on Linux; shutdown does
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout_s
        if self._accept_thread is not None:
            self._accept_thread.join(max(0.0, deadline - time.monotonic()))
        for client in clients:
            client.thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livereduce-replay",
        description="Stream NeXus event files as an SNS SMS does (ADARA on TCP).",
    )
    parser.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="NeXus event files, played as consecutive runs",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)"
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="1 real time, 100 a hundred times faster, 0 as fast as possible",
    )
    parser.add_argument("--loop", action="store_true", help="start over after the last file")
    parser.add_argument("--version", action="version", version=f"livereduce-replay {__version__}")
    kafka_replay.add_arguments(parser)
    return parser


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return _parser().parse_args(argv)


def _port(text: str) -> int:
    """A TCP port for argparse: 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return port


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point; returns the exit status (0 after SIGTERM/SIGINT, 2 on bad
    arguments or unreadable files, 1 when the port cannot be bound)."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.kafka:
        return kafka_replay.run_from_args(args)
    stop = StopToken()
    stop.install()
    try:
        server = ReplayServer(
            args.files, host=args.host, port=args.port, speed=args.speed, loop=args.loop
        )
    except (RunFileError, ValueError) as exc:
        print(f"livereduce-replay: {exc}", file=sys.stderr)
        return 2
    try:
        server.start()
    except OSError as exc:
        print(
            f"livereduce-replay: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr
        )
        return 1
    print(f"listening on {args.host}:{server.port}", flush=True)
    while not stop.requested:
        stop.wait(1.0)
    log.info("stopping (%s)", stop.reason)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
