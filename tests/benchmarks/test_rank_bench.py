"""``liverank bench rank`` end to end on a tiny store: both servers, every phase, every figure in the JSON."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from liverank.benchmarks.cli import main as bench_main
from liverank.benchmarks.d10k import DeltaStream
from liverank.benchmarks.w500 import RequestMaker, make_tables, to_rows
from liverank.exporter.synthetic import synthetic_manifest
from liverank.store.format import decode_delta

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


def _summary(value: dict[str, Any]) -> None:
    assert set(value) == {"median", "min", "max", "runs"}
    assert value["min"] <= value["median"] <= value["max"]


def test_requests_and_deltas_have_the_w500_shape() -> None:
    manifest = synthetic_manifest("w500", dim=16)
    tables = make_tables(manifest, 20_000, 1.1, seed=7)
    doc = RequestMaker(manifest, tables, stream=1).make()
    assert len(doc["user"]) == 6
    assert len(doc["user"]["hist_item_ids"]) == 50
    assert len(doc["candidates"]) == 20
    assert all(len(column) == 500 for column in doc["candidates"].values())
    assert all(1 <= len(tags) <= 5 for tags in doc["candidates"]["tags"])
    item_ids = set(tables.slots["item_id"].ids.tolist())
    assert set(doc["candidates"]["item_id"]) <= item_ids  # every requested id exists in the store
    rows = to_rows(doc)["candidates"]
    assert len(rows) == 500
    assert rows[3]["tags"] == doc["candidates"]["tags"][3]
    stream = DeltaStream(tables, 16, manifest.schema_hash)
    first, second = decode_delta(stream.next()), decode_delta(stream.next())
    assert (first.seq, second.seq) == (1, 2)
    assert set(first.slots) == {"item_id", "author_id", "tags"}
    item = first.slots["item_id"]
    assert not isinstance(item.ids, tuple)
    assert len(set(item.ids.tolist())) == len(item.ids) == 7_000
    assert len(set(item.ids.tolist()) - item_ids) == 350  # 5 % new ids


@pytest.mark.slow
def test_rank_bench_writes_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rank.json"
    args = ["rank", "--sizes", "2k", "--dim", "16", "--concurrency", "1,2", "--duration-s", "1", "--warmup-s", "0.3"]
    args += ["--workers", "1"]
    args += ["--repeats", "1", "--bodies", "8", "--json", str(out), "--workdir", str(tmp_path / "work"), "--quiet"]
    assert bench_main(args) == 0
    result = orjson.loads(out.read_bytes())

    assert result["benchmark"] == "rank"
    assert result["machine"]["cores"] >= 1
    assert result["seed"] == 20_240_601
    assert "commit" in result
    assert result["server_settings"]["liverank"]["workers"] == 1
    assert result["server_settings"]["liverank"]["gc_freeze"] is True
    (size,) = result["sizes"]
    assert size["fill"]["rows"] == size["rows_total"] > 2_000
    assert size["answers"]["top_k_overlap"] > 0.9  # same rows, same network: the two servers agree

    ceiling = size["dense_ceiling"]
    assert ceiling["onnx_cpu_ms_per_request"] > 0
    assert ceiling["rps"] == pytest.approx(ceiling["cores"] * 1000 / ceiling["onnx_cpu_ms_per_request"])
    assert [e["concurrency"] for e in size["rank"]] == [1, 2]
    for entry in size["rank"]:
        for server in ("liverank", "baseline"):
            figures = entry[server]
            for key in ("p50_ms", "p99_ms", "rps", "server_cpu_ms_per_request"):
                _summary(figures[key])
            assert figures["failed"] == 0
            assert figures["requests"] > 0
            assert figures["client_cpu_cores"] >= 0
            assert figures["server_cpu_cores"] > 0
        assert "redis_cpu_cores" in entry["baseline"]
        assert entry["ratios_liverank_over_baseline"]["rps"] > 0
        live = entry["liverank"]
        assert live["workers"] == 1
        assert live["rps_over_dense_ceiling"] > 0
        # The server's CPU splits into ONNX Runtime (its own counter) and the rest.
        _summary(live["onnx_cpu_ms_per_request"])
        _summary(live["cpu_ms_outside_onnx_per_request"])
        assert 0 < live["onnx_cpu_ms_per_request"]["median"] < live["server_cpu_ms_per_request"]["max"]

    deltas = size["deltas"]
    # Live phases run open loop at 70 % of the best measured rps: the schedule caps how many requests start.
    best = max(e["liverank"]["rps"]["median"] for e in size["rank"])
    assert deltas["rate_rps"] == pytest.approx(0.7 * best)
    for window in deltas["windows"]:
        load = window["load"]
        assert load["rate_rps"] == deltas["rate_rps"]
        assert 0 < load["requests"] <= deltas["rate_rps"] * load["duration_s"] + load["concurrency"]
    assert deltas["push_to_visible_client_ms"]["count"] >= 1
    assert deltas["push_to_visible_client_ms"]["failed"] == 0
    assert deltas["push_to_visible_client_ms"]["p99"] > 0
    assert deltas["push_to_visible_server_ms"]["count"] == deltas["push_to_visible_client_ms"]["count"]
    _summary(deltas["rank_p99_without_ms"])
    _summary(deltas["rank_p99_with_ms"])
    assert isinstance(deltas["p99_inflation_pct"], float)

    swap = size["swap"]
    assert swap["all_went_live"]
    assert swap["failed_requests_total"] == 0
    assert {t["name"].split(" (")[0] for t in size["targets"]} >= {
        "single-client p50",
        "push-to-visible p99",
        "throughput over the dense-only ceiling",
        "server cores used at saturation",
        "CPU per request outside ONNX Runtime",
    }
    printed = capsys.readouterr().out
    assert "liverank/baseline" in printed
    assert f"SAME {result['machine']['cores']} cores" in printed  # the machine's count, not a hard-coded one
