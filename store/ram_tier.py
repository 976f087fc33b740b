"""The RAM read tier: hot rows in dense arrays behind a collisionless hash index, LMDB stays the durable truth.

Visibility. One writer (the thread that applies deltas) changes the tier; any number of readers gather from it
without locks. A version counter works as a seqlock: the writer makes it odd before touching anything and even
again after, so a reader that saw the same even version before and after its gather knows it saw one delta's
state whole. A reader that sees a write in progress does not wait: the store serves that call from LMDB instead.
Growth never moves data under a reader: bigger arrays are built beside the old ones and swapped in.

Budget. At most ``budget_rows`` rows are resident. Rows past the budget (at warm-up or from deltas) stay on LMDB
only and are read from there; a tombstoned resident row is marked deleted and reads as unseen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from liverank.store.format import Array, IntIds
from liverank.store.hash_index import HashIndex, Rows, capacity_for
from liverank.store.slots import SlotConfig
from liverank.store.validation import PreparedDelta, PreparedSlot

DELETED_MS = np.iinfo(np.int64).min
_MIN_ROWS = 1024


@dataclass
class SlotRows:
    """One slot's resident rows. Replaced, never resized in place, when it grows."""

    config: SlotConfig
    vectors: Array
    updated_at_ms: Array
    n_rows: int = 0
    index: HashIndex = field(default_factory=HashIndex)
    str_index: dict[str, int] = field(default_factory=dict)

    @classmethod
    def empty(cls, config: SlotConfig) -> SlotRows:
        return cls(
            config,
            np.zeros((_MIN_ROWS, config.dim), dtype=config.np_dtype),
            np.full(_MIN_ROWS, DELETED_MS, dtype=np.int64),
        )

    def with_room(self, extra_rows: int) -> SlotRows:
        """This slot, or a copy with room for ``extra_rows`` more rows and index entries."""
        grown = self
        need = self.n_rows + extra_rows
        if need > len(self.vectors):
            cap = max(len(self.vectors) * 2, need)
            vectors = np.zeros((cap, self.config.dim), dtype=self.config.np_dtype)
            vectors[: self.n_rows] = self.vectors[: self.n_rows]
            updated = np.full(cap, DELETED_MS, dtype=np.int64)
            updated[: self.n_rows] = self.updated_at_ms[: self.n_rows]
            grown = SlotRows(self.config, vectors, updated, self.n_rows, self.index, self.str_index)
        if self.config.id_kind != "str" and grown.index.needs_growth(extra_rows):
            if grown is self:
                grown = SlotRows(self.config, self.vectors, self.updated_at_ms, self.n_rows, self.index, self.str_index)
            grown.index = self.index.grown(extra_rows)
        return grown

    def find(self, ids: IntIds | tuple[str, ...]) -> Rows:
        if isinstance(ids, tuple):
            get = self.str_index.get
            return np.fromiter((get(s, -1) for s in ids), dtype=np.int64, count=len(ids))
        return self.index.find(ids)


@dataclass(frozen=True)
class TierRead:
    """What a reader got from the tier for one slot: row numbers (-1: not resident) and, for resident rows,
    vectors (float32) and event times. Valid only if ``RamTier.unchanged_since(version)`` holds afterwards."""

    rows: Rows
    vectors: Array
    updated_at_ms: Array


class RamTier:
    """Resident rows of every slot, bounded by ``budget_rows``."""

    def __init__(self, budget_rows: int) -> None:
        self.budget_rows = budget_rows
        self.version = 0  # odd while the writer is changing something
        self.generation = 0  # the LMDB generation whose state the tier holds
        self.applied_seq: dict[str, int] = {}  # per producer, as of ``generation``
        self.resident_rows = 0
        self._slots: dict[str, SlotRows] = {}

    # --- reader side --------------------------------------------------------------------------------------------

    def begin_read(self) -> int | None:
        """The version to validate against, or None if a write is in progress."""
        version = self.version
        return None if version & 1 else version

    def unchanged_since(self, version: int) -> bool:
        return self.version == version

    def has_slot(self, name: str) -> bool:
        return name in self._slots

    def read(self, slot: str, ids: IntIds | tuple[str, ...]) -> TierRead:
        rows_state = self._slots[slot]
        if not isinstance(ids, tuple):
            gathered = rows_state.index.gather(ids, rows_state.vectors, rows_state.updated_at_ms)
            if gathered is not None:
                found, vectors, updated = gathered
                return TierRead(found, vectors.astype(np.float32, copy=False), updated)
        rows = rows_state.find(ids)
        resident = np.clip(rows, 0, None)
        # mode="clip": a writer may have grown the index past these arrays mid-read; such a read is discarded by
        # the version check, it must only not fault.
        vectors = np.take(rows_state.vectors, resident, axis=0, mode="clip")
        updated = np.take(rows_state.updated_at_ms, resident, mode="clip")
        updated[rows < 0] = DELETED_MS
        return TierRead(rows, vectors.astype(np.float32, copy=False), updated)

    # --- writer side --------------------------------------------------------------------------------------------

    def configure(self, slots: Mapping[str, SlotConfig]) -> None:
        """Track these slots (new ones start empty; TTL or default changes need no data change)."""
        self.version += 1
        try:
            for name, config in slots.items():
                if name in self._slots:
                    self._slots[name].config = config
                else:
                    self._slots[name] = SlotRows.empty(config)
        finally:
            self.version += 1

    def reserve(self, slot: str, n_rows: int) -> None:
        """Size an empty slot for ``n_rows`` rows up front (warm-up knows the count), instead of doubling."""
        current = self._slots[slot]
        if current.n_rows or n_rows <= len(current.vectors):
            return
        sized = SlotRows(
            current.config,
            np.zeros((n_rows, current.config.dim), dtype=current.config.np_dtype),
            np.full(n_rows, DELETED_MS, dtype=np.int64),
            0,
            HashIndex(capacity_for(n_rows)),
            {},
        )
        self.version += 1
        try:
            self._slots[slot] = sized
        finally:
            self.version += 1

    def load(self, slot: str, ids: IntIds | tuple[str, ...], vectors: Array, updated_at_ms: Array) -> int:
        """Make rows resident (warm-up), up to the budget. Returns how many were taken."""
        room = max(0, self.budget_rows - self.resident_rows)
        take = min(room, len(ids))
        if not take:
            return 0
        grown = self._slots[slot].with_room(take)
        self.version += 1
        try:
            self._write_new(grown, ids[:take], vectors[:take], updated_at_ms[:take])
            self._slots[slot] = grown
        finally:
            self.version += 1
        return take

    def apply(self, prepared: PreparedDelta, generation: int) -> None:
        """Make a delta visible in the tier, whole, after LMDB committed it as ``generation``."""
        room = max(0, self.budget_rows - self.resident_rows)
        plans = []
        for slot in prepared.slots:  # one budget across the delta's slots
            plan = self._plan(slot, room)
            room -= plan[3]
            plans.append(plan)
        self.version += 1
        try:
            for slot, (grown, existing, new_mask, admitted) in zip(prepared.slots, plans, strict=True):
                ids = slot.str_ids if slot.str_ids is not None else slot.int_ids
                assert ids is not None
                hit = existing >= 0
                grown.vectors[existing[hit]] = slot.vectors[hit]
                grown.updated_at_ms[existing[hit]] = slot.updated_at_ms[hit]
                if admitted:
                    pick = np.flatnonzero(new_mask)[:admitted]
                    new_ids = tuple(ids[i] for i in pick) if isinstance(ids, tuple) else ids[pick]
                    self._write_new(grown, new_ids, slot.vectors[pick], slot.updated_at_ms[pick])
                self._tombstone(grown, slot)
                self._slots[slot.config.name] = grown
            self.applied_seq = {**self.applied_seq, prepared.delta.producer: prepared.delta.seq}
            self.generation = generation
        finally:
            self.version += 1

    def _plan(self, slot: PreparedSlot, room: int) -> tuple[SlotRows, Rows, Any, int]:
        """Outside the write window: find existing rows, decide admissions, build grown arrays if needed."""
        current = self._slots[slot.config.name]
        ids = slot.str_ids if slot.str_ids is not None else slot.int_ids
        assert ids is not None
        existing = current.find(ids)
        new_mask = existing < 0
        admitted = min(int(new_mask.sum()), room)
        return current.with_room(admitted), existing, new_mask, admitted

    def _write_new(self, rows_state: SlotRows, ids: IntIds | tuple[str, ...], vectors: Array, updated: Array) -> None:
        start = rows_state.n_rows
        stop = start + len(ids)
        rows_state.vectors[start:stop] = vectors
        rows_state.updated_at_ms[start:stop] = updated
        if isinstance(ids, tuple):
            rows_state.str_index.update(zip(ids, range(start, stop), strict=True))
        else:
            rows_state.index.insert(ids, np.arange(start, stop, dtype=np.int64))
        rows_state.n_rows = stop
        self.resident_rows += stop - start

    def _tombstone(self, rows_state: SlotRows, slot: PreparedSlot) -> None:
        ids: IntIds | tuple[str, ...] | None = (
            slot.tombstone_str_ids if slot.tombstone_str_ids is not None else slot.tombstone_int_ids
        )
        if ids is None or not len(ids):
            return
        rows = rows_state.find(ids)
        rows_state.updated_at_ms[rows[rows >= 0]] = DELETED_MS

    def forget(self, slot: str, ids: IntIds | tuple[str, ...]) -> None:
        """Mark rows deleted (after an expiry sweep removed them from LMDB)."""
        rows_state = self._slots[slot]
        self.version += 1
        try:
            rows = rows_state.find(ids)
            rows_state.updated_at_ms[rows[rows >= 0]] = DELETED_MS
        finally:
            self.version += 1

    def resident_by_slot(self) -> dict[str, int]:
        return {name: state.n_rows for name, state in self._slots.items()}
