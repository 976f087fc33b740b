"""Request columns to numpy and pooled rows into the dense network's input, in one compiled pass each.

The compiled kernel (``liverank.store._kernel``) reads the lists orjson made and writes numpy buffers directly:
numpy's own conversion infers a dtype element by element (about 35 ns per id on the target machine, 11,500 ids in
a W-500 request), and telling JSON booleans from 0/1 took a Python-level scan on top. When the kernel is not
built, the same results come from numpy (several times slower); the tests check that both agree.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from liverank.store.format import IntIds

log = logging.getLogger(__name__)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
Lengths = np.ndarray[Any, np.dtype[np.int64]]

_kernel: Any
try:
    from liverank.store import _kernel as _compiled

    _kernel = _compiled
except ImportError:  # pragma: no cover - every install builds the kernel; this is a degraded fallback
    _kernel = None
    log.warning("liverank.store._kernel is not built: request parsing and pooling fall back to numpy")

_UINT64_MAX = 2**64 - 1


class BadId(ValueError):
    """An element that is not an integer id in 0..2**64-1; ``index`` is its position (flat, for id lists)."""

    def __init__(self, index: int, value: Any) -> None:
        super().__init__(f"id at position {index} is {value!r}")
        self.index = index
        self.value = value


class NotAList(ValueError):
    """Row ``index`` of an id-list column is not a list."""

    def __init__(self, index: int) -> None:
        super().__init__(f"row {index} is not a list")
        self.index = index


def _is_uint64(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _UINT64_MAX


def int_ids(values: list[Any]) -> IntIds:
    """``values`` as uint64; ``BadId`` for the first element that is not an int in 0..2**64-1 (bools included)."""
    out = np.empty(len(values), dtype=np.uint64)
    if _kernel is not None:
        bad = _kernel.int_ids(values, out)
        if bad >= 0:
            raise BadId(bad, values[bad])
        return out
    for i, value in enumerate(values):
        if not _is_uint64(value):
            raise BadId(i, value)
    out[:] = values
    return out


def id_list_lengths(rows: list[Any]) -> Lengths:
    """The length of each row of an id-list column; ``NotAList`` for the first row that is not a list."""
    lengths = np.empty(len(rows), dtype=np.int64)
    if _kernel is not None:
        total = _kernel.list_lengths(rows, lengths)
        if total < 0:
            raise NotAList(-1 - total)
        return lengths
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise NotAList(i)
        lengths[i] = len(row)
    return lengths


def flat_int_ids(rows: list[list[Any]], lengths: Lengths) -> IntIds:
    """Every row's ids, flattened, as uint64 (``lengths`` from ``id_list_lengths``); ``BadId`` (flat index)."""
    if _kernel is None:
        return int_ids([value for row in rows for value in row])
    ids = np.empty(int(lengths.sum()), dtype=np.uint64)
    bad = _kernel.int_id_lists(rows, ids)
    if bad >= 0:
        raise BadId(bad, ids_flat_at(rows, bad))
    return ids


def ids_flat_at(rows: list[list[Any]], index: int) -> Any:
    """The element at flat position ``index`` of a list of lists (for error messages)."""
    for row in rows:
        if index < len(row):
            return row[index]
        index -= len(row)
    raise IndexError("flat index past the last row")


def pool_into(out: FloatArray, col: int, rows: FloatArray, lengths: Lengths, *, mean: bool) -> None:
    """Write the sum (``mean``: the mean) of consecutive runs of ``rows``, one run per length, into columns
    ``[col, col + dim)`` of ``out`` (one output row per length). An empty run writes zeros. Bit-identical to
    numpy's ``add.reduceat`` followed by a float32 division."""
    n_rows, width = out.shape
    dim = rows.shape[1]
    if len(lengths) != n_rows:
        raise ValueError(f"{len(lengths)} lengths for {n_rows} output rows")
    if _kernel is not None and out.flags.c_contiguous and out.dtype == np.float32:
        rows32 = np.ascontiguousarray(rows, dtype=np.float32)
        _kernel.pool_into(rows32, np.ascontiguousarray(lengths, dtype=np.int64), out, dim, width, col, mean)
        return
    out[:, col : col + dim] = pool_numpy(rows, lengths, mean)


def pool_numpy(rows: FloatArray, lengths: Lengths, mean: bool) -> FloatArray:
    """The numpy version of ``pool_into``'s sums (or means), as a new (len(lengths), dim) array."""
    pooled = np.zeros((len(lengths), rows.shape[1]), dtype=np.float32)
    nonempty = lengths > 0
    if rows.shape[0]:
        starts = (np.cumsum(lengths) - lengths)[nonempty]
        pooled[nonempty] = np.add.reduceat(rows, starts, axis=0)
        if mean:
            pooled[nonempty] /= lengths[nonempty, None].astype(np.float32)
    return pooled
