"""The sections inside event packets: a detector bank's events, a source's banks, a beam
monitor's events. Each holds its events as a numpy array of wire words (a read-only view on
the packet's bytes after decoding), never as Python objects per event.

Layouts: ADARA protocol document §Banked Event Section and §Beam Monitor Event, ADARA
``common/ADARAPackets.h`` (ADARA 1.10.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from livereduce.adara.packets.wire import COR_OFFSET_MASK, U32_MAX, check_trusted

UNMAPPED_BANK_ID = 0xFFFF_FFFF
"""Bank ID of pixels that were not in the pixel mapping table (protocol §Banked Event Section)."""
ERROR_BANK_ID = 0xFFFF_FFFE
"""Bank ID of pixels that had their error bit set by the detector."""

EVENT_DTYPE = np.dtype("<u4")
"""Dtype of every event word on the wire."""

_new = object.__new__
_setattr = object.__setattr__


def _as_words(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype != EVENT_DTYPE:
        if array.size and (
            array.dtype.kind not in "ui" or array.min() < 0 or array.max() > U32_MAX
        ):
            raise ValueError(f"{what} must be unsigned 32-bit integers")
        array = array.astype(EVENT_DTYPE)
    return array


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class BankSection:
    """One detector bank's events in one source section.

    ``events``: (N, 2) uint32 array of ``(tof_100ns, pixel_id)`` pairs, as on the wire (a
    read-only view on the packet's bytes after decoding). Compared by value.
    """

    bank_id: int
    events: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        events = _as_words(self.events, "events")
        if events.ndim != 2 or events.shape[1] != 2:
            raise ValueError(f"events must have shape (N, 2), not {events.shape}")
        _setattr(self, "events", events)

    @classmethod
    def _trusted(cls, bank_id: int, events: np.ndarray) -> BankSection:
        """Build from a decoded (N, 2) uint32 view without re-checking it (the hot path)."""
        section = _new(cls)
        _setattr(section, "bank_id", bank_id)
        _setattr(section, "events", events)
        return section

    @classmethod
    def from_arrays(cls, bank_id: int, tof_100ns: Any, pixel_id: Any) -> BankSection:
        """Build from two equal-length 1-D arrays (time of flight in 100 ns, pixel ID)."""
        return cls(bank_id=bank_id, events=np.stack([tof_100ns, pixel_id], axis=1))

    @property
    def tof_100ns(self) -> np.ndarray:
        """(N,) time of flight of each event, in units of 100 ns (strided view)."""
        return self.events[:, 0]

    @property
    def pixel_id(self) -> np.ndarray:
        """(N,) logical pixel ID of each event (strided view)."""
        return self.events[:, 1]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BankSection):
            return NotImplemented
        return self.bank_id == other.bank_id and np.array_equal(self.events, other.events)

    __hash__ = None  # type: ignore[assignment]  # holds arrays: compared by value, not hashed


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceSection:
    """The events of one hardware event source in one pulse: ``source_id``,
    ``intra_pulse_time_100ns``, ``tof_offset_100ns`` (31 bits; the frame-skew offset that was
    added, or should be added when ``tof_corrected`` is False) and its ``banks``."""

    source_id: int
    intra_pulse_time_100ns: int = 0
    tof_offset_100ns: int = 0
    tof_corrected: bool = True
    banks: tuple[BankSection, ...] = ()

    @classmethod
    def _trusted(
        cls, source_id: int, intra: int, cor: int, banks: tuple[BankSection, ...]
    ) -> SourceSection:
        """Build from decoded header words (``cor``: the COR | TOF offset word) and banks,
        without checks (the hot path: skipping ``__init__`` and keyword arguments makes small
        banked event packets decode about 10% faster)."""
        section = _new(cls)
        _setattr(section, "source_id", source_id)
        _setattr(section, "intra_pulse_time_100ns", intra)
        _setattr(section, "tof_offset_100ns", cor & COR_OFFSET_MASK)
        _setattr(section, "tof_corrected", cor > COR_OFFSET_MASK)
        _setattr(section, "banks", banks)
        return section


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class MonitorSection:
    """One beam monitor's events in one pulse.

    ``monitor_id`` (10 bits), ``source_id``, ``tof_offset_100ns`` / ``tof_corrected`` as for
    :class:`SourceSection`, ``events``: (N,) uint32 raw words, bit 31 rising edge, bits 30..21
    cycle, bits 20..0 time of flight in 100 ns (at most 22 bits of count). Compared by value.
    """

    monitor_id: int
    source_id: int = 0
    tof_offset_100ns: int = 0
    tof_corrected: bool = True
    events: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0, EVENT_DTYPE))

    def __post_init__(self) -> None:
        events = _as_words(self.events, "events")
        if events.ndim != 1:
            raise ValueError(f"monitor events must be 1-D, not {events.shape}")
        _setattr(self, "events", events)

    @classmethod
    def _trusted(
        cls, monitor_id: int, source_id: int, cor: int, events: np.ndarray
    ) -> MonitorSection:
        """Build from decoded header fields (``cor``: the COR | TOF offset word) and a (N,)
        uint32 view, without checks (the hot path)."""
        section = _new(cls)
        _setattr(section, "monitor_id", monitor_id)
        _setattr(section, "source_id", source_id)
        _setattr(section, "tof_offset_100ns", cor & COR_OFFSET_MASK)
        _setattr(section, "tof_corrected", cor > COR_OFFSET_MASK)
        _setattr(section, "events", events)
        return section

    @classmethod
    def from_arrays(
        cls,
        monitor_id: int,
        tof_100ns: Any,
        *,
        cycle: Any = 0,
        rising_edge: Any = False,
        source_id: int = 0,
        tof_offset_100ns: int = 0,
        tof_corrected: bool = True,
    ) -> MonitorSection:
        """Pack times of flight (100 ns, < 2**21), cycles (< 2**10) and rising-edge flags
        (scalars broadcast) into event words."""
        tof = np.asarray(tof_100ns, dtype=np.int64)
        cycles = np.broadcast_to(np.asarray(cycle, dtype=np.int64), tof.shape)
        rising = np.broadcast_to(np.asarray(rising_edge, dtype=np.int64), tof.shape)
        if tof.size and (tof.min() < 0 or tof.max() >= 1 << 21):
            raise ValueError("monitor tof_100ns must be in [0, 2**21)")
        if cycles.size and (cycles.min() < 0 or cycles.max() >= 1 << 10):
            raise ValueError("monitor cycle must be in [0, 2**10)")
        words = (rising.astype(bool).astype(np.int64) << 31) | (cycles << 21) | tof
        return cls(
            monitor_id=monitor_id,
            source_id=source_id,
            tof_offset_100ns=tof_offset_100ns,
            tof_corrected=tof_corrected,
            events=words.astype(EVENT_DTYPE),
        )

    @property
    def tof_100ns(self) -> np.ndarray:
        """(N,) time of flight in units of 100 ns."""
        return self.events & 0x1FFFFF

    @property
    def cycle(self) -> np.ndarray:
        """(N,) 10-bit cycle of each event."""
        return (self.events >> 21) & 0x3FF

    @property
    def rising_edge(self) -> np.ndarray:
        """(N,) bool: the event is from the discriminator's rising edge."""
        return (self.events >> 31).astype(bool)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MonitorSection):
            return NotImplemented
        return (
            self.monitor_id == other.monitor_id
            and self.source_id == other.source_id
            and self.tof_offset_100ns == other.tof_offset_100ns
            and self.tof_corrected == other.tof_corrected
            and np.array_equal(self.events, other.events)
        )

    __hash__ = None  # type: ignore[assignment]  # holds arrays: compared by value, not hashed


# The fast constructors set every field by hand: they must name exactly the dataclass fields.
check_trusted(BankSection, ("bank_id", "events"))
check_trusted(
    SourceSection,
    ("source_id", "intra_pulse_time_100ns", "tof_offset_100ns", "tof_corrected", "banks"),
)
check_trusted(
    MonitorSection, ("monitor_id", "source_id", "tof_offset_100ns", "tof_corrected", "events")
)
