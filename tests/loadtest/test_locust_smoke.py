"""The load test: its payloads fit what the server accepts, and a 15-second headless locust run against a server
of its own (ranking, delta-pushing and bundle-swapping users all active) ends without a single failed request.

locust is only ever imported by the locust subprocess: importing it here would monkey-patch this pytest process
with gevent.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from liverank.exporter.archive import archive_bundle
from liverank.exporter.synthetic import build_synthetic_bundle, synthetic_manifest
from liverank.loadtest.payloads import (
    W500_DRAWS,
    DeltaFactory,
    FeatureSpec,
    ModelView,
    RequestFactory,
    SlotSpec,
    ZipfSampler,
    archive_version,
    rank_answer_problem,
    w500_draws,
)
from liverank.serving.request import Limits, parse_rank_request
from liverank.store.format import decode_delta
from liverank.store.manifest import manifest_to_json
from tests.serving.conftest import ADMIN, LiveServer, settings_for

ROOT = Path(__file__).resolve().parents[2]
LIMITS = Limits(max_candidates=2000, max_list_ids=256, max_k=1000)


@pytest.fixture(scope="module")
def model() -> ModelView:
    return ModelView.from_model_json({"manifest": manifest_to_json(synthetic_manifest("w500", dim=8))})


def test_requests_are_w500_and_accepted_by_the_server_parser(model: ModelView) -> None:
    manifest = synthetic_manifest("w500", dim=8)
    factory = RequestFactory(model, seed=3)
    doc = factory.request()
    parsed = parse_rank_request(doc, manifest, LIMITS)
    assert parsed.n_candidates == 500
    assert parsed.k == 50
    assert len(doc["user"]["hist_item_ids"]) == 50
    assert all(1 <= len(tags) <= 5 for tags in doc["candidates"]["tags"])
    assert RequestFactory(model, seed=3).request() == doc  # seeded


@pytest.mark.parametrize("n", [1, 2, 30, 1000])
def test_zipf_sampler_matches_the_zipf_distribution(n: int) -> None:
    rng = random.Random(1)
    sampler = ZipfSampler(n, 1.1)
    draws = [sampler.rank(rng) for _ in range(40_000)]
    assert min(draws) >= 1
    assert max(draws) <= n
    norm = sum(r**-1.1 for r in range(1, n + 1))
    for rank in range(1, min(n, 5) + 1):
        expected = rank**-1.1 / norm
        assert abs(draws.count(rank) / len(draws) - expected) < 0.01, rank


def test_deltas_and_probes_fit_the_schema(model: ModelView) -> None:
    manifest = synthetic_manifest("w500", dim=8)
    deltas = DeltaFactory(model, producer="loadtest-x", seed=5, rows=20)
    delta = decode_delta(deltas.delta(7))
    assert (delta.producer, delta.seq, delta.schema_hash) == ("loadtest-x", 7, manifest.schema_hash)
    assert set(delta.slots) == {"item_id"}
    item = delta.slots["item_id"]
    assert not isinstance(item.ids, tuple)
    assert int(item.ids[0]) == deltas.marker
    assert item.n_rows == 21
    assert item.values.shape == (21, 8)
    assert all(int(i) < W500_DRAWS["item_id"].cardinality for i in item.ids[1:])  # existing ids only
    probe = parse_rank_request(json.loads(deltas.probe(RequestFactory(model, seed=1))), manifest, LIMITS)
    assert probe.n_candidates == 1
    for column in (*probe.user.values(), *probe.candidates.values()):
        if column.feature.slot == "item_id":  # every item_id lookup of the probe is the marker
            assert column.ids is not None
            assert {int(i) for i in column.ids} == {deltas.marker}


def test_d10k_deltas_spread_their_rows_as_workloads_md_says(model: ModelView) -> None:
    draws = w500_draws(10_000_000)
    deltas = DeltaFactory(model, producer="loadtest-d", seed=2, stream="d10k", draws=draws)
    first, second = (decode_delta(deltas.delta(seq)) for seq in (1, 2))
    assert (first.seq, second.seq) == (1, 2)
    assert {name: rows.n_rows for name, rows in first.slots.items()} == {
        "item_id": 1 + 7_000,  # the marker, then 70 % of 10,000
        "author_id": 2_000,
        "tags": 1_000,
    }
    for delta in (first, second):
        for name, rows in delta.slots.items():
            assert not isinstance(rows.ids, tuple)
            ids = [int(i) for i in rows.ids if int(i) != deltas.marker]
            assert len(set(ids)) == len(ids)  # a delta names each row once
            new = [i for i in ids if i >= draws[name].cardinality]
            assert len(new) == round(0.05 * len(ids)), name  # 5 % new ids, past every id a request draws
            assert rows.values.shape == (rows.n_rows, 8)
            assert np.isfinite(rows.values).all()
    assert int(first.slots["item_id"].ids[0]) == int(second.slots["item_id"].ids[0]) == deltas.marker
    new_ids = [{int(i) for i in d.slots["author_id"].ids if int(i) >= 100_000} for d in (first, second)]
    assert not new_ids[0] & new_ids[1]  # new ids are new every delta
    assert not np.array_equal(first.slots["tags"].values, second.slots["tags"].values)  # values change
    items_only = ModelView(
        "items-only", "1", "0" * 64, {"item_id": SlotSpec("item_id", 8, "int")},
        (FeatureSpec("item_id", "candidate", "id", "item_id", None),), ("click",),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"writes slots \['author_id', 'tags'\] that model 'items-only' does not"):
        DeltaFactory(items_only, producer="p", seed=0, stream="d10k")


def test_a_d10k_delta_is_accepted_and_its_marker_becomes_visible(tiny_bundle: Path, tmp_path: Path) -> None:
    live = LiveServer(settings_for(tmp_path / "data", tiny_bundle)).start()
    try:
        with live.client() as client:
            tiny = ModelView.from_model_json(client.get("/v1/model").json())
            deltas = DeltaFactory(tiny, producer="loadtest-d10k", seed=3, stream="d10k")
            probe = deltas.probe(RequestFactory(tiny, seed=4))
            before = client.post("/v1/rank", content=probe, headers={"Content-Type": "application/json"}).json()
            assert before["stats"]["unseen_ids"]["item_id"] > 0  # the marker, wherever the probe names it
            headers = {**ADMIN, "Content-Type": "application/octet-stream"}
            pushed = client.post("/admin/deltas?wait=visible", content=deltas.delta(1), headers=headers)
            assert pushed.status_code == 200, pushed.text
            assert pushed.json()["status"] == "visible"
            after = client.post("/v1/rank", content=probe, headers={"Content-Type": "application/json"}).json()
            status = client.get("/admin/status", headers=ADMIN).json()
    finally:
        live.stop()
    assert after["epoch"]["sparse_seq"]["loadtest-d10k"] == 1
    assert after["stats"]["unseen_ids"]["item_id"] == 0
    assert status["applied_seq"] == {"loadtest-d10k": 1}


def test_rank_answer_checks() -> None:
    epoch = {"dense_version": "1", "sparse_seq": {}}
    good = {"items": [{"score": 0.9}, {"score": 0.9}, {"score": 0.1}], "epoch": epoch}
    assert rank_answer_problem(good, 3) is None
    assert rank_answer_problem(good, 4) == "expected 4 items, got 3"
    unsorted = {"items": [{"score": 0.1}, {"score": 0.9}], "epoch": epoch}
    assert rank_answer_problem(unsorted, 2) == "scores are not sorted descending"
    assert rank_answer_problem({"items": [{"score": 0.1}]}, 1) == "the answer has no epoch.dense_version"
    no_seq = {"items": [{"score": 0.1}], "epoch": {"dense_version": "1"}}
    assert rank_answer_problem(no_seq, 1) == "the answer has no epoch.sparse_seq"


def test_archive_version(tmp_path: Path) -> None:
    build_synthetic_bundle(tmp_path / "b", preset="tiny", dim=4, version="7")
    assert archive_version(archive_bundle(tmp_path / "b")) == "7"


def _stats(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(newline="") as handle:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(handle)}


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("locust") is None,
    reason="locust is not installed: pip install -c constraints.txt -e '.[loadtest]'",
)
def test_smoke_run_has_no_failures(tmp_path: Path) -> None:
    results = tmp_path / "results"
    command = [sys.executable, "-m", "liverank.loadtest.run", "--duration", "15", "--users", "2"]
    command += ["--delta-interval-s", "0.5", "--swap-interval-s", "5", "--results-dir", str(results)]
    # A hermetic run: no HOST, SHAPE or LIVERANK_* settings leak in from the caller's shell.
    knobs = {"HOST", "SHAPE", "USERS", "DURATION", "SPAWN_RATE", "RESULTS_DIR"}
    env = {k: v for k, v in os.environ.items() if k not in knobs and not k.startswith("LIVERANK_")}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"

    run = json.loads((results / "run.json").read_text())
    assert run["problems"] == []
    assert run["failures"] == 0
    requests = run["requests"]
    assert requests["POST /v1/rank"]["count"] >= 20
    assert requests["POST /admin/deltas"]["count"] >= 5  # a delta every 0.5 s (fewer on a busy machine)
    assert requests["VISIBLE push-to-visible"]["count"] >= 5
    assert requests["POST /admin/bundles"]["count"] >= 2  # a swap every 5 s, the first at the start

    stats = _stats(results / "locust_stats.csv")  # what users of the CSV see
    assert int(stats[("POST", "/v1/rank")]["Request Count"]) > 0
    assert int(stats[("VISIBLE", "push-to-visible")]["Request Count"]) > 0
    assert int(stats[("", "Aggregated")]["Failure Count"]) == 0
    assert (results / "report.html").stat().st_size > 0
