"""Probes and metrics: /healthz (the process works), /readyz (it can rank), /metrics (Prometheus), /v1/model."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.responses import PlainTextResponse, Response

from liverank.serving.api.errors import error_response, error_responses
from liverank.serving.services import Services

router = APIRouter()


@router.get(
    "/healthz",
    summary="Liveness: the process, its follower thread and the writer process are running",
    responses=error_responses(503),
)
async def healthz(request: Request) -> Response:
    services: Services = request.app.state.services
    if not services.alive:
        return error_response(503, "unhealthy", "the writer process or its follower has stopped")
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


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    services: Services = request.app.state.services
    return Response(await run_in_threadpool(services.metrics_text), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/model",
    summary="The live bundle's manifest: features, slots, heads (what /v1/rank accepts)",
    responses=error_responses(503),
)
async def model(request: Request) -> Response:
    services: Services = request.app.state.services
    return Response(orjson.dumps(services.model_info()), media_type="application/json")
