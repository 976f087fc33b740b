"""Headless Chromium for the browser tests: Debian's ``chromium`` and ``chromium-driver``, driven by selenium.

Selenium is pointed at the system browser and driver, so selenium-manager never downloads anything; Chromium is
kept offline (every host but 127.0.0.1 resolves to nothing) and its performance log lists every request a page
made, which the tests check never left 127.0.0.1. When the browser, the driver or selenium is missing the tests
are skipped, and ``tests/conftest.py`` says so loudly in the run's summary.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT_DIR = Path(__file__).resolve().parents[1] / "results" / "browser"
# Filled by the tests, printed by tests/conftest.py's terminal summary.
SCREENSHOTS: list[Path] = []

FLAGS = (
    "--headless",
    "--no-sandbox",  # root on CI machines
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,2400",
    # Offline like a production network: any host but the test server fails to resolve.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        return f"{CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the dev extra)"
    return None


def chromium() -> Any:
    """A headless Chromium session (the caller quits it) and its throwaway profile directory."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # belt and braces: selenium-manager must never fetch a driver or browser
    profile = tempfile.mkdtemp(prefix="liverank-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options), profile


def requested_urls(driver: Any) -> list[str]:
    """Every URL the page asked for since the last call (the performance log is drained by reading it)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def save_screenshot(driver: Any, name: str) -> Path:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    driver.save_screenshot(str(path))
    SCREENSHOTS.append(path)
    return path
