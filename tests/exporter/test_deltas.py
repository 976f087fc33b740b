"""The delta builder against the store's codec and a real store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from liverank.exporter.deltas import DeltaBuilder, snapshot_deltas
from liverank.exporter.synthetic import synthetic_manifest
from liverank.store import EmbeddingStore, decode_delta, encode_delta


def _rows(ids: list[int], dim: int, value: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.asarray(ids, dtype=np.uint64),
        np.full((len(ids), dim), value, dtype=np.float64),  # the builder casts to the slot's dtype
        np.arange(len(ids), dtype=np.int64),
    )


def test_deltas_are_numbered_bound_to_the_schema_and_round_trip() -> None:
    manifest = synthetic_manifest("tiny", dim=4)
    builder = DeltaBuilder("trainer-0", manifest)
    first = builder.build({"item_id": _rows([5, 2**64 - 1], 4, 0.5)}, {"tags": np.asarray([9], np.uint64)}, 123)
    second = builder.build({"author_id": _rows([1], 4, 1.0)})
    assert (first.seq, second.seq) == (1, 2)
    assert first.schema_hash == manifest.schema_hash
    back = decode_delta(encode_delta(first))
    assert back.slots["item_id"].values.dtype == np.float32
    assert back.slots["item_id"].ids.tolist() == [5, 2**64 - 1]  # type: ignore[union-attr]
    assert back.slots["tags"].tombstones.tolist() == [9]  # type: ignore[union-attr]
    assert back.created_at_ms == 123


def test_unknown_slots_are_refused_before_a_sequence_is_used() -> None:
    builder = DeltaBuilder("p", synthetic_manifest("tiny", dim=4))
    with pytest.raises(ValueError, match="nope"):
        builder.build({"nope": _rows([1], 4, 1.0)})
    assert builder.next_seq == 1


def test_a_snapshot_fills_a_fresh_store(tmp_path: Path) -> None:
    manifest = synthetic_manifest("tiny", dim=4)
    rows = {"item_id": _rows(list(range(2500)), 4, 3.0), "author_id": _rows([7, 8], 4, 2.0)}
    builder = DeltaBuilder("p", manifest)
    deltas = list(snapshot_deltas(builder, rows, chunk_rows=1000))
    assert [d.seq for d in deltas] == [1, 2, 3, 4]
    with EmbeddingStore.open(tmp_path / "s", slots=list(manifest.slots), map_size_bytes=1 << 28) as store:
        store.bind_schema(manifest.schema_hash)
        for delta in deltas:
            assert store.apply(decode_delta(encode_delta(delta))).status == "applied"
        assert store.stats().rows_by_slot["item_id"] == 2500
        assert (store.lookup("item_id", [0, 2499]).vectors == 3.0).all()
        assert (store.lookup("author_id", [7]).vectors == 2.0).all()
