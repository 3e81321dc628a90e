"""Product managers' dashboard pages: customers, a customer, a project, the portfolio.

Server-rendered (Jinja2 templates under dashboards/); charts are drawn in the browser from
JSON the page carries. Without a session the browser is sent to /login and comes back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

import psycopg
from fastapi import APIRouter, Depends, Form, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from services.accounts.roles import Permission, Principal
from services.analytics.decisions import DecisionCreate, list_decisions, record_decision
from services.analytics.measures import Window as AnalyticsWindow
from services.analytics.portfolio import ProjectAnalytics, portfolio, project_analytics
from services.analytics.recommend import AnalyticsThresholds
from services.analytics.usage import daily_usage
from services.api.auth import require, visible_project
from services.api.deps import ConnDep
from services.api.pages_support import PageWindow, home_of, render
from services.api.routes.crud import ItemId
from services.client.report import CustomerReport, render_html
from services.core.errors import FieldtrackError
from services.registry import repository
from services.registry.resources import CUSTOMERS, PROJECTS

router = APIRouter(include_in_schema=False)

Reader = Annotated[Principal, Depends(require(Permission.READ_REGISTRY, kind="page"))]
UsageReader = Annotated[Principal, Depends(require(Permission.READ_USAGE, kind="page"))]
PortfolioReader = Annotated[Principal, Depends(require(Permission.READ_PORTFOLIO, kind="page"))]
DecisionWriter = Annotated[Principal, Depends(require(Permission.WRITE_DECISIONS, kind="form"))]
# Enough for every customer and project a company of this kind has; pages are not paged.
PAGE_LIMIT = 500


def _thresholds(request: Request) -> AnalyticsThresholds:
    thresholds: AnalyticsThresholds = request.app.state.settings.analytics
    return thresholds


def _analytics(
    request: Request, conn: ConnDep, caller: Principal, window: PageWindow, project_ids: list[int]
) -> dict[int, ProjectAnalytics]:
    """Analytics of these projects, if the caller may read usage (else nothing)."""
    if not caller.can(Permission.READ_USAGE) or not project_ids:
        return {}
    span = AnalyticsWindow(window.since, window.until)
    if caller.can(Permission.READ_PORTFOLIO):
        whole = portfolio(conn, span, _thresholds(request))
        return {
            p.project.project_id: p for p in whole.projects if p.project.project_id in project_ids
        }
    return {pid: project_analytics(conn, pid, span, _thresholds(request)) for pid in project_ids}


def _customer_projects(
    conn: psycopg.Connection, caller: Principal, customer_id: int
) -> tuple[Any, list[Any]]:
    """A customer the caller may see (else 404) and its projects."""
    customer = repository.get_item(conn, CUSTOMERS, customer_id, caller.customer_scope)
    projects = repository.list_items(
        conn, PROJECTS, filters={"customer_id": customer_id}, search=None, sort="name",
        limit=PAGE_LIMIT, offset=0, customer_id=caller.customer_scope,
    ).items  # fmt: skip
    return customer, projects


@router.get("/", response_class=HTMLResponse)
def home(caller: Annotated[Principal, Depends(require(kind="page"))]) -> Response:
    return RedirectResponse(home_of(caller), status_code=status.HTTP_303_SEE_OTHER)


@router.get("/dashboards/customers", response_class=HTMLResponse)
def customers_page(
    request: Request, conn: ConnDep, caller: Reader, window: Annotated[PageWindow, Depends()]
) -> HTMLResponse:
    scope = caller.customer_scope
    customers = repository.list_items(
        conn, CUSTOMERS, filters={}, search=None, sort="name", limit=PAGE_LIMIT, offset=0,
        customer_id=scope,
    ).items  # fmt: skip
    projects = repository.list_items(
        conn, PROJECTS, filters={}, search=None, sort="name", limit=PAGE_LIMIT, offset=0,
        customer_id=scope,
    ).items  # fmt: skip
    analytics = _analytics(request, conn, caller, window, [p.id for p in projects])
    by_customer: dict[int, list[Any]] = {}
    for project in projects:
        by_customer.setdefault(project.customer_id, []).append(project)
    return render(
        request, "customers.html", caller, window, customers=customers,
        projects=by_customer, analytics=analytics,
    )  # fmt: skip


@router.get("/dashboards/customers/{customer_id}", response_class=HTMLResponse)
def customer_page(
    request: Request,
    customer_id: ItemId,
    conn: ConnDep,
    caller: Reader,
    window: Annotated[PageWindow, Depends()],
) -> HTMLResponse:
    customer, projects = _customer_projects(conn, caller, customer_id)
    analytics = _analytics(request, conn, caller, window, [p.id for p in projects])
    return render(
        request, "customer.html", caller, window, customer=customer, projects=projects,
        analytics=analytics,
    )  # fmt: skip


@router.get("/dashboards/customers/{customer_id}/report", response_class=HTMLResponse)
def customer_report(
    request: Request,
    customer_id: ItemId,
    conn: ConnDep,
    caller: UsageReader,
    window: Annotated[PageWindow, Depends()],
) -> HTMLResponse:
    """The printable report `fieldtrack report --format html` writes, for the same window."""
    customer, projects = _customer_projects(conn, caller, customer_id)
    span = AnalyticsWindow(window.since, window.until)
    report = CustomerReport(
        customer=customer.model_dump(mode="json"), since=window.since, until=window.until,
        window_days=max(1, round((window.until - window.since).total_seconds() / 86400)),
        generated_at=datetime.now(UTC),
        projects=[
            project_analytics(conn, p.id, span, _thresholds(request)).model_dump(mode="json")
            for p in projects
        ],
    )  # fmt: skip
    return HTMLResponse(render_html(report))


@router.get("/dashboards/projects/{project_id}", response_class=HTMLResponse)
def project_page(  # noqa: PLR0917 - FastAPI reads each as a parameter
    request: Request,
    project_id: ItemId,
    conn: ConnDep,
    caller: UsageReader,
    window: Annotated[PageWindow, Depends()],
    error: str | None = None,
) -> HTMLResponse:
    visible_project(conn, caller, project_id)
    span = AnalyticsWindow(window.since, window.until)
    analytics = project_analytics(conn, project_id, span, _thresholds(request))
    decisions = (
        list_decisions(
            conn, filters={"project_id": project_id}, search=None, sort=None, limit=50, offset=0
        ).items
        if caller.can(Permission.READ_DECISIONS)
        else []
    )
    daily = daily_usage(conn, project_id, span.since, span.until)
    return render(
        request, "project.html", caller, window, analytics=analytics, daily=daily,
        daily_json=[d.model_dump(mode="json") for d in daily],
        features_json=[f.model_dump(mode="json") for f in analytics.features],
        decisions=decisions, thresholds=_thresholds(request), error=error,
    )  # fmt: skip


@router.post("/dashboards/projects/{project_id}/decisions")
def decide(  # noqa: PLR0917 - FastAPI reads each form field as a parameter
    request: Request,
    project_id: ItemId,
    conn: ConnDep,
    caller: DecisionWriter,
    feature_key: Annotated[str, Form(max_length=64)],
    decision: Annotated[str, Form(max_length=16)],
    rationale: Annotated[str, Form(max_length=5000)],
    window_days: Annotated[int, Form(ge=1, le=400)] = 30,
) -> Response:
    """The decision form: records it with frozen evidence, then back to the project."""
    visible_project(conn, caller, project_id)
    back = f"/dashboards/projects/{project_id}"
    try:
        body = DecisionCreate(
            project_id=project_id, feature_key=feature_key, decision=decision,
            rationale=rationale, decided_by=caller.name, window_days=window_days,
        )  # fmt: skip
        record_decision(conn, body, _thresholds(request))
    except (ValidationError, FieldtrackError) as exc:
        problem = (
            "; ".join(e["msg"] for e in exc.errors())
            if isinstance(exc, ValidationError)
            else str(exc)
        )
        target = f"{back}?{urlencode({'error': problem})}#decisions"
        return RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)
    return RedirectResponse(f"{back}#decisions", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/dashboards/portfolio", response_class=HTMLResponse)
def portfolio_page(
    request: Request,
    conn: ConnDep,
    caller: PortfolioReader,
    window: Annotated[PageWindow, Depends()],
) -> HTMLResponse:
    whole = portfolio(conn, AnalyticsWindow(window.since, window.until), _thresholds(request))
    return render(
        request, "portfolio.html", caller, window, portfolio=whole,
        features_json=[f.model_dump(mode="json") for f in whole.features],
        project_names={p.project.project_id: p.project.project_name for p in whole.projects},
    )  # fmt: skip
