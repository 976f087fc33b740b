"""deploy/grafana/liverank.json: every query names a metric a real server exports (scraped after real traffic)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.serving.conftest import ADMIN, LiveServer, delta_bytes, manifest_of, rank_body

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "liverank.json"
METRIC_NAME = re.compile(r"\bliverank_[a-z0-9_]+\b")
# What a family of each type exposes (prometheus_client drops _total from a counter family's name).
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "info": ("_info",)}


def queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    return exprs + [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]


def exported_names(exposition: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def test_every_dashboard_query_names_an_exported_metric(server: LiveServer) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    schema = manifest_of(server).schema_hash
    with server.client() as http:
        for seed in range(3):
            assert http.post("/v1/rank", json=rank_body(seed=seed)).status_code == 200
        pushed = http.post(
            "/admin/deltas?wait=visible", content=delta_bytes(schema, 1, "item_id", [1], 1.0), headers=ADMIN
        )
        assert pushed.status_code == 200
        assert http.post("/admin/deltas", content=b"not a delta", headers=ADMIN).status_code == 422
        exposition = http.get("/metrics").text
    exported = exported_names(exposition)
    assert "liverank_push_to_visible_seconds_bucket" in exported  # the scrape saw the traffic above
    found = queries(dashboard)
    assert len(found) >= 20
    for expr in found:
        names = METRIC_NAME.findall(expr)
        assert names, f"query names no liverank metric: {expr}"
        missing = sorted(set(names) - exported)
        assert not missing, f"{expr!r} names metrics the server does not export: {missing}"


def test_the_dashboard_covers_the_sections_operators_ask_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Freshness", "Throughput", "Latency", "Swaps", "Store", "Writer health"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
