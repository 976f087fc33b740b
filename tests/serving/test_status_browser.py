"""The status page, /docs and /redoc in headless Chromium against a real server: they render, they show what the
server reports, and no request leaves 127.0.0.1 (the machine is treated as offline)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser import requested_urls, save_screenshot
from tests.serving.conftest import ADMIN, LiveServer, delta_bytes, manifest_of, rank_body

pytestmark = pytest.mark.browser

CHARTS = ("chart-ptv", "chart-ptv-dist", "chart-deltas", "chart-rank", "chart-unseen", "chart-age")


def _wait(condition: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    """Poll ``condition`` until it returns something truthy (a loaded machine gets a generous deadline)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as exc:  # the page may be mid-render; the deadline decides
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _only_local(urls: list[str], server: LiveServer) -> None:
    """Every network request went to the test server (data:, blob: and the browser's own chrome: never leave)."""
    network = [u for u in urls if urlsplit(u).scheme in {"http", "https", "ws", "wss", "ftp"}]
    leaving = [u for u in network if urlsplit(u).hostname != "127.0.0.1"]
    assert leaving == [], f"requests left 127.0.0.1: {leaving}"
    assert any(u.startswith(server.url) for u in network), "the performance log recorded no request to the server"


def _page_epoch(browser: Any) -> dict[str, Any]:
    return browser.execute_script(
        """
        const seqs = {};
        for (const row of document.querySelectorAll('#producers tr[data-producer]')) {
            seqs[row.dataset.producer] = Number(row.querySelector('.seq').textContent);
        }
        return {dense_version: document.getElementById('dense-version').textContent, sparse_seq: seqs};
        """
    )


def _admin_epoch(client: httpx.Client) -> dict[str, Any]:
    epoch: dict[str, Any] = client.get("/admin/status", headers=ADMIN).json()["epoch"]
    return epoch


def test_status_page_renders_live_charts_and_shows_a_delta_pushed_meanwhile(
    browser: Any, fast_server: LiveServer
) -> None:
    schema = manifest_of(fast_server).schema_hash
    with fast_server.client() as client:
        client.post("/admin/deltas?wait=visible", content=delta_bytes(schema, 1, "item_id", [1, 2], 0.3), headers=ADMIN)
        requested_urls(browser)  # drain what earlier pages logged
        browser.get(f"{fast_server.url}/status")

        def charts_drawn() -> bool:
            return bool(
                browser.execute_script(
                    "return arguments[0].every(id => document.querySelector('#' + id + ' canvas') !== null)"
                    " && Number(document.body.dataset.samples || 0) >= 2",
                    list(CHARTS),
                )
            )

        _wait(charts_drawn, "every chart drawn with at least two samples")
        _wait(lambda: _page_epoch(browser) == _admin_epoch(client), "the page's epoch to equal /admin/status's")
        assert _page_epoch(browser) == {"dense_version": "1", "sparse_seq": {"trainer": 1}}

        # Traffic while the page watches: a delta (seq 2) and ranking requests.
        for _ in range(5):
            assert client.post("/v1/rank", json=rank_body()).status_code == 200
        pushed = client.post(
            "/admin/deltas?wait=visible", content=delta_bytes(schema, 2, "author_id", [4, 5, 6], 0.7), headers=ADMIN
        )
        assert pushed.status_code == 200, pushed.text
        _wait(lambda: _page_epoch(browser)["sparse_seq"] == {"trainer": 2}, "the pushed delta's seq on the page")
        assert _page_epoch(browser) == _admin_epoch(client)

        def traffic_plotted() -> bool:
            client.post("/v1/rank", json=rank_body())
            return bool(
                browser.execute_script(
                    "return points.some(p => p.deltas_per_s > 0) && points.some(p => p.rank_rps > 0)"
                    " && document.querySelector('#slots tr[data-slot=\"author_id\"]') !== null"
                )
            )

        _wait(traffic_plotted, "the delta and the ranking requests in the plotted samples")
        slot_row = browser.execute_script(
            "return [...document.querySelectorAll('#slots tr[data-slot=\"author_id\"] td')].map(td => td.textContent)"
        )
        assert slot_row[:3] == ["author_id", "3", "3"]  # rows, resident in the RAM tier
        bundles = browser.execute_script("return document.querySelector('#bundles tbody').innerText")
        assert "live" in bundles
        assert browser.execute_script("return document.getElementById('replicas-empty').hidden") is False
        assert browser.execute_script("return document.getElementById('error').hidden") is True
        path = save_screenshot(browser, "status")
        assert path.stat().st_size > 10_000
        _only_local(requested_urls(browser), fast_server)


@pytest.mark.parametrize(
    ("path", "rendered"),
    [
        # Swagger UI lists every operation; ReDoc renders the operations' summaries as text.
        ("/docs", "return [...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent)"),
        ("/redoc", "return [...document.querySelectorAll('h2')].map(e => e.textContent)"),
    ],
)
def test_api_docs_render_offline(browser: Any, server: LiveServer, path: str, rendered: str) -> None:
    requested_urls(browser)
    browser.get(f"{server.url}{path}")
    texts = _wait(lambda: [t for t in browser.execute_script(rendered) if t], f"{path} to render its operations")
    joined = " ".join(texts)
    assert "/v1/rank" in joined or "Rank candidates" in joined, texts
    assert len(browser.execute_script("return document.body.innerText")) > 500  # not a blank page
    save_screenshot(browser, path.strip("/"))
    _only_local(requested_urls(browser), server)
