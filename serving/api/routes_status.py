"""The pages a browser opens: ``/status`` (live status, no token: nothing secret, no admin actions), ``/docs`` and
``/redoc``. Every asset comes from the package (``static/``, vendored from npm), never from a CDN: production
networks often have no internet, and a page that loads its scripts from one renders blank there.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, HTMLResponse, Response

from liverank.serving.api.errors import error_responses
from liverank.serving.services import Services

STATIC_DIR = Path(__file__).parent / "static"
STATIC_URL = "/static"
_OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"

router = APIRouter()


@router.get("/status", include_in_schema=False)
async def status_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "status.html", media_type="text/html")


@router.get(
    "/status/data",
    summary="What the status page plots: epoch, bundle history and the sampled time series (no token needed)",
    responses=error_responses(422),
)
async def status_page_data(
    request: Request, since_ms: int = Query(-1, description="only the history points sampled after this time")
) -> Response:
    services: Services = request.app.state.services
    body = await run_in_threadpool(services.status_page, since_ms)
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    return get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} - Swagger UI",
        oauth2_redirect_url=_OAUTH2_REDIRECT_URL,
        swagger_js_url=f"{STATIC_URL}/vendor/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{STATIC_URL}/vendor/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{STATIC_URL}/vendor/swagger-ui/favicon-32x32.png",
    )


@router.get(_OAUTH2_REDIRECT_URL, include_in_schema=False)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    return get_redoc_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{STATIC_URL}/vendor/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{STATIC_URL}/vendor/swagger-ui/favicon-32x32.png",
        with_google_fonts=False,
    )


def install_pages(app: FastAPI) -> None:
    """Add the pages and their packaged assets (create the app with ``docs_url=None, redoc_url=None``)."""
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(router)
