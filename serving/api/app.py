"""``create_app(settings)``: the FastAPI shell over the serving core. No app or settings object at import time.

The lifespan owns the core's state (``Services``): it opens the store, brings the last live bundle back, starts
the updater, and closes everything in reverse at shutdown.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from liverank.serving.api import routes_admin, routes_health, routes_oip, routes_rank, routes_status
from liverank.serving.api.errors import install_error_handlers
from liverank.serving.services import Services, check_settings
from liverank.serving.settings import Settings

log = logging.getLogger(__name__)


_PID = str(os.getpid()).encode()
_CLOSE = (b"connection", b"close")


class _LatencyMiddleware:
    """Request latency by route and status (pure ASGI: no per-request middleware objects).

    The route label is the matched route's path template (``/v2/models/{name}/infer``, not the model's name), so
    its values are bounded by the app's routes; a request that matched none counts as ``other``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        services = getattr(scope["app"].state, "services", None)
        balance = services.conn_balance if services is not None else None
        # A worker holding more than its share of the server's connections ends this one after the answer.
        close = balance is not None and balance.on_request(scope.get("client"), scope.get("http_version", ""))

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Which worker answered (a multi-process server): tells answers from different workers apart.
                headers = [*message.get("headers", []), (b"x-liverank-worker", _PID)]
                if close:
                    headers.append(_CLOSE)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if services is not None:
                # The router records the route it matched in the scope it was given (this one).
                template = getattr(scope.get("route"), "path", None)
                route = template if isinstance(template, str) else "other"
                services.metrics.record_request(route, status, time.perf_counter() - started)


def create_worker_app() -> FastAPI:
    """The app of one worker of ``liverank serve`` (uvicorn's factory; settings from the environment the master
    prepared, ``LIVERANK_ROLE=worker``)."""
    from_environment: dict[str, Any] = {}  # Settings reads LIVERANK_* itself
    return create_app(Settings(**from_environment))


def create_app(settings: Settings, *, services: Services | None = None) -> FastAPI:
    """The app. ``services``: already opened by the caller (the CLI opens them first to fail with one clear line);
    the app's lifespan then owns and closes them. Otherwise the lifespan opens them."""
    check_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        opened = services if services is not None else await run_in_threadpool(Services.open, settings)
        app.state.services = opened
        app.state.rank_limiter = anyio.CapacityLimiter(settings.ranking_threads)
        # Background work (following deltas) gets the GIL back sooner from busy request threads.
        sys.setswitchinterval(settings.switch_interval_s)
        if settings.gc_freeze:
            # Long-lived start-up objects leave the collector's generations: GC pauses were ~25 ms p99 tails.
            gc.collect()
            gc.freeze()
        try:
            yield {}
        finally:
            await run_in_threadpool(opened.close)

    app = FastAPI(
        title="liverank",
        summary="Ranking with models that learn while they serve",
        version="0.1.0",
        lifespan=lifespan,
        # /docs and /redoc are served from packaged assets (routes_status), not from a CDN
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(routes_rank.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_health.router)
    routes_status.install_pages(app)
    app.include_router(routes_oip.router)
    app.add_middleware(routes_rank.DirectRank)  # inside the latency middleware: timed and labelled as before
    app.add_middleware(_LatencyMiddleware)
    return app
