"""The replay experiment: requests, the generic trainer and towers, and short end-to-end runs through real servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

torch = pytest.importorskip("torch")

from liverank.exporter.onnx_export import export_bundle  # noqa: E402
from liverank.trainer.datasets import load  # noqa: E402
from liverank.trainer.datasets.criteo import criteo_manifest, write_synthetic_criteo  # noqa: E402
from liverank.trainer.datasets.movielens import write_synthetic_ratings  # noqa: E402
from liverank.trainer.generic import FieldTower, GenericTrainer, TrainerConfig, concat_batches  # noqa: E402
from liverank.trainer.replay import REQUEST_MAX_CANDIDATES, main, shard_requests, trainer_view  # noqa: E402


@pytest.fixture(scope="module")
def movielens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_ratings(tmp_path_factory.mktemp("ml") / "u.data", n_events=6000, seed=0)


def test_a_shard_is_one_request_per_user_with_its_items_as_candidates(movielens_file: Path) -> None:
    data = load(data=movielens_file, format="movielens", dim=8)
    rows = np.arange(4000, 4400)
    calls = shard_requests(data, data.events, rows)
    covered = np.sort(np.concatenate([c.rows for c in calls]))
    assert covered.tolist() == rows.tolist()  # every event scored exactly once
    users = data.request_keys
    for call in calls:
        body = orjson.loads(call.body)
        first = int(call.rows[0])
        assert len({int(users[r]) for r in call.rows}) == 1
        assert bool(np.all(np.diff(call.rows) > 0))  # time order inside a request
        assert body["user"]["user_id"] == int(users[first])
        hist = data.events.ids["hist_item_ids"]
        assert body["user"]["hist_item_ids"] == hist.ids[first, : hist.lengths[first]].tolist()
        assert body["candidates"]["item_id"] == data.events.ids["item_id"].ids[call.rows, 0].tolist()
        assert body["k"] == len(call.rows) <= REQUEST_MAX_CANDIDATES
    firsts = [int(c.rows[0]) for c in calls]
    assert firsts == sorted(firsts)  # requests in order of each user's first event


def test_a_criteo_tower_exports_with_numeric_features_and_an_empty_user_side(tmp_path: Path) -> None:
    manifest = criteo_manifest(4, created_at_ms=0)
    data = load(data=write_synthetic_criteo(tmp_path / "train.txt", n_events=600), format="criteo", dim=4)
    trainer = GenericTrainer(manifest, TrainerConfig(seed=0, hidden=(16,)))
    for start in range(0, 600, 100):
        trainer.train_batch(data.events.take(slice(start, start + 100)))
    tower = trainer.snapshot_tower()
    assert isinstance(tower, FieldTower)
    assert (tower.user_width, tower.candidate_width) == (0, 26 * 4 + 13)
    # The exporter's parity check runs the ONNX graph on a [1, 0] user input and numeric columns.
    bundle = export_bundle(tower, manifest, tmp_path / "bundle")
    assert (bundle / "dense.onnx").stat().st_size > 0
    call = shard_requests(data, data.events, np.arange(0, 250))[0]
    ids, numbers = trainer_view(manifest, data.events, call)
    served_form = trainer.predict(ids, numbers)["click"]
    per_event = trainer.score_batch(data.events.take(call.rows))["click"]
    np.testing.assert_allclose(served_form, per_event, rtol=1e-5, atol=1e-6)


def test_the_hashing_trick_makes_colliding_ids_share_rows(movielens_file: Path) -> None:
    data = load(data=movielens_file, format="movielens", dim=8)
    trainer = GenericTrainer(data.manifest, TrainerConfig(seed=0))
    hashed = data.events.hashed(16)
    trainer.train_batch(concat_batches([hashed.take(slice(0, 500)), hashed.take(slice(500, 1000))]))
    assert len(trainer.tables["item_id"]) <= 16
    assert len(trainer.tables["user_id"]) <= 16
    collisionless = GenericTrainer(data.manifest, TrainerConfig(seed=0))
    collisionless.train_batch(data.events.take(slice(0, 1000)))
    assert len(collisionless.tables["item_id"]) > 16


def _run(tmp_path: Path, args: list[str]) -> dict[str, Any]:
    out = tmp_path / "out"
    code = main([*args, "--seeds", "1", "--out", str(out), "--json", str(tmp_path / "r.json")])
    assert code == 0
    report: dict[str, Any] = orjson.loads((tmp_path / "r.json").read_bytes())
    assert (out / "replay.md").read_text().count("\n| ") >= 2
    assert (out / "replay.png").stat().st_size > 10_000
    return report


def _check_served(run: dict[str, Any], n_shards: int) -> None:
    for side in ("online", "batch"):
        assert run["failures"][side] == 0, run["last_error"]
        assert run["epoch_mismatches"][side] == 0, run["last_error"]
        assert run["requests"][side] >= n_shards
        assert run["max_abs_diff_vs_trainer"][side] < 1e-4
        per_shard = run[side]["per_shard"]
        assert len(per_shard) == n_shards
        assert all(s["auc"] is not None for s in per_shard)
    assert run["syncs"] == n_shards - 1


@pytest.mark.slow
def test_a_movielens_replay_through_live_servers(tmp_path: Path, movielens_file: Path) -> None:
    report = _run(
        tmp_path, ["--data", str(movielens_file), "--format", "movielens", "--shards", "3", "--hash-buckets", "32"]
    )
    assert report["failures"] == 0
    runs = report["runs"]
    assert [(r["tables"], r["n_shards"]) for r in runs] == [("collisionless", 3), ("hash 32", 3)]
    for run in runs:
        _check_served(run, 3)
    first = runs[0]
    # Before the first sync both servers hold the batch model: the first shard's scores agree.
    assert first["online"]["per_shard"][0]["auc"] == pytest.approx(first["batch"]["per_shard"][0]["auc"], abs=1e-6)
    # The data drift (half the items change quality) is learnt only by the model that keeps training.
    assert first["online"]["auc"] > first["batch"]["auc"] + 0.01, (first["online"]["auc"], first["batch"]["auc"])
    assert first["rows_pushed"] > 0
    summary = report["summary"]
    assert [row["tables"] for row in summary] == ["collisionless", "hash 32"]
    assert report["online_beats_batch_everywhere"] is True


@pytest.mark.slow
def test_a_criteo_replay_through_live_servers(tmp_path: Path) -> None:
    path = write_synthetic_criteo(tmp_path / "train.txt", n_events=3000, seed=1)
    report = _run(tmp_path, ["--data", str(path), "--format", "criteo", "--shards", "2", "--dim", "8"])
    run = report["runs"][0]
    _check_served(run, 2)
    assert run["online"]["auc"] > run["batch"]["auc"]


def test_replay_says_clearly_when_the_data_set_cannot_be_had(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    code = main(["--dataset", "movielens-100k", "--cache-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "movielens-100k is not available here" in capsys.readouterr().err
