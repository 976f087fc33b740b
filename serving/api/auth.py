"""Bearer-token auth for /admin/*: constant-time comparison, and the token never reaches a log line."""

from __future__ import annotations

import hmac
import logging

from fastapi import Request

from liverank.serving.errors import ServingError

log = logging.getLogger(__name__)


class Unauthorized(ServingError):
    code = "unauthorized"


class Forbidden(ServingError):
    code = "forbidden"


def require_admin(request: Request) -> None:
    """FastAPI dependency: pass with the configured bearer token (or when the server runs open on localhost)."""
    settings = request.app.state.services.settings
    if settings.admin_token is None:
        return  # only possible with --open-admin on a loopback host (checked at start-up)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        log.debug("admin request refused: no bearer token")  # what was sent is never logged
        raise Unauthorized("admin endpoints need 'Authorization: Bearer <token>'")
    expected = settings.admin_token.get_secret_value().encode("utf-8")
    if not hmac.compare_digest(token.strip().encode("utf-8"), expected):
        log.debug("admin request refused: the bearer token does not match")
        raise Forbidden("the admin token is not valid")
