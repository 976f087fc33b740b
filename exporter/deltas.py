"""Building sparse deltas from a trainer's touched rows: absolute values per slot, event times, tombstones.

``DeltaBuilder`` numbers a producer's deltas (strictly increasing from ``start_seq``) and binds them to the
manifest's schema hash; ``snapshot_deltas`` cuts a full table into deltas for a fresh server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from liverank.store.format import SlotDelta, SparseDelta
from liverank.store.manifest import Manifest

Array = np.ndarray[Any, np.dtype[Any]]
SlotRows = tuple[Array, Array, Array]  # ids (uint64), values (n, dim), updated_at_ms (int64)


class DeltaBuilder:
    """Turns touched rows into numbered, schema-bound ``SparseDelta`` objects for one producer."""

    def __init__(self, producer: str, manifest: Manifest, start_seq: int = 1) -> None:
        if start_seq < 1:
            raise ValueError(f"sequences start at 1, got {start_seq}")
        self.producer = producer
        self.next_seq = start_seq
        self.rebind(manifest)

    def rebind(self, manifest: Manifest) -> None:
        """Build for this manifest's schema from now on (after a new bundle with another schema goes live)."""
        self.manifest = manifest
        self._dtypes = {slot.name: slot.np_dtype for slot in manifest.slots}
        self._dims = {slot.name: slot.dim for slot in manifest.slots}

    def restart_at(self, seq: int) -> None:
        """Continue numbering at ``seq`` (what a server reports as expected after it lost deltas)."""
        self.next_seq = seq

    def build(
        self,
        rows: Mapping[str, SlotRows],
        tombstones: Mapping[str, Array] | None = None,
        created_at_ms: int | None = None,
    ) -> SparseDelta:
        """The next delta: ``rows`` per slot as absolute current values, ``tombstones`` per slot as ids to delete."""
        slots: dict[str, SlotDelta] = {}
        for name in sorted(set(rows) | set(tombstones or {})):
            if name not in self._dtypes:
                raise ValueError(f"slot {name!r} is not in manifest {self.manifest.model} {self.manifest.version}")
            ids, values, updated = rows.get(name, _empty(self._dims[name]))
            ids = np.asarray(ids, dtype=np.uint64)
            values = np.asarray(values, dtype=self._dtypes[name]).reshape(len(ids), self._dims[name])
            dead = np.asarray((tombstones or {}).get(name, ()), dtype=np.uint64)
            if not len(ids) and not len(dead):
                continue
            slots[name] = SlotDelta(ids, values, np.asarray(updated, dtype=np.int64), dead)
        delta = SparseDelta(
            producer=self.producer,
            seq=self.next_seq,
            schema_hash=self.manifest.schema_hash,
            created_at_ms=time.time_ns() // 1_000_000 if created_at_ms is None else created_at_ms,
            slots=slots,
        )
        self.next_seq += 1
        return delta


def _empty(dim: int) -> SlotRows:
    return np.zeros(0, np.uint64), np.zeros((0, dim), np.float32), np.zeros(0, np.int64)


def snapshot_deltas(
    builder: DeltaBuilder, rows: Mapping[str, SlotRows], *, chunk_rows: int = 100_000, created_at_ms: int | None = None
) -> Iterator[SparseDelta]:
    """A full table as consecutive deltas of at most ``chunk_rows`` rows (slot by slot), for a fresh server."""
    for name in sorted(rows):
        ids, values, updated = rows[name]
        for start in range(0, len(ids), chunk_rows):
            stop = start + chunk_rows
            yield builder.build({name: (ids[start:stop], values[start:stop], updated[start:stop])}, None, created_at_ms)
