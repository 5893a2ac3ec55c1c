"""`create_app(settings, storage)`: the FastAPI application, storage injected, one router per concern.

Static assets are vendored under `shore/static` (works offline on a boat) and served with long cache headers; the
page names them with a content hash (`?v=…`), so a new release is fetched at once.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

import shore
from shore.config import WebConfig
from shore.ingest import IngestStats
from shore.storage import Storage
from shore.web.routers import counts, devices, events, pages, surveys

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# No inline script or style, no third-party origin: device-supplied text can never become code on the page.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class CachedStatic(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Any:
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


def _asset_version() -> str:
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def create_app(settings: WebConfig, storage: Storage, ingest_stats: IngestStats | None = None) -> FastAPI:
    """Build the app over `storage`; `ingest_stats` is shown by /api/health when ingest runs alongside."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.shutdown = asyncio.Event()
        yield
        app.state.shutdown.set()  # ends open event streams so the server can stop

    app = FastAPI(
        title="Starfish shore station",
        version=shore.__version__,
        description="Counts of crown-of-thorns starfish from a fleet of edge agents: devices, per-minute series, "
        "raw counts (JSON / CSV), surveys, live updates (SSE). Times are UTC epoch seconds. When the station has a "
        "token, send `Authorization: Bearer <token>`.",
        lifespan=lifespan,
        docs_url=None,  # replaced below by a page using the vendored Swagger UI (FastAPI's default uses a CDN)
        redoc_url=None,
    )
    app.state.storage = storage
    app.state.web = settings
    app.state.token = settings.token.get_secret_value() if settings.token is not None else None
    app.state.ingest_stats = ingest_stats
    app.state.csp = CSP
    app.state.shutdown = asyncio.Event()
    version = _asset_version()
    app.state.index_html = (STATIC_DIR / "index.html").read_text(encoding="utf-8").replace("{{V}}", version)
    for module in (devices, counts, surveys, events, pages):
        app.include_router(module.router)
    app.mount("/static", CachedStatic(directory=STATIC_DIR), name="static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Starfish shore station API",
            swagger_js_url=f"/static/vendor/swagger-ui/swagger-ui-bundle.js?v={version}",
            swagger_css_url=f"/static/vendor/swagger-ui/swagger-ui.css?v={version}",
            swagger_favicon_url="data:,",
        )

    return app
