"""Partial results of scale-out instances, and their sum.

With ``listener_options.group_id`` each instance reduces the event partitions its consumer
group assigns it and, after every chunk, publishes its output workspace (scipp HDF5 bytes) to
the results topic: key ``<run>:<instance>``, header ``livereduce-partial`` holding the JSON of
:class:`Partial` (run, instance, sequence, and per ``topic:partition`` the offsets ``[first,
end)`` the partial covers). The instance commits those offsets to the group right after, so a
partition that moves to another instance (a rebalance, or this one killed) is read by its new
owner from where the published partial stops: nothing counted twice, nothing lost.

:func:`sum_partials` adds partials (the reduction must be additive: histograms accumulated
with ``Add``); event lists (``preserve_events`` with events in the output) are concatenated
along their bins, which is an event-mode merge only when every instance binned the same way.
:func:`check_covers` says where the latest partials of a run overlap or leave gaps.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import scipp as sc

HEADER = "livereduce-partial"


class MergeError(Exception):
    """Partials that cannot be summed (different shapes, units or coordinates); says which."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Partial:
    """What a partial result message says about itself (module docstring)."""

    run: int
    instance: str
    sequence: int
    covers: Mapping[str, list[int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The header's JSON object."""
        return {
            "run": self.run,
            "instance": self.instance,
            "sequence": self.sequence,
            "covers": dict(self.covers),
        }

    @classmethod
    def from_json(cls, data: object) -> Partial:
        """Parse a header; raises ValueError when it is not one :meth:`to_json` wrote."""
        if not isinstance(data, dict):
            raise ValueError(f"partial header is not an object: {data!r}")
        try:
            return cls(
                run=int(data["run"]),
                instance=str(data["instance"]),
                sequence=int(data["sequence"]),
                covers={str(k): [int(v[0]), int(v[1])] for k, v in data["covers"].items()},
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
            raise ValueError(f"partial header {data!r}: {error}") from None


def encode_partial(output: Any) -> bytes:
    """``output`` (a scipp object) as scipp HDF5 bytes."""
    buffer = io.BytesIO()
    sc.io.save_hdf5(output, buffer)
    return buffer.getvalue()


def decode_partial(data: bytes) -> Any:
    """The scipp object :func:`encode_partial` wrote."""
    return sc.io.load_hdf5(io.BytesIO(data))


def sum_partials(parts: Iterable[Any]) -> Any:
    """The sum of ``parts`` (scipp objects of one kind and shape). Raises MergeError when there
    are none or they do not add."""
    items = list(parts)
    if not items:
        raise MergeError("no partial results to merge")
    total = items[0].copy()
    for index, part in enumerate(items[1:], start=1):
        try:
            total = _add(total, part)
        except (sc.DimensionError, sc.UnitError, sc.DTypeError, sc.CoordError, ValueError) as e:
            raise MergeError(f"partial {index} does not add to the others: {e}") from None
    return total


def _add(total: Any, part: Any) -> Any:
    if isinstance(total, sc.DataGroup):
        if set(total) != set(part):
            raise ValueError(f"items {sorted(total)} and {sorted(part)} differ")
        return sc.DataGroup({k: _add(total[k], part[k]) for k in total})
    if not isinstance(part, type(total)):
        raise ValueError(f"a {type(part).__name__} does not add to a {type(total).__name__}")
    if hasattr(total, "sizes") and total.sizes != part.sizes:
        raise ValueError(f"sizes {part.sizes} differ from {total.sizes}")  # no broadcasting
    if isinstance(total, sc.DataArray | sc.Variable) and total.bins is not None:
        return sc.concat([total, part], "partial").bins.concat("partial")
    return total + part


def check_covers(partials: Iterable[Partial]) -> list[str]:
    """Problems in the offsets a run's partials cover: overlaps (counted twice) and gaps
    (lost), per ``topic:partition``; empty when the ranges tile each partition."""
    spans: dict[str, list[tuple[int, int, str]]] = {}
    for partial in partials:
        for key, (first, end) in partial.covers.items():
            spans.setdefault(key, []).append((first, end, partial.instance))
    problems = []
    for key, ranges in sorted(spans.items()):
        ranges.sort()
        for (_, a_end, a_who), (b_first, b_end, b_who) in itertools.pairwise(ranges):
            if b_first < a_end:
                problems.append(
                    f"{key}: offsets {b_first}..{min(a_end, b_end) - 1} in the partials of both "
                    f"{a_who} and {b_who} (counted twice)"
                )
            elif b_first > a_end:
                problems.append(f"{key}: offsets {a_end}..{b_first - 1} in no partial (lost)")
    return problems


def latest_per_instance(
    messages: Iterable[tuple[Partial, bytes]], run: int
) -> dict[str, tuple[Partial, bytes]]:
    """Of ``(header, value)`` pairs read from the results topic, the newest (highest
    sequence) of each instance for ``run``."""
    latest: dict[str, tuple[Partial, bytes]] = {}
    for partial, value in messages:
        if partial.run != run:
            continue
        known = latest.get(partial.instance)
        if known is None or partial.sequence > known[0].sequence:
            latest[partial.instance] = (partial, value)
    return latest


def header_of(headers: Any) -> Partial | None:
    """The Partial in a Kafka message's headers (a list of (name, bytes) pairs, or None), None
    when it has none or it does not parse."""
    for name, value in headers or []:
        if name == HEADER and isinstance(value, bytes | str):
            try:
                return Partial.from_json(json.loads(value))
            except (ValueError, json.JSONDecodeError):
                return None
    return None
