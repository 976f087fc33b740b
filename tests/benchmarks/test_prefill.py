"""``liverank bench fill``, the soak's pre-fill: on a real LMDB store, it writes exactly the ids the load test's
ranking requests can name (``liverank.loadtest.payloads.w500_draws`` with the same size), no more, no fewer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from liverank.cli import main as liverank_main
from liverank.exporter.synthetic import build_synthetic_bundle, synthetic_manifest
from liverank.loadtest.payloads import ModelView, RequestFactory, w500_draws
from liverank.store import EmbeddingStore
from liverank.store.manifest import manifest_to_json

ROWS = 3_000  # in each largest slot; caps author_id, music_id, tags and item_f* (W-500: 10k-200k) at 3,000 too
DIM = 4


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "w500"
    build_synthetic_bundle(path, preset="w500", dim=DIM, version="1", hidden=(8,))
    return path


def _fill(data_dir: Path, bundle: Path, figures: Path) -> int:
    args = ["bench", "fill", "--data-dir", str(data_dir), "--bundle", str(bundle), "--rows", str(ROWS)]
    return liverank_main([*args, "--map-size-bytes", str(256 * 1024**2), "--json", str(figures), "--quiet"])


def test_the_fill_stores_every_id_a_request_can_name_and_no_other(tmp_path: Path, bundle: Path) -> None:
    assert _fill(tmp_path / "data", bundle, tmp_path / "fill.json") == 0
    draws = w500_draws(ROWS)
    figures = json.loads((tmp_path / "fill.json").read_text())
    manifest = synthetic_manifest("w500", dim=DIM)
    assert figures["rows_by_slot"] == {slot.name: draws[slot.name].cardinality for slot in manifest.slots}
    assert figures["rows"] == sum(figures["rows_by_slot"].values())
    assert figures["largest_slot_rows"] == ROWS

    model = ModelView.from_model_json({"manifest": manifest_to_json(manifest)})
    requests = RequestFactory(model, seed=1, n_candidates=200, draws=draws)
    with EmbeddingStore.open(tmp_path / "data" / "store", map_size_bytes=256 * 1024**2, tier="none") as store:
        stats = store.stats()
        assert stats.schema_hash == manifest.schema_hash
        assert stats.rows_by_slot == figures["rows_by_slot"]
        for slot in manifest.slots:
            n = draws[slot.name].cardinality
            every_id = store.lookup(slot.name, np.arange(n + 1, dtype=np.uint64))
            assert every_id.unseen.tolist() == [False] * n + [True]  # 0 .. n - 1 stored, n (a new id) not
        for _ in range(5):
            doc = requests.request()
            for feature in model.features:
                side = doc["user"] if feature.side == "user" else doc["candidates"]
                value = side[feature.name]
                flat = np.asarray(np.hstack([value]) if feature.kind == "id" else np.hstack(value), dtype=np.uint64)
                assert feature.slot is not None
                assert store.lookup(feature.slot, flat).n_unseen == 0, feature.name


def test_the_fill_refuses_a_data_directory_that_holds_a_store(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _fill(tmp_path / "data", bundle, tmp_path / "fill.json") == 0
    store_files = {p: p.stat().st_mtime_ns for p in (tmp_path / "data" / "store").iterdir()}
    assert _fill(tmp_path / "data", bundle, tmp_path / "again.json") == 2
    assert "exists: fill only a new data directory" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "data" / "store").iterdir()} == store_files
    assert not (tmp_path / "again.json").exists()
