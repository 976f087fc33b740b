"""The status page's data: the history ring's arithmetic over a real Prometheus registry, and ``/status``,
``/status/data``, ``/docs`` and ``/redoc`` against a real server (the browser test renders them)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from liverank.exporter.archive import archive_bundle
from liverank.exporter.synthetic import build_synthetic_bundle
from liverank.serving.metrics import Metrics
from liverank.serving.status_history import Histo, Observation, StatusHistory, read_samples
from tests.serving.conftest import ADMIN, DIM, TOKEN, LiveServer, delta_bytes, manifest_of, rank_body, settings_for


def _observation(metrics: Metrics, t_ms: int, rows: dict[str, int] | None = None) -> Observation:
    rows = rows if rows is not None else {"item_id": 10}
    return Observation(
        t_ms=t_ms,
        samples=read_samples(metrics.registry.collect()),
        epoch={"dense_version": "1", "sparse_seq": {"trainer": 3}},
        rows_by_slot=rows,
        resident_rows_by_slot=rows,
        inbox_depth=0,
    )


def test_histogram_quantiles_interpolate_within_buckets_like_prometheus() -> None:
    metrics = Metrics()
    for seconds in [0.003] * 50 + [0.04] * 49 + [0.6]:
        metrics.push_to_visible_seconds.observe(seconds)
    histo = Histo.read(read_samples(metrics.registry.collect()), "liverank_push_to_visible_seconds")
    assert histo.count == 100
    assert histo.mean() == pytest.approx((0.003 * 50 + 0.04 * 49 + 0.6) / 100)
    # 50 observations in (0.0025, 0.005]: the median is the top of that bucket
    assert histo.quantile(0.5) == pytest.approx(0.005)
    # the 99th is the last of the 49 in (0.025, 0.05]
    assert histo.quantile(0.99) == pytest.approx(0.05)
    assert histo.quantile(1.0) == pytest.approx(1.0)  # 0.6 s lies in (0.5, 1.0]
    empty = Histo.read(read_samples(Metrics().registry.collect()), "liverank_push_to_visible_seconds")
    assert empty.quantile(0.5) is None
    assert empty.mean() is None
    later = histo.minus(histo)
    assert later.count == 0
    assert sum(c for c in later.distribution()["count"] if c) == 0


def test_a_quantile_past_the_last_finite_bucket_reports_that_bound() -> None:
    metrics = Metrics()
    metrics.push_to_visible_seconds.observe(100.0)  # beyond the 30 s bucket
    histo = Histo.read(read_samples(metrics.registry.collect()), "liverank_push_to_visible_seconds")
    assert histo.quantile(0.5) == pytest.approx(30.0)
    assert histo.distribution()["le_ms"][-1] is None  # +Inf


def test_history_turns_counter_growth_into_rates_percentiles_and_per_slot_figures() -> None:
    metrics = Metrics()
    history = StatusHistory(interval_s=2.0, capacity=10)
    history.sample(_observation(metrics, 1_000_000))
    assert history.snapshot()["points"] == []  # the first observation is the baseline
    metrics.deltas_applied.inc(4)
    metrics.delta_rows_applied.inc(400)
    for _ in range(10):
        metrics.request_seconds.labels(route="/v1/rank", status="200").observe(0.004)
    metrics.request_seconds.labels(route="/metrics", status="200").observe(0.9)  # not ranking: left out
    metrics.lookup_ids.labels(slot="item_id").inc(200)
    metrics.unseen_ids.labels(slot="item_id").inc(50)
    metrics.slot_embedding_age_seconds.labels(slot="item_id").observe(3.0)
    metrics.slot_embedding_age_seconds.labels(slot="item_id").observe(5.0)
    metrics.push_to_visible_seconds.observe(0.02)
    history.sample(_observation(metrics, 1_002_000))
    [point] = history.snapshot()["points"]
    assert point["t_ms"] == 1_002_000
    assert point["deltas_per_s"] == pytest.approx(2.0)
    assert point["rows_per_s"] == pytest.approx(200.0)
    assert point["rank_rps"] == pytest.approx(5.0)
    assert 3.0 < point["rank_p50_ms"] <= 5.0
    assert point["push_to_visible_mean_ms"] == pytest.approx(20.0)
    assert point["unseen_rate_by_slot"] == {"item_id": pytest.approx(0.25)}
    assert point["embedding_age_s_by_slot"] == {"item_id": pytest.approx(4.0)}
    assert point["sparse_seq"] == {"trainer": 3}
    # a quiet interval: rates fall to zero, figures without observations are null
    history.sample(_observation(metrics, 1_004_000))
    quiet = history.snapshot(since_ms=1_002_000)["points"]
    assert [p["t_ms"] for p in quiet] == [1_004_000]
    assert quiet[0]["rank_rps"] == 0
    assert quiet[0]["rank_p99_ms"] is None
    assert quiet[0]["unseen_rate_by_slot"] == {"item_id": None}
    distribution = history.snapshot()["push_to_visible_distribution"]
    assert sum(distribution["count"]) == 1


def test_the_ring_keeps_capacity_points_and_the_window_distribution_slides() -> None:
    metrics = Metrics()
    history = StatusHistory(interval_s=1.0, capacity=3)
    for i in range(8):
        metrics.push_to_visible_seconds.observe(0.01)
        history.sample(_observation(metrics, 1_000 * (i + 1)))
    snap = history.snapshot()
    assert [p["t_ms"] for p in snap["points"]] == [6_000, 7_000, 8_000]
    # the window covers the last 3 intervals: 3 observations, not the 8 since start
    assert sum(snap["push_to_visible_distribution"]["count"]) == 3


def _poll(fetch: Callable[[], Any], accept: Callable[[Any], bool], what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value!r}"[:2000])
        time.sleep(0.1)


def test_status_data_needs_no_token_and_tracks_the_live_server(fast_server: LiveServer) -> None:
    schema = manifest_of(fast_server).schema_hash
    with fast_server.client() as client:
        assert client.post("/v1/rank", json=rank_body()).status_code == 200
        pushed = client.post(
            "/admin/deltas?wait=visible", content=delta_bytes(schema, 1, "item_id", [1, 2, 3], 0.5), headers=ADMIN
        )
        assert pushed.status_code == 200, pushed.text
        data = client.get("/status/data")
        assert data.status_code == 200
        body = data.json()
        assert body["epoch"] == client.get("/admin/status", headers=ADMIN).json()["epoch"]
        assert body["epoch"]["sparse_seq"] == {"trainer": 1}
        assert body["replicas"] == []
        assert TOKEN not in data.text
        [bundle] = body["bundles"]
        assert bundle["live"] is True
        assert bundle["version"] == "1"
        assert bundle["went_live_ms"] <= body["now_ms"]

        def busy(points: list[dict[str, Any]]) -> bool:
            return any(p["rank_rps"] > 0 for p in points) and any(p["deltas_per_s"] > 0 for p in points)

        points: list[dict[str, Any]] = []

        def more() -> list[dict[str, Any]]:
            since = points[-1]["t_ms"] if points else -1
            points.extend(client.get("/status/data", params={"since_ms": since}).json()["history"]["points"])
            client.post("/v1/rank", json=rank_body())
            return points

        _poll(more, busy, "a sample with ranking and delta traffic")
        assert [p["t_ms"] for p in points] == sorted({p["t_ms"] for p in points})  # since_ms: no repeats
        latest = points[-1]
        assert latest["rows_by_slot"]["item_id"] == 3
        assert set(latest["unseen_rate_by_slot"]) == set(latest["rows_by_slot"])
        assert client.get("/status/data", params={"since_ms": "soon"}).status_code == 422


def test_bundle_history_shows_when_each_went_live_and_parity_reports(fast_server: LiveServer, tmp_path: Path) -> None:
    source = tmp_path / "v3"
    build_synthetic_bundle(source, preset="tiny", dim=DIM, version="3", seed=3)
    manifest_path = source / "manifest.json"
    raw = json.loads(manifest_path.read_text())
    parity = {"dtype": "int8", "max_abs_diff": 0.004, "tolerance": 0.02, "passed": True}
    manifest_path.write_text(json.dumps({**raw, "parity": parity}))
    with fast_server.client() as client:
        up = client.post("/admin/bundles", content=archive_bundle(source), headers=ADMIN)
        assert up.status_code == 200, up.text
        bundles = client.get("/status/data").json()["bundles"]
    assert [b["version"] for b in bundles] == ["1", "3"]
    assert [b["live"] for b in bundles] == [False, True]
    assert "parity" not in bundles[0]
    assert bundles[1]["parity"] == parity
    assert bundles[0]["went_live_ms"] <= bundles[1]["went_live_ms"]


@pytest.mark.parametrize("path", ["/status", "/docs", "/redoc"])
def test_pages_load_every_asset_from_the_server_itself(server: LiveServer, path: str) -> None:
    with server.client() as client:
        page = client.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        scripts = re.findall(r"""<script[^>]+src=["']([^"']+)["']""", page.text)
        assert scripts, f"{path} loads no script"
        for url in [*scripts, *re.findall(r"""<link[^>]+href=["']([^"']+)["']""", page.text)]:
            assert url.startswith("/"), f"{path} loads {url} from elsewhere"
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert asset.content, url
    assert "cdn" not in page.text.lower()
    assert "fonts.googleapis" not in page.text


def test_openapi_document_still_describes_the_api(server: LiveServer) -> None:
    with server.client() as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/rank" in paths
    assert "/status/data" in paths
    assert "/status" not in paths  # the pages are for browsers, not part of the API
    assert "/docs" not in paths


def test_status_page_assets_are_in_the_wheel_package_data() -> None:
    """pyproject's package-data globs for liverank.serving.api cover every file under static/."""
    import tomllib
    from fnmatch import fnmatch

    root = Path(__file__).resolve().parents[2]
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    globs = package_data["liverank.serving.api"]
    api_dir = root / "serving" / "api"
    files = [p.relative_to(api_dir).as_posix() for p in (api_dir / "static").rglob("*") if p.is_file()]
    assert files
    uncovered = [f for f in files if not any(fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert uncovered == []


def test_status_data_refuses_nothing_and_changes_nothing(server: LiveServer) -> None:
    with server.client() as client:
        before = client.get("/admin/status", headers=ADMIN).json()
        for _ in range(3):
            assert client.get("/status/data").status_code == 200
        assert client.post("/status/data").status_code == 405
        after = client.get("/admin/status", headers=ADMIN).json()
    assert before["epoch"] == after["epoch"]
    assert before["bundles"] == after["bundles"]


def test_no_admin_action_is_reachable_without_a_token(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/admin/rollback").status_code == 401
        assert client.get("/status").status_code == 200


def test_went_live_times_survive_a_restart_and_a_rollback_sets_a_new_one(
    tmp_path: Path, tiny_bundle: Path, tiny_bundle_v2: bytes
) -> None:
    settings = settings_for(tmp_path / "data", tiny_bundle)
    first = LiveServer(settings).start()
    try:
        with first.client() as client:
            assert client.post("/admin/bundles", content=tiny_bundle_v2, headers=ADMIN).status_code == 200
            before = {b["version"]: b["went_live_ms"] for b in client.get("/status/data").json()["bundles"]}
    finally:
        first.stop()
    assert before["1"] <= before["2"]
    again = LiveServer(settings).start()  # restore makes v2 live again: when it went live does not change
    try:
        with again.client() as client:
            after = {b["version"]: b["went_live_ms"] for b in client.get("/status/data").json()["bundles"]}
            assert after == before
            assert client.post("/admin/rollback", headers=ADMIN).status_code == 200
            [v1] = client.get("/status/data").json()["bundles"]
    finally:
        again.stop()
    assert v1["version"] == "1"
    assert v1["live"] is True
    assert v1["went_live_ms"] >= before["2"]
