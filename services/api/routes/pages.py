"""Product managers' dashboard pages: customers, a customer, a project, the portfolio.

Server-rendered (Jinja2 templates under dashboards/); charts are drawn in the browser from
JSON the page carries. Without a session the browser is sent to /login and comes back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

import psycopg
from fastapi import APIRouter, Depends, Form, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from services.accounts.roles import Audience, Permission, Principal
from services.analytics.adoption import project_adoption
from services.analytics.decisions import DecisionCreate, list_decisions, record_decision
from services.analytics.impact import feature_impact
from services.analytics.portfolio import (
    CustomerProjectAnalytics,
    ProjectAnalytics,
    analyse,
    for_customer,
    portfolio,
    project_analytics,
)
from services.analytics.recommend import AnalyticsThresholds, rule_texts, rules
from services.analytics.report import CustomerReport, render_html
from services.analytics.usage import daily_usage
from services.api.auth import AudienceQuery, audience_of, require, visible_project
from services.api.deps import ConnDep, ReadConnDep, ThresholdsDep
from services.api.pages_support import PageWindow, PageWindowDep, home_of, render
from services.api.routes.crud import ItemId
from services.core.errors import FieldtrackError
from services.core.windows import DEFAULT_WINDOW_DAYS, MAX_WINDOW_DAYS
from services.registry import repository
from services.registry.models import CustomerView, FeatureKey
from services.registry.repository import Resource
from services.registry.resources import CUSTOMERS, PROJECTS

router = APIRouter(include_in_schema=False)

Reader = Annotated[Principal, Depends(require(Permission.READ_REGISTRY, kind="page"))]
UsageReader = Annotated[Principal, Depends(require(Permission.READ_USAGE, kind="page"))]
PortfolioReader = Annotated[Principal, Depends(require(Permission.READ_PORTFOLIO, kind="page"))]
DecisionWriter = Annotated[Principal, Depends(require(Permission.WRITE_DECISIONS, kind="form"))]
# Enough for every customer and project a company of this kind has; pages are not paged.
PAGE_LIMIT = 500
CUSTOMER_VIEW = set(CustomerView.model_fields)


def _analytics(
    conn: psycopg.Connection,
    caller: Principal,
    window: PageWindow,
    project_ids: list[int],
    t: AnalyticsThresholds,
) -> dict[int, ProjectAnalytics | CustomerProjectAnalytics]:
    """Analytics of these projects as the caller may see them (none without usage rights)."""
    if not caller.can(Permission.READ_USAGE) or not project_ids:
        return {}
    found = analyse(conn, project_ids, window.window, t)
    if caller.customer_scope is None:
        return {p.project.project_id: p for p in found}
    return {p.project.project_id: for_customer(p) for p in found}


def _view(
    analytics: ProjectAnalytics | CustomerProjectAnalytics, internal: bool
) -> ProjectAnalytics | CustomerProjectAnalytics:
    if internal or isinstance(analytics, CustomerProjectAnalytics):
        return analytics
    return for_customer(analytics)


def _readable(resource: Resource[Any], caller: Principal) -> Resource[Any]:
    """The registry as the caller may read it: a customer viewer gets its viewer form."""
    return resource if caller.customer_scope is None else resource.for_viewers()


def _by_name(
    conn: psycopg.Connection,
    resource: Resource[Any],
    caller: Principal,
    filters: dict[str, Any] | None = None,
) -> list[Any]:
    """The first PAGE_LIMIT items by name, as the caller may read them."""
    return repository.list_items(
        conn,
        _readable(resource, caller),
        filters=filters or {},
        search=None,
        sort="name",
        limit=PAGE_LIMIT,
        offset=0,
        customer_id=caller.customer_scope,
    ).items


def _customer_projects(
    conn: psycopg.Connection, caller: Principal, customer_id: int
) -> tuple[Any, list[Any]]:
    """A customer the caller may see (else 404) and its projects."""
    scope = caller.customer_scope
    customer = repository.get_item(conn, _readable(CUSTOMERS, caller), customer_id, scope)
    projects = _by_name(conn, PROJECTS, caller, {"customer_id": customer_id})
    return customer, projects


@router.get("/", response_class=HTMLResponse)
def home(caller: Annotated[Principal, Depends(require(kind="page"))]) -> Response:
    return RedirectResponse(home_of(caller), status_code=status.HTTP_303_SEE_OTHER)


@router.get("/dashboards/customers", response_class=HTMLResponse)
def customers_page(
    request: Request,
    conn: ReadConnDep,
    caller: Reader,
    window: PageWindowDep,
    t: ThresholdsDep,
) -> HTMLResponse:
    scope = caller.customer_scope
    customers = _by_name(conn, CUSTOMERS, caller)
    projects = _by_name(conn, PROJECTS, caller)
    analytics = _analytics(conn, caller, window, [p.id for p in projects], t)
    by_customer: dict[int, list[Any]] = {}
    for project in projects:
        by_customer.setdefault(project.customer_id, []).append(project)
    return render(
        request,
        conn,
        "customers.html",
        caller,
        window,
        customers=customers,
        projects=by_customer,
        analytics=analytics,
        internal=scope is None,
    )


@router.get("/dashboards/customers/{customer_id}", response_class=HTMLResponse)
def customer_page(  # noqa: PLR0917 - FastAPI reads each as a parameter
    request: Request,
    customer_id: ItemId,
    conn: ReadConnDep,
    caller: Reader,
    window: PageWindowDep,
    t: ThresholdsDep,
) -> HTMLResponse:
    customer, projects = _customer_projects(conn, caller, customer_id)
    analytics = _analytics(conn, caller, window, [p.id for p in projects], t)
    return render(
        request,
        conn,
        "customer.html",
        caller,
        window,
        customer=customer,
        projects=projects,
        analytics=analytics,
        internal=caller.customer_scope is None,
    )


@router.get("/dashboards/customers/{customer_id}/report", response_class=HTMLResponse)
def customer_report(  # noqa: PLR0917 - FastAPI reads each as a parameter
    customer_id: ItemId,
    conn: ReadConnDep,
    caller: UsageReader,
    window: PageWindowDep,
    t: ThresholdsDep,
    audience: AudienceQuery = None,
) -> HTMLResponse:
    """The printable report `fieldtrack report --format html` writes, for the same window: by
    default the version to send to the customer; staff may ask for the internal one."""
    internal = audience_of(caller, audience, Audience.CUSTOMER) is Audience.INTERNAL
    customer, projects = _customer_projects(conn, caller, customer_id)
    analytics = _analytics(conn, caller, window, [p.id for p in projects], t)
    if not internal:  # what the customer's own staff may read of themselves
        customer = CustomerView.model_validate(customer.model_dump(include=CUSTOMER_VIEW))
    report = CustomerReport(
        customer=customer,
        since=window.since,
        until=window.until,
        window_days=max(1, round(window.window.days)),
        generated_at=datetime.now(UTC),
        projects=[_view(analytics[p.id], internal) for p in projects],
        internal=internal,
        rules=rule_texts(t) if internal else [],
    )
    return HTMLResponse(render_html(report))


@router.get("/dashboards/projects/{project_id}", response_class=HTMLResponse)
def project_page(  # noqa: PLR0917 - FastAPI reads each as a parameter
    request: Request,
    project_id: ItemId,
    conn: ReadConnDep,
    caller: UsageReader,
    window: PageWindowDep,
    t: ThresholdsDep,
    error: str | None = None,
) -> HTMLResponse:
    visible_project(conn, caller, project_id)
    span = window.window
    internal = caller.customer_scope is None
    # peers are for staff: a customer's page measures its own project only
    analytics = (
        project_analytics(conn, project_id, span, t)
        if internal
        else for_customer(analyse(conn, [project_id], span, t)[0])
    )
    decisions = (
        list_decisions(
            conn, filters={"project_id": project_id}, search=None, sort=None, limit=50, offset=0
        ).items
        if caller.can(Permission.READ_DECISIONS)
        else []
    )
    daily = daily_usage(conn, project_id, span.since, span.until, delivered_only=not internal)
    adoption = project_adoption(conn, project_id, span, analytics.features)
    return render(
        request,
        conn,
        "project.html",
        caller,
        window,
        analytics=analytics,
        internal=internal,
        daily=daily,
        daily_json=[d.model_dump(mode="json") for d in daily],
        features_json=[f.model_dump(mode="json") for f in analytics.features],
        adoption=adoption,
        adoption_json=adoption.model_dump(mode="json"),
        decisions=decisions,
        thresholds=t,
        rules=rules(t) if internal else (),
        error=error,
    )


@router.post("/dashboards/projects/{project_id}/decisions")
def decide(  # noqa: PLR0917 - FastAPI reads each form field as a parameter
    request: Request,
    project_id: ItemId,
    conn: ConnDep,
    caller: DecisionWriter,
    feature_key: Annotated[str, Form(max_length=64)],
    decision: Annotated[str, Form(max_length=16)],
    rationale: Annotated[str, Form(max_length=5000)],
    t: ThresholdsDep,
    window_days: Annotated[int, Form(ge=1, le=MAX_WINDOW_DAYS)] = DEFAULT_WINDOW_DAYS,
) -> Response:
    """The decision form: records it with frozen evidence, then back to the project."""
    visible_project(conn, caller, project_id)
    back = f"/dashboards/projects/{project_id}"
    try:
        body = DecisionCreate(
            project_id=project_id,
            feature_key=feature_key,
            decision=decision,
            rationale=rationale,
            decided_by=caller.name,
            window_days=window_days,
        )
        record_decision(conn, body, t)
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
def portfolio_page(  # noqa: PLR0917 - FastAPI reads each as a parameter
    request: Request,
    conn: ReadConnDep,
    caller: PortfolioReader,
    window: PageWindowDep,
    t: ThresholdsDep,
    impact: Annotated[FeatureKey | None, Query(description="a feature's cut impact")] = None,
) -> HTMLResponse:
    span = window.window
    whole = portfolio(conn, span, t)
    risk = feature_impact(conn, impact, whole) if impact else None
    return render(
        request,
        conn,
        "portfolio.html",
        caller,
        window,
        portfolio=whole,
        impact=risk,
        features_json=[f.model_dump(mode="json") for f in whole.features],
    )
