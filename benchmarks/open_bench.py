"""Open-to-first-lookup: the time from ``EmbeddingStore.open`` to the answer of the first lookup."""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

from liverank.benchmarks.workload import IntIds
from liverank.store import Durability, EmbeddingStore


def open_and_first_lookup(
    path: Path, slot: str, first_ids: IntIds, durability: Durability = "process"
) -> tuple[EmbeddingStore, dict[str, Any]]:
    """Open the store (default RAM budget: the tier warms from LMDB) and serve one lookup; the store stays open.

    The caller must have closed and dropped any previous store of ``path`` (one LMDB environment per process).
    """
    gc.collect()
    started = time.perf_counter()
    store = EmbeddingStore.open(path, durability=durability)
    opened = time.perf_counter()
    source = store.lookup_many({slot: first_ids}).source
    done = time.perf_counter()
    return store, {
        "open_s": opened - started,
        "first_lookup_ms": (done - opened) * 1e3,
        "total_s": done - started,
        "first_source": source,
        "rows": sum(store.stats().rows_by_slot.values()),
    }


class StoreHandle:
    """The benchmark's one open store of a path, reopened as phases need it (never two environments at once)."""

    def __init__(self, path: Path, slot: str) -> None:
        self.path = path
        self.slot = slot
        self._store: EmbeddingStore | None = None

    @property
    def store(self) -> EmbeddingStore:
        if self._store is None:
            raise RuntimeError(f"{self.path} is not open")
        return self._store

    def reopen(self, first_ids: IntIds, durability: Durability = "process") -> dict[str, Any]:
        """Close the store (dropping its RAM tier), open it again and serve ``first_ids``; returns the timings."""
        self.close()
        self._store, figures = open_and_first_lookup(self.path, self.slot, first_ids, durability)
        return figures

    def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()
