"""Server-rendered dashboard pages (Jinja2 templates under dashboards/)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from services.analytics.usage import project_usage
from services.api.deps import ConnDep, WindowDep
from services.core.paths import DASHBOARDS_DIR
from services.registry import repository
from services.registry.resources import PROJECTS

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=DASHBOARDS_DIR / "templates")


@router.get("/", response_class=HTMLResponse)
def home(request: Request, conn: ConnDep) -> HTMLResponse:
    projects = repository.list_items(
        conn, PROJECTS, filters={}, search=None, sort="customer_name", limit=500, offset=0
    )
    return templates.TemplateResponse(request, "projects.html", {"projects": projects.items})


@router.get("/dashboards/projects/{project_id}", response_class=HTMLResponse)
def project_page(
    request: Request, project_id: int, conn: ConnDep, window: WindowDep
) -> HTMLResponse:
    usage = project_usage(conn, project_id, window.since, window.until)
    return templates.TemplateResponse(request, "project.html", {"usage": usage})
