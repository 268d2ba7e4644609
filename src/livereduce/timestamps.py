"""ISO 8601 times as SNS NeXus files write them (``start_time``, the ``offset`` of
``event_time_zero``), to Unix nanoseconds: the one parser both NeXus readers use."""

from __future__ import annotations

import re
from datetime import datetime

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
