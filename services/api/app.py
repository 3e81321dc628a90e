"""The fieldtrack API and dashboards."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from services.accounts.throttle import LoginThrottle
from services.api import errors
from services.api.reads import ReadRouter
from services.api.routes import (
    alert_pages,
    alerts,
    analytics,
    auth,
    customers,
    decisions,
    deliveries,
    devices,
    features,
    fleet,
    fleet_pages,
    health,
    imports,
    metrics,
    pages,
    projects,
    quarantine,
    schemas,
    tokens,
    users,
)
from services.core.db import open_pool, open_read_pool
from services.core.migrate import migrate
from services.core.paths import DASHBOARDS_PACKAGE, chart_library_dir
from services.core.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    config = settings or get_settings()
    config.require_session_secret()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        migrate(config.database_url.get_secret_value())
        app.state.settings = config
        app.state.login_throttle = LoginThrottle()
        app.state.pool = open_pool(config)
        read_pool = open_read_pool(config)
        app.state.reads = None if read_pool is None else ReadRouter(read_pool)
        try:
            yield
        finally:
            if read_pool is not None:
                read_pool.close()
            app.state.pool.close()

    # FastAPIOffline serves /docs and /redoc from packaged assets: no CDN, works offline.
    app = FastAPIOffline(
        title="fieldtrack",
        summary="What was delivered to each customer project, beside what devices really use.",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.install(app)
    # Pages pull a 4.8 MB chart library and JSON; compressed they load fast on a phone too.
    app.add_middleware(GZipMiddleware, minimum_size=1024)

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
        auth,
        users,
        tokens,
        analytics,
        decisions,
        customers,
        projects,
        features,
        deliveries,
        devices,
        fleet,
        imports,
        quarantine,
        alerts,
        schemas,
        metrics,
    ):
        app.include_router(module.router)
    app.include_router(pages.router)
    errors.document_access_errors(app)
    app.include_router(fleet_pages.router)
    app.include_router(alert_pages.router)
    # Static assets (CSS, scripts) are public: the login page needs them.
    # Served from the installed package (dashboards/static), not from a source checkout.
    static = StaticFiles(packages=[(DASHBOARDS_PACKAGE, "static")])
    app.mount("/static", static, name="static")
    app.mount("/vendor/plotly", StaticFiles(directory=chart_library_dir()), name="plotly")
    return app
