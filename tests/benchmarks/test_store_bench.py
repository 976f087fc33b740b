"""`liverank bench store` end to end on a tiny table: a real redis-server, the LMDB worker child, every phase."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from liverank.benchmarks.cli import build_parser, main
from liverank.benchmarks.peers import ALL_PEERS
from liverank.benchmarks.targets import evaluate_targets

requires_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not on PATH: the store benchmark compares against it"
)

SIZE = 20_000


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results" / "bench-store.json"
    markdown = tmp / "results" / "bench-store.md"
    code = main(
        [
            "store",
            "--sizes",
            str(SIZE),
            "--batches",
            "1000",
            "--repeats",
            "2",
            "--keys-per-run",
            "10k",
            "--delta-rows",
            "1000",
            "--deltas-per-run",
            "2",
            "--build-delta-rows",
            "5000",
            "--open-repeats",
            "1",
            "--idle-s",
            "0.1",
            "--workdir",
            str(tmp / "work"),
            "--json",
            str(out),
            "--markdown",
            str(markdown),
            "--quiet",
        ]
    )
    assert code == 0
    assert "| ids | batch |" in markdown.read_text()
    assert list((tmp / "work").iterdir()) == []  # the run directory is removed without --keep
    loaded: dict[str, Any] = json.loads(out.read_text())
    return loaded


def _is_summary(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value["min"] <= value["median"] <= value["max"]
        and value["min"] > 0
        and len(value["runs"]) == 2
    )


@requires_redis
def test_the_result_records_machine_seed_commit_and_settings(result: dict[str, Any]) -> None:
    assert result["benchmark"] == "store"
    assert result["seed"] == result["settings"]["seed"]
    assert result["date"] == result["machine"]["date"]
    assert result["machine"]["cores"] >= 1
    assert result["machine"]["cpu_model"]
    assert result["machine"]["versions"]["numpy"]
    assert result["machine"]["redis_server"]
    assert result["settings"]["sizes"] == [SIZE]
    assert [s["n_keys"] for s in result["sizes"]] == [SIZE]


@requires_redis
def test_every_peer_reports_lookup_figures_for_every_distribution(result: dict[str, Any]) -> None:
    lookups = result["sizes"][0]["lookups"]
    assert {(e["dist"], e["batch"]) for e in lookups} == {("uniform", 1000), ("zipf", 1000)}
    for entry in lookups:
        assert set(entry["ns_per_key"]) == {p.name for p in ALL_PEERS}
        assert all(_is_summary(s) for s in entry["ns_per_key"].values())
        assert entry["keys_per_run"] == 10_000
        assert entry["ratios"]["redis_mget/liverank_hot"] > 0
        assert entry["ratios"]["lmdb_getmulti/liverank_hot"] > 0


@requires_redis
def test_delta_apply_is_measured_for_both_durabilities_with_and_without_a_reader(result: dict[str, Any]) -> None:
    deltas = result["sizes"][0]["deltas"]
    assert {(d["durability"], d["reader"]) for d in deltas} == {
        ("process", False),
        ("process", True),
        ("power", False),
        ("power", True),
    }
    for entry in deltas:
        assert _is_summary(entry["rows_per_s"])
        if entry["reader"]:
            assert _is_summary(entry["reader_ns_per_key"])
            assert sum(entry["reader_sources"].values()) > 0


@requires_redis
def test_open_build_idle_and_redis_figures_are_present(result: dict[str, Any]) -> None:
    size = result["sizes"][0]
    assert size["build"]["rows"] == SIZE
    assert size["build"]["rows_per_s"] > 0
    assert size["redis_load"]["rows"] == SIZE
    assert size["lmdb_only_open"]["resident_rows"] == {"item": 0}
    (opened,) = size["open"]
    # 2 durabilities x 2 reader modes x 2 runs x 2 deltas x 50 new ids (5 % of 1000 rows)
    assert opened["rows"] == SIZE + 2 * 2 * 2 * 2 * 50
    assert opened["total_s"] >= opened["open_s"] > 0
    idle = size["idle"]
    assert set(idle["first_batch"]) == {p.name for p in ALL_PEERS}
    assert idle["open_after_idle"]["total_s"] > 0
    assert size["targets"] == []  # targets are stated for 1M and 10M keys only


def test_counts_take_suffixes_and_defaults_match_the_issue() -> None:
    args = build_parser().parse_args(["store", "--sizes", "1M,10_000k", "--batches", "1k"])
    assert args.sizes == (1_000_000, 10_000_000)
    assert args.batches == (1_000,)
    defaults = build_parser().parse_args(["store"])
    assert (defaults.sizes, defaults.batches, defaults.repeats, defaults.idle_s) == (
        (1_000_000, 10_000_000),
        (1_000, 10_000),
        5,
        0.0,
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["store", "--sizes", "ten"])


def _summary(median: float) -> dict[str, Any]:
    return {"median": median, "min": median, "max": median, "runs": [median]}


def test_targets_apply_only_at_the_sizes_the_issue_names() -> None:
    lookups = [
        {
            "dist": "zipf",
            "batch": 1000,
            "ns_per_key": {"liverank_hot": _summary(80.0)},
            "ratios": {"redis_mget/liverank_hot": 12.0},
        }
    ]
    deltas = [
        {"durability": "process", "reader": False, "rows_per_s": _summary(150_000.0)},
        {"durability": "power", "reader": False, "rows_per_s": _summary(50_000.0)},
    ]
    opens = [{"total_s": 20.0}, {"total_s": 40.0}, {"total_s": 25.0}]
    big = {
        t["name"]: t
        for t in evaluate_targets({"n_keys": 10_000_000, "lookups": lookups, "deltas": deltas, "open": opens})
    }
    assert big["hot lookup (zipf, batch 1,000)"]["met"] is True
    assert big["hot vs Redis MGET (zipf, batch 1,000)"]["met"] is False
    assert big["delta apply, process-crash safe, alone"]["met"] is True  # >= 100k rows/s at 10M
    assert big["open to first lookup"]["value"] == 25.0
    small = evaluate_targets({"n_keys": 1_000_000, "lookups": lookups, "deltas": deltas, "open": opens})
    assert [(t["name"], t["met"]) for t in small] == [("delta apply, process-crash safe, alone", False)]
    assert evaluate_targets({"n_keys": 20_000, "lookups": lookups, "deltas": deltas, "open": opens}) == []
