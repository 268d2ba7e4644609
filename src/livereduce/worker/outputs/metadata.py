"""The run's metadata in the result file, so that ``result.h5`` says what it holds.

Written as HDF5 attributes of the file's root group (scipp's ``load_hdf5`` ignores them, so the
file still loads as the output workspace): :data:`METADATA_KEYS`. Times are ISO 8601 UTC
strings (empty when unknown), ``proton_charge`` is in pC (NaN when unknown).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py

from livereduce import __version__

PREFIX = "livereduce_"
"""Attribute names carry it: scipp writes its own attributes on the root group too."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultMetadata:
    """What a result file says about itself: ``instrument``, ``run_number`` (0: no run),
    ``title``, ``experiment_identifier``, ``start_time`` / ``end_time`` (ISO 8601 UTC; the end
    is the last pulse received, final once ``run_ended``), ``events`` (detector events of the
    run so far), ``proton_charge`` (pC), ``updated`` (when the file was written) and
    ``version`` (livereduce's)."""

    instrument: str = ""
    run_number: int = 0
    title: str = ""
    experiment_identifier: str = ""
    start_time: str = ""
    end_time: str = ""
    run_ended: bool = False
    events: int = 0
    proton_charge: float = math.nan
    updated: str = ""
    version: str = __version__

    def attributes(self) -> dict[str, object]:
        """The HDF5 root attributes (names with :data:`PREFIX`) the result writer sets."""
        return {PREFIX + key: value for key, value in asdict(self).items()}


METADATA_KEYS = tuple(ResultMetadata.__dataclass_fields__)


def iso_utc(moment: datetime | float | None) -> str:
    """``moment`` (aware datetime or Unix seconds) as ISO 8601 UTC; ``""`` for None."""
    if moment is None:
        return ""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, tz=UTC)
    return moment.astimezone(UTC).isoformat()


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata of a result file as a dict (keys of :data:`METADATA_KEYS`; missing ones are
    left out, so files of older versions read as empty). Raises OSError."""
    with h5py.File(path, "r") as h5:
        out: dict[str, Any] = {}
        for key in METADATA_KEYS:
            if PREFIX + key in h5.attrs:
                value = h5.attrs[PREFIX + key]
                out[key] = value.decode() if isinstance(value, bytes) else _plain(value)
        return out


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def describe(metadata: Mapping[str, Any]) -> str:
    """One line for a plot title: instrument, run, title, events, proton charge, end/update."""
    run = f"run {metadata.get('run_number')}" if metadata.get("run_number") else "no run"
    parts = [f"{metadata.get('instrument', '')} {run}".strip()]
    if metadata.get("title"):
        parts[0] += f": {metadata['title']}"
    facts = [f"{int(metadata.get('events', 0)):,} events"]
    charge = metadata.get("proton_charge")
    if isinstance(charge, float) and math.isfinite(charge):
        facts.append(f"{charge:.3g} pC")
    if metadata.get("updated"):
        facts.append(f"updated {metadata['updated'][:19]}")
    return f"{parts[0]} | {', '.join(facts)}"
