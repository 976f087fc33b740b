"""/admin/*: pushed deltas, bundle uploads, rollback and status. Bearer token required."""

from __future__ import annotations

import functools
import time
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from liverank.serving.api.auth import require_admin
from liverank.serving.api.body import read_body
from liverank.serving.api.errors import error_responses
from liverank.serving.services import Services

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)], responses=error_responses(401, 403))

_BINARY = {"schema": {"type": "string", "format": "binary"}}


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.post(
    "/deltas",
    summary="Queue a sparse delta (binary or JSON form); ?wait=visible answers once it is applied",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": _BINARY, "application/json": {"schema": {"type": "object"}}},
        }
    },
    responses={
        202: {"description": "Queued durably", "content": {"application/json": {"schema": {"type": "object"}}}},
        **error_responses(409, 413, 422, 429, 507),
    },
)
async def push_delta(request: Request, wait: Literal["visible"] | None = Query(None)) -> Response:
    services: Services = request.app.state.services
    received_at_ms = time.time_ns() // 1_000_000
    body = await read_body(request, services.settings.max_delta_body_bytes)
    receipt = await run_in_threadpool(
        functools.partial(services.push_delta, body, received_at_ms, wait_visible=wait == "visible")
    )
    return _json(receipt.body, 200 if receipt.settled else 202)


@router.get(
    "/checksum",
    summary="A digest of every stored row, with the sequences and log position it reflects (replica convergence)",
)
async def rows_checksum(request: Request) -> Response:
    services: Services = request.app.state.services
    return _json(await run_in_threadpool(services.rows_checksum))


@router.post(
    "/bundles",
    summary="Upload a dense snapshot (tar or tar.gz of manifest.json + dense.onnx); checked, warmed, then swapped in",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/gzip": _BINARY, "application/x-tar": _BINARY}}
    },
    responses=error_responses(413, 422),
)
async def upload_bundle(request: Request) -> Response:
    services: Services = request.app.state.services
    body = await read_body(request, services.settings.max_bundle_bytes)
    return _swap_answer(await run_in_threadpool(services.install_bundle, body))


@router.post("/rollback", summary="Make the previous bundle live again", responses=error_responses(409, 422))
async def rollback(request: Request) -> Response:
    services: Services = request.app.state.services
    return _swap_answer(await run_in_threadpool(services.rollback))


def _swap_answer(body: dict[str, Any]) -> Response:
    """200 once every worker serves the new bundle; 202 while some worker has not caught up."""
    return _json(body, 200 if body["status"] == "live" else 202)


@router.get("/status", summary="Epoch, sequences, inbox, freshness, store stats, bundle history")
async def status(request: Request) -> Response:
    services: Services = request.app.state.services
    return _json(await run_in_threadpool(services.status))
