"""A real server SIGKILLed at random moments while a producer streams acknowledged deltas, then restarted.

After every kill the stopped store is opened directly (``check_store``): each applied delta is there whole and
once, nothing of a later one, and every acknowledged delta is applied or still queued in the durable inbox. After
every restart the server reports exactly that sequence as applied (the queued ones applied, once), and the
producer resumes from the sequence the server reports (on some trials after a deliberate gap, whose 409 names the
same sequence). ``scripts/kill9_series.py`` runs the long series; ``LIVERANK_KILL9_TRIALS`` raises the count here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.conftest import run_kill9_series

KILL9_TRIALS = int(os.environ.get("LIVERANK_KILL9_TRIALS", "8"))

pytestmark = pytest.mark.slow


def test_sigkill_while_streaming_loses_nothing_acknowledged_and_shows_nothing_partial(
    tmp_path: Path, bundle_v1: Path
) -> None:
    report = run_kill9_series(tmp_path, bundle_v1, trials=KILL9_TRIALS, seed=20240607)
    summary = report.summary()
    assert not report.violations, report.violations
    assert len(report.trials) == KILL9_TRIALS
    assert summary["acked_deltas"] > KILL9_TRIALS  # the producer got going in the trials
    assert report.final_applied >= max(t.last_acked for t in report.trials)
    assert summary["gap_probes"] == len([t for t in report.trials if t.trial % 3 == 1])


@pytest.mark.parametrize("target", ["writer", "worker"])
def test_sigkill_of_one_process_of_the_server_loses_nothing_acknowledged(
    tmp_path: Path, bundle_v1: Path, target: str
) -> None:
    """The writer or one worker killed under load: the server replaces it and streams on; nothing acked is lost."""
    report = run_kill9_series(tmp_path, bundle_v1, trials=2, seed=7, target=target)
    assert not report.violations, report.violations
    assert report.final_applied >= max(t.last_acked for t in report.trials)
