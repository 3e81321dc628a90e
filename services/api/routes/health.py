from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import RedirectResponse
from pydantic import BaseModel

from services.api.auth import Public
from services.api.deps import ConnDep

router = APIRouter(tags=["health"], dependencies=[Public])


class Health(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> RedirectResponse:
    """Browsers ask for it on pages without a <link rel=icon> (JSON errors, API docs)."""
    return RedirectResponse("/static/favicon.svg", status_code=301)


@router.get("/health", response_model=Health, summary="Liveness and database reachability")
def health(conn: ConnDep) -> Health:
    conn.execute("SELECT 1")
    return Health(status="ok", database="ok")
