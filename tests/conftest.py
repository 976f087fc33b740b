"""Suite-wide: the headless Chromium fixture, and a summary that says loudly when the browser tests did not run."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests import browser as chromium_browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = chromium_browser.missing()
    if reason is not None:
        pytest.skip(f"browser tests need headless Chromium: {reason}")
    driver, profile = chromium_browser.chromium()
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "browser" in getattr(r, "keywords", {})]
    if skipped:
        terminalreporter.write_sep("!", "BROWSER TESTS DID NOT RUN", red=True, bold=True)
        terminalreporter.write_line(
            f"{len(skipped)} browser test(s) skipped: {chromium_browser.missing()}. The status page, /docs and /redoc "
            "were not checked in a browser. `.ci/run` installs chromium and chromium-driver; or run "
            "`apt-get install chromium chromium-driver`.",
            red=True,
            bold=True,
        )
    if chromium_browser.SCREENSHOTS:
        terminalreporter.write_sep("-", "browser screenshots")
        for path in chromium_browser.SCREENSHOTS:
            terminalreporter.write_line(str(path))
