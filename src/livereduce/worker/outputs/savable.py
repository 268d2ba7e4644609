"""What the result file can hold: the types scipp's HDF5 writer saves (``scipp.io.hdf5``).

scipp writes Variable, DataArray, Dataset and DataGroup, and inside a DataGroup also str, bytes,
int, float, bool, numpy arrays and numpy scalars; anything else (a dict, a list, None, an
object) it leaves out of the file with no more than a warning. The engine checks every output
with :func:`unsavable` before accumulating or writing it, so such an output is refused with one
error at the first chunk instead of being missing from ``result.h5`` for the whole run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipp as sc

_SAVED = (
    *(sc.Variable, sc.DataArray, sc.Dataset, str, bytes, int, float, bool, np.ndarray),
    *(np.int64, np.int32, np.uint64, np.uint32, np.float32, np.float64, np.bool_),
)
"""Types scipp's HDF5 writer has a handler for (``_HDF5IO._handlers``, scipp 25-26)."""


def unsavable(value: Any, where: str = "output") -> str | None:
    """None when scipp's HDF5 writer saves all of ``value``; else one line naming the first
    part it would leave out and its type, e.g. ``output['meta']: a dict cannot be saved``.
    ``where`` names ``value`` in that message."""
    if isinstance(value, sc.DataGroup):
        for key, item in value.items():
            problem = unsavable(item, f"{where}[{key!r}]")
            if problem is not None:
                return problem
        return None
    if isinstance(value, _SAVED):
        return None
    return (
        f"{where}: a {type(value).__name__} cannot be saved in the result file (scipp's HDF5"
        " writer takes scipp objects, str, bytes, int, float, bool and numpy arrays)"
    )
