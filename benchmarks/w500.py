"""W-500 (``/work/shared/WORKLOADS.md``): the slots a store holds, the rows it is filled with, and seeded requests.

Ids are 63-bit and scattered: ordinal ``i`` of a slot maps to ``i * odd mod 2**63`` (a bijection, so ids past a
slot's cardinality are new ids that never collide with stored ones, and every id fits a signed 64-bit integer as
real ids do). Each slot's ids are kept in ascending order, which is also LMDB key order, so filling a store in that
order appends. Zipf popularity is decoupled from position (``liverank.benchmarks.workload.Popularity``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from liverank.benchmarks.workload import IntIds, Popularity, RowSampler, Vectors
from liverank.store.format import SlotDelta, SparseDelta
from liverank.store.manifest import Manifest

# Slot cardinalities; None: the largest slots, sized by the benchmark (1M or 10M).
CARDINALITY: dict[str, int | None] = {
    "user_id": None,
    "item_id": None,
    "device": 8,
    "country": 200,
    "hour_bucket": 24,
    "user_age_bucket": 10,
    "author_id": 100_000,
    "music_id": 200_000,
    "tags": 20_000,
    "category": 300,
    "language": 50,
    "duration_bucket": 20,
    "age_bucket_item": 30,
    **{f"item_f{i}": 10_000 for i in range(12)},
}
# Features whose ids are drawn uniformly; every other id feature is drawn by Zipf popularity.
UNIFORM_FEATURES = frozenset(
    {"user_id", "device", "country", "hour_bucket", "user_age_bucket", "category", "language", "duration_bucket"}
    | {"age_bucket_item"}
)
N_CANDIDATES = 500
K = 50
TAGS_PER_ITEM = (1, 5)
_MULT = np.uint64(0x9E3779B97F4A7C15)
_MASK63 = np.uint64((1 << 63) - 1)


def scatter63(ordinals: IntIds) -> IntIds:
    """Ordinal -> id: multiplication by an odd constant modulo 2**63, a bijection on 63-bit integers."""
    return (ordinals * _MULT) & _MASK63


def slot_cardinality(slot: str, largest: int) -> int:
    """Rows of ``slot`` in a store whose largest slots hold ``largest`` rows (no slot holds more)."""
    if slot not in CARDINALITY:
        raise ValueError(f"slot {slot!r} is not a W-500 slot")
    fixed = CARDINALITY[slot]
    return largest if fixed is None else min(fixed, largest)


@dataclass(frozen=True)
class SlotTable:
    """One slot's ids (ascending) and, for slots drawn by popularity, its Zipf popularity."""

    name: str
    index: int
    ids: IntIds
    popularity: Popularity | None

    @property
    def n_rows(self) -> int:
        return len(self.ids)

    def new_ids(self, start: int, count: int) -> IntIds:
        """Ids this slot does not hold: ordinals past its cardinality, scattered the same way."""
        return scatter63(np.arange(self.n_rows + start, self.n_rows + start + count, dtype=np.uint64))


@dataclass(frozen=True)
class W500Tables:
    """Every slot of the W-500 store, for one size of the largest slots."""

    largest: int
    slots: dict[str, SlotTable]
    zipf_s: float
    seed: int

    @property
    def n_rows(self) -> int:
        return sum(t.n_rows for t in self.slots.values())

    def rows_by_slot(self) -> dict[str, int]:
        return {name: t.n_rows for name, t in self.slots.items()}


def zipf_slots(manifest: Manifest) -> set[str]:
    """Slots that some feature draws by popularity (the rest are only drawn uniformly)."""
    return {f.slot for f in manifest.features if f.slot is not None and f.name not in UNIFORM_FEATURES}


def make_tables(manifest: Manifest, largest: int, zipf_s: float, seed: int) -> W500Tables:
    """The ids of every slot of ``manifest`` (a W-500 bundle's), with popularity where requests need it."""
    popular = zipf_slots(manifest)
    slots: dict[str, SlotTable] = {}
    for index, config in enumerate(manifest.slots):
        n = slot_cardinality(config.name, largest)
        ids = np.sort(scatter63(np.arange(n, dtype=np.uint64)))
        popularity = Popularity(n, zipf_s, seed + 1009 * index) if config.name in popular else None
        slots[config.name] = SlotTable(config.name, index, ids, popularity)
    return W500Tables(largest, slots, zipf_s, seed)


def ordinal_tables(manifest: Manifest, largest: int, seed: int) -> W500Tables:
    """The ids of every slot of ``manifest`` as the load test draws them (``liverank.loadtest.payloads``): ordinals
    ``0 .. n - 1``, not scattered, with ``n`` the slot's W-500 cardinality capped at ``largest``. No popularity: a
    store filled from these serves requests drawn by the load test, which draws its own ids."""
    slots = {
        config.name: SlotTable(
            config.name, index, np.arange(slot_cardinality(config.name, largest), dtype=np.uint64), None
        )
        for index, config in enumerate(manifest.slots)
    }
    return W500Tables(largest, slots, 0.0, seed)


def fill_chunks(tables: W500Tables, dim: int, chunk_rows: int) -> Iterator[tuple[str, IntIds, Vectors]]:
    """Every row of the store, slot by slot in ascending id order, ``chunk_rows`` at a time, with seeded vectors.

    The same (slot, chunk) always gets the same vectors, so two stores filled from this hold the same rows.
    """
    for table in tables.slots.values():
        for start in range(0, table.n_rows, chunk_rows):
            stop = min(start + chunk_rows, table.n_rows)
            rng = np.random.default_rng([tables.seed, 11, table.index, start])
            yield table.name, table.ids[start:stop], rng.standard_normal((stop - start, dim), dtype=np.float32)


def fill_deltas(
    tables: W500Tables, dim: int, chunk_rows: int, *, producer: str, schema_hash: str, updated_at_ms: int
) -> Iterator[SparseDelta]:
    """The rows of ``fill_chunks`` as deltas of one producer, sequence numbers from 1, one chunk each."""
    for seq, (slot, ids, vectors) in enumerate(fill_chunks(tables, dim, chunk_rows), start=1):
        updated = np.full(len(ids), updated_at_ms, dtype=np.int64)
        yield SparseDelta(producer, seq, schema_hash, updated_at_ms, {slot: SlotDelta(ids, vectors, updated)})


class RequestMaker:
    """Seeded W-500 ranking requests: one user (6 features, a 50-id history), 500 candidates x 20 features."""

    def __init__(self, manifest: Manifest, tables: W500Tables, stream: int) -> None:
        self._manifest = manifest
        self._tables = tables
        self._rng = np.random.default_rng([tables.seed, 13, stream])
        self._samplers = {
            name: RowSampler(t.popularity, tables.seed, stream=1000 * stream + t.index)
            for name, t in tables.slots.items()
            if t.popularity is not None
        }

    def _draw(self, feature: str, slot: str, count: int) -> list[int]:
        table = self._tables.slots[slot]
        if feature in UNIFORM_FEATURES or table.popularity is None:
            rows = self._rng.integers(0, table.n_rows, size=count, dtype=np.int64)
        else:
            rows = self._samplers[slot].zipf(count)
        ids: list[int] = table.ids[rows].tolist()
        return ids

    def make(self, n_candidates: int = N_CANDIDATES, k: int = K) -> dict[str, Any]:
        """A columnar request (the liverank ``/v1/rank`` body)."""
        user: dict[str, Any] = {}
        candidates: dict[str, Any] = {}
        for f in self._manifest.features:
            assert f.slot is not None  # W-500 has no numeric features
            if f.side == "user":
                if f.kind == "id":
                    user[f.name] = self._draw(f.name, f.slot, 1)[0]
                else:
                    user[f.name] = self._draw(f.name, f.slot, f.max_len or 50)
            elif f.kind == "id":
                candidates[f.name] = self._draw(f.name, f.slot, n_candidates)
            else:
                low, high = TAGS_PER_ITEM
                lengths = self._rng.integers(low, min(high, f.max_len or high) + 1, size=n_candidates).tolist()
                flat = self._draw(f.name, f.slot, sum(lengths))
                bounds = np.cumsum([0, *lengths]).tolist()
                candidates[f.name] = [flat[a:b] for a, b in itertools.pairwise(bounds)]
        return {"user": user, "candidates": candidates, "k": k}


def to_rows(doc: dict[str, Any]) -> dict[str, Any]:
    """The same request with one object per candidate (the body a pydantic row model takes)."""
    columns: dict[str, list[Any]] = doc["candidates"]
    names = list(columns)
    n = len(columns[names[0]])
    rows = [{name: columns[name][i] for name in names} for i in range(n)]
    return {"user": doc["user"], "candidates": rows, "k": doc["k"]}
