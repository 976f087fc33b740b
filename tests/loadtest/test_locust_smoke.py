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

import pytest

from liverank.exporter.archive import archive_bundle
from liverank.exporter.synthetic import build_synthetic_bundle, synthetic_manifest
from liverank.loadtest.payloads import (
    DeltaFactory,
    ModelView,
    RequestFactory,
    ZipfSampler,
    archive_version,
    rank_answer_problem,
)
from liverank.serving.request import Limits, parse_rank_request
from liverank.store.format import delta_from_json
from liverank.store.manifest import manifest_to_json

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
    delta = delta_from_json(deltas.delta(7))
    assert (delta.producer, delta.seq, delta.schema_hash) == ("loadtest-x", 7, manifest.schema_hash)
    item = delta.slots["item_id"]
    assert int(item.ids[0]) == deltas.marker
    assert item.values.shape[1] == 8
    probe = parse_rank_request(json.loads(deltas.probe(RequestFactory(model, seed=1))), manifest, LIMITS)
    assert probe.n_candidates == 1
    for column in (*probe.user.values(), *probe.candidates.values()):
        if column.feature.slot == "item_id":  # every item_id lookup of the probe is the marker
            assert column.ids is not None
            assert {int(i) for i in column.ids} == {deltas.marker}


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
