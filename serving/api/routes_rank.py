"""POST /v1/rank: columnar JSON in, top-k with scores, the model epoch and per-answer stats out.

The served path is ``DirectRank``, a pure ASGI layer that takes ``POST /v1/rank`` from the ASGI server straight to
the core and hands everything else to the app. FastAPI's stack (its middlewares, the router, the request and response
objects) cost about 0.25 ms of CPU per W-500 request under load, 8 % of everything a worker did outside ONNX Runtime
(py-spy and side-by-side runs in BENCHMARKS.md). The route below documents the endpoint in the OpenAPI schema and
serves an app that includes this router without the layer; both call ``rank_json`` and answer errors alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
import orjson
from fastapi import APIRouter, Request
from starlette.datastructures import State
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from liverank.serving.api.body import read_body, receive_body
from liverank.serving.api.errors import domain_error_response, error_responses, unexpected_error_response
from liverank.serving.errors import ServingError
from liverank.serving.rank_body import load_json, load_rank_json
from liverank.serving.services import Services
from liverank.store import StoreError

router = APIRouter()
T = TypeVar("T")

RANK_PATH = "/v1/rank"
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
    """Parse, rank and serialise on a ranking thread (the event loop only moves bytes)."""
    live = services.model_slot.live
    # The live manifest names the integer id columns read straight into arrays (serving/rank_body.py).
    doc = load_json(body) if live is None else load_rank_json(body, live.manifest)
    return orjson.dumps(services.rank(doc).to_json())


async def run_ranking(state: State, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a ranking thread: a worker's, in one of the server's slots (``serving/rank_slots.py``), or a
    standalone app's (at most ``ranking_threads`` at once). ONNX Runtime runs there without the GIL."""
    services: Services = state.services
    if services.rank_runner is not None:
        return await services.rank_runner.run(fn, *args)
    return await anyio.to_thread.run_sync(fn, *args, limiter=state.rank_limiter)


@router.post(
    RANK_PATH,
    summary="Rank candidates for one user with the live model",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": RANK_REQUEST_SCHEMA}}}},
    responses=error_responses(413, 422, 503),
)
async def rank(request: Request) -> Response:
    services: Services = request.app.state.services
    body = await read_body(request, services.settings.max_rank_body_bytes)
    payload = await run_ranking(request.app.state, rank_json, services, body)
    return Response(payload, media_type="application/json")


class DirectRank:
    """``POST /v1/rank`` answered here, every other request passed on to ``app`` (see the module docstring).

    Errors are answered as the app's handlers answer them (the same body, status and log line). The matched route
    goes into the scope as the router would put it, so the latency middleware labels the request ``/v1/rank``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route: BaseRoute = next(r for r in router.routes if getattr(r, "path", None) == RANK_PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != RANK_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        state = scope["app"].state
        services: Services = state.services
        try:
            declared = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-length"), None)
            body = await receive_body(receive, declared, services.settings.max_rank_body_bytes)
            payload = await run_ranking(state, rank_json, services, body)
        except ClientDisconnect:
            return  # nobody to answer
        except (StoreError, ServingError) as exc:
            await domain_error_response(exc, "POST", RANK_PATH)(scope, receive, send)
            return
        except Exception as exc:
            await unexpected_error_response(exc, "POST", RANK_PATH)(scope, receive, send)
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
