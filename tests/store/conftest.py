from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from liverank.store import EmbeddingStore, SlotConfig, SlotDelta, SparseDelta

MAP_BYTES = 256 * 1024**2


def make_delta(
    seq: int,
    rows: dict[str, tuple[list[int] | list[str], float]],
    *,
    producer: str = "trainer",
    dim: int = 4,
    dtype: type = np.float32,
    updated_at_ms: int = 1_000,
    tombstones: dict[str, list[int] | list[str]] | None = None,
    schema_hash: str = "",
) -> SparseDelta:
    """A delta setting each slot's listed ids to vectors filled with one value."""
    slots: dict[str, SlotDelta] = {}
    for name, (ids, value) in rows.items():
        typed_ids = tuple(ids) if ids and isinstance(ids[0], str) else np.asarray(ids, dtype=np.uint64)
        slots[name] = SlotDelta(
            typed_ids,  # type: ignore[arg-type]
            np.full((len(ids), dim), value, dtype=dtype),
            np.full(len(ids), updated_at_ms, dtype=np.int64),
            tuple((tombstones or {}).get(name, ()))
            if ids and isinstance(ids[0], str)
            else np.asarray((tombstones or {}).get(name, []), dtype=np.uint64),  # type: ignore[arg-type]
        )
    for name, dead in (tombstones or {}).items():
        if name not in slots:
            typed = tuple(dead) if dead and isinstance(dead[0], str) else np.asarray(dead, dtype=np.uint64)
            slots[name] = SlotDelta(np.zeros(0, np.uint64), np.zeros((0, dim), dtype), np.zeros(0, np.int64), typed)  # type: ignore[arg-type]
    return SparseDelta(producer, seq, schema_hash, updated_at_ms, slots)


SLOTS = [
    SlotConfig("item", 4),
    SlotConfig("author", 4, default=(0.5, 0.5, 0.5, 0.5)),
    SlotConfig("half", 4, dtype="float16"),
    SlotConfig("tag", 4, id_kind="str"),
    SlotConfig("hashed", 4, id_kind="str_hash"),
    SlotConfig("fresh", 4, ttl_s=10),
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddingStore]:
    s = EmbeddingStore.open(tmp_path / "store", slots=SLOTS, map_size_bytes=MAP_BYTES)
    yield s
    s.close()
