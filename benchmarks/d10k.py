"""The D-10k delta stream (``/work/shared/WORKLOADS.md``): 10,000 rows a delta over item_id (70 %), author_id (20 %)
and tags (10 %), distinct Zipf-popular existing ids plus 5 % new ids, absolute values, one producer, seq from 1."""

from __future__ import annotations

import time

import numpy as np

from liverank.benchmarks.w500 import W500Tables
from liverank.benchmarks.workload import RowSampler
from liverank.store.format import SlotDelta, SparseDelta, encode_delta

PRODUCER = "bench-d10k"
SHARES: dict[str, float] = {"item_id": 0.7, "author_id": 0.2, "tags": 0.1}
ROWS = 10_000
NEW_FRACTION = 0.05


class DeltaStream:
    """Makes the stream's deltas in sequence order, each as its binary form (what a producer POSTs)."""

    def __init__(self, tables: W500Tables, dim: int, schema_hash: str, rows: int = ROWS) -> None:
        self._tables = tables
        self._dim = dim
        self._schema_hash = schema_hash
        self._plan: dict[str, tuple[int, int]] = {}
        self._samplers: dict[str, RowSampler] = {}
        for slot, share in SHARES.items():
            table = tables.slots[slot]
            if table.popularity is None:
                raise ValueError(f"slot {slot!r} has no popularity; D-10k draws it by Zipf")
            n = round(rows * share)
            n_new = round(n * NEW_FRACTION)
            n_existing = min(n - n_new, table.n_rows)  # tiny test stores hold fewer distinct ids
            self._plan[slot] = (n_existing, n_new)
            self._samplers[slot] = RowSampler(table.popularity, tables.seed, stream=500 + table.index)
        self._rng = np.random.default_rng([tables.seed, 17])
        self._next_new = dict.fromkeys(SHARES, 0)
        self.seq = 0

    @property
    def rows_per_delta(self) -> int:
        return sum(a + b for a, b in self._plan.values())

    def next(self) -> bytes:
        """The next delta's binary form (sequence numbers count up from 1)."""
        self.seq += 1
        now_ms = time.time_ns() // 1_000_000
        slots: dict[str, SlotDelta] = {}
        for slot, (n_existing, n_new) in self._plan.items():
            table = self._tables.slots[slot]
            existing = table.ids[self._samplers[slot].distinct_zipf(n_existing)]
            new = table.new_ids(self._next_new[slot], n_new)
            self._next_new[slot] += n_new
            ids = np.concatenate([existing, new])
            vectors = self._rng.standard_normal((len(ids), self._dim), dtype=np.float32)
            slots[slot] = SlotDelta(ids, vectors, np.full(len(ids), now_ms, dtype=np.int64))
        return encode_delta(SparseDelta(PRODUCER, self.seq, self._schema_hash, now_ms, slots))
