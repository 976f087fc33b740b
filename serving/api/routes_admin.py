"""/admin/*: pushed deltas, bundle uploads, rollback and status. Bearer token required."""

from __future__ import annotations

import time
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from liverank.serving.api.auth import require_admin
from liverank.serving.api.body import read_body
from liverank.serving.api.errors import error_responses
from liverank.serving.model_slot import LiveModel
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
    result = await run_in_threadpool(services.intake.submit, body, received_at_ms)
    answer: dict[str, Any] = {"status": result.status, "producer": result.producer, "seq": result.seq}
    if result.status == "duplicate":
        return _json({**answer, "epoch": services.epoch()}, 200)
    if wait == "visible":
        visible = await run_in_threadpool(
            services.updater.wait_applied, result.producer, result.seq, services.settings.wait_visible_timeout_s
        )
        if visible:
            return _json({**answer, "status": "visible", "epoch": services.epoch()}, 200)
        return _json({**answer, "visible": False, "inbox_depth": services.inbox.depth()}, 202)
    return _json({**answer, "inbox_depth": result.depth}, 202)


@router.get(
    "/checksum",
    summary="A digest of every stored row, with the sequences and log position it reflects (replica convergence)",
)
async def rows_checksum(request: Request) -> Response:
    services: Services = request.app.state.services
    checksum = await run_in_threadpool(services.store.rows_checksum)
    return _json({**checksum, "epoch": services.epoch()})


def _live_answer(services: Services, live: LiveModel) -> Response:
    services.note_live_bundle()
    m = live.manifest
    return _json(
        {
            "status": "live",
            "bundle_id": live.bundle_id,
            "model": m.model,
            "version": m.version,
            "schema_hash": m.schema_hash,
            "epoch": services.epoch(),
        }
    )


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
    # replicated mode: installed here, then published for every replica (bundle_log.py)
    bundle_log = services.replication and services.replication.bundle_log
    install = bundle_log.upload if bundle_log else services.bundles.install_archive
    live = await run_in_threadpool(install, body)
    services.metrics.bundle_swaps.labels(how="upload").inc()
    return _live_answer(services, live)


@router.post("/rollback", summary="Make the previous bundle live again", responses=error_responses(409, 422))
async def rollback(request: Request) -> Response:
    services: Services = request.app.state.services
    bundle_log = services.replication and services.replication.bundle_log
    roll_back = bundle_log.rollback if bundle_log else services.bundles.rollback
    live = await run_in_threadpool(roll_back)
    services.metrics.bundle_swaps.labels(how="rollback").inc()
    return _live_answer(services, live)


@router.get("/status", summary="Epoch, sequences, inbox, freshness, store stats, bundle history")
async def status(request: Request) -> Response:
    services: Services = request.app.state.services
    return _json(await run_in_threadpool(services.status))
