"""Probes and metrics: /healthz (the process works), /readyz (it can rank), /metrics (Prometheus), /v1/model."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.responses import PlainTextResponse, Response

from liverank.serving.api.errors import error_response, error_responses
from liverank.serving.metrics import scrape_registry
from liverank.serving.services import Services
from liverank.store.manifest import manifest_to_json

router = APIRouter()


@router.get(
    "/healthz", summary="Liveness: the process and its updater thread are running", responses=error_responses(503)
)
async def healthz(request: Request) -> Response:
    services: Services = request.app.state.services
    if not services.updater.alive:
        return error_response(503, "unhealthy", "the updater thread has stopped")
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get(
    "/readyz",
    summary="Readiness: a bundle is live and the deltas queued before start-up are applied",
    responses=error_responses(503),
)
async def readyz(request: Request) -> Response:
    services: Services = request.app.state.services
    ready, reason = services.ready()
    if not ready:
        return error_response(503, "not_ready", reason)
    return Response(b'{"status":"ready"}', media_type="application/json")


def _scrape(services: Services) -> bytes:
    stats = services.store.stats()
    for slot, rows in stats.rows_by_slot.items():
        services.metrics.store_rows.labels(slot=slot).set(rows)
    services.metrics.store_used_bytes.set(stats.used_bytes)
    services.metrics.store_map_bytes.set(stats.map_size_bytes)
    services.metrics.inbox_depth.set(services.inbox.depth())
    return generate_latest(scrape_registry(services.metrics.registry))


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    services: Services = request.app.state.services
    return Response(await run_in_threadpool(_scrape, services), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/model",
    summary="The live bundle's manifest: features, slots, heads (what /v1/rank accepts)",
    responses=error_responses(503),
)
async def model(request: Request) -> Response:
    services: Services = request.app.state.services
    live = services.model_slot.current()
    body = {"bundle_id": live.bundle_id, "manifest": manifest_to_json(live.manifest), "epoch": services.epoch()}
    return Response(orjson.dumps(body), media_type="application/json")
