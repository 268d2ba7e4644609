"""The ``adara`` listener: chunks from an SNS SMS (Mantid's SNSLiveEventDataListener, reshaped).

A background thread keeps one :class:`~livereduce.adara.client.AdaraClient` connection and turns
its packets into per-run buffers (mantid-live-data.md §3.2.4 for what Mantid does with each):

- run status NEW_RUN / STATE opens a run (number, start time), END_RUN closes it; run info,
  geometry and beamline info fill in the title, proposal, IDF and instrument name;
- banked events: one ``event_time_zero`` bin per packet (header time = pulse time), events of
  real banks only (the error and unmapped pseudo-banks are dropped, as Mantid does), time of
  flight = 100 ns units / 10 -> µs (plus the source's TOF offset when not yet corrected); the
  pulse charge (10 pC units) becomes the ``proton_charge`` log in pC;
- beam monitor events -> ``monitor<ID>`` (``event_id`` = the monitor ID; once seen in a run,
  a monitor is in every later chunk of the run, with no events when none arrived);
- device descriptors name the PVs; variable values become logs (u32 values of ``integer`` PVs
  are signed 32-bit, as Mantid reads them).

:meth:`AdaraListener.extract_data` never blocks: it hands over what arrived since the previous
call (an empty chunk when in a run and nothing new came, also while reconnecting: the run
goes on at the SMS); a chunk never spans two runs (``ends_run`` / ``begins_run``). It raises
NotYet, saying why, when there is nothing to hand over outside a run: not connected yet,
reconnecting, or waiting for a run to start.

When the SMS goes away (closes cleanly, closes inside a packet, resets, or sends nothing, not
even heartbeats, for ``stale_timeout_sec``), the listener logs why at once, drops the incomplete
packet and reconnects with exponential backoff (0.5 s doubling up to ``reconnect_max_sec``,
each attempt logged). A reconnect always asks for the start of the current run (hello start
time 1) and drops what it had not yet handed over of that run; the first chunk of the same run
after the reconnect has ``data_reset=True`` so the engine replaces the run's accumulation:
nothing is counted twice, nothing is lost.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

import numpy as np
import scipp as sc

from livereduce.adara import packets
from livereduce.adara.client import AdaraClient, ConnectionLost
from livereduce.adara.errors import AdaraProtocolError
from livereduce.adara.metadata_xml import (
    INTEGER_PV_TYPES,
    MetadataXmlError,
    ProcessVariable,
    parse_device_xml,
    parse_runinfo_xml,
)
from livereduce.address import parse_host_port
from livereduce.config import Config, ConfigError, StartFrom
from livereduce.delays import doubling_delay_s
from livereduce.worker.listeners.base import (
    Chunk,
    ListenerError,
    NotYet,
    RunInfo,
    make_events,
    unit_or_none,
)

log = logging.getLogger("livereduce.listener.adara")

STALE_TIMEOUT_S = 30.0
"""Default ``stale_timeout_sec``: Mantid's SNS listener gives up on a silent socket after 30 s;
an SMS sends heartbeats well within that when idle."""
RECONNECT_MAX_S = 30.0
"""Default ``reconnect_max_sec``: the longest wait between two connection attempts."""
CONNECT_TIMEOUT_S = 5.0
"""Default ``connect_timeout_sec`` of one TCP connect."""
FIRST_BACKOFF_S = 0.5
"""Wait before the first reconnection attempt; doubled on every failed attempt."""
_GET_TIMEOUT_S = 0.25
"""How long the reader waits for a packet before checking for staleness and close()."""

MAX_REPORTED_UNKNOWN_PVS = 100
"""Variables without a device descriptor are logged once each up to this many: a broken or
hostile stream must not flood the log (or memory) with one line per variable."""


def backoff_s(attempt: int, maximum_s: float) -> float:
    """Wait before connection attempt ``attempt`` + 1 (attempt >= 1): 0.5 s doubling, capped."""
    return doubling_delay_s(attempt, FIRST_BACKOFF_S, maximum_s)


class _Events:
    """Events of consecutive pulses: pulse times, counts, pixel IDs and TOF in 100 ns."""

    def __init__(self) -> None:
        self.pulse_ns: list[int] = []
        self.counts: list[int] = []
        self.ids: list[np.ndarray] = []
        self.tofs: list[np.ndarray] = []

    def add_pulse(self, pulse_ns: int, ids: list[np.ndarray], tofs: list[np.ndarray]) -> None:
        self.pulse_ns.append(pulse_ns)
        self.counts.append(sum(len(a) for a in ids))
        self.ids.extend(ids)
        self.tofs.extend(tofs)

    def to_events(self) -> sc.DataArray:
        ids = np.concatenate(self.ids) if self.ids else np.empty(0, np.uint32)
        tofs = np.concatenate(self.tofs) if self.tofs else np.empty(0, np.uint32)
        return make_events(
            np.asarray(self.pulse_ns, dtype=np.int64),
            np.asarray(self.counts, dtype=np.int64),
            ids.astype(np.int32),
            (tofs.astype(np.float64) / 10.0).astype(np.float32),
        )


@dataclasses.dataclass(slots=True)
class _Log:
    pv_type: str
    units: str
    times_ns: list[int] = dataclasses.field(default_factory=list)
    values: list[object] = dataclasses.field(default_factory=list)

    def to_data_array(self) -> sc.DataArray:
        times = sc.array(
            dims=["time"], values=np.asarray(self.times_ns, dtype="datetime64[ns]"), unit="ns"
        )
        if self.pv_type == "string":
            data = sc.array(dims=["time"], values=[str(v) for v in self.values])
        elif self.pv_type == "double":
            data = sc.array(
                dims=["time"],
                values=np.asarray(self.values, np.float64),
                unit=unit_or_none(self.units),
            )
        else:
            data = sc.array(
                dims=["time"],
                values=np.asarray(self.values, np.int64),
                unit=unit_or_none(self.units),
            )
        return sc.DataArray(data, coords={"time": times})


def _coerce(pv_type: str, value: Any) -> object:
    """``value`` as the log's type: str, float, or an int that fits int64. Raises ValueError,
    TypeError or OverflowError when it cannot be one."""
    if pv_type == "string":
        return str(value)
    if pv_type == "double":
        if isinstance(value, str):
            raise TypeError(f"a string value {value!r} for a double PV")
        return float(value)
    if isinstance(value, str) or (isinstance(value, float) and not value.is_integer()):
        raise TypeError(f"value {value!r} for an integer PV")
    number = int(value)
    if not -(2**63) <= number < 2**63:
        raise OverflowError(f"value {value!r} does not fit an integer PV")
    return number


class _Segment:
    """What arrived of one run since the previous extraction."""

    def __init__(self, run: RunInfo, *, begins_run: bool, data_reset: bool = False) -> None:
        self.run = run
        self.begins_run = begins_run
        self.ends_run = False
        self.data_reset = data_reset
        self.events = _Events()
        self.monitors: dict[str, _Events] = {}
        self.logs: dict[str, _Log] = {}

    def continuation(self) -> _Segment:
        """The next interval of the same run; monitors seen in the run stay in every chunk."""
        following = _Segment(self.run, begins_run=False)
        following.monitors = {name: _Events() for name in self.monitors}
        return following

    def add_log(self, name: str, pv_type: str, units: str, time_ns: int, value: object) -> bool:
        """Add one value; False (nothing added) when it does not fit the type the log has
        (a string after doubles, a NaN for an integer PV): one bad value must not cost the
        chunk when the log is turned into an array."""
        entry = self.logs.get(name)
        if entry is None:
            entry = self.logs[name] = _Log(pv_type, units)
        try:
            value = _coerce(entry.pv_type, value)
        except (ValueError, TypeError, OverflowError):
            return False
        entry.times_ns.append(time_ns)
        entry.values.append(value)
        return True

    def to_chunk(self) -> Chunk:
        return Chunk(
            events=self.events.to_events(),
            monitors={name: m.to_events() for name, m in self.monitors.items()},
            logs={name: entry.to_data_array() for name, entry in self.logs.items()},
            run=self.run,
            begins_run=self.begins_run,
            ends_run=self.ends_run,
            data_reset=self.data_reset,
        )


class AdaraListener:
    """Chunks from the SMS at ``host:port``; see the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        stale_timeout_s: float = STALE_TIMEOUT_S,
        reconnect_max_s: float = RECONNECT_MAX_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.name = f"adara {host}:{port}"
        self.host = host
        self.port = port
        self.stale_timeout_s = stale_timeout_s
        self.reconnect_max_s = reconnect_max_s
        self.connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: AdaraClient | None = None
        self._start_from = StartFrom.START_OF_RUN
        self._state = "not started"
        self._heard = False
        self._failure: str | None = None
        self.connections = 0
        """Successful connections so far (the first one included)."""
        # run state, guarded by _lock
        self._finished: deque[_Segment] = deque()
        self._open: _Segment | None = None
        self._delivered_run: int | None = None
        self._reset_pending = False
        self._instrument = ""
        self._geometry = ""
        self._pvs: dict[tuple[int, int], ProcessVariable] = {}
        self._unknown_pvs: set[tuple[int, int]] = set()
        self._mistyped: set[str] = set()
        self._dropped_outside_run = 0

    @property
    def connected(self) -> bool:
        """Whether a connection to the SMS is open now."""
        with self._lock:
            return self._client is not None

    @property
    def waiting_for_run(self) -> bool:
        """Connected, the SMS has sent packets on this connection, and no run is open."""
        with self._lock:
            return self._waiting_for_run()

    def _waiting_for_run(self) -> bool:
        return self._client is not None and self._heard and self._open is None

    @property
    def state(self) -> str:
        """What the listener is doing, in words: connecting, waiting for a run, in run N, or
        why the connection ended and when the next attempt comes."""
        with self._lock:
            return self._state

    # ------------------------------------------------------------------ Listener contract

    def start(self, start_from: StartFrom) -> None:
        """Start the connection thread and return at once."""
        if self._thread is not None:
            return
        self._start_from = start_from
        self._state = f"connecting to the SMS at {self.host}:{self.port}"
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def extract_data(self) -> Chunk:
        """What arrived since the previous call, one run at most. Raises NotYet when not in a
        run and nothing is buffered (the message says what the listener waits for), and
        ListenerError once the connection thread has died and what it received is delivered."""
        with self._lock:
            if self._finished:
                segment = self._finished.popleft()
            elif self._open is not None:
                segment = self._open
                # a dead connection thread adds nothing more: deliver what it had, then fail
                self._open = segment.continuation() if self._failure is None else None
            elif self._failure is not None:
                raise ListenerError(self._failure)
            else:
                raise NotYet(self._state, waiting_for_run=self._waiting_for_run())
            self._delivered_run = segment.run.number
            connected, activity = self._client is not None, self._state
        return dataclasses.replace(segment.to_chunk(), connected=connected, activity=activity)

    def close(self) -> None:
        """Stop the thread and close the connection; returns within about two seconds."""
        self._stop.set()
        with self._lock:
            client = self._client
        if client is not None:
            client.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)

    # ------------------------------------------------------------------ connection thread

    def _run(self) -> None:
        try:
            self._connect_and_consume()
        except Exception as exc:  # reported to the engine, which ends the worker
            log.exception("adara_listener_failed: the connection thread stopped")
            with self._lock:
                self._failure = f"the ADARA connection thread stopped: {type(exc).__name__}: {exc}"

    def _connect_and_consume(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            reconnect = self.connections > 0
            start_ns = (
                packets.START_OF_RUN
                if reconnect or self._start_from is StartFrom.START_OF_RUN
                else packets.START_NOW
            )
            client = AdaraClient(
                self.host,
                self.port,
                start_time_ns=start_ns,
                connect_timeout_s=self.connect_timeout_s,
            )
            try:
                client.connect()
            except OSError as exc:
                attempt += 1
                reason = f"cannot connect to the SMS at {self.host}:{self.port}: {exc}"
                self._wait_to_retry(reason, attempt)
                continue
            with self._lock:
                self._client = client
                self.connections += 1
                self._reset_pending = reconnect
                self._heard = False
                self._state = (
                    f"connected to the SMS at {self.host}:{self.port}, nothing received yet"
                )
            log.info(
                "connected to the SMS at %s:%d (connection %d), asking for %s",
                self.host,
                self.port,
                self.connections,
                "the start of the run" if start_ns == packets.START_OF_RUN else "live data",
            )
            reason, got_packets = self._consume(client)
            client.close()
            if client.parser.skipped:
                kinds = ", ".join(
                    f"{count} of format 0x{word:08x}"
                    for word, count in sorted(client.parser.skipped.items())
                )
                log.warning("packets of unknown types skipped on this connection: %s", kinds)
            with self._lock:
                self._client = None
                self._state = (
                    f"the connection to the SMS at {self.host}:{self.port} ended: {reason}"
                )
            if self._stop.is_set():
                break
            attempt = 1 if got_packets else attempt + 1
            self._wait_to_retry(reason, attempt)

    def _wait_to_retry(self, reason: str, attempt: int) -> None:
        delay = backoff_s(attempt, self.reconnect_max_s)
        with self._lock:
            self._state = f"{reason}; reconnecting (attempt {attempt + 1} in {delay:.1f} s)"
        log.warning("%s; reconnection attempt %d in %.1f s", reason, attempt + 1, delay)
        self._stop.wait(delay)

    def _consume(self, client: AdaraClient) -> tuple[str, bool]:
        """Handle packets until the connection ends; returns (why it ended, any packet seen)."""
        got_packets = False
        while not self._stop.is_set():
            try:
                packet = client.get(_GET_TIMEOUT_S)
            except ConnectionLost as exc:
                return str(exc), got_packets
            except AdaraProtocolError as exc:
                log.warning("malformed packet from the SMS skipped: %s", exc)
                continue
            if packet is None:
                silent_s = time.monotonic() - client.last_packet_monotonic
                if silent_s > self.stale_timeout_s:
                    return (
                        f"stale stream: no complete packet from the SMS at {client.address} for "
                        f"{silent_s:.1f} s (stale_timeout_sec {self.stale_timeout_s:g})",
                        got_packets,
                    )
                continue
            if not got_packets:
                got_packets = True
                with self._lock:
                    self._heard = True  # the SMS is alive: with no run open, we wait for one
                    if self._open is None:
                        self._state = (
                            f"connected to the SMS at {self.host}:{self.port}, waiting for a run"
                        )
            try:
                with self._lock:
                    self._handle(packet)
            except (ValueError, TypeError, KeyError, IndexError, OverflowError, OSError) as exc:
                # one packet the listener cannot use must not stop the stream
                log.error(
                    "%s packet (header time %d ns) not used: %s",
                    type(packet).__name__,
                    packet.timestamp_ns,
                    exc,
                )
        return "closed", got_packets

    # ------------------------------------------------------------------ packets (under _lock)

    def _handle(self, packet: packets.Packet) -> None:
        match packet:
            case packets.BankedEvent():
                self._banked_event(packet)
            case packets.BeamMonitorEvent():
                self._beam_monitor(packet)
            case packets.VariableU32() | packets.VariableDouble() | packets.VariableString():
                self._variable(packet)
            case packets.RunStatus():
                self._run_status(packet)
            case packets.DeviceDescriptor():
                self._device(packet)
            case packets.RunInfo():
                self._run_info(packet)
            case packets.Geometry():
                self._geometry = packet.xml
                self._update_run(geometry_xml=packet.xml)
            case packets.BeamlineInfo():
                self._instrument = packet.long_name
                self._update_run(instrument=packet.long_name)

    def _update_run(self, **changes: Any) -> None:
        if self._open is not None:
            self._open.run = dataclasses.replace(self._open.run, **changes)

    def _run_status(self, packet: packets.RunStatus) -> None:
        code = packet.status
        if (
            code in (packets.RunStatusCode.NEW_RUN, packets.RunStatusCode.STATE)
            and packet.run_number
        ):
            self._begin(packet)
        elif code is packets.RunStatusCode.END_RUN:
            if self._open is not None and self._open.run.number == packet.run_number:
                log.info("run %d ended", packet.run_number)
                self._close_open()
        elif code is packets.RunStatusCode.NO_RUN:
            if self._open is not None:
                log.warning("the SMS reports no run; run %d ended unseen", self._open.run.number)
                self._close_open()
            self._reset_pending = False
            self._state = f"connected to the SMS at {self.host}:{self.port}, waiting for a run"

    def _begin(self, packet: packets.RunStatus) -> None:
        number = packet.run_number
        current = self._open
        if current is not None and current.run.number == number:
            if not self._reset_pending:
                return  # a repeated status of the run we are in
            self._reset_pending = False
            if self._delivered_run == number:
                log.info("run %d replayed from its start after the reconnect: data reset", number)
                self._open = _Segment(current.run, begins_run=False, data_reset=True)
            else:
                self._open = _Segment(current.run, begins_run=current.begins_run)
            return
        if current is not None:
            log.warning(
                "run %d ended without an END_RUN (run %d began)", current.run.number, number
            )
            self._close_open()
        self._reset_pending = False
        run = RunInfo(
            number=number,
            start_time=datetime.fromtimestamp(packet.run_start_ns / 1e9, tz=UTC),
            instrument=self._instrument,
            geometry_xml=self._geometry,
        )
        self._open = _Segment(run, begins_run=True)
        self._state = f"in run {number}"
        joined = packet.status is packets.RunStatusCode.STATE
        log.info("%s run %d", "joined" if joined else "new", number)
        if self._dropped_outside_run:
            log.info(
                "%d events that arrived outside a run were not kept", self._dropped_outside_run
            )
            self._dropped_outside_run = 0

    def _close_open(self) -> None:
        if self._open is None:
            return
        self._open.ends_run = True
        self._finished.append(self._open)
        self._open = None
        self._state = f"connected to the SMS at {self.host}:{self.port}, waiting for a run"

    def _run_info(self, packet: packets.RunInfo) -> None:
        try:
            info = parse_runinfo_xml(packet.xml)
        except MetadataXmlError as exc:
            log.warning("run info packet ignored: %s", exc)
            return
        self._update_run(title=info.run_title, experiment=info.proposal_id)

    def _device(self, packet: packets.DeviceDescriptor) -> None:
        try:
            _name, pvs = parse_device_xml(packet.xml)
        except MetadataXmlError as exc:
            log.warning("device descriptor %d ignored: %s", packet.device_id, exc)
            return
        for pv in pvs:
            self._pvs[(packet.device_id, pv.pv_id)] = pv

    def _variable(
        self, packet: packets.VariableU32 | packets.VariableDouble | packets.VariableString
    ) -> None:
        key = (packet.device_id, packet.variable_id)
        pv = self._pvs.get(key)
        if pv is None:
            if key not in self._unknown_pvs and len(self._unknown_pvs) < MAX_REPORTED_UNKNOWN_PVS:
                self._unknown_pvs.add(key)
                log.warning(
                    "variable value of device %d variable %d ignored: no device "
                    "descriptor names it%s",
                    *key,
                    "; further unknown variables are not logged"
                    if len(self._unknown_pvs) == MAX_REPORTED_UNKNOWN_PVS
                    else "",
                )
            return
        if self._open is None:
            return
        value: object = packet.value
        pv_type = pv.pv_type
        if isinstance(packet, packets.VariableU32):
            if pv_type in INTEGER_PV_TYPES or pv_type.startswith("enum"):
                value = int(np.array(packet.value, dtype=np.uint32).view(np.int32))
            pv_type = "integer"
        elif isinstance(packet, packets.VariableString):
            pv_type = "string"
        else:
            pv_type = "double"
        added = self._open.add_log(pv.name, pv_type, pv.units, packet.timestamp_ns, value)
        if not added and pv.name not in self._mistyped:
            self._mistyped.add(pv.name)
            log.warning(
                "%s value %r of PV %s (device %d variable %d) ignored: the log holds %s values; "
                "further mismatches of this PV are not logged",
                type(packet).__name__,
                packet.value,
                pv.name,
                *key,
                self._open.logs[pv.name].pv_type,
            )

    def _banked_event(self, packet: packets.BankedEvent) -> None:
        if self._open is None:
            self._dropped_outside_run += packet.event_count
            return
        ids, tofs = [], []
        for source in packet.sources:
            offset = 0 if source.tof_corrected else source.tof_offset_100ns
            for bank in source.banks:
                if bank.bank_id >= packets.ERROR_BANK_ID or not len(bank.events):
                    continue
                ids.append(bank.pixel_id)
                tofs.append(bank.tof_100ns + np.uint32(offset) if offset else bank.tof_100ns)
        self._open.events.add_pulse(packet.timestamp_ns, ids, tofs)
        self._open.add_log(
            "proton_charge",
            "double",
            "pC",
            packet.timestamp_ns,
            packet.pulse_charge_10pc * 10.0,
        )

    def _beam_monitor(self, packet: packets.BeamMonitorEvent) -> None:
        if self._open is None:
            return
        for monitor in packet.monitors:
            name = f"monitor{monitor.monitor_id}"
            events = self._open.monitors.get(name)
            if events is None:
                events = self._open.monitors[name] = _Events()
            tof = monitor.tof_100ns
            ids = np.full(len(tof), monitor.monitor_id, dtype=np.uint32)
            events.add_pulse(packet.timestamp_ns, [ids], [tof])


def from_config(config: Config) -> AdaraListener:
    """The adara listener for ``config.address`` and ``config.listener_options``
    (``stale_timeout_sec``, ``reconnect_max_sec``, ``connect_timeout_sec``). Raises ConfigError
    when the address is not ``host:port``."""
    try:
        host, port = parse_host_port(config.address)
    except ValueError as exc:
        raise ConfigError(config.path, "address", str(exc)) from exc
    options = config.listener_options
    return AdaraListener(
        host,
        port,
        stale_timeout_s=float(options.get("stale_timeout_sec", STALE_TIMEOUT_S)),
        reconnect_max_s=float(options.get("reconnect_max_sec", RECONNECT_MAX_S)),
        connect_timeout_s=float(options.get("connect_timeout_sec", CONNECT_TIMEOUT_S)),
    )
