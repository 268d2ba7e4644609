"""Values read out of SNS NeXus files, for both readers of them (the ``nexus`` listener and the
replay's :mod:`livereduce.adara.runfile`): detector bank names, time datasets, text of datasets
and attributes, ISO 8601 times."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import numpy as np
import scipp as sc

BANK_NAME = re.compile(r"bank(\d+)_events")
"""A detector bank's NXevent_data group, ``bank<N>_events``; the ``bank_error_events`` and
``bank_unmapped_events`` pseudo-banks do not match (LoadEventNexus leaves them out)."""

EPICS_EPOCH_UNIX_S = 631152000
"""Seconds from the Unix epoch to the EPICS epoch 1990-01-01 UTC, ADARA's time base (the
``offset_seconds`` attribute of SNS time datasets counts from it)."""


def detector_banks(names: Iterable[str]) -> list[str]:
    """The ``bank<N>_events`` among ``names``, by bank number."""
    return sorted(
        (name for name in names if BANK_NAME.fullmatch(name)),
        key=lambda name: int(name[len("bank") : -len("_events")]),
    )


def times_ns(dataset: Any, default_offset: str = "") -> np.ndarray:
    """A NeXus time dataset (``event_time_zero``, an NXlog's ``time``: an h5py Dataset) as (M,)
    int64 Unix ns: its values in its ``units`` (default seconds) from its ``offset`` (ISO 8601)
    or ``start``, or ``offset_seconds`` + ``offset_nanoseconds`` from the EPICS epoch, else
    from ``default_offset`` (ISO 8601, e.g. the run's ``start_time``); float seconds become
    integer ns by truncation, as scippnexus does, so times match a scippnexus read exactly.
    Raises ValueError when it has no offset or a bad unit or time."""
    attrs = dataset.attrs
    if "offset_seconds" in attrs:
        base = (int(attrs["offset_seconds"]) + EPICS_EPOCH_UNIX_S) * 10**9 + int(
            attrs.get("offset_nanoseconds", 0)
        )
    elif "offset" in attrs or "start" in attrs:
        base = iso_to_unix_ns(decode_text(attrs.get("offset", attrs.get("start"))))
    elif default_offset:
        base = iso_to_unix_ns(default_offset)
    else:
        raise ValueError(f"{dataset.name} has no offset / start attribute")
    unit = decode_text(attrs.get("units", b"second"))
    try:
        relative = sc.array(
            dims=["t"], values=np.asarray(dataset[()], dtype=np.float64), unit=unit
        ).to(unit="ns", dtype="int64")
    except (sc.UnitError, sc.DimensionError, RuntimeError) as error:
        raise ValueError(f"{dataset.name}: unit {unit!r}: {error}") from None
    return base + relative.values


_ISO = re.compile(r"^(?P<base>[^.]*?)(?:\.(?P<fraction>\d+))?(?P<tz>Z|[+-]\d\d:?\d\d)?$")


def iso_to_unix_ns(text: str) -> int:
    """``text`` (ISO 8601, up to nanosecond fractions, an optional ``Z`` or ``±HH[:]MM`` offset;
    none means UTC, as SNS writes them) as Unix ns. Raises ValueError when it is not such a
    time. Example: ``2017-11-01T10:12:13.123456789-04:00`` -> 1509545533123456789."""
    match = _ISO.match(text.strip())
    if not match:
        raise ValueError(f"not an ISO 8601 time: {text!r}")
    tz = match["tz"] or "+00:00"
    moment = datetime.fromisoformat(match["base"] + ("+00:00" if tz == "Z" else tz))
    fraction_ns = int((match["fraction"] or "0")[:9].ljust(9, "0"))
    return int(moment.timestamp()) * 1_000_000_000 + fraction_ns


def decode_text(raw: object) -> str:
    """An HDF5 string value (bytes, numpy bytes, str, or an array of them: its first element)
    as str; bytes are UTF-8 with undecodable bytes replaced."""
    if isinstance(raw, np.ndarray):
        raw = raw.ravel()[0] if raw.size else b""
    if isinstance(raw, bytes | np.bytes_):
        return bytes(raw).decode("utf-8", errors="replace")
    return str(raw)
