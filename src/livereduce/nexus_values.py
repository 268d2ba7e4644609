"""Values read out of SNS NeXus files, for both readers of them (the ``nexus`` listener and the
replay's :mod:`livereduce.adara.runfile`): text of datasets and attributes, ISO 8601 times."""

from __future__ import annotations

import re
from datetime import datetime

import numpy as np

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
