"""A run without Chromium says so loudly in pytest's summary instead of skipping the browser tests silently."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_missing_browser_is_announced_in_the_summary(tmp_path: Path) -> None:
    # A plugin that points the browser tests at a Chromium that is not there.
    (tmp_path / "no_chromium.py").write_text(
        "from pathlib import Path\nimport tests.browser\ntests.browser.CHROMIUM = Path('/nonexistent/chromium')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    args = ["-q", "-p", "no:cacheprovider", "-p", "no_chromium", "-k", "docs_render"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "tests/serving/test_status_browser.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "BROWSER TESTS DID NOT RUN" in run.stdout
    assert "2 browser test(s) skipped: /nonexistent/chromium" in run.stdout
