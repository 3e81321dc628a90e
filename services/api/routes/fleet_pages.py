"""Ops dashboard pages: the fleet, one device, ingest health.

Server-rendered with the numbers in the HTML; the charts are drawn in the browser from the
same JSON the page then polls (GET /fleet, /devices/{id}/telemetry, /ingest/health) to
refresh itself without a reload.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from services.accounts.roles import Permission, Principal
from services.api.auth import require
from services.api.deps import ConnDep, ReadConnDep
from services.api.pages_support import (
    DaysQuery,
    MomentQuery,
    PageWindow,
    render,
    window_from,
)
from services.api.routes.crud import ItemId
from services.api.routes.fleet import (
    DEFAULT_INGEST_HOURS,
    DEFAULT_RECENT_MINUTES,
    DEFAULT_STALE_MINUTES,
    IngestHours,
    ProjectFilter,
    RecentMinutes,
    StaleMinutes,
    fleet_for,
    ingest_health_for,
)
from services.fleet import fleet_health
from services.fleet.ingest_health import LATE_ALLOWANCE

router = APIRouter(include_in_schema=False)
FleetReader = Annotated[Principal, Depends(require(Permission.READ_FLEET, kind="page"))]
IngestReader = Annotated[Principal, Depends(require(Permission.READ_INGEST, kind="page"))]

STALE_CHOICES = ((15, "15 min"), (60, "1 h"), (360, "6 h"), (1440, "24 h"), (10080, "7 days"))
RECENT_CHOICES = (5, 15, 60)
HOURS_CHOICES = ((1, "1 h"), (24, "24 h"), (168, "7 days"))
DEVICE_WINDOW_DAYS = (1, 7, 30)


def device_window(
    days: DaysQuery = None, since: MomentQuery = None, until: MomentQuery = None
) -> PageWindow:
    """A device's recent telemetry: the last day unless asked otherwise."""
    return window_from(days, since, until, DEVICE_WINDOW_DAYS[0])


@router.get("/dashboards/fleet", response_class=HTMLResponse)
def fleet_page(
    request: Request,
    conn: ReadConnDep,
    caller: FleetReader,
    project: ProjectFilter = None,
    stale_minutes: StaleMinutes = DEFAULT_STALE_MINUTES,
) -> HTMLResponse:
    summary = fleet_for(conn, caller, project, stale_minutes)
    # the filter lists every project the caller may see, not only the one shown
    projects = (
        summary.projects
        if project is None
        else fleet_health.project_fleet(conn, customer_id=caller.customer_scope)
    )
    return render(
        request,
        conn,
        "fleet.html",
        caller,
        fleet=summary,
        all_projects=projects,
        stale_choices=STALE_CHOICES,
        fleet_json=summary.model_dump(mode="json"),
    )


@router.get("/dashboards/devices/{device_id}", response_class=HTMLResponse)
def device_page(
    request: Request,
    device_id: ItemId,
    conn: ReadConnDep,
    caller: FleetReader,
    window: Annotated[PageWindow, Depends(device_window)],
) -> HTMLResponse:
    device = fleet_health.device_detail(conn, device_id, caller.customer_scope)
    telemetry = fleet_health.device_telemetry(conn, device, window.since, window.until)
    return render(
        request,
        conn,
        "device.html",
        caller,
        window,
        device=device,
        telemetry=telemetry,
        telemetry_json=telemetry.model_dump(mode="json"),
        window_days=DEVICE_WINDOW_DAYS,
    )


@router.get("/dashboards/ingest", response_class=HTMLResponse)
def ingest_page(  # noqa: PLR0917 - FastAPI reads each as a parameter
    request: Request,
    conn: ReadConnDep,
    primary: ConnDep,
    caller: IngestReader,
    minutes: RecentMinutes = DEFAULT_RECENT_MINUTES,
    hours: IngestHours = DEFAULT_INGEST_HOURS,
) -> HTMLResponse:
    ingest = ingest_health_for(request, conn, primary, minutes, hours)
    return render(
        request,
        conn,
        "ingest.html",
        caller,
        ingest=ingest,
        minutes=minutes,
        hours=hours,
        recent_choices=RECENT_CHOICES,
        hours_choices=HOURS_CHOICES,
        ingest_json=ingest.model_dump(mode="json"),
        late_allowance=LATE_ALLOWANCE.total_seconds(),
    )
