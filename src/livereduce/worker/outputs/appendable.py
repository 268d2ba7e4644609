"""Scipp HDF5 files of accumulated events that grow by appending, at a cost proportional to what
was added.

Events accumulated in the raw chunk layout (a DataArray of dim ``event_time_zero``, one bin of
events per pulse) only grow at the end: a new chunk adds pulses after the last. A whole
:func:`scipp.io.save_hdf5` rewrites everything on every write (1.9 s at 1.1x10^8 events); an
:class:`AppendableFile` writes the same layout (scipp's HDF5 format, so
:func:`scipp.io.load_hdf5` reads it and the result is ``sc.identical`` to a whole write) with
resizable, chunked datasets, then on the next write appends the new pulses' events and bin
indices and rewrites only what has no event dimension (scalar coordinates).

Which workspaces qualify (:func:`appendable`): a DataArray with one dimension, binned data
whose event table is one-dimensional, and numeric (or datetime) coordinates and masks of that
dimension, of the event dimension, or scalar. Anything else (histograms, strings, more
dimensions) is written whole by the caller. The caller says when a workspace extends the
previous one (the same pulses first, more after); the file also checks what it can cheaply
(structure, pulse count, last written pulse time, events in the written pulses) and writes
whole otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipp as sc
from scipp.io.hdf5 import _as_hdf5_type, _collection_element_name, _serialize_unit

from livereduce.atomic import copy_into, temporary_for

_CHUNK_ELEMENTS = 1 << 16
"""HDF5 chunk length of the resizable datasets: appends touch few chunks, and small files
stay small."""


def _is_plain(variable: sc.Variable, dims: tuple[tuple[str, ...], ...]) -> bool:
    return (
        variable.bins is None
        and variable.dims in dims
        and variable.dtype not in (sc.DType.string, sc.DType.PyObject)
        and variable.values.dtype != object
    )


def appendable(workspace: Any) -> bool:
    """Whether ``workspace`` has the layout an :class:`AppendableFile` writes (see the module
    docstring)."""
    if not isinstance(workspace, sc.DataArray) or workspace.ndim != 1:
        return False
    if workspace.bins is None or workspace.variances is not None:
        return False
    dim = workspace.dim
    constituents = workspace.bins.constituents
    table = constituents["data"]
    if not isinstance(table, sc.DataArray) or table.ndim != 1:
        return False
    outer = ((dim,), ())
    inner = ((constituents["dim"],), ())
    return (
        all(_is_plain(v, outer) for v in (*workspace.coords.values(), *workspace.masks.values()))
        and _is_plain(table.data, inner[:1])
        and all(_is_plain(v, inner) for v in (*table.coords.values(), *table.masks.values()))
    )


def _signature(workspace: sc.DataArray) -> tuple:
    """What must not change for an append: names, dims, dtypes, units, variances."""

    def of(mapping: Any) -> tuple:
        return tuple(
            (name, v.dims, str(v.dtype), str(v.unit), v.variances is not None, v.aligned)
            for name, v in mapping.items()
        )

    table = workspace.bins.constituents["data"]
    if not isinstance(table, sc.DataArray):
        raise TypeError(f"events of {workspace.name!r} are not a table of events")
    data = table.data
    return (
        workspace.name,
        workspace.dims,
        of(workspace.coords),
        of(workspace.masks),
        table.name,
        (str(data.dtype), str(data.unit), data.variances is not None),
        of(table.coords),
        of(table.masks),
    )


def _header(group: h5py.Group, what: str) -> None:
    group.attrs["scipp-version"] = sc.__version__
    group.attrs["scipp-type"] = what


def _dataset(group: h5py.Group, name: str, values: np.ndarray, growing: bool) -> h5py.Dataset:
    if growing:
        chunk = (max(1, min(_CHUNK_ELEMENTS, len(values))),)
        return group.create_dataset(name, data=values, maxshape=(None,), chunks=chunk)
    return group.create_dataset(name, data=values)


def _write_variable(group: h5py.Group, variable: sc.Variable, growing_dim: str | None) -> None:
    """``variable`` as scipp writes a dense Variable, resizable along ``growing_dim``."""
    _header(group, "Variable")
    growing = growing_dim is not None and variable.dims == (growing_dim,)
    values = _dataset(group, "values", _as_hdf5_type(variable.values), growing)
    if variable.variances is not None:
        variances = _dataset(group, "variances", variable.variances, growing)
        values.attrs["variances"] = variances.ref
    values.attrs["dtype"] = str(variable.dtype)
    if variable.unit is not None:
        values.attrs["unit"] = _serialize_unit(variable.unit)
    _shape_attrs(values, variable)


def _shape_attrs(values: h5py.Dataset, variable: sc.Variable) -> None:
    values.attrs["dims"] = [str(dim) for dim in variable.dims]
    values.attrs["shape"] = variable.shape
    values.attrs["aligned"] = variable.aligned


def _write_mapping(group: h5py.Group, mapping: Any, growing_dim: str) -> None:
    for index, (name, variable) in enumerate(mapping.items()):
        element = group.create_group(_collection_element_name(name, index))
        _write_variable(element, variable, growing_dim)
        element.attrs["name"] = str(name)


def _append_variable(group: h5py.Group, variable: sc.Variable, start: int, dim: str) -> None:
    """Grow ``group`` (written by :func:`_write_variable`) to ``variable``, whose elements
    before ``start`` along ``dim`` are already in the file; a scalar is rewritten."""
    values = group["values"]
    if variable.dims != (dim,):
        values[()] = _as_hdf5_type(variable.values)
        if variable.variances is not None:
            group["variances"][()] = variable.variances
        return
    datasets = [(values, _as_hdf5_type(variable.values))]
    if variable.variances is not None:
        datasets.append((group["variances"], variable.variances))
    for dataset, array in datasets:
        dataset.resize((len(array),))
        dataset[start:] = array[start:]
    values.attrs["shape"] = variable.shape


def _append_mapping(group: h5py.Group, mapping: Any, start: int, dim: str) -> None:
    for index, (name, variable) in enumerate(mapping.items()):
        _append_variable(group[_collection_element_name(name, index)], variable, start, dim)


def _compact(workspace: sc.DataArray) -> tuple[np.ndarray, sc.DataArray]:
    """(sizes of the bins, their events in bin order): a view on the buffer when the bins are
    contiguous in it (as in an accumulation's event buffer), else a copy of the bins only."""
    constituents = workspace.bins.constituents
    begin, end = constituents["begin"].values, constituents["end"].values
    table = constituents["data"]
    if len(begin) and not np.array_equal(begin[1:], end[:-1]):
        constituents = workspace.copy().bins.constituents
        begin, end = constituents["begin"].values, constituents["end"].values
        table = constituents["data"]
    first, last = (int(begin[0]), int(end[-1])) if len(begin) else (0, 0)
    if not isinstance(table, sc.DataArray):
        raise TypeError(f"events of {workspace.name!r} are not a table of events")
    return end - begin, table[constituents["dim"], first:last]


class AppendableFile:
    """One HDF5 working file for ``target`` written by :meth:`write`, which appends when it
    can; ``path`` is the file (None before the first write; a whole write makes a new one, an
    exclusively created temporary next to ``target``: :func:`livereduce.atomic.temporary_for`).
    Tracks what the file holds (``pulses``, ``events``; 0 when nothing valid is there)."""

    def __init__(self, target: Path) -> None:
        self.target = Path(target)
        self.path: Path | None = None
        self.pulses = 0
        self.events = 0
        self._signature: tuple | None = None
        self._last_pulse: Any = None

    def forget(self) -> None:
        """Delete the working file (a link published from it keeps its inode); the next write
        is whole."""
        self.pulses = self.events = 0
        self._signature = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)
            self.path = None

    def copy_of(self, other: AppendableFile) -> None:
        """Become a copy of ``other``'s file (a new file, its bytes copied in the kernel:
        :func:`livereduce.atomic.copy_into`), so that the next write appends to it instead of
        writing everything whole. Raises OSError; this file then stays as it was."""
        if other.path is None:
            return
        path = temporary_for(self.target)
        try:
            copy_into(other.path, path)
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self.forget()
        self.path = path
        self.pulses, self.events = other.pulses, other.events
        self._signature, self._last_pulse = other._signature, other._last_pulse

    def write(self, workspace: sc.DataArray, *, extends: bool) -> bool:
        """Write ``workspace`` (:func:`appendable`); appended when ``extends`` (the caller
        knows its first ``pulses`` bins are what was written) and the checks hold, else
        whole. Returns True when it appended. Raises OSError (and h5py's errors) when the
        file cannot be written; the file is then forgotten."""
        try:
            if extends and self._can_append(workspace):
                self._append(workspace)
                return True
            self._write_whole(workspace)
            return False
        except BaseException:
            self.forget()
            raise

    def _can_append(self, workspace: sc.DataArray) -> bool:
        if self._signature is None or self.path is None or not self.path.is_file():
            return False
        if _signature(workspace) != self._signature or workspace.shape[0] < self.pulses:
            return False
        if self.pulses == 0:
            return True
        written = workspace[workspace.dim, : self.pulses]
        if int(written.bins.size().sum().value) != self.events:
            return False
        coord = workspace.coords.get(workspace.dim)
        return coord is None or sc.identical(coord[self.pulses - 1], self._last_pulse)

    def _write_whole(self, workspace: sc.DataArray) -> None:
        dim = workspace.dim
        sizes, table = _compact(workspace)
        event_dim = workspace.bins.constituents["dim"]
        end = np.cumsum(sizes, dtype=np.int64)
        begin = end - sizes
        self.forget()  # a new file: a reader (or a kept run) of the old inode keeps it
        self.path = temporary_for(self.target)
        with h5py.File(self.path, "w") as h5:
            _header(h5, "DataArray")
            h5.attrs["name"] = workspace.name
            data = h5.create_group("data")
            _header(data, "Variable")
            values = data.create_group("values")
            for name, indices in (("begin", begin), ("end", end)):
                _write_variable(
                    values.create_group(name),
                    sc.array(dims=[dim], values=indices, unit=None),
                    dim,
                )
            events = values.create_group("data")
            events.attrs["dim"] = event_dim
            _header(events, "DataArray")
            events.attrs["name"] = table.name
            _write_variable(events.create_group("data"), table.data, event_dim)
            _write_mapping(events.create_group("coords"), table.coords, event_dim)
            _write_mapping(events.create_group("masks"), table.masks, event_dim)
            values.attrs["dtype"] = str(sc.DType.DataArrayView)
            _shape_attrs(values, workspace.data)
            _write_mapping(h5.create_group("coords"), workspace.coords, dim)
            _write_mapping(h5.create_group("masks"), workspace.masks, dim)
        self._remember(workspace, int(end[-1]) if len(end) else 0)

    def _append(self, workspace: sc.DataArray) -> None:
        dim = workspace.dim
        new = workspace[dim, self.pulses :]
        sizes, table = _compact(new)
        end = self.events + np.cumsum(sizes, dtype=np.int64)
        begin = end - sizes
        total = int(end[-1]) if len(end) else self.events
        assert self.path is not None  # _can_append checked it
        with h5py.File(self.path, "r+") as h5:
            values = h5["data/values"]
            for name, indices in (("begin", begin), ("end", end)):
                dataset = values[name]["values"]
                dataset.resize((workspace.shape[0],))
                dataset[self.pulses :] = indices
                dataset.attrs["shape"] = workspace.shape
            events = values["data"]
            for group, variable in self._event_variables(events, table):
                _append_events(group, variable, self.events, total)
            values.attrs["shape"] = workspace.shape
            _append_mapping(h5["coords"], workspace.coords, self.pulses, dim)
            _append_mapping(h5["masks"], workspace.masks, self.pulses, dim)
        self._remember(workspace, total)

    @staticmethod
    def _event_variables(
        events: h5py.Group, table: sc.DataArray
    ) -> Iterator[tuple[h5py.Group, sc.Variable]]:
        yield events["data"], table.data
        for index, (name, variable) in enumerate(table.coords.items()):
            yield events["coords"][_collection_element_name(name, index)], variable
        for index, (name, variable) in enumerate(table.masks.items()):
            yield events["masks"][_collection_element_name(name, index)], variable

    def _remember(self, workspace: sc.DataArray, events: int) -> None:
        self._signature = _signature(workspace)
        self.pulses = workspace.shape[0]
        self.events = events
        coord = workspace.coords.get(workspace.dim)
        self._last_pulse = (
            coord[self.pulses - 1].copy() if coord is not None and self.pulses else None
        )


def _append_events(group: h5py.Group, variable: sc.Variable, start: int, total: int) -> None:
    """Grow an event-table variable's datasets from ``start`` to ``total`` events with
    ``variable`` (the new events); a scalar is rewritten."""
    values = group["values"]
    if not variable.dims:
        values[()] = _as_hdf5_type(variable.values)
        return
    datasets = [(values, _as_hdf5_type(variable.values))]
    if variable.variances is not None:
        datasets.append((group["variances"], variable.variances))
    for dataset, array in datasets:
        dataset.resize((total,))
        dataset[start:total] = array
    values.attrs["shape"] = (total,)
