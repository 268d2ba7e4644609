"""The accumulation workspace: processed chunks merged with Mantid's accumulation methods.

Mantid's LoadLiveData merges a processed chunk into the accumulation by ``Add`` (Plus),
``Replace`` or ``Append`` (AppendSpectra) (mantid-live-data.md §2.3 step 8). On scipp data:

- ``Replace``: the accumulation becomes the chunk.
- ``Append``: chunks are joined along their first dimension.
- ``Add`` on dense data (histograms): summed, bin by bin; coordinates must match.
- ``Add`` on binned data (events) whose bins are the same (e.g. binned by pixel): the event
  lists of each bin are merged, as Plus merges the event lists of each spectrum.
- ``Add`` on data whose first dimension has a datetime coordinate (the raw chunk layout, binned
  over ``event_time_zero``; per-pulse or per-time values): each chunk covers other times, so
  chunks are joined along that dimension. No event is summed away or lost either way.
- A DataGroup is accumulated item by item; non-scipp items keep the latest value.

Cost: adding a chunk costs O(chunk), never O(accumulation) (Mantid once slowed down run after run
by re-sorting everything accumulated, mantid-live-data.md §5.12). Events joined along the first
dimension go into a growable event buffer (capacity doubles, so each event is copied O(1) times
on average); other joins and merges keep a list of chunks and concatenate it only when the
accumulation is read (:meth:`Accumulation.value`, for post-processing or writing), then keep
the result so the next read only concatenates what came since.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipp as sc

from livereduce.config import AccumulationMethod

SCIPP_ERRORS = (RuntimeError, TypeError, ValueError, KeyError, IndexError)
"""What scipp raises for mismatched dims, coords, units and dtypes (its error classes derive
from RuntimeError and TypeError)."""

_MIN_CAPACITY = 1 << 16
"""Smallest event buffer: avoids a string of tiny reallocations for sparse streams."""


class AccumulationError(Exception):
    """A chunk cannot be merged into the accumulation (e.g. other bins, units or dims); the
    accumulation is left as it was."""


class Accumulation:
    """The accumulation workspace. ``version`` counts changes (to know when to write)."""

    def __init__(self) -> None:
        self._root: _Node | None = None
        self.version = 0
        self._cached: Any = None
        self._cached_version = -1

    @property
    def empty(self) -> bool:
        """True before the first chunk and after :meth:`clear`."""
        return self._root is None

    def clear(self) -> None:
        """Forget everything accumulated."""
        self._root = None
        self._cached = None
        self.version += 1

    def accumulate(self, method: AccumulationMethod, chunk: Any, *, replace: bool = False) -> None:
        """Merge the processed ``chunk`` by ``method``; with ``replace`` (or when empty) the
        chunk replaces what was accumulated and later chunks are merged by ``method``. Raises
        AccumulationError when it does not fit, leaving the accumulation unchanged."""
        if self._root is None or replace:
            self._root = _make_node(chunk, method)
        else:
            try:
                self._root.check(chunk)
            except (AccumulationError, *SCIPP_ERRORS) as error:
                raise AccumulationError(
                    f"cannot {method} this chunk to the accumulation: {error}"
                ) from None
            self._root.add(chunk)
        self.version += 1

    def value(self) -> Any:
        """The accumulated scipp object (None when empty). Do not modify it in place: binned
        results share the event buffer with the accumulation."""
        if self._root is None:
            return None
        if self._cached_version != self.version:
            self._cached = self._root.value()
            self._cached_version = self.version
        return self._cached


def _time_like(value: Any) -> bool:
    """Whether the first dimension of ``value`` carries a datetime coordinate."""
    if not isinstance(value, sc.DataArray | sc.Dataset) or not value.dims:
        return False
    coord = value.coords.get(value.dims[0])
    return coord is not None and coord.dtype == sc.DType.datetime64


def _is_binned(value: Any) -> bool:
    if isinstance(value, sc.Dataset):
        return any(item.bins is not None for item in value.values())
    return isinstance(value, sc.DataArray | sc.Variable) and value.bins is not None


def _make_node(value: Any, method: AccumulationMethod) -> _Node:  # noqa: PLR0911 - one per rule
    if isinstance(value, sc.DataGroup):
        return _GroupNode(value, method)
    if not isinstance(value, sc.DataArray | sc.Dataset | sc.Variable):
        return _LatestNode(value)
    if method is AccumulationMethod.REPLACE:
        return _LatestNode(value)
    joins = method is AccumulationMethod.APPEND or _time_like(value)
    binned = _is_binned(value)
    if joins and binned and isinstance(value, sc.DataArray) and value.ndim == 1:
        return _EventBufferNode(value)
    if joins:
        if not value.dims:
            raise AccumulationError("cannot Append a 0-dimensional result")
        return _JoinNode(value)
    if binned:
        return _MergeNode(value)
    return _SumNode(value)


class _Node:
    """One accumulated item. ``check`` raises (a scipp error or AccumulationError) when a chunk
    does not fit and must not change anything; ``add`` then merges it."""

    def check(self, value: Any) -> None:
        raise NotImplementedError

    def add(self, value: Any) -> None:
        raise NotImplementedError

    def value(self) -> Any:
        raise NotImplementedError


class _LatestNode(_Node):
    def __init__(self, value: Any) -> None:
        self._value = value

    def check(self, value: Any) -> None:
        del value

    def add(self, value: Any) -> None:
        self._value = value

    def value(self) -> Any:
        return self._value


class _GroupNode(_Node):
    def __init__(self, group: sc.DataGroup, method: AccumulationMethod) -> None:
        self._method = method
        self._items = {key: _make_node(item, method) for key, item in group.items()}

    def check(self, value: Any) -> None:
        if not isinstance(value, sc.DataGroup) or set(value) != set(self._items):
            got = sorted(value) if isinstance(value, sc.DataGroup) else type(value).__name__
            raise AccumulationError(
                f"expected a DataGroup with items {sorted(self._items)}, got {got}"
            )
        for key, node in self._items.items():
            try:
                node.check(value[key])
            except SCIPP_ERRORS as error:
                raise AccumulationError(f"item '{key}': {error}") from None

    def add(self, value: Any) -> None:
        for key, node in self._items.items():
            node.add(value[key])

    def value(self) -> Any:
        return sc.DataGroup({key: node.value() for key, node in self._items.items()})


class _SumNode(_Node):
    """Dense data summed in place (a copy of the first chunk, so the script's object is not
    modified)."""

    def __init__(self, value: Any) -> None:
        self._sum = value.copy()

    def check(self, value: Any) -> None:
        if type(value) is not type(self._sum):
            raise AccumulationError(
                f"expected a {type(self._sum).__name__}, got {type(value).__name__}"
            )
        if _is_binned(value):
            raise AccumulationError("the accumulation holds a histogram; the chunk holds events")
        if value.sizes != self._sum.sizes:
            raise AccumulationError(
                f"expected sizes {dict(self._sum.sizes)}, got {dict(value.sizes)}"
            )
        if isinstance(value, sc.DataArray | sc.Dataset):
            _check_coords(self._sum, value)
        if isinstance(value, sc.DataArray | sc.Variable) and value.unit != self._sum.unit:
            raise AccumulationError(f"expected unit {self._sum.unit}, got {value.unit}")

    def add(self, value: Any) -> None:
        self._sum += value

    def value(self) -> Any:
        return self._sum


def _check_coords(accumulated: Any, value: Any) -> None:
    for name, coord in accumulated.coords.items():
        other = value.coords.get(name)
        if other is None or not sc.identical(coord, other):
            raise AccumulationError(
                f"coordinate '{name}' differs from the accumulation's; Add needs equal coordinates"
            )


class _JoinNode(_Node):
    """Chunks joined along the first dimension, concatenated when read."""

    def __init__(self, value: Any) -> None:
        self._dim = value.dims[0]
        self._pieces = [value]

    def check(self, value: Any) -> None:
        if (
            type(value) is not type(self._pieces[-1])
            or not value.dims
            or value.dims[0] != self._dim
        ):
            raise AccumulationError(
                f"expected a {type(self._pieces[-1]).__name__} with first dimension '{self._dim}'"
            )
        _check_join(self._pieces[-1], value, self._dim)

    def add(self, value: Any) -> None:
        self._pieces.append(value)

    def value(self) -> Any:
        if len(self._pieces) > 1:
            self._pieces = [sc.concat(self._pieces, self._dim)]
        return self._pieces[0]


class _MergeNode(_Node):
    """Binned data with equal bins: event lists merged bin by bin when read."""

    def __init__(self, value: Any) -> None:
        self._pieces = [value]

    def check(self, value: Any) -> None:
        first = self._pieces[0]
        if type(value) is not type(first) or value.sizes != first.sizes or not _is_binned(value):
            raise AccumulationError(
                f"expected binned data of sizes {dict(first.sizes)}, got {dict(value.sizes)}"
            )
        if isinstance(first, sc.DataArray | sc.Dataset):
            _check_coords(first, value)

    def add(self, value: Any) -> None:
        self._pieces.append(value)

    def value(self) -> Any:
        if len(self._pieces) > 1:
            self._pieces = [sc.concat(self._pieces, "_chunk").bins.concat("_chunk")]
        return self._pieces[0]


class _EventBufferNode(_Node):
    """Events binned along one dimension (e.g. pulses), joined along it.

    Event fields live in one scipp buffer with spare capacity; a chunk's events are copied to
    its end, and the accumulation is a binned view of it (``sc.bins`` shares the buffer).
    """

    def __init__(self, value: sc.DataArray) -> None:
        self._dim = value.dim
        self._event_dim = value.bins.constituents["dim"]
        self._fixed_coords = {k: c for k, c in value.coords.items() if self._dim not in c.dims}
        self._buffer: sc.DataArray | None = None
        self._size = 0
        self._outer: list[sc.DataArray] = []
        self.add(value)

    def check(self, value: Any) -> None:
        if not isinstance(value, sc.DataArray) or value.bins is None or value.dims != (self._dim,):
            raise AccumulationError(f"expected events binned along '{self._dim}' only")
        table = _table(value)
        layout = _layout(self._buffer) if self._buffer is not None else None
        if layout is not None and _layout(table) != layout:
            raise AccumulationError(
                f"the chunk's events have fields {_layout(table)}, the accumulation's {layout}"
            )
        probe = value[self._dim, :1]
        _check_join(
            self._outer[-1],
            _outer(probe, np.zeros((probe.sizes[self._dim], 2), np.int64)),
            self._dim,
        )

    def add(self, value: Any) -> None:
        table = _table(value)
        begin = value.bins.constituents["begin"].values
        end = value.bins.constituents["end"].values
        if not _contiguous(begin, end):
            value = value.copy()  # compacts the bins
            table = _table(value)
            begin = value.bins.constituents["begin"].values
            end = value.bins.constituents["end"].values
        first = int(begin[0]) if len(begin) else 0
        count = int(end[-1]) - first if len(end) else 0
        self._reserve(table, count)
        if count:
            _copy_fields(
                table[self._event_dim, first : first + count],
                self._buffer,
                self._event_dim,
                self._size,
            )
        starts = begin - first + self._size
        self._outer.append(_outer(value, np.stack([starts, end - first + self._size], axis=-1)))
        self._size += count

    def _reserve(self, table: sc.DataArray, count: int) -> None:
        capacity = self._buffer.sizes[self._event_dim] if self._buffer is not None else 0
        if self._buffer is not None and self._size + count <= capacity:
            return  # a chunk of no events still needs a buffer to read the accumulation back
        grown = _empty_like(
            table, self._event_dim, max(2 * capacity, self._size + count, _MIN_CAPACITY)
        )
        if self._buffer is not None and self._size:
            _copy_fields(self._buffer[self._event_dim, : self._size], grown, self._event_dim, 0)
        self._buffer = grown

    def value(self) -> Any:
        if len(self._outer) > 1:
            self._outer = [sc.concat(self._outer, self._dim)]
        outer = self._outer[0]
        ranges = outer.data.values
        data = sc.bins(
            begin=sc.array(dims=[self._dim], values=ranges[:, 0], unit=None),
            end=sc.array(dims=[self._dim], values=ranges[:, 1], unit=None),
            dim=self._event_dim,
            # The used part only (a view): scipp's HDF5 writer writes a binned buffer whole.
            data=self._buffer[self._event_dim, : self._size].copy(deep=False),
        )
        coords = {**self._fixed_coords, **outer.coords}
        return sc.DataArray(data, coords=coords, masks=dict(outer.masks))


def _check_join(last: Any, value: Any, dim: str) -> None:
    """Join the last element of the accumulation with the first of ``value``: checks dims,
    other coords, units, dtypes and bin-edge continuity at O(1) cost; raises as scipp does."""
    tail = last[dim, -1:] if last.sizes[dim] else last
    sc.concat([tail, value[dim, :1]], dim)


def _table(value: sc.DataArray) -> sc.DataArray:
    return value.bins.constituents["data"]


def _contiguous(begin: np.ndarray, end: np.ndarray) -> bool:
    return len(begin) == 0 or np.array_equal(begin[1:], end[:-1])


def _outer(value: sc.DataArray, ranges: np.ndarray) -> sc.DataArray:
    """The chunk's coords and masks along its dimension, with the event ranges as data."""
    dim = value.dim
    return sc.DataArray(
        sc.array(dims=[dim, "range"], values=ranges.reshape(-1, 2), unit=None),
        coords={k: c for k, c in value.coords.items() if dim in c.dims},
        masks={k: m for k, m in value.masks.items() if dim in m.dims},
    )


def _layout(table: sc.DataArray) -> tuple:
    def describe(var: sc.Variable) -> tuple:
        return (str(var.dtype), str(var.unit), var.variances is not None)

    return (
        describe(table.data),
        tuple(sorted((k, describe(v)) for k, v in table.coords.items())),
        tuple(sorted((k, describe(v)) for k, v in table.masks.items())),
    )


def _empty_like(table: sc.DataArray, dim: str, capacity: int) -> sc.DataArray:
    def empty(var: sc.Variable) -> sc.Variable:
        return sc.empty(
            dims=[dim],
            shape=[capacity],
            dtype=var.dtype,
            unit=var.unit,
            with_variances=var.variances is not None,
        )

    return sc.DataArray(
        empty(table.data),
        coords={k: empty(v) for k, v in table.coords.items()},
        masks={k: empty(v) for k, v in table.masks.items()},
    )


def _copy_fields(source: sc.DataArray, target: sc.DataArray, dim: str, start: int) -> None:
    """Copy every field of ``source`` into ``target`` from index ``start`` along ``dim``."""
    stop = start + source.sizes[dim]
    target.data[dim, start:stop] = source.data
    for name, coord in source.coords.items():
        target.coords[name][dim, start:stop] = coord
    for name, mask in source.masks.items():
        target.masks[name][dim, start:stop] = mask
