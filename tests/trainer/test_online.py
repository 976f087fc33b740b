"""The online trainer: learning, admission and expiry through training, sparse updates, determinism, freshness."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from liverank.exporter.auc import roc_auc  # noqa: E402
from liverank.trainer.events import EventBatch  # noqa: E402
from liverank.trainer.features import IdColumn, short_video_manifest, single  # noqa: E402
from liverank.trainer.online import OnlineTrainer, TrainerConfig  # noqa: E402
from liverank.trainer.synthetic_stream import ShortVideoStream  # noqa: E402
from liverank.trainer.tables import AdmissionPolicy  # noqa: E402

BATCH = 256
MANIFEST = short_video_manifest(16, created_at_ms=0)


def _trainer(**config: object) -> OnlineTrainer:
    return OnlineTrainer(MANIFEST, TrainerConfig(**config))  # type: ignore[arg-type]


def _batches(stream: ShortVideoStream, n: int) -> list[EventBatch]:
    return list(itertools.islice(stream.batches(BATCH), n))


def _auc(trainer: OnlineTrainer, batches: list[EventBatch]) -> float:
    scores = np.concatenate([trainer.score_batch(b)["click"] for b in batches])
    return roc_auc(np.concatenate([b.click for b in batches]), scores)


def test_training_beats_an_untrained_model_on_held_out_events() -> None:
    stream = ShortVideoStream(1)
    trained, untrained = _trainer(seed=0), _trainer(seed=0)
    for batch in _batches(stream, 250):
        losses = trained.train_batch(batch)
    assert set(losses) == {"click", "finish", "loss"}
    held_out = _batches(stream, 40)
    trained_auc, untrained_auc = _auc(trained, held_out), _auc(untrained, held_out)
    print(f"\nheld-out AUC: trained {trained_auc:.4f}, untrained {untrained_auc:.4f}")
    assert trained_auc > 0.6
    assert trained_auc > untrained_auc + 0.05, (trained_auc, untrained_auc)
    finish = np.concatenate([b.finish for b in held_out])
    finish_scores = np.concatenate([trained.score_batch(b)["finish"] for b in held_out])
    assert roc_auc(finish, finish_scores) > 0.6


def test_freshness_online_training_beats_a_model_frozen_after_the_first_part(
    record_property: Callable[[str, object], None],
) -> None:
    """Prequential evaluation: every later batch is scored by both models before the online one trains on it."""
    stream = ShortVideoStream(11)
    online = _trainer(seed=0)
    for batch in _batches(stream, 400):
        online.train_batch(batch)
    frozen = online.clone()
    frozen_at_ms = stream.now_ms
    labels, fresh_scores, frozen_scores, new_item = [], [], [], []
    for batch in _batches(stream, 500):
        labels.append(batch.click)
        fresh_scores.append(online.score_batch(batch)["click"])
        frozen_scores.append(frozen.score_batch(batch)["click"])
        new_item.append(stream.item_arrival_ms(batch.item_ids) > frozen_at_ms)
        online.train_batch(batch)
    y, fresh, stale, new = (np.concatenate(a) for a in (labels, fresh_scores, frozen_scores, new_item))
    fresh_auc, frozen_auc = roc_auc(y, fresh), roc_auc(y, stale)
    new_fresh_auc, new_frozen_auc = roc_auc(y[new], fresh[new]), roc_auc(y[new], stale[new])
    record_property("auc_online", round(fresh_auc, 4))
    record_property("auc_frozen", round(frozen_auc, 4))
    record_property("auc_margin", round(fresh_auc - frozen_auc, 4))
    record_property("auc_new_items_online", round(new_fresh_auc, 4))
    record_property("auc_new_items_frozen", round(new_frozen_auc, 4))
    print(
        f"\nfreshness: AUC online {fresh_auc:.4f} vs frozen {frozen_auc:.4f} (margin {fresh_auc - frozen_auc:+.4f}); "
        f"items new since the freeze ({new.mean():.0%} of events): {new_fresh_auc:.4f} vs {new_frozen_auc:.4f}"
    )
    assert fresh_auc > frozen_auc + 0.03
    assert new_fresh_auc > new_frozen_auc + 0.03


def test_unadmitted_ids_get_no_row_no_update_and_read_as_default() -> None:
    never = AdmissionPolicy(min_count=10**9)
    trainer = _trainer(admission={"item_id": never, "user_id": AdmissionPolicy(min_count=3)})
    stream = ShortVideoStream(2)
    batches = _batches(stream, 5)
    for batch in batches:
        trainer.train_batch(batch)
    assert len(trainer.tables["item_id"]) == 0
    assert trainer.tables["item_id"].n_pending > 0
    rows, _ = trainer.take_sparse_update()
    assert "item_id" not in rows
    assert set(rows) == {"user_id", "author_id", "tags"}
    # Users seen fewer than 3 times have no row; those seen 3 times or more have one.
    seen = np.unique(np.concatenate([b.user_ids for b in batches]), return_counts=True)
    admitted = set(rows["user_id"][0].tolist())
    assert {int(u) for u, c in zip(*seen, strict=True) if c < 3}.isdisjoint(admitted)
    assert {int(u) for u, c in zip(*seen, strict=True) if c >= 3} <= admitted
    # An item id without a row scores exactly like any other unknown item id.
    batch = batches[-1].take(slice(0, 1))
    other = EventBatch(**{**batch.__dict__, "item_ids": np.asarray([12345], np.uint64)})
    assert trainer.score_batch(batch)["click"] == pytest.approx(trainer.score_batch(other)["click"])


def test_take_sparse_update_returns_touched_rows_once_with_current_values() -> None:
    trainer = _trainer()
    stream = ShortVideoStream(3)
    first, second = _batches(stream, 2)
    trainer.train_batch(first)
    rows, tombstones = trainer.take_sparse_update()
    assert tombstones == {}
    ids, values, updated_at_ms = rows["item_id"]
    seen = np.concatenate([first.item_ids, first.hist_item_ids[np.arange(20)[None, :] < first.hist_lengths[:, None]]])
    assert sorted(ids.tolist()) == sorted(set(seen.tolist()))
    assert values.shape == (len(ids), 16)
    assert values.dtype == np.float32
    assert updated_at_ms.dtype == np.int64
    table = trainer.tables["item_id"]
    np.testing.assert_array_equal(values, table.gather(table.lookup(ids)))
    assert trainer.take_sparse_update() == ({}, {})
    # Only what the next batch touched comes back, each row stamped with its latest event time in the batch.
    trainer.train_batch(second)
    rows, _ = trainer.take_sparse_update()
    user_ids, _, user_times = rows["user_id"]
    assert sorted(user_ids.tolist()) == sorted(set(second.user_ids.tolist()))
    latest = {int(u): int(t) for u, t in zip(second.user_ids, second.event_time_ms, strict=True)}
    assert user_times.tolist() == [latest[int(u)] for u in user_ids]
    snapshot = trainer.all_rows()
    assert len(snapshot["item_id"][0]) >= len(ids)


def test_rows_past_their_ttl_are_reported_as_tombstones() -> None:
    trainer = _trainer(ttl_s={"user_id": 5.0})
    stream = ShortVideoStream(4, n_users=3000)
    reported: set[int] = set()
    tombstoned: set[int] = set()
    for batch in _batches(stream, 80):  # 40 simulated seconds
        trainer.train_batch(batch)
        rows, tombstones = trainer.take_sparse_update()
        reported |= set(rows["user_id"][0].tolist())
        now_dead = set(tombstones.get("user_id", np.zeros(0, np.uint64)).tolist())
        assert now_dead.isdisjoint(rows["user_id"][0].tolist())
        tombstoned |= now_dead
    assert tombstoned
    assert tombstoned <= reported
    live = trainer.all_rows()["user_id"]
    assert trainer.now_ms is not None
    assert (live[2] >= trainer.now_ms - 5_000 - 1_000).all()  # nothing older than the TTL (plus one sweep period)
    assert "item_id" not in trainer.take_sparse_update()[1]  # slots without a TTL never expire


def test_training_is_deterministic_for_a_seed() -> None:
    batches = _batches(ShortVideoStream(5), 10)
    runs = []
    for _ in range(2):
        trainer = _trainer(seed=3)
        losses = [trainer.train_batch(b)["loss"] for b in batches]
        runs.append((losses, trainer.all_rows()["item_id"][1], trainer.tower.state_dict()))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    for name, tensor in runs[0][2].items():
        torch.testing.assert_close(tensor, runs[1][2][name])


def test_score_broadcasts_one_user_over_candidates() -> None:
    trainer = _trainer()
    stream = ShortVideoStream(6)
    for batch in _batches(stream, 20):
        trainer.train_batch(batch)
    user = int(stream.user_ids()[0])
    history = stream.user_history(user)
    candidates = stream.candidates_for(user, 50, stream.now_ms, np.random.default_rng(0))
    scores = trainer.score(
        np.asarray([user], np.uint64),
        history[None, :],
        np.asarray([len(history)]),
        candidates.item_ids,
        candidates.author_ids,
        candidates.tag_ids,
        candidates.tag_lengths,
    )
    assert scores.shape == (50,)
    per_row = trainer.predict(
        {
            "user_id": single(np.full(50, user, np.uint64)),
            "hist_item_ids": IdColumn(np.repeat(history[None, :], 50, axis=0), np.full(50, len(history))),
            "item_id": single(candidates.item_ids),
            "author_id": single(candidates.author_ids),
            "tags": IdColumn(candidates.tag_ids, candidates.tag_lengths),
        }
    )["click"]
    np.testing.assert_allclose(scores, per_row, rtol=1e-5, atol=1e-6)


def test_a_clone_is_independent_and_scoring_changes_nothing() -> None:
    trainer = _trainer()
    batches = _batches(ShortVideoStream(7), 6)
    trainer.train_batch(batches[0])
    trainer.take_sparse_update()
    frozen = trainer.clone()
    before = frozen.score_batch(batches[5])["click"]
    trainer.score_batch(batches[4])  # scoring admits and touches nothing
    assert trainer.take_sparse_update() == ({}, {})
    for batch in batches[1:5]:
        trainer.train_batch(batch)
    np.testing.assert_array_equal(frozen.score_batch(batches[5])["click"], before)
    assert not np.allclose(trainer.score_batch(batches[5])["click"], before)
    snapshot = trainer.snapshot_tower()
    assert not snapshot.training


def test_config_must_name_manifest_slots() -> None:
    with pytest.raises(ValueError, match="slots the manifest lacks"):
        _trainer(ttl_s={"music_id": 10.0})
