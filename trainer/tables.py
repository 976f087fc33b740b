"""Collisionless dynamic embedding tables, as in Monolith: one row per id, admission, expiry, Adagrad, sync bookkeeping.

- **Collisionless.** A dict maps each full 64-bit id to its own row of a growable array; nothing is hashed into a
  fixed number of buckets, so two ids never share (and fight over) a row.
- **Admission.** Most ids in a stream are seen once or twice and never again; giving each a row wastes memory and
  ships noise to serving. An id gets a row only once it has been seen ``min_count`` times, and then (Monolith's
  probabilistic variant) with probability ``probability`` per further occurrence. Until then it reads as the
  slot's default vector and receives no gradient.
- **Expiry.** A row whose last update (event time, never the wall clock) is older than ``ttl_s`` is removed and
  reported as a tombstone at the next sync, so serving deletes it too. Its row is reused.
- **Adagrad.** Sparse rows train with a per-element accumulator: rare ids keep large steps, frequent ids settle.
- **Touched set.** Every row changed since the last ``take_touched`` is flagged; the call returns all of them (with
  absolute values and event times) and clears the flags under one lock. There is no size limit that silently
  clears it (Monolith's does): a large touched set is simply a large sync.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from liverank.trainer.events import F32Array, I64Array, U64Array

BoolArray = np.ndarray[Any, np.dtype[np.bool_]]


@dataclass(frozen=True)
class AdmissionPolicy:
    """When an unseen id gets a row: after ``min_count`` occurrences, then with ``probability`` per occurrence.

    The defaults admit every id at its first occurrence.
    """

    min_count: int = 1
    probability: float = 1.0

    def __post_init__(self) -> None:
        if self.min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {self.min_count}")
        if not 0.0 < self.probability <= 1.0:
            raise ValueError(f"probability must lie in (0, 1], got {self.probability}")


@dataclass(frozen=True)
class AdagradConfig:
    """Sparse optimiser settings; new rows start as N(0, ``init_std``)."""

    learning_rate: float = 0.05
    initial_accumulator: float = 0.1
    init_std: float = 0.01

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.initial_accumulator <= 0 or self.init_std < 0:
            raise ValueError(f"invalid Adagrad settings {self}")


@dataclass(frozen=True)
class TableUpdate:
    """Rows to write (absolute current values and their last-update event times) and ids to delete."""

    ids: U64Array
    values: F32Array
    updated_at_ms: I64Array
    tombstones: U64Array = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))

    def __len__(self) -> int:
        return len(self.ids)


class EmbeddingTable:
    """One slot's rows. Thread-safe: every public method holds the table's lock."""

    def __init__(
        self,
        name: str,
        dim: int,
        *,
        admission: AdmissionPolicy | None = None,
        ttl_s: float | None = None,
        optimizer: AdagradConfig | None = None,
        default: F32Array | None = None,
        seed: int = 0,
        initial_capacity: int = 1024,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive or None, got {ttl_s}")
        self.name = name
        self.dim = dim
        self.admission = admission or AdmissionPolicy()
        self.ttl_ms = None if ttl_s is None else int(ttl_s * 1000)
        self.optimizer = optimizer or AdagradConfig()
        self.default = np.zeros(dim, dtype=np.float32) if default is None else np.asarray(default, dtype=np.float32)
        if self.default.shape != (dim,):
            raise ValueError(f"default must have shape ({dim},), got {self.default.shape}")
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._row_of: dict[int, int] = {}
        self._pending: dict[int, tuple[int, int]] = {}  # not yet admitted: id -> (occurrences, last seen ms)
        self._free: list[int] = []
        self._tombstones: set[int] = set()
        self._n_rows = 0  # high-water mark of used rows; rows below it are live or on the free list
        capacity = max(1, initial_capacity)
        self._ids = np.zeros(capacity, dtype=np.uint64)
        self._values = np.zeros((capacity, dim), dtype=np.float32)
        self._accum = np.zeros((capacity, dim), dtype=np.float32)
        self._updated_at_ms = np.zeros(capacity, dtype=np.int64)
        self._live = np.zeros(capacity, dtype=np.bool_)
        self._touched = np.zeros(capacity, dtype=np.bool_)

    # copy.deepcopy (OnlineTrainer.clone) copies everything but the lock.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, item_id: int) -> bool:
        return int(item_id) in self._row_of

    @property
    def n_pending(self) -> int:
        """Ids seen but not (yet) admitted."""
        return len(self._pending)

    @property
    def n_touched(self) -> int:
        """Rows changed since the last ``take_touched``."""
        return int(np.count_nonzero(self._touched[: self._n_rows]))

    # --- reading -------------------------------------------------------------------------------------------

    def lookup(self, ids: U64Array) -> I64Array:
        """Row index of each id, -1 where the id has no row. Counts nothing, admits nothing."""
        with self._lock:
            return self._rows(np.asarray(ids, dtype=np.uint64))

    def gather(self, rows: I64Array) -> F32Array:
        """Values of ``rows`` (a copy); -1 reads as the default vector."""
        with self._lock:
            out = self._values[np.maximum(rows, 0)]
            out[rows < 0] = self.default
            return out

    # --- training ------------------------------------------------------------------------------------------

    def admit(self, ids: U64Array, event_time_ms: I64Array) -> I64Array:
        """Count one occurrence of each entry of ``ids`` (at its event time); give rows to ids that qualify.

        Returns each entry's row index, -1 where its id is (still) not admitted.
        """
        ids = np.asarray(ids, dtype=np.uint64)
        times = np.asarray(event_time_ms, dtype=np.int64)
        if ids.shape != times.shape:
            raise ValueError(f"{len(ids)} ids but {len(times)} event times")
        if not len(ids):
            return np.zeros(0, dtype=np.int64)
        unique, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
        with self._lock:
            rows = self._rows(unique)
            missing = np.flatnonzero(rows < 0)
            if len(missing):
                last_ms = np.full(len(unique), np.iinfo(np.int64).min, dtype=np.int64)
                np.maximum.at(last_ms, inverse, times)
                admitted = self._admit_missing(unique[missing], counts[missing], last_ms[missing])
                rows[missing[admitted >= 0]] = admitted[admitted >= 0]
        return rows[inverse]

    def _admit_missing(self, ids: U64Array, counts: I64Array, last_ms: I64Array) -> I64Array:
        policy = self.admission
        rows = np.full(len(ids), -1, dtype=np.int64)
        new_ids: list[int] = []
        new_at: list[int] = []
        new_pos: list[int] = []
        for pos, (item_id, count, seen_ms) in enumerate(
            zip(ids.tolist(), counts.tolist(), last_ms.tolist(), strict=True)
        ):
            total = self._pending.get(item_id, (0, 0))[0] + count
            # Occurrences at or past the threshold each get one admission draw.
            draws = min(count, total - policy.min_count + 1)
            if draws > 0 and (policy.probability >= 1.0 or self._rng.random() < 1 - (1 - policy.probability) ** draws):
                self._pending.pop(item_id, None)
                new_ids.append(item_id)
                new_at.append(seen_ms)
                new_pos.append(pos)
            else:
                self._pending[item_id] = (total, seen_ms)
        if new_ids:
            rows[new_pos] = self._new_rows(new_ids, new_at)
        return rows

    def apply_gradients(self, rows: I64Array, grads: F32Array, event_time_ms: I64Array) -> None:
        """One Adagrad step on ``rows`` (distinct, admitted); their update time becomes ``event_time_ms``."""
        if len(rows) != len(np.unique(rows)) or (len(rows) and rows.min() < 0):
            raise ValueError("apply_gradients needs distinct, admitted rows")
        opt = self.optimizer
        with self._lock:
            if len(rows) and not self._live[rows].all():
                raise ValueError(f"table {self.name!r}: a row was expired between lookup and update")
            accum = self._accum[rows] + grads * grads
            self._accum[rows] = accum
            self._values[rows] -= opt.learning_rate * grads / np.sqrt(accum)
            self._updated_at_ms[rows] = np.maximum(self._updated_at_ms[rows], event_time_ms)
            self._touched[rows] = True

    def expire(self, now_ms: int) -> int:
        """Remove rows (and pending counts) not updated since ``now_ms - ttl``; returns how many rows went."""
        if self.ttl_ms is None:
            return 0
        cutoff = now_ms - self.ttl_ms
        with self._lock:
            n = self._n_rows
            rows = np.flatnonzero(self._live[:n] & (self._updated_at_ms[:n] < cutoff))
            for item_id in self._ids[rows].tolist():
                del self._row_of[item_id]
                self._tombstones.add(item_id)
            self._live[rows] = False
            self._touched[rows] = False
            self._free.extend(rows.tolist())
            stale = [item_id for item_id, (_, seen_ms) in self._pending.items() if seen_ms < cutoff]
            for item_id in stale:
                del self._pending[item_id]
            return len(rows)

    # --- syncing -------------------------------------------------------------------------------------------

    def take_touched(self) -> TableUpdate:
        """Every row changed since the previous call (current values) and every id expired since; then clears both."""
        with self._lock:
            rows = np.flatnonzero(self._touched[: self._n_rows])
            self._touched[rows] = False
            tombstones = np.fromiter(sorted(self._tombstones), dtype=np.uint64, count=len(self._tombstones))
            self._tombstones.clear()
            return TableUpdate(self._ids[rows], self._values[rows], self._updated_at_ms[rows], tombstones)

    def all_rows(self) -> TableUpdate:
        """Every live row (a full snapshot); leaves the touched set alone."""
        with self._lock:
            rows = np.flatnonzero(self._live[: self._n_rows])
            return TableUpdate(self._ids[rows], self._values[rows], self._updated_at_ms[rows])

    # --- storage -------------------------------------------------------------------------------------------

    def _rows(self, unique_ids: U64Array) -> I64Array:
        get = self._row_of.get
        return np.fromiter((get(i, -1) for i in unique_ids.tolist()), dtype=np.int64, count=len(unique_ids))

    def _new_rows(self, ids: list[int], updated_at_ms: list[int]) -> I64Array:
        k = len(ids)
        reused = [self._free.pop() for _ in range(min(k, len(self._free)))]
        fresh = k - len(reused)
        if self._n_rows + fresh > len(self._ids):
            self._grow(self._n_rows + fresh)
        rows = np.asarray(reused + list(range(self._n_rows, self._n_rows + fresh)), dtype=np.int64)
        self._n_rows += fresh
        self._ids[rows] = ids
        self._values[rows] = self._rng.normal(0.0, self.optimizer.init_std, (k, self.dim))
        self._accum[rows] = self.optimizer.initial_accumulator
        self._updated_at_ms[rows] = updated_at_ms
        self._live[rows] = True
        self._touched[rows] = True  # a new row is news for serving even before its first gradient
        for item_id, row in zip(ids, rows.tolist(), strict=True):
            self._row_of[item_id] = row
            self._tombstones.discard(item_id)  # re-admitted before the sync: the row replaces the tombstone
        return rows

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * len(self._ids))
        for name in ("_ids", "_values", "_accum", "_updated_at_ms", "_live", "_touched"):
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)
