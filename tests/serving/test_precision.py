"""int8 bundles from a small trained model: a parity report within bounds, ranked through a real server; bundles
whose report is missing or out of bounds refused with 422 (nothing changes); the report shown where users look."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

torch = pytest.importorskip("torch")

from liverank.exporter.archive import archive_bundle  # noqa: E402
from liverank.exporter.deltas import DeltaBuilder, snapshot_deltas  # noqa: E402
from liverank.exporter.onnx_export import export_bundle  # noqa: E402
from liverank.exporter.push import PushClient  # noqa: E402
from liverank.store.manifest import MANIFEST_FILE, manifest_from_json  # noqa: E402
from liverank.trainer.features import short_video_manifest  # noqa: E402
from liverank.trainer.online import OnlineTrainer, TrainerConfig  # noqa: E402
from liverank.trainer.synthetic_stream import ShortVideoStream  # noqa: E402
from tests.serving.conftest import ADMIN, TOKEN, LiveServer, rank_body, settings_for  # noqa: E402

DIM = 8


@dataclasses.dataclass(frozen=True)
class Trained:
    trainer: OnlineTrainer
    fp32: Path
    int8: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A short-video model trained on 40 batches, exported as fp32 (v1) and int8 (v2) bundles."""
    trainer = OnlineTrainer(short_video_manifest(dim=DIM), TrainerConfig(seed=3))
    batches = ShortVideoStream(seed=3).batches(256)
    for _ in range(40):
        trainer.train_batch(next(batches))
    root = tmp_path_factory.mktemp("trained")
    paths = {}
    for version, precision in ((1, "fp32"), (2, "int8")):
        manifest = short_video_manifest(dim=DIM, version=str(version))
        paths[precision] = export_bundle(
            trainer.snapshot_tower(), manifest, root / precision, precision=precision, rows=trainer.recent.rows()
        )
    return Trained(trainer, paths["fp32"], paths["int8"])


@pytest.fixture
def live(tmp_path: Path, trained: Trained) -> Iterator[LiveServer]:
    server = LiveServer(settings_for(tmp_path / "data", trained.fp32, max_bundle_bytes=64 * 1024**2)).start()
    with PushClient(server.url, TOKEN) as client:
        builder = DeltaBuilder("trainer-0", short_video_manifest(dim=DIM))
        for delta in snapshot_deltas(builder, trained.trainer.all_rows()):
            client.push_delta(delta, wait_visible=True)
    yield server
    server.stop()


def _manifest_doc(bundle: Path) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads((bundle / MANIFEST_FILE).read_bytes())
    return doc


def _variant(source: Path, dest: Path, change: dict[str, Any] | None) -> Path:
    """A copy of ``source`` whose manifest's parity report is updated by ``change`` (None: removed)."""
    dest.mkdir()
    (dest / "dense.onnx").write_bytes((source / "dense.onnx").read_bytes())
    doc = _manifest_doc(source)
    doc["parity"] = None if change is None else {**doc["parity"], **change}
    (dest / MANIFEST_FILE).write_bytes(orjson.dumps(doc))
    return dest


def test_the_int8_bundle_carries_a_parity_report_within_bounds(trained: Trained) -> None:
    fp32 = manifest_from_json((trained.fp32 / MANIFEST_FILE).read_bytes())
    int8 = manifest_from_json((trained.int8 / MANIFEST_FILE).read_bytes())
    assert (fp32.precision, fp32.parity) == ("fp32", None)
    assert int8.precision == "int8"
    report = int8.parity
    assert report is not None
    assert report.k == 50
    assert report.candidates_per_request == 500
    assert report.requests > 100
    assert report.topk_overlap_mean >= 0.95
    assert report.labelled_rows > 100
    assert report.auc_head in {"click", "finish"}
    assert report.auc_diff is not None
    assert abs(report.auc_diff) <= 0.002
    assert {h.head for h in report.heads} == {"click", "finish"}
    assert all(0 < h.max_abs_diff < 0.05 for h in report.heads)
    assert "onnxruntime" in report.runtime
    # Quantized weights: the int8 graph is several times smaller than the fp32 one.
    assert (trained.int8 / "dense.onnx").stat().st_size < (trained.fp32 / "dense.onnx").stat().st_size


def test_an_int8_bundle_ranks_through_a_real_server_and_shows_its_report(live: LiveServer, trained: Trained) -> None:
    with live.client() as http:
        fp32_answer = http.post("/v1/rank", json=rank_body(n=200, k=200)).json()
        uploaded = http.post("/admin/bundles", content=archive_bundle(trained.int8), headers=ADMIN)
        assert uploaded.status_code == 200, uploaded.text
        assert uploaded.json()["version"] == "2"
        answer = http.post("/v1/rank", json=rank_body(n=200, k=200))
        assert answer.status_code == 200, answer.text
        int8_answer = answer.json()
        assert int8_answer["epoch"]["dense_version"] == "2"
        model = http.get("/v1/model").json()
        status = http.get("/admin/status", headers=ADMIN).json()
    want = {item["index"]: item["score"] for item in fp32_answer["items"]}
    got = {item["index"]: item["score"] for item in int8_answer["items"]}
    assert want.keys() == got.keys()
    assert max(abs(want[i] - got[i]) for i in want) < 0.05
    assert model["manifest"]["precision"] == "int8"
    assert model["manifest"]["parity"]["topk_overlap_mean"] >= 0.95
    live_entry = next(entry for entry in status["bundles"] if entry["live"])
    assert live_entry["precision"] == "int8"
    assert live_entry["parity"] == model["manifest"]["parity"]
    assert status["parity_bounds"] == {"min_topk_overlap": 0.95, "max_auc_diff": 0.002}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (None, "must carry a parity report"),
        ({"topk_overlap_mean": 0.9}, "mean top-50 overlap with fp32 is 0.9000, below the bound 0.95"),
        ({"auc_diff": -0.01}, "AUC differs from fp32 by 0.0100, above the bound 0.002"),
    ],
)
def test_a_bundle_whose_parity_is_missing_or_out_of_bounds_is_refused(
    live: LiveServer, trained: Trained, tmp_path: Path, change: dict[str, Any] | None, reason: str
) -> None:
    bad = _variant(trained.int8, tmp_path / "bad", change)
    with live.client() as http:
        before = http.get("/v1/model").json()
        refused = http.post("/admin/bundles", content=archive_bundle(bad), headers=ADMIN)
        assert refused.status_code == 422
        assert refused.json()["code"] == "parity_refused"
        assert reason in refused.json()["detail"]
        assert http.get("/v1/model").json() == before  # the fp32 bundle is still live
        assert http.post("/v1/rank", json=rank_body()).status_code == 200


def test_the_bounds_are_configurable(tmp_path: Path, trained: Trained) -> None:
    strict = settings_for(tmp_path / "data", trained.fp32, max_bundle_bytes=64 * 1024**2, parity_min_topk_overlap=1.0)
    server = LiveServer(strict).start()
    try:
        report = manifest_from_json((trained.int8 / MANIFEST_FILE).read_bytes()).parity
        assert report is not None
        assert report.topk_overlap_mean < 1.0
        with server.client() as http:
            answer = http.post("/admin/bundles", content=archive_bundle(trained.int8), headers=ADMIN)
            assert answer.status_code == 422
            assert "LIVERANK_PARITY_MIN_TOPK_OVERLAP" in answer.json()["detail"]
            assert http.get("/admin/status", headers=ADMIN).json()["parity_bounds"]["min_topk_overlap"] == 1.0
    finally:
        server.stop()
