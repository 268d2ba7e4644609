"""A run read from a NeXus event file, turned into the ADARA packets an SMS sends for it.

Per run, as the SMS sends it (mantid-live-data.md §3.2.3, "SMS prologue"): the *prologue* (run
status NEW_RUN with the run number and start time, run info XML with the title and proposal,
geometry with the file's instrument XML, beamline info v1, one device descriptor per device of
the DASlogs); then the *items*, in time order: for every pulse one banked event packet v1
(header time = pulse time, pulse charge from ``proton_charge``, one bank section per bank with
events in that pulse, error / unmapped pseudo-banks included) and, when the file has monitors,
one beam monitor event packet v1; every DASlog value as a variable value v0 packet (u32,
double or string) at its log timestamp, except the ``pause`` and ``scan_index`` logs, which an
SMS makes from its own stream annotations: each change of ``pause`` is a PAUSE (1) or RESUME
(0) annotation, each change of ``scan_index`` a SCAN_START (the new index) or SCAN_STOP (0)
annotation, and the value 0 a run starts with is not sent (a reader starts both logs at 0);
last, run status END_RUN. Packet versions are those a current SMS sends and readadara
expects.

Pulses keep the file's order even where pulse times step backward; items are ordered by a
"pacing key", the running maximum of each sequence's times (clipped to the run's pulse span),
so one odd timestamp neither reorders pulses nor stalls the pacing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from livereduce.adara import packets
from livereduce.adara.metadata_xml import ProcessVariable, device_xml, runinfo_xml
from livereduce.adara.runfile import LogSeries, RunFile

SOURCE_ID = 1
"""Source ID of the single event source section per pulse (the replay has one source)."""
CYCLE_COUNT = 600
"""The accelerator cycle counter wraps at 600 pulses (ADARA doc/design, RTDL cycle field)."""
ANNOTATED_LOGS = frozenset({"pause", "scan_index"})
"""DASlogs an SMS writes from stream annotations, not from a device's PV (Mantid's live
listener makes the same two logs from the annotations)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStream:
    """The encoded packets of one run.

    ``prologue``: packets sent to a client that starts with the run. ``join_head``: what a
    client joining mid-run gets first (run status STATE instead of NEW_RUN, then the same
    metadata). ``items``: (M,) encoded data packets in send order, END_RUN last.
    ``keys_ns``: (M,) int64 pacing keys (Unix ns, non-decreasing). ``offsets_s``: (M,) float64
    seconds from the first item at speed 1. ``variable_slot``: (M,) int32, the PV index of a
    variable value item, -1 for other items.
    """

    run_number: int
    source: str
    prologue: tuple[bytes, ...] = field(repr=False)
    join_head: tuple[bytes, ...] = field(repr=False)
    items: tuple[bytes, ...] = field(repr=False)
    keys_ns: np.ndarray = field(repr=False)
    offsets_s: np.ndarray = field(repr=False)
    variable_slot: np.ndarray = field(repr=False)


def heartbeat_packet(now_ns: int) -> bytes:
    """An encoded heartbeat with header time ``now_ns`` (Unix ns)."""
    return packets.encode(packets.Heartbeat(timestamp_ns=now_ns))


def join_packets(stream: RunStream, i: int) -> list[bytes]:
    """What a client joining ``stream`` at item ``i`` gets first: the join head, then the
    latest value of every PV sent before item ``i`` (an SMS replays its variable cache)."""
    slots = stream.variable_slot[:i]
    latest = {int(slots[k]): k for k in np.flatnonzero(slots >= 0).tolist()}
    return [*stream.join_head, *(stream.items[k] for k in sorted(latest.values()))]


def build_run_stream(run: RunFile) -> RunStream:
    """Encode ``run`` (see the module docstring for what is sent). Raises ValueError when a
    value does not fit its wire field (e.g. a time before 1990)."""
    start_ns = run.start_time_ns
    prologue, join_head = _metadata(run)
    pulse_keys = (
        np.maximum.accumulate(run.pulse_times_ns) if run.pulse_count else run.pulse_times_ns
    )
    low = int(pulse_keys[0]) if run.pulse_count else start_ns
    high = int(pulse_keys[-1]) if run.pulse_count else start_ns

    entries: list[bytes] = []
    keys: list[np.ndarray] = []
    slots: list[np.ndarray] = []
    for slot, log in enumerate(run.logs):
        annotated = log.name in ANNOTATED_LOGS
        times, encoded = _annotations(log) if annotated else (log.times_ns, _variable_values(log))
        entries.extend(encoded)
        times = np.maximum.accumulate(times) if len(times) else times
        keys.append(np.clip(times, low, high))
        # annotations are not PVs: a late joiner does not get them from the variable cache
        slots.append(np.full(len(encoded), -1 if annotated else slot, dtype=np.int32))
    pulse_packets = _pulse_packets(run)
    per_pulse = len(pulse_packets) // max(run.pulse_count, 1)
    entries.extend(pulse_packets)
    keys.append(np.repeat(pulse_keys, per_pulse))
    slots.append(np.full(len(pulse_packets), -1, dtype=np.int32))

    all_keys = np.concatenate(keys)
    all_slots = np.concatenate(slots)
    order = np.argsort(all_keys, kind="stable")
    end_run = packets.encode(
        packets.RunStatus(
            timestamp_ns=high,
            run_number=run.run_number,
            run_start_ns=_whole_second(start_ns),
            status=packets.RunStatusCode.END_RUN,
        )
    )
    items = (*(entries[k] for k in order), end_run)
    keys_ns = np.append(all_keys[order], high).astype(np.int64)
    return RunStream(
        run_number=run.run_number,
        source=run.path.name,
        prologue=prologue,
        join_head=join_head,
        items=items,
        keys_ns=keys_ns,
        offsets_s=(keys_ns - keys_ns[0]) / 1e9,
        variable_slot=np.append(all_slots[order], -1).astype(np.int32),
    )


def _whole_second(unix_ns: int) -> int:
    return unix_ns - unix_ns % 1_000_000_000


def _metadata(run: RunFile) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    start_ns = run.start_time_ns
    common = [
        packets.RunInfo(
            timestamp_ns=start_ns,
            xml=runinfo_xml(run.run_number, run.experiment, run.title),
        ),
        packets.Geometry(timestamp_ns=start_ns, xml=run.instrument_xml),
        packets.BeamlineInfo(
            timestamp_ns=start_ns,
            beamline_id=run.beamline,
            short_name=run.short_name or run.instrument_name,
            long_name=run.instrument_name,
            target_station=run.target_station,
        ),
    ]
    devices: dict[int, tuple[str, list[ProcessVariable]]] = {}
    for log in run.logs:
        if log.name in ANNOTATED_LOGS:
            continue
        _device_name, pvs = devices.setdefault(log.device_id, (log.device_name, []))
        pvs.append(
            ProcessVariable(pv_id=log.variable_id, name=log.name, pv_type=log.kind, units=log.units)
        )
    common += [
        packets.DeviceDescriptor(timestamp_ns=start_ns, device_id=device_id, xml=device_xml(*dev))
        for device_id, dev in sorted(devices.items())
    ]
    encoded = tuple(packets.encode(p) for p in common)

    def status(code: packets.RunStatusCode) -> bytes:
        return packets.encode(
            packets.RunStatus(
                timestamp_ns=start_ns,
                run_number=run.run_number,
                run_start_ns=_whole_second(start_ns),
                status=code,
            )
        )

    return (
        (status(packets.RunStatusCode.NEW_RUN), *encoded),
        (status(packets.RunStatusCode.STATE), *encoded),
    )


def _annotations(log: LogSeries) -> tuple[np.ndarray, list[bytes]]:
    """(times, encoded stream annotations) for the changes of a ``pause`` or ``scan_index``
    log; the 0 each log starts a run with is implied, not sent."""
    values = np.asarray(log.values, dtype=np.int64)
    previous = np.concatenate([[0], values[:-1]])
    changes = np.flatnonzero(values != previous)
    out = []
    for k in changes.tolist():
        value = int(values[k])
        if log.name == "pause":
            marker = packets.MarkerType.PAUSE if value else packets.MarkerType.RESUME
        else:
            marker = packets.MarkerType.SCAN_START if value else packets.MarkerType.SCAN_STOP
        out.append(
            packets.encode(
                packets.StreamAnnotation(
                    timestamp_ns=int(log.times_ns[k]),
                    marker_type=marker,
                    scan_index=value if log.name == "scan_index" else 0,
                )
            )
        )
    return np.asarray(log.times_ns)[changes], out


def _variable_values(log: LogSeries) -> list[bytes]:
    ids = {"device_id": log.device_id, "variable_id": log.variable_id}
    times = log.times_ns.tolist()
    if log.kind == "double":
        return [
            packets.encode(packets.VariableDouble(timestamp_ns=t, value=v, **ids))
            for t, v in zip(times, log.values.tolist(), strict=True)
        ]
    if log.kind == "string":
        return [
            packets.encode(packets.VariableString(timestamp_ns=t, value=v, **ids))
            for t, v in zip(times, log.values.tolist(), strict=True)
        ]
    # signed PVs travel as their 32-bit two's complement; pv_type tells the reader to undo it
    words = (log.values.astype(np.int64) & 0xFFFFFFFF).tolist()
    return [
        packets.encode(packets.VariableU32(timestamp_ns=t, value=v, **ids))
        for t, v in zip(times, words, strict=True)
    ]


def _pulse_packets(run: RunFile) -> list[bytes]:
    """Per pulse, in file order: the banked event packet, then the beam monitor packet."""
    banks_of_pulse: list[list[packets.BankSection]] = [[] for _ in range(run.pulse_count)]
    for bank in run.banks:
        begin = bank.pulse_begin
        for p in np.flatnonzero(np.diff(begin)).tolist():
            lo, hi = int(begin[p]), int(begin[p + 1])
            banks_of_pulse[p].append(
                packets.BankSection.from_arrays(
                    bank.ident, bank.tof_100ns[lo:hi], bank.event_id[lo:hi]
                )
            )
    charge = np.rint(run.proton_charge_pc / 10.0).astype(np.int64).tolist()
    times = run.pulse_times_ns.tolist()
    # most pulses of a real run have no events: their (immutable) sections are shared
    no_banks = (packets.SourceSection(source_id=SOURCE_ID),)
    no_monitor_events = {
        m.ident: packets.MonitorSection(monitor_id=m.ident, source_id=SOURCE_ID)
        for m in run.monitors
    }
    monitor_bounds = [m.pulse_begin.tolist() for m in run.monitors]
    out: list[bytes] = []
    for p in range(run.pulse_count):
        preamble = {
            "timestamp_ns": times[p],
            "pulse_charge_10pc": charge[p],
            "cycle": p % CYCLE_COUNT,
        }
        banks = banks_of_pulse[p]
        sources = (
            (packets.SourceSection(source_id=SOURCE_ID, banks=tuple(banks)),) if banks else no_banks
        )
        out.append(packets.encode(packets.BankedEvent(sources=sources, **preamble)))
        if run.monitors:
            sections = []
            for m, bounds in zip(run.monitors, monitor_bounds, strict=True):
                lo, hi = bounds[p], bounds[p + 1]
                sections.append(
                    packets.MonitorSection.from_arrays(
                        m.ident, m.tof_100ns[lo:hi], source_id=SOURCE_ID
                    )
                    if hi > lo
                    else no_monitor_events[m.ident]
                )
            out.append(
                packets.encode(packets.BeamMonitorEvent(monitors=tuple(sections), **preamble))
            )
    return out
