"""``liverank bench memory`` on a tiny store: every server is measured over its whole process tree."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from liverank.benchmarks.cli import main as bench_main

REPO = Path(__file__).resolve().parents[2]


def test_memory_bench_measures_each_server_over_its_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "memory.json"
    args = ["memory", "--sizes", "2k", "--workers", "1,2", "--before", str(REPO), "--requests", "5"]
    args += ["--settle-s", "0", "--dim", "16", "--json", str(out), "--workdir", str(tmp_path / "work"), "--quiet"]
    assert bench_main(args) == 0
    result = orjson.loads(out.read_bytes())

    assert result["benchmark"] == "memory"
    (size,) = result["sizes"]
    assert size["fill"]["rows"] == size["rows_total"] > 2_000
    before, one, two = size["servers"]
    assert [s["server"] for s in (before, one, two)] == ["before", "1 worker", "2 workers"]
    assert (before["workers"], one["workers"], two["workers"]) == (None, 1, 2)
    assert before["pss_over_first"] == 1.0
    # One more worker is one more process; master, writer and a worker at least.
    assert one["processes"] >= 3
    assert two["processes"] == one["processes"] + 1
    for figures in (before, one, two):
        split = figures["pss_split_bytes"]
        assert figures["pss_bytes"] > 0
        assert sum(split.values()) == pytest.approx(figures["pss_bytes"], rel=0.01)  # anon + file + shmem
        # Shared pages count once in PSS and once per process in summed RSS.
        assert figures["pss_bytes"] < figures["rss_sum_bytes"]
        assert figures["pss_over_first"] == pytest.approx(figures["pss_bytes"] / before["pss_bytes"])
    assert "2 workers" in capsys.readouterr().out


def test_a_before_tree_that_is_not_liverank_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["memory", "--sizes", "2k", "--before", str(tmp_path), "--workdir", str(tmp_path / "work"), "--quiet"]
    assert bench_main(args) == 2
    assert "not a liverank source tree" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()  # refused before anything was built
