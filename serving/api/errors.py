"""The HTTP shell's one error body, ``{"detail": ..., "code": ...}``, and the map from domain codes to statuses."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from liverank.serving.errors import ServingError
from liverank.store import SequenceGap, StoreError

log = logging.getLogger(__name__)

STATUS_BY_CODE: dict[str, int] = {
    # deltas
    "invalid_delta": 422,
    "delta_corrupt": 422,
    "checksum_mismatch": 422,
    "unsupported_format": 422,
    "unknown_slot": 422,
    "dim_mismatch": 422,
    "dtype_mismatch": 422,
    "non_finite_values": 422,
    "id_out_of_range": 422,
    "schema_mismatch": 409,
    "sequence_gap": 409,
    "inbox_full": 429,
    "store_full": 507,
    "log_unavailable": 503,
    # bundles
    "invalid_bundle": 422,
    "unsafe_archive": 422,
    "incompatible_bundle": 422,
    "parity_refused": 422,
    "invalid_manifest": 422,
    "bundle_too_large": 413,
    "no_bundle": 503,
    "no_previous_bundle": 409,
    # ranking requests
    "invalid_request": 422,
    "invalid_json": 422,
    "unknown_feature": 422,
    "missing_feature": 422,
    "wrong_type": 422,
    "ragged_columns": 422,
    "empty_candidates": 422,
    "limit_exceeded": 422,
    "unknown_head": 422,
    "invalid_inference_request": 422,
    "model_not_found": 404,
    "body_too_large": 413,
    "ranking_unavailable": 503,
    # auth
    "unauthorized": 401,
    "forbidden": 403,
}
RETRY_AFTER_S = {"inbox_full": "1", "no_bundle": "5", "log_unavailable": "2", "ranking_unavailable": "2"}

# The one error body, for the OpenAPI document (a sequence gap adds producer, expected_seq and got_seq).
ERROR_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["detail", "code"],
    "properties": {"detail": {"type": "string"}, "code": {"type": "string"}},
}
_RETRY_AFTER_HEADER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting the error body at ``statuses`` (a route's OpenAPI answers)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "description": HTTPStatus(status).phrase,
            "content": {"application/json": {"schema": ERROR_BODY_SCHEMA}},
        }
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER_HEADER
        out[status] = entry
    return out


def error_response(status: int, code: str, detail: str, extra: dict[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {"detail": detail, "code": code, **(extra or {})}
    headers = {"Retry-After": RETRY_AFTER_S[code]} if code in RETRY_AFTER_S else None
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def status_of(code: str) -> int:
    """The HTTP status of a domain error code."""
    return STATUS_BY_CODE.get(code, 400)


def domain_error_response(exc: StoreError | ServingError, method: str, path: str) -> Response:
    """The answer to a domain error raised by ``method path``; server-side failures are logged."""
    status = status_of(exc.code)
    extra: dict[str, Any] = {}
    if isinstance(exc, SequenceGap):
        extra = {"producer": exc.producer, "expected_seq": exc.expected, "got_seq": exc.got}
    if status >= 500 and status not in {503, 507}:
        log.error("%s %s failed: %s", method, path, exc.message)
    return error_response(status, exc.code, exc.message, extra)


def unexpected_error_response(exc: BaseException, method: str, path: str) -> Response:
    """The answer to an error nothing expected (a bug), logged with its traceback."""
    log.error("unexpected error in %s %s", method, path, exc_info=exc)
    return error_response(500, "internal_error", "internal error; the server log has the details")


def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StoreError | ServingError)
    return domain_error_response(exc, request.method, request.url.path)


def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
    return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden", 413: "body_too_large"}
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))


def _unexpected(request: Request, exc: Exception) -> Response:
    return unexpected_error_response(exc, request.method, request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StoreError, _domain_error)
    app.add_exception_handler(ServingError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
