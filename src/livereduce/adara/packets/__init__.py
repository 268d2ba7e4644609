"""ADARA packets: the header and every packet type livereduce reads or writes, both ways.

API summary
-----------
- ``encode(packet) -> bytes``: one whole packet (header + payload, padded to 4 bytes).
- ``decode(data, offset=0) -> Packet``: one whole packet from ``bytes`` (header + payload);
  ``offset`` is only used in error messages. Raises the errors of
  :mod:`livereduce.adara.errors`.
- ``decode_header(data, offset=0) -> Header``, ``check_length(header, offset)`` (payload
  length a multiple of 4) and ``decode_payload(header, payload, offset=0)`` (``payload``:
  bytes or a memoryview of bytes) for callers that frame the stream themselves
  (:class:`livereduce.adara.parser.StreamParser`). ``decodable(format_word)``: a known layout,
  or a newer version of a known type, which is read with the newest layout known (one warning
  per format word, as ADARA's parser dispatches on the base type).
- ``PacketType``: IntEnum of format words (``type_id << 8 | version``), e.g.
  ``PacketType.BANKED_EVENT_V1 == 0x400001``; ``.base_type`` and ``.version`` split it.
- Packet dataclasses (frozen, slotted, keyword-only), all with ``timestamp_ns`` (header time,
  Unix epoch, ns) and a ``packet_type`` property; those with two versions take ``version``:
  ``ClientHello(start_time_ns, client_flags, version)``,
  ``RunStatus(run_number, run_start_ns, status: RunStatusCode, file_number, paused,
  pause_file_number, addendum, addendum_file_number, version)``, ``RunInfo(xml)``,
  ``Geometry(xml)``, ``BeamlineInfo(beamline_id, short_name, long_name, target_station,
  version)``, ``DeviceDescriptor(device_id, xml)``,
  ``VariableU32 / VariableDouble / VariableString(device_id, variable_id, status:
  VariableStatus | int, severity: VariableSeverity | int, value)`` (an unknown alarm code is
  kept as its raw int), ``VariableU32Array / VariableDoubleArray`` (same, ``value`` an (N,)
  uint32 / float64 array),
  ``BankedEvent(pulse_charge_10pc, pulse_energy_ev, cycle, flags, veto_flags, sources:
  tuple[SourceSection], version)`` with ``SourceSection(source_id, intra_pulse_time_100ns,
  tof_offset_100ns, tof_corrected, banks: tuple[BankSection])`` and ``BankSection(bank_id,
  events)`` (``events``: (N, 2) uint32 array of ``(tof_100ns, pixel_id)``; properties
  ``tof_100ns``, ``pixel_id``; ``BankSection.from_arrays(bank_id, tof_100ns, pixel_id)``);
  ``BankedEvent.event_arrays() -> (bank_id, tof_100ns, pixel_id)`` flat (N,) uint32 arrays
  (the last two are the columns of one new (N, 2) array), ``BankedEvent.banks``,
  ``BankedEvent.event_count``,
  ``BeamMonitorEvent(pulse_charge_10pc, pulse_energy_ev, cycle, flags, veto_flags, monitors:
  tuple[MonitorSection], version)`` with ``MonitorSection(monitor_id, source_id,
  tof_offset_100ns, tof_corrected, events)`` (``events``: (N,) uint32 raw words; properties
  ``tof_100ns``, ``cycle``, ``rising_edge``; ``MonitorSection.from_arrays(...)``) and
  ``BeamMonitorEvent.event_arrays() -> (monitor_id, tof_100ns)``,
  ``Heartbeat()``, ``DataDone()``, ``Rtdl(...)``, ``StreamAnnotation(marker_type, reset_hint,
  scan_index, comment)``, ``Sync(file_offset, comment, signature)``.
- Client hello start times: ``START_NOW`` (0) and ``START_OF_RUN`` (1) are sent as is; any
  other ``start_time_ns`` is a Unix time, sent as EPICS seconds; ``describe_start_time(ns)``
  says which in words.
- Constants: ``HEADER_FORMAT``, ``HEADER_SIZE``, ``EPICS_EPOCH_OFFSET_S``,
  ``UNMAPPED_BANK_ID``, ``ERROR_BANK_ID``, ``SYNC_SIGNATURE``, ``EVENT_DTYPE``;
  ``DECODABLE`` (the packet types with a decoder), ``PACKET_CLASSES``.
- ``encode`` raises ValueError for values that do not fit their wire fields.
- Wire format (the 16-byte header diagram, EPICS time, strings): :mod:`.wire`. Event payloads
  are decoded without per-event Python code: each bank's events are a read-only numpy view on
  the packet's bytes.

Layout
------
A package rather than one module, so that each part has one job and can be read alone, while
``livereduce.adara.packets`` stays the one import path (this file re-exports the whole public
API; nothing outside the package imports the submodules). A package, not a facade module over
siblings of ``adara/``, keeps the packet modules apart from the stream, client and replay
modules there.

- :mod:`livereduce.adara.codes` (outside the package, so that :mod:`livereduce.adara.errors`
  can name packet types without importing the packets): ``PacketType`` and the field codes;
- :mod:`.wire`: header layout, EPICS time, single-field checks and codecs, ``Header``,
  ``Packet`` and the versioned-packet base;
- :mod:`.control`: client hello, run status, heartbeat, data done, stream annotation, sync;
- :mod:`.metadata`: run info, geometry, beamline info, device descriptor, variable values;
- :mod:`.sections` and :mod:`.events`: bank / source / monitor sections, banked event and
  beam monitor event packets (one shared pulse-packet base);
- :mod:`.rtdl`: the RTDL packet;
- :mod:`.codec`: ``encode``, ``decode``, ``decode_header``, ``decode_payload`` and the class
  table.
"""

from livereduce.adara.codes import (
    BankedEventFlag,
    MarkerType,
    PacketType,
    RunStatusCode,
    VariableSeverity,
    VariableStatus,
)
from livereduce.adara.packets.codec import (
    DECODABLE,
    PACKET_CLASSES,
    check_length,
    decodable,
    decode,
    decode_header,
    decode_payload,
    encode,
)
from livereduce.adara.packets.control import (
    START_NOW,
    START_OF_RUN,
    SYNC_SIGNATURE,
    ClientHello,
    DataDone,
    Heartbeat,
    RunStatus,
    StreamAnnotation,
    Sync,
    describe_start_time,
)
from livereduce.adara.packets.events import BankedEvent, BeamMonitorEvent
from livereduce.adara.packets.metadata import (
    BeamlineInfo,
    DeviceDescriptor,
    Geometry,
    RunInfo,
    VariableDouble,
    VariableDoubleArray,
    VariableString,
    VariableU32,
    VariableU32Array,
)
from livereduce.adara.packets.rtdl import RTDL_FRAME_COUNT, Rtdl
from livereduce.adara.packets.sections import (
    ERROR_BANK_ID,
    EVENT_DTYPE,
    UNMAPPED_BANK_ID,
    BankSection,
    MonitorSection,
    SourceSection,
)
from livereduce.adara.packets.wire import (
    EPICS_EPOCH_OFFSET_S,
    HEADER_FORMAT,
    HEADER_SIZE,
    Header,
    Packet,
)

__all__ = [
    "DECODABLE",
    "EPICS_EPOCH_OFFSET_S",
    "ERROR_BANK_ID",
    "EVENT_DTYPE",
    "HEADER_FORMAT",
    "HEADER_SIZE",
    "PACKET_CLASSES",
    "RTDL_FRAME_COUNT",
    "START_NOW",
    "START_OF_RUN",
    "SYNC_SIGNATURE",
    "UNMAPPED_BANK_ID",
    "BankSection",
    "BankedEvent",
    "BankedEventFlag",
    "BeamMonitorEvent",
    "BeamlineInfo",
    "ClientHello",
    "DataDone",
    "DeviceDescriptor",
    "Geometry",
    "Header",
    "Heartbeat",
    "MarkerType",
    "MonitorSection",
    "Packet",
    "PacketType",
    "Rtdl",
    "RunInfo",
    "RunStatus",
    "RunStatusCode",
    "SourceSection",
    "StreamAnnotation",
    "Sync",
    "VariableDouble",
    "VariableDoubleArray",
    "VariableSeverity",
    "VariableStatus",
    "VariableString",
    "VariableU32",
    "VariableU32Array",
    "check_length",
    "decodable",
    "decode",
    "decode_header",
    "decode_payload",
    "describe_start_time",
    "encode",
]
