"""A short run of `liverank demo`: deltas flow, the fresh server's AUC ends above the frozen one's, nothing fails."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

pytest.importorskip("torch")

from liverank.trainer.demo import main


@pytest.mark.slow
def test_a_short_demo_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    code = main(["--duration-s", "30", "--sim-speed", "20", "--dense-sync-s", "15", "--seed", "3", "--out", str(out)])
    assert code == 0
    # both servers' status pages are named on the terminal
    printed = capsys.readouterr().out
    assert re.search(r"status pages: http://127\.0\.0\.1:\d+/status\s+http://127\.0\.0\.1:\d+/status", printed), printed
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["deltas_pushed"] >= 4
    assert summary["rows_pushed"] > 1000
    assert summary["bundles_pushed"] >= 1
    assert summary["push_failures"] == 0
    for name in ("fresh", "frozen"):
        assert summary["rank"][name]["requests"] > 50
        assert summary["rank"][name]["failures"] == 0
    assert (
        summary["rank"]["fresh"]["final_epoch"]["sparse_seq"]["trainer-0"]
        > summary["rank"]["frozen"]["final_epoch"]["sparse_seq"]["trainer-0"]
    )
    assert summary["rank"]["fresh"]["final_epoch"]["dense_version"] != "1"
    assert summary["auc"]["fresh"] > summary["auc"]["frozen"], summary["auc"]
    assert (out / "auc.png").stat().st_size > 10_000
