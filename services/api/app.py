"""The fieldtrack API and dashboards."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from services.api import errors
from services.api.routes import (
    analytics,
    customers,
    decisions,
    deliveries,
    devices,
    features,
    health,
    imports,
    pages,
    projects,
    quarantine,
    schemas,
)
from services.core.db import open_pool
from services.core.migrate import migrate
from services.core.paths import DASHBOARDS_DIR
from services.core.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    config = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrate(config.database_url.get_secret_value())
        app.state.settings = config
        app.state.pool = open_pool(config)
        try:
            yield
        finally:
            app.state.pool.close()

    # FastAPIOffline serves /docs and /redoc from packaged assets: no CDN, works offline.
    app = FastAPIOffline(
        title="fieldtrack",
        summary="What was delivered to each customer project, beside what devices really use.",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.install(app)

    @app.middleware("http")
    async def server_timing(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """How long the server took (`Server-Timing: app;dur=<ms>`), for clients and benches."""
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
        return response

    app.include_router(health.router)
    for module in (
        analytics,
        decisions,
        customers,
        projects,
        features,
        deliveries,
        devices,
        imports,
        quarantine,
        schemas,
    ):
        app.include_router(module.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=DASHBOARDS_DIR / "static"), name="static")
    return app
