"""ADARA format words and the enumerated codes inside packet fields.

Source: ADARA-Neutrons/adara ``common/ADARA.h`` (ADARA 1.10.4) and the protocol document's
tables; see :mod:`livereduce.adara.packets` for how they are used.
"""

from __future__ import annotations

from enum import IntEnum


class PacketType(IntEnum):
    """ADARA format words, ``type_id << 8 | version`` (ADARA.h ``PacketType``).

    All types of ADARA 1.10.4 are named, so errors and skip counters can say what they saw;
    :data:`DECODABLE` lists the ones this module decodes.
    """

    RAW_EVENT_V0 = 0x000000
    RAW_EVENT_V1 = 0x000001
    RTDL_V0 = 0x000100
    RTDL_V1 = 0x000101
    SOURCE_LIST_V0 = 0x000200
    MAPPED_EVENT_V0 = 0x000300
    MAPPED_EVENT_V1 = 0x000301
    BANKED_EVENT_V0 = 0x400000
    BANKED_EVENT_V1 = 0x400001
    BANKED_EVENT_STATE_V0 = 0x410000
    BEAM_MONITOR_EVENT_V0 = 0x400100
    BEAM_MONITOR_EVENT_V1 = 0x400101
    PIXEL_MAPPING_V0 = 0x400200
    PIXEL_MAPPING_ALT_V0 = 0x410200
    PIXEL_MAPPING_ALT_V1 = 0x410201
    RUN_STATUS_V0 = 0x400300
    RUN_STATUS_V1 = 0x400301
    RUN_INFO_V0 = 0x400400
    TRANS_COMPLETE_V0 = 0x400500
    CLIENT_HELLO_V0 = 0x400600
    CLIENT_HELLO_V1 = 0x400601
    STREAM_ANNOTATION_V0 = 0x400700
    SYNC_V0 = 0x400800
    HEARTBEAT_V0 = 0x400900
    GEOMETRY_V0 = 0x400A00
    BEAMLINE_INFO_V0 = 0x400B00
    BEAMLINE_INFO_V1 = 0x400B01
    DATA_DONE_V0 = 0x400C00
    BEAM_MONITOR_CONFIG_V0 = 0x400D00
    BEAM_MONITOR_CONFIG_V1 = 0x400D01
    DETECTOR_BANK_SETS_V0 = 0x400E00
    DEVICE_DESCRIPTOR_V0 = 0x800000
    VARIABLE_U32_V0 = 0x800100
    VARIABLE_DOUBLE_V0 = 0x800200
    VARIABLE_STRING_V0 = 0x800300
    VARIABLE_U32_ARRAY_V0 = 0x800400
    VARIABLE_DOUBLE_ARRAY_V0 = 0x800500
    MULT_VARIABLE_U32_V0 = 0x810100
    MULT_VARIABLE_DOUBLE_V0 = 0x810200
    MULT_VARIABLE_STRING_V0 = 0x810300
    MULT_VARIABLE_U32_ARRAY_V0 = 0x810400
    MULT_VARIABLE_DOUBLE_ARRAY_V0 = 0x810500

    @property
    def base_type(self) -> int:
        """The 24-bit type id (e.g. 0x4000 for banked events)."""
        return self.value >> 8

    @property
    def version(self) -> int:
        """The 8-bit packet version."""
        return self.value & 0xFF


class RunStatusCode(IntEnum):
    """Run status of a run status packet (ADARA.h ``RunStatus``)."""

    NO_RUN = 0
    NEW_RUN = 1
    RUN_EOF = 2
    RUN_BOF = 3
    END_RUN = 4
    STATE = 5
    PROLOGUE = 6


class VariableStatus(IntEnum):
    """EPICS alarm status of a variable value (ADARA.h ``VariableStatus``)."""

    OK = 0
    READ_ERROR = 1
    WRITE_ERROR = 2
    HIHI_LIMIT = 3
    HIGH_LIMIT = 4
    LOLO_LIMIT = 5
    LOW_LIMIT = 6
    BAD_STATE = 7
    CHANGED_STATE = 8
    NO_COMMUNICATION = 9
    COMMUNICATION_TIMEOUT = 10
    HARDWARE_LIMIT = 11
    BAD_CALCULATION = 12
    INVALID_SCAN = 13
    LINK_FAILED = 14
    INVALID_STATE = 15
    BAD_SUBROUTINE = 16
    UNDEFINED_ALARM = 17
    DISABLED = 18
    SIMULATED = 19
    READ_PERMISSION = 20
    WRITE_PERMISSION = 21
    UPSTREAM_DISCONNECTED = 0xFFFE
    NOT_REPORTED = 0xFFFF


class VariableSeverity(IntEnum):
    """EPICS alarm severity of a variable value (ADARA.h ``VariableSeverity``)."""

    OK = 0
    MINOR_ALARM = 1
    MAJOR_ALARM = 2
    INVALID = 3
    NOT_REPORTED = 0xFFFF


class MarkerType(IntEnum):
    """Stream annotation marker types (ADARA.h ``MarkerType``)."""

    GENERIC = 0
    SCAN_START = 1
    SCAN_STOP = 2
    PAUSE = 3
    RESUME = 4
    OVERALL_RUN_COMMENT = 5
    SYSTEM = 6


class BankedEventFlag(IntEnum):
    """Bits of the banked / beam monitor event ``flags`` field (protocol table
    "Banked Event Flag Definitions"; Mantid's names)."""

    ERROR_PIXELS = 0x01
    PARTIAL_DATA = 0x02
    PULSE_VETO = 0x04
    MISSING_RTDL = 0x08
    MAPPING_ERROR = 0x10
    DUPLICATE_PULSE = 0x20
    PCHARGE_UNCORRECTED = 0x40
    VETO_UNCORRECTED = 0x80
