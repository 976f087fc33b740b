"""/v2/*: the Open Inference Protocol (KServe v2 / Triton HTTP) over the live ranking model.

Health answers 200 (true) or 400 (false) with an empty body; errors are the protocol's ``{"error": ...}`` body,
with the status of the domain error's code. The binary tensor data extension is supported both ways (requests
with ``Inference-Header-Content-Length``; outputs asked for with ``binary_data``), since tritonclient uses it by
default and it is the cheaper encoding (README). The tensor mapping is in ``liverank.serving.oip``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from liverank.errors import LiverankError
from liverank.serving.api.body import read_body
from liverank.serving.api.errors import status_of
from liverank.serving.api.routes_rank import run_ranking
from liverank.serving.oip import model_metadata
from liverank.serving.oip_model import infer, live_manifest
from liverank.serving.services import Services

HEADER_LENGTH = "Inference-Header-Content-Length"


def protocol_error(status: int, message: str) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status, media_type="application/json")


class _ProtocolErrorRoute(APIRoute):
    """Domain errors of these routes answer the protocol's error body instead of liverank's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except LiverankError as exc:
                return protocol_error(status_of(exc.code), exc.message)

        return handle


router = APIRouter(prefix="/v2", route_class=_ProtocolErrorRoute, tags=["Open Inference Protocol v2"])
_OBJECT = {"application/json": {"schema": {"type": "object"}}}
_ERROR_BODY = {
    "application/json": {
        "schema": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
    }
}


def _answers(ok: dict[str, Any] | None, *errors: int) -> dict[int | str, dict[str, Any]]:
    """The documented answers of a route: 200 (with ``ok`` content, or none) and the protocol's error body."""
    described = {
        400: "false (health) or a malformed request",
        404: "no such model or version",
        413: "body too large",
        422: "the tensors do not fit the live model's inputs",
        503: "no bundle is live",
    }
    out: dict[int | str, dict[str, Any]] = {200: {"description": "OK", **({"content": ok} if ok else {})}}
    out.update({status: {"description": described[status], "content": _ERROR_BODY} for status in errors})
    return out


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _server_version() -> str:
    try:
        return version("liverank")
    except PackageNotFoundError:  # run from a source tree without an install
        return "0+unknown"


@router.get("", summary="Server metadata", responses=_answers(_OBJECT))
async def server_metadata() -> Response:
    body = {"name": "liverank", "version": _server_version(), "extensions": ["binary_tensor_data"]}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/health/live",
    summary="Server liveness (200 true, 400 false)",
    response_class=Response,
    responses=_answers(None, 400),
)
async def server_live(request: Request) -> Response:
    if not _services(request).alive:
        return protocol_error(400, "the writer process or its follower has stopped")
    return Response(status_code=200)


@router.get(
    "/health/ready",
    summary="Server readiness (200 true, 400 false)",
    response_class=Response,
    responses=_answers(None, 400),
)
async def server_ready(request: Request) -> Response:
    ready, reason = _services(request).ready()
    return Response(status_code=200) if ready else protocol_error(400, reason)


_METADATA_ANSWERS = _answers(_OBJECT, 404, 422, 503)


@router.get("/models/{name}", summary="Model metadata: one input tensor per feature", responses=_METADATA_ANSWERS)
async def model_metadata_route(request: Request, name: str) -> Response:
    return _metadata(request, name, None)


@router.get(
    "/models/{name}/versions/{model_version}", summary="Model metadata of one version", responses=_METADATA_ANSWERS
)
async def model_version_metadata_route(request: Request, name: str, model_version: str) -> Response:
    return _metadata(request, name, model_version)


def _metadata(request: Request, name: str, model_version: str | None) -> Response:
    manifest = live_manifest(_services(request), name, model_version)
    return Response(orjson.dumps(model_metadata(manifest)), media_type="application/json")


_READY_ANSWERS = _answers(None, 400, 404, 422, 503)


@router.get(
    "/models/{name}/ready",
    summary="Model readiness (200 true, 400 false)",
    response_class=Response,
    responses=_READY_ANSWERS,
)
async def model_ready(request: Request, name: str) -> Response:
    return _ready(request, name, None)


@router.get(
    "/models/{name}/versions/{model_version}/ready",
    summary="Model version readiness",
    response_class=Response,
    responses=_READY_ANSWERS,
)
async def model_version_ready(request: Request, name: str, model_version: str) -> Response:
    return _ready(request, name, model_version)


def _ready(request: Request, name: str, model_version: str | None) -> Response:
    services = _services(request)
    live_manifest(services, name, model_version)
    ready, reason = services.ready()
    return Response(status_code=200) if ready else protocol_error(400, reason)


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "required": ["inputs"]}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


_INFER_ANSWERS = _answers(
    {**_OBJECT, "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}, 400, 404, 413, 422, 503
)


@router.post("/models/{name}/infer", summary="Rank (inference)", openapi_extra=_INFER_BODY, responses=_INFER_ANSWERS)
async def infer_route(request: Request, name: str) -> Response:
    return await _infer(request, name, None)


@router.post(
    "/models/{name}/versions/{model_version}/infer",
    summary="Rank with one model version",
    openapi_extra=_INFER_BODY,
    responses=_INFER_ANSWERS,
)
async def infer_version_route(request: Request, name: str, model_version: str) -> Response:
    return await _infer(request, name, model_version)


async def _infer(request: Request, name: str, model_version: str | None) -> Response:
    services = _services(request)
    body = await read_body(request, services.settings.max_rank_body_bytes)
    answer = await run_ranking(
        request.app.state, infer, services, name, model_version, body, request.headers.get(HEADER_LENGTH)
    )
    if not answer.binary:
        return Response(answer.header, media_type="application/json")
    return Response(
        answer.header + answer.binary,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(answer.header))},
    )
