"""A short run of `liverank demo`: deltas flow, the fresh server's AUC ends above the frozen one's, nothing fails.

The run lasts until what the test checks has happened (a bound on simulated time covered, deltas, a bundle and
ranking requests on both servers), not for a fixed wall-clock time: on a loaded machine it just takes longer.
``--duration-s`` is only the generous deadline.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

pytest.importorskip("torch")

from liverank.trainer.dashboard import Snapshot
from liverank.trainer.demo import main

# What a 30 s run at --sim-speed 20 covers on an idle machine: 10 simulated minutes after the warm-up.
SIM_MINUTES = 10.0
DEADLINE_S = 900.0


def _sparse_seq(snap: Snapshot, name: str) -> int:
    return int(snap.scores[name].epoch.get("sparse_seq", {}).get("trainer-0", -1))


def _enough(snap: Snapshot) -> bool:
    """Enough simulated time, deltas, a bundle and requests, and the fresh server seen answering with both."""
    if set(snap.scores) != {"fresh", "frozen"}:
        return False
    return (
        snap.sim_minutes >= SIM_MINUTES
        and snap.sync.deltas_pushed >= 4
        and snap.sync.rows_pushed > 1000
        and snap.sync.bundles_pushed >= 1
        and all(score.requests > 50 for score in snap.scores.values())
        and snap.scores["fresh"].epoch.get("dense_version", "1") != "1"
        and _sparse_seq(snap, "fresh") > _sparse_seq(snap, "frozen") >= 0
    )


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 600)  # the warm-up and the summary come on top of the deadline
def test_a_short_demo_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    args = ["--duration-s", str(DEADLINE_S), "--sim-speed", "20", "--dense-sync-s", "15", "--seed", "3"]
    code = main([*args, "--out", str(out)], stop_when=_enough)
    assert code == 0
    # both servers' status pages are named on the terminal
    printed = capsys.readouterr().out
    assert re.search(r"status pages: http://127\.0\.0\.1:\d+/status\s+http://127\.0\.0\.1:\d+/status", printed), printed
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["serving_s"] < DEADLINE_S, "the run hit its deadline before the conditions held"
    assert summary["simulated_minutes"] >= SIM_MINUTES
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
