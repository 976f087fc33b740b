"""Embedding tables: collisionless rows, admission (threshold and probabilistic), expiry, Adagrad, touched set."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from liverank.trainer.tables import AdagradConfig, AdmissionPolicy, EmbeddingTable


def _ids(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.uint64)


def _at(ms: int, n: int) -> np.ndarray:
    return np.full(n, ms, dtype=np.int64)


def _train(table: EmbeddingTable, ids: np.ndarray, at_ms: int, grad: float = 1.0) -> np.ndarray:
    """Admit ``ids`` and give every admitted one the same gradient, as the trainer would."""
    rows = table.admit(ids, _at(at_ms, len(ids)))
    admitted = np.unique(rows[rows >= 0])
    table.apply_gradients(admitted, np.full((len(admitted), table.dim), grad, np.float32), _at(at_ms, len(admitted)))
    return rows


def test_ids_differing_only_in_high_bits_get_their_own_rows() -> None:
    table = EmbeddingTable("item_id", 4)
    ids = _ids(5, 5 | 1 << 63, 5 | 1 << 40, 5 | 1 << 32, 0, 2**64 - 1)
    rows = table.admit(ids, _at(0, len(ids)))
    assert len(set(rows.tolist())) == len(ids)
    assert len(table) == len(ids)
    before = table.gather(rows)
    table.apply_gradients(rows[:1], np.ones((1, 4), np.float32), _at(1, 1))
    after = table.gather(rows)
    assert not np.array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1:], before[1:])  # no other id moved with it


def test_threshold_admission_gives_a_row_only_at_the_nth_occurrence() -> None:
    table = EmbeddingTable("item_id", 4, admission=AdmissionPolicy(min_count=3))
    assert _train(table, _ids(7), 0).tolist() == [-1]
    assert _train(table, _ids(7), 1).tolist() == [-1]
    assert len(table) == 0
    assert table.n_pending == 1
    assert len(table.take_touched()) == 0  # nothing to sync: an unadmitted id has no row and got no update
    np.testing.assert_array_equal(table.gather(table.lookup(_ids(7))), np.zeros((1, 4), np.float32))
    rows = _train(table, _ids(7), 2)
    assert rows[0] >= 0
    assert table.n_pending == 0
    # Occurrences within one batch count too.
    assert (table.admit(_ids(9, 9, 9), _at(3, 3)) >= 0).all()
    assert (table.admit(_ids(11, 11), _at(3, 2)) < 0).all()


def test_lookup_counts_nothing() -> None:
    table = EmbeddingTable("item_id", 4, admission=AdmissionPolicy(min_count=2))
    for _ in range(5):
        assert table.lookup(_ids(3)).tolist() == [-1]
    assert table.admit(_ids(3), _at(0, 1)).tolist() == [-1]


def test_probabilistic_admission_admits_about_p_of_single_occurrences() -> None:
    ids = np.arange(1, 20_001, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    table = EmbeddingTable("item_id", 2, admission=AdmissionPolicy(probability=0.25), seed=3)
    rows = table.admit(ids, _at(0, len(ids)))
    share = float((rows >= 0).mean())
    assert share == pytest.approx(0.25, abs=0.02)
    assert len(table) == int((rows >= 0).sum())
    # Deterministic for a seed.
    again = EmbeddingTable("item_id", 2, admission=AdmissionPolicy(probability=0.25), seed=3)
    np.testing.assert_array_equal(again.admit(ids, _at(0, len(ids))) >= 0, rows >= 0)
    # An id that keeps coming back is admitted eventually: 40 draws at p = 0.25 all fail with probability 1e-5.
    frequent = ids[rows < 0][:1]
    assert any(table.admit(frequent, _at(1, 1))[0] >= 0 for _ in range(40))


def test_threshold_and_probability_combine() -> None:
    table = EmbeddingTable("item_id", 2, admission=AdmissionPolicy(min_count=2, probability=0.5), seed=0)
    ids = np.arange(1, 4001, dtype=np.uint64)
    assert (table.admit(ids, _at(0, len(ids))) < 0).all()  # below the threshold: no draw at all
    share = float((table.admit(ids, _at(1, len(ids))) >= 0).mean())
    assert share == pytest.approx(0.5, abs=0.04)


def test_rows_past_ttl_are_removed_and_reported_as_tombstones() -> None:
    table = EmbeddingTable("user_id", 3, ttl_s=10.0)
    _train(table, _ids(1, 2, 3, 4), at_ms=0)
    _train(table, _ids(3, 4), at_ms=8_000)  # 3 and 4 stay fresh
    table.take_touched()
    assert table.expire(now_ms=10_000) == 0  # exactly ttl old: kept
    assert table.expire(now_ms=12_000) == 2
    assert table.lookup(_ids(1, 2, 3, 4)).tolist()[:2] == [-1, -1]
    assert (table.lookup(_ids(3, 4)) >= 0).all()
    update = table.take_touched()
    assert len(update) == 0
    assert sorted(update.tombstones.tolist()) == [1, 2]
    assert len(table.take_touched().tombstones) == 0  # reported once
    # An expired id starts over: a new row (the freed one is reused), with fresh values.
    capacity = len(table._ids)
    _train(table, _ids(1), at_ms=13_000)
    assert 1 in table
    assert len(table._ids) == capacity


def test_an_id_readmitted_before_the_sync_is_a_row_not_a_tombstone() -> None:
    table = EmbeddingTable("user_id", 3, ttl_s=1.0)
    _train(table, _ids(1, 2), at_ms=0)
    table.expire(now_ms=5_000)
    _train(table, _ids(1), at_ms=5_000)
    update = table.take_touched()
    assert update.ids.tolist() == [1]
    assert update.tombstones.tolist() == [2]


def test_expiry_forgets_pending_counts() -> None:
    table = EmbeddingTable("item_id", 2, admission=AdmissionPolicy(min_count=2), ttl_s=1.0)
    table.admit(_ids(5), _at(0, 1))
    table.expire(now_ms=5_000)
    assert table.n_pending == 0
    assert table.admit(_ids(5), _at(5_000, 1)).tolist() == [-1]


def test_touched_set_never_drops_rows_between_syncs() -> None:
    table = EmbeddingTable("item_id", 2, initial_capacity=16)
    all_ids = np.arange(1, 150_001, dtype=np.uint64) << np.uint64(20)
    for chunk in np.array_split(all_ids, 30):
        _train(table, chunk, at_ms=int(chunk[0] >> np.uint64(20)))
    update = table.take_touched()
    assert len(update) == len(all_ids)
    assert sorted(update.ids.tolist()) == all_ids.tolist()
    # Absolute current values and per-row event times.
    np.testing.assert_array_equal(update.values, table.gather(table.lookup(update.ids)))
    np.testing.assert_array_equal(update.updated_at_ms > 0, np.ones(len(update), bool))
    assert len(table.take_touched()) == 0
    # Touch a few again: exactly those come back.
    _train(table, all_ids[:3], at_ms=10**9)
    again = table.take_touched()
    assert sorted(again.ids.tolist()) == all_ids[:3].tolist()
    assert (again.updated_at_ms == 10**9).all()


def test_all_rows_is_a_full_snapshot_and_leaves_the_touched_set_alone() -> None:
    table = EmbeddingTable("item_id", 2)
    _train(table, _ids(1, 2, 3), at_ms=5)
    snapshot = table.all_rows()
    assert sorted(snapshot.ids.tolist()) == [1, 2, 3]
    assert (snapshot.updated_at_ms == 5).all()
    assert len(table.take_touched()) == 3
    assert len(table.all_rows()) == 3


def test_adagrad_step() -> None:
    config = AdagradConfig(learning_rate=0.1, initial_accumulator=0.1, init_std=0.0)
    table = EmbeddingTable("item_id", 2, optimizer=config)
    rows = table.admit(_ids(1), _at(0, 1))
    np.testing.assert_array_equal(table.gather(rows), np.zeros((1, 2), np.float32))
    grad = np.asarray([[0.3, -0.6]], np.float32)
    table.apply_gradients(rows, grad, _at(7, 1))
    expected = -0.1 * grad / np.sqrt(0.1 + grad * grad)
    np.testing.assert_allclose(table.gather(rows), expected, rtol=1e-6)
    table.apply_gradients(rows, grad, _at(3, 1))  # an older event time never moves the row's time back
    assert table.take_touched().updated_at_ms.tolist() == [7]


def test_apply_gradients_needs_distinct_admitted_rows() -> None:
    table = EmbeddingTable("item_id", 2)
    rows = table.admit(_ids(1), _at(0, 1))
    with pytest.raises(ValueError, match="distinct"):
        table.apply_gradients(np.concatenate([rows, rows]), np.zeros((2, 2), np.float32), _at(0, 2))
    with pytest.raises(ValueError, match="distinct"):
        table.apply_gradients(np.asarray([-1]), np.zeros((1, 2), np.float32), _at(0, 1))


def test_unknown_ids_read_the_default_vector() -> None:
    table = EmbeddingTable("item_id", 2, default=np.asarray([0.5, -0.5], np.float32))
    np.testing.assert_array_equal(table.gather(table.lookup(_ids(42))), [[0.5, -0.5]])


def test_a_deep_copy_is_independent() -> None:
    table = EmbeddingTable("item_id", 2)
    _train(table, _ids(1), at_ms=0)
    twin = copy.deepcopy(table)
    _train(table, _ids(1, 2), at_ms=1)
    assert len(twin) == 1
    assert not np.array_equal(twin.gather(twin.lookup(_ids(1))), table.gather(table.lookup(_ids(1))))


@pytest.mark.parametrize(
    "kwargs",
    [{"min_count": 0}, {"probability": 0.0}, {"probability": 1.5}],
)
def test_invalid_admission_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message names the field
        AdmissionPolicy(**kwargs)  # type: ignore[arg-type]
