"""POST /v1/rank: columnar JSON in, top-k with scores, the model epoch and per-answer stats out."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from liverank.serving.api.body import read_body
from liverank.serving.api.errors import error_responses
from liverank.serving.errors import InvalidJson
from liverank.serving.services import Services

router = APIRouter()

RANK_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["candidates"],
    "additionalProperties": False,
    "properties": {
        "user": {"type": "object", "description": "user feature name -> id, id list or number"},
        "candidates": {"type": "object", "description": "candidate feature name -> column (one value per candidate)"},
        "k": {"type": "integer", "minimum": 1, "default": 50},
        "blend": {"type": "object", "additionalProperties": {"type": "number"}, "description": "head -> weight"},
    },
}


def rank_json(services: Services, body: bytes) -> bytes:
    """Parse, rank and serialise on a worker thread (the event loop only moves bytes)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"request body is not valid JSON: {exc}") from exc
    return orjson.dumps(services.rank(doc).to_json())


@router.post(
    "/v1/rank",
    summary="Rank candidates for one user with the live model",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": RANK_REQUEST_SCHEMA}}}},
    responses=error_responses(413, 422, 503),
)
async def rank(request: Request) -> Response:
    services: Services = request.app.state.services
    body = await read_body(request, services.settings.max_rank_body_bytes)
    payload = await anyio.to_thread.run_sync(rank_json, services, body, limiter=request.app.state.rank_limiter)
    return Response(payload, media_type="application/json")
