"""EmbeddingStore semantics on a real LMDB store: apply, replay, gaps, validation, tombstones, expiry, defaults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from liverank.store import (
    DimMismatch,
    DtypeMismatch,
    EmbeddingStore,
    IdOutOfRange,
    NonFiniteValues,
    SchemaMismatch,
    SequenceGap,
    SlotConfig,
    SlotConflict,
    SlotDelta,
    SparseDelta,
    StoreError,
    UnknownSlot,
    hash_str_id,
)
from tests.store.conftest import MAP_BYTES, SLOTS, make_delta


def snapshot(store: EmbeddingStore) -> tuple[object, ...]:
    stats = store.stats()
    rows = store.lookup_many({"item": list(range(20)), "tag": ["a", "b"]}, now_ms=2_000)
    return (
        stats.generation,
        stats.applied_seq,
        stats.rows_by_slot,
        rows.slots["item"].vectors.tobytes(),
        rows.slots["tag"].vectors.tobytes(),
    )


def test_apply_then_lookup_returns_the_rows(store: EmbeddingStore) -> None:
    result = store.apply(make_delta(1, {"item": ([1, 2, 3], 1.5), "tag": (["a"], 2.0)}))
    assert (result.status, result.seq, result.generation, result.rows_written) == ("applied", 1, 1, 4)
    got = store.lookup("item", [3, 1, 99], now_ms=2_000)
    assert got.vectors.dtype == np.float32
    assert got.vectors[:2].tolist() == [[1.5] * 4] * 2
    assert got.unseen.tolist() == [False, False, True]
    assert got.updated_at_ms[:2].tolist() == [1_000, 1_000]


def test_reapplying_an_applied_sequence_is_a_reported_no_op(store: EmbeddingStore) -> None:
    store.apply(make_delta(1, {"item": ([1], 1.0)}))
    store.apply(make_delta(2, {"item": ([1], 2.0)}))
    before = snapshot(store)
    again = store.apply(make_delta(1, {"item": ([1], 9.0)}))
    assert again.status == "duplicate"
    assert snapshot(store) == before
    assert store.lookup("item", [1]).vectors[0, 0] == 2.0


def test_a_gap_is_refused_with_the_expected_sequence(store: EmbeddingStore) -> None:
    store.apply(make_delta(1, {"item": ([1], 1.0)}))
    before = snapshot(store)
    with pytest.raises(SequenceGap) as info:
        store.apply(make_delta(3, {"item": ([1], 3.0)}))
    assert (info.value.expected, info.value.got, info.value.code) == (2, 3, "sequence_gap")
    assert "resend from 2" in str(info.value)
    assert snapshot(store) == before


def test_producers_have_independent_sequences(store: EmbeddingStore) -> None:
    store.apply(make_delta(1, {"item": ([1], 1.0)}, producer="a"))
    store.apply(make_delta(1, {"item": ([2], 2.0)}, producer="b"))
    store.apply(make_delta(2, {"item": ([3], 3.0)}, producer="a"))
    assert store.applied_seqs() == {"a": 2, "b": 1}
    assert store.stats().generation == 3


def _with(slot: str, delta: SlotDelta) -> SparseDelta:
    return SparseDelta("trainer", 1, "", 0, {slot: delta})


def _ids(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.uint64)


BAD_DELTAS = [
    ("unknown slot", _with("nope", SlotDelta(_ids(1), np.ones((1, 4), np.float32), np.ones(1))), UnknownSlot),
    ("wrong dim", _with("item", SlotDelta(_ids(1), np.ones((1, 3), np.float32), np.ones(1))), DimMismatch),
    ("wrong dtype", _with("item", SlotDelta(_ids(1), np.ones((1, 4), np.float16), np.ones(1))), DtypeMismatch),
    ("fp32 into fp16", _with("half", SlotDelta(_ids(1), np.ones((1, 4), np.float32), np.ones(1))), DtypeMismatch),
    (
        "nan",
        _with("item", SlotDelta(_ids(1, 2), np.asarray([[0] * 4, [np.nan] * 4], np.float32), np.ones(2))),
        NonFiniteValues,
    ),
    ("inf", _with("item", SlotDelta(_ids(1), np.full((1, 4), np.inf, np.float32), np.ones(1))), NonFiniteValues),
    ("str ids in int slot", _with("item", SlotDelta(("a",), np.ones((1, 4), np.float32), np.ones(1))), IdOutOfRange),
    ("int ids in str slot", _with("tag", SlotDelta(_ids(1), np.ones((1, 4), np.float32), np.ones(1))), IdOutOfRange),
    ("signed ids", _with("item", SlotDelta(np.asarray([-1]), np.ones((1, 4), np.float32), np.ones(1))), IdOutOfRange),  # type: ignore[arg-type]
    ("overlong str id", _with("tag", SlotDelta(("x" * 481,), np.ones((1, 4), np.float32), np.ones(1))), IdOutOfRange),
    ("duplicate ids", _with("item", SlotDelta(_ids(1, 1), np.ones((2, 4), np.float32), np.ones(2))), StoreError),
    (
        "write and delete",
        _with("item", SlotDelta(_ids(1), np.ones((1, 4), np.float32), np.ones(1), _ids(1))),
        StoreError,
    ),
]


@pytest.mark.parametrize(("case", "delta", "error"), BAD_DELTAS, ids=[c[0] for c in BAD_DELTAS])
def test_invalid_deltas_raise_specific_errors_and_change_nothing(
    store: EmbeddingStore, case: str, delta: SparseDelta, error: type[StoreError]
) -> None:
    store.apply(make_delta(1, {"item": ([1], 1.0)}, producer="other"))
    before = snapshot(store)
    with pytest.raises(error) as info:
        store.apply(delta)
    assert info.value.message
    assert snapshot(store) == before
    assert store.applied_seq("trainer") == 0


def test_a_delta_for_another_schema_is_refused(store: EmbeddingStore) -> None:
    store.bind_schema("abc")
    with pytest.raises(SchemaMismatch, match="abc"):
        store.apply(make_delta(1, {"item": ([1], 1.0)}, schema_hash="zzz"))
    assert store.apply(make_delta(1, {"item": ([1], 1.0)}, schema_hash="abc")).status == "applied"


def test_tombstones_delete_rows(store: EmbeddingStore) -> None:
    store.apply(make_delta(1, {"item": ([1, 2, 3], 1.0), "tag": (["a", "b"], 1.0)}))
    assert store.stats().rows_by_slot["item"] == 3
    store.apply(make_delta(2, {}, tombstones={"item": [2, 77], "tag": ["b"]}))
    got = store.lookup_many({"item": [1, 2, 3], "tag": ["a", "b"]})
    assert got.slots["item"].unseen.tolist() == [False, True, False]
    assert got.slots["tag"].unseen.tolist() == [False, True]
    assert got.slots["item"].vectors[1].tolist() == [0.0] * 4
    assert store.stats().rows_by_slot == {**store.stats().rows_by_slot, "item": 2, "tag": 1}


def test_unseen_ids_read_as_the_slot_default_and_are_counted(store: EmbeddingStore) -> None:
    got = store.lookup_many({"item": [5], "author": [5, 6]})
    assert got.slots["item"].vectors.tolist() == [[0.0] * 4]
    assert got.slots["author"].vectors.tolist() == [[0.5] * 4] * 2
    assert got.slots["author"].n_unseen == 2
    assert store.stats().unseen_by_slot == {"item": 1, "author": 2}


def test_expired_rows_read_as_unseen_and_are_swept(store: EmbeddingStore) -> None:
    store.apply(make_delta(1, {"fresh": ([1, 2], 1.0)}, updated_at_ms=1_000))
    store.apply(make_delta(2, {"fresh": ([3], 3.0)}, updated_at_ms=20_000))
    assert store.lookup("fresh", [1, 3], now_ms=5_000).unseen.tolist() == [False, False]
    late = store.lookup("fresh", [1, 3], now_ms=25_000)
    assert late.unseen.tolist() == [True, False]
    assert late.vectors[0].tolist() == [0.0] * 4
    assert store.sweep_expired(now_ms=25_000) == {"fresh": 2}
    assert store.stats().rows_by_slot["fresh"] == 1
    assert store.lookup("fresh", [1, 2, 3], now_ms=12_000).unseen.tolist() == [True, True, False]


def test_sweeps_resume_in_slices(store: EmbeddingStore) -> None:
    store.apply(make_delta(1, {"fresh": (list(range(50)), 1.0)}, updated_at_ms=0))
    removed = [store.sweep_expired(now_ms=100_000, max_rows_scanned=20).get("fresh", 0) for _ in range(4)]
    assert removed == [20, 20, 10, 0]
    assert store.stats().rows_by_slot["fresh"] == 0


def test_fp16_rows_are_stored_as_fp16_and_read_as_float32(tmp_path: Path) -> None:
    with EmbeddingStore.open(tmp_path / "s", slots=SLOTS, map_size_bytes=MAP_BYTES) as store:
        values = np.asarray([[0.1, 0.2, 65504.0, -3.5]], dtype=np.float16)
        store.apply(SparseDelta("p", 1, "", 0, {"half": SlotDelta(_ids(7), values, np.zeros(1))}))
        got = store.lookup("half", [7]).vectors
        assert got.dtype == np.float32
        assert np.array_equal(got, values.astype(np.float32))
        assert store.stats().used_bytes > 0


def test_string_ids_are_kept_exactly_and_hashed_slots_use_the_documented_hash(store: EmbeddingStore) -> None:
    store.apply(make_delta(1, {"tag": (["é", "e"], 1.0), "hashed": (["video-1"], 2.0)}))
    assert store.lookup("tag", ["é", "e", "É"]).unseen.tolist() == [False, False, True]
    assert store.lookup("hashed", ["video-1"]).vectors[0, 0] == 2.0
    assert store.lookup("hashed", [hash_str_id("video-1")]).vectors[0, 0] == 2.0


def test_full_64_bit_ids_never_collide(store: EmbeddingStore) -> None:
    ids = [0, 1, 2**32 + 1, 2**63, 2**64 - 1, 2**64 - 2]
    store.apply(
        SparseDelta(
            "p",
            1,
            "",
            0,
            {"item": SlotDelta(np.asarray(ids, np.uint64), np.arange(24, dtype=np.float32).reshape(6, 4), np.zeros(6))},
        )
    )
    got = store.lookup("item", ids).vectors
    assert got[:, 0].tolist() == [0.0, 4.0, 8.0, 12.0, 16.0, 20.0]
    with pytest.raises(IdOutOfRange):
        store.lookup("item", [-1])
    with pytest.raises(UnknownSlot):
        store.lookup("nope", [1])


def test_redeclaring_a_slot_with_another_layout_is_refused(store: EmbeddingStore) -> None:
    with pytest.raises(SlotConflict, match="dim 4"):
        store.declare_slots([SlotConfig("item", 8)])
    store.declare_slots([SlotConfig("item", 4, ttl_s=60)])  # TTL changes are fine
    assert store.slots["item"].ttl_s == 60


def test_reopen_rebuilds_the_ram_tier_and_answers_from_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = rng.choice(2**40, size=3000, replace=False).astype(np.uint64)
    values = rng.standard_normal((3000, 4)).astype(np.float32)
    with EmbeddingStore.open(tmp_path / "s", slots=SLOTS, map_size_bytes=MAP_BYTES) as store:
        store.apply(SparseDelta("p", 1, "", 0, {"item": SlotDelta(ids, values, np.arange(3000))}))
        first = store.lookup_many({"item": ids[::-1]})
    with EmbeddingStore.open(tmp_path / "s", map_size_bytes=MAP_BYTES) as store:
        again = store.lookup_many({"item": ids[::-1]})
        assert again.source == "ram"
        assert store.stats().resident_rows_by_slot["item"] == 3000
    assert np.array_equal(first.slots["item"].vectors, again.slots["item"].vectors)
    assert np.array_equal(again.slots["item"].vectors, values[::-1])


@pytest.mark.parametrize("budget", [0, 700])
def test_a_bounded_ram_tier_answers_exactly_like_lmdb(tmp_path: Path, budget: int) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "s"
    with EmbeddingStore.open(path, slots=SLOTS, map_size_bytes=MAP_BYTES) as store:
        for seq in range(1, 6):
            ids = rng.choice(5000, size=500, replace=False).astype(np.uint64)
            values = rng.standard_normal((500, 4)).astype(np.float32)
            dead = np.setdiff1d(rng.choice(5000, size=20, replace=False).astype(np.uint64), ids)
            store.apply(SparseDelta("p", seq, "", 0, {"item": SlotDelta(ids, values, np.full(500, seq), dead)}))
        query = rng.integers(0, 5000, size=2000).astype(np.uint64)
        full = store.lookup_many({"item": query})
    with EmbeddingStore.open(path, map_size_bytes=MAP_BYTES, ram_budget_rows=budget) as small:
        partial = small.lookup_many({"item": query})
        assert partial.source == ("lmdb" if budget == 0 else "ram+lmdb") or budget == 0
        # Deltas applied to the bounded store keep it exact too.
        ids = np.arange(4990, 5010, dtype=np.uint64)
        small.apply(
            SparseDelta("p", 6, "", 0, {"item": SlotDelta(ids, np.full((20, 4), 6.0, np.float32), np.full(20, 6))})
        )
        after = small.lookup("item", ids).vectors
    assert np.array_equal(full.slots["item"].vectors, partial.slots["item"].vectors)
    assert np.array_equal(full.slots["item"].unseen, partial.slots["item"].unseen)
    assert (after == 6.0).all()


def test_stats_report_rows_sequences_and_bytes(store: EmbeddingStore) -> None:
    store.apply(make_delta(1, {"item": ([1, 2], 1.0), "tag": (["a"], 1.0)}))
    stats = store.stats()
    assert stats.rows_by_slot["item"] == 2
    assert stats.rows_by_slot["tag"] == 1
    assert stats.applied_seq == {"trainer": 1}
    assert stats.map_size_bytes == MAP_BYTES
    assert 0 < stats.used_bytes < MAP_BYTES
    assert stats.durability == "process"
