"""A collisionless hash index from 64-bit ids to row numbers (open addressing, linear probing).

Every full id is stored and compared exactly: the hash only chooses where probing starts, so two ids never share
a row. Capacity is a power of two and the load factor stays at or under 1/2.

The compiled kernel (``liverank.store._kernel``, built at install) does the probing; ``probe_numpy`` is the vectorised
reference implementation, used when the kernel is absent and by the tests to check the kernel.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from liverank.store.format import IntIds

log = logging.getLogger(__name__)

_kernel: Any
try:
    from liverank.store import _kernel as _compiled

    _kernel = _compiled
except ImportError:  # pragma: no cover - the kernel is built by every install; this is a degraded fallback
    _kernel = None
    log.warning("liverank.store._kernel is not built: the RAM tier falls back to numpy probing (several times slower)")

Rows = np.ndarray[Any, np.dtype[np.int64]]
MIN_CAPACITY = 1024
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def kernel_available() -> bool:
    return _kernel is not None


def mix64(ids: IntIds) -> IntIds:
    """splitmix64's finaliser, as in the kernel."""
    x = ids ^ (ids >> np.uint64(30))
    x = x * _M1
    x ^= x >> np.uint64(27)
    x = x * _M2
    x ^= x >> np.uint64(31)
    return x


def probe_numpy(keys: IntIds, rows: Rows, ids: IntIds) -> Rows:
    """Row of each id, or -1: vectorised linear probing, one pass per probe distance."""
    mask = np.uint64(len(keys) - 1)
    out = np.full(len(ids), -1, dtype=np.int64)
    pos = (mix64(ids) & mask).astype(np.int64)
    pending = np.arange(len(ids))
    while pending.size:
        at = pos[pending]
        found_rows = rows[at]
        occupied = found_rows >= 0
        hit = occupied & (keys[at] == ids[pending])
        out[pending[hit]] = found_rows[hit]
        keep = occupied & ~hit
        pending = pending[keep]
        pos[pending] = (at[keep] + 1) & int(mask)
    return out


def capacity_for(n_keys: int) -> int:
    cap = MIN_CAPACITY
    while cap < 2 * n_keys:
        cap *= 2
    return cap


class HashIndex:
    """id -> row. Mutated only by the tier's single writer; readers rely on the tier's version counter."""

    def __init__(self, capacity: int = MIN_CAPACITY) -> None:
        if capacity & (capacity - 1):
            raise ValueError("capacity must be a power of two")
        self.keys: IntIds = np.zeros(capacity, dtype=np.uint64)
        self.rows: Rows = np.full(capacity, -1, dtype=np.int64)
        self.count = 0

    @property
    def capacity(self) -> int:
        return len(self.keys)

    def find(self, ids: IntIds, out: Rows | None = None) -> Rows:
        ids = np.ascontiguousarray(ids, dtype=np.uint64)
        if _kernel is None:
            result = probe_numpy(self.keys, self.rows, ids)
            if out is not None:
                out[:] = result
                return out
            return result
        if out is None:
            out = np.empty(len(ids), dtype=np.int64)
        _kernel.probe(self.keys, self.rows, ids, out)
        return out

    def gather(self, ids: IntIds, vectors: Any, updated_at_ms: Rows) -> tuple[Rows, Any, Rows] | None:
        """Probe and copy found rows in one compiled pass: (rows, vectors, times); misses read zeros and
        ``INT64_MIN``. None when the kernel is not built (the caller probes and gathers with numpy instead)."""
        if _kernel is None:
            return None
        ids = np.ascontiguousarray(ids, dtype=np.uint64)
        out_vectors = np.empty((len(ids), vectors.shape[1]), dtype=vectors.dtype)
        out_updated = np.empty(len(ids), dtype=np.int64)
        out_rows = np.empty(len(ids), dtype=np.int64)
        row_bytes = vectors.shape[1] * vectors.dtype.itemsize
        _kernel.gather(self.keys, self.rows, ids, vectors, updated_at_ms, row_bytes, out_vectors, out_updated, out_rows)
        return out_rows, out_vectors, out_updated

    def insert(self, ids: IntIds, rows: Rows) -> None:
        """Map ids to rows (overwriting existing ids). The caller ensures room (see ``needs_growth``)."""
        ids = np.ascontiguousarray(ids, dtype=np.uint64)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if _kernel is not None:
            self.count += _kernel.insert(self.keys, self.rows, ids, rows)
            return
        mask = self.capacity - 1
        for key, row in zip(ids.tolist(), rows.tolist(), strict=True):
            at = int(mix64(np.asarray([key], dtype=np.uint64))[0]) & mask
            while self.rows[at] >= 0 and int(self.keys[at]) != key:
                at = (at + 1) & mask
            if self.rows[at] < 0:
                self.count += 1
            self.keys[at] = key
            self.rows[at] = row

    def needs_growth(self, extra: int) -> bool:
        return 2 * (self.count + extra) > self.capacity

    def grown(self, extra: int) -> HashIndex:
        """A new, larger index with the same entries (the old one stays valid for readers still using it)."""
        bigger = HashIndex(capacity_for(self.count + extra))
        live = self.rows >= 0
        bigger.insert(self.keys[live], self.rows[live])
        return bigger
