"""Server-rendered dashboard pages (Jinja2 templates under dashboards/).

Without a session the browser is sent to /login and comes back afterwards.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from services.accounts.roles import Permission, Principal
from services.analytics.usage import project_usage
from services.api.auth import require, visible_project
from services.api.deps import ConnDep, WindowDep
from services.api.routes.crud import ItemId
from services.api.templates import templates
from services.registry import repository
from services.registry.resources import PROJECTS

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def home(
    request: Request,
    conn: ConnDep,
    caller: Annotated[Principal, Depends(require(Permission.READ_REGISTRY, kind="page"))],
) -> HTMLResponse:
    projects = repository.list_items(
        conn, PROJECTS, filters={}, search=None, sort="customer_name", limit=500, offset=0,
        customer_id=caller.customer_scope,
    )  # fmt: skip
    return templates.TemplateResponse(
        request, "projects.html", {"projects": projects.items, "caller": caller}
    )


@router.get("/dashboards/projects/{project_id}", response_class=HTMLResponse)
def project_page(
    request: Request,
    project_id: ItemId,
    conn: ConnDep,
    caller: Annotated[Principal, Depends(require(Permission.READ_USAGE, kind="page"))],
    window: WindowDep,
) -> HTMLResponse:
    visible_project(conn, caller, project_id)
    usage = project_usage(conn, project_id, window.since, window.until)
    return templates.TemplateResponse(request, "project.html", {"usage": usage, "caller": caller})
