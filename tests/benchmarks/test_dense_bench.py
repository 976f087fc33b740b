"""`liverank bench dense` end to end on the tiny network: four bundles, latency and saturation, the JSON figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from liverank.benchmarks.cli import main
from liverank.benchmarks.dense_bench import predicted_split_saving
from liverank.exporter.synthetic import DEFAULT_HIDDEN, synthetic_manifest


def test_bench_dense_measures_every_variant_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dense.json"
    argv = ["dense", "--preset", "tiny", "--dim", "8", "--repeats", "2", "--calls", "3", "--saturation-s", "0.2"]
    assert main([*argv, "--threads", "1,2", "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    variants = {"fp32", "fp32-split", "int8", "int8-split"}
    assert set(result["latency_ms"]) == {f"{v}@{t}" for v in variants for t in (1, 2)}
    assert all(len(s["runs"]) == 2 and s["min"] > 0 for s in result["latency_ms"].values())
    assert set(result["saturation_rps"]) == {f"{v}@{t}" for v in ("fp32-split", "int8-split") for t in (1, 2)}
    assert all(s["median"] > 0 for s in result["saturation_rps"].values())
    assert result["int8_parity"]["topk_overlap_mean"] >= 0.95
    assert result["machine"]["cores"] >= 1
    assert "saturation" in capsys.readouterr().out


def test_predicted_split_saving_is_the_user_share_of_the_first_layer() -> None:
    manifest = synthetic_manifest("w500", dim=32)
    # 192 user columns x 512 of (832 x 512 + 512 x 256 + 256 x 128 + 128 x 3) multiply-adds per candidate.
    assert predicted_split_saving(manifest, DEFAULT_HIDDEN["w500"]) == pytest.approx(192 * 512 / 590_208)
