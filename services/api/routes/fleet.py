"""Fleet and ingest health as JSON: what the ops pages show, and poll for live refresh."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import psycopg
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from services.accounts.roles import Permission, Principal
from services.api.auth import require, visible_project
from services.api.deps import ConnDep, ReadConnDep, WindowDep
from services.api.errors import NOT_FOUND
from services.api.reads import lag_of
from services.api.routes.crud import ItemId
from services.core.windows import MAX_WINDOW_DAYS
from services.fleet import fleet_health, ingest_health
from services.fleet.ingest_metrics import IngestMetrics, scrape
from services.fleet.replication import ReplicaLag
from services.ingest.quarantine.read import ReasonSummary, reason_summary
from services.registry.models import MAX_BIGINT

router = APIRouter()
FleetReader = Annotated[Principal, Depends(require(Permission.READ_FLEET))]

DEFAULT_STALE_MINUTES = 60
DEFAULT_RECENT_MINUTES = 15
DEFAULT_INGEST_HOURS = 24
StaleMinutes = Annotated[
    int,
    Query(ge=1, le=60 * 24 * 90, description="devices silent for longer than this are listed"),
]
ProjectFilter = Annotated[
    int | None, Query(ge=1, le=MAX_BIGINT, description="only this project's devices")
]
RecentMinutes = Annotated[
    int, Query(ge=1, le=180, description="message rate and lag over the last minutes")
]
IngestHours = Annotated[
    int,
    Query(
        ge=1, le=24 * MAX_WINDOW_DAYS, description="quarantine and completeness over the last hours"
    ),
]


def fleet_for(
    conn: psycopg.Connection, caller: Principal, project: int | None, stale_minutes: int
) -> fleet_health.FleetSummary:
    if project is not None:
        visible_project(conn, caller, project)
    return fleet_health.fleet_summary(
        conn,
        customer_id=caller.customer_scope,
        project_id=project,
        stale_after=timedelta(minutes=stale_minutes),
    )


@router.get(
    "/fleet",
    response_model=fleet_health.FleetSummary,
    responses=NOT_FOUND,
    tags=["fleet"],
    summary="Fleet health: devices online / offline / never seen per project, stale devices, "
    "firmware, battery and signal",
)
def get_fleet(
    conn: ReadConnDep,
    caller: FleetReader,
    project: ProjectFilter = None,
    stale_minutes: StaleMinutes = DEFAULT_STALE_MINUTES,
) -> fleet_health.FleetSummary:
    return fleet_for(conn, caller, project, stale_minutes)


@router.get(
    "/devices/{item_id}/telemetry",
    response_model=fleet_health.DeviceTelemetry,
    responses=NOT_FOUND,
    tags=["fleet"],
    summary="One device's state, its metrics over the window (bucketed) and reporting history",
)
def get_device_telemetry(
    item_id: ItemId, conn: ReadConnDep, caller: FleetReader, window: WindowDep
) -> fleet_health.DeviceTelemetry:
    device = fleet_health.device_detail(conn, item_id, caller.customer_scope)
    return fleet_health.device_telemetry(conn, device, window.since, window.until)


class Quarantine(BaseModel):
    since: datetime
    until: datetime
    total: int
    reasons: list[ReasonSummary] = Field(description="by count; each with its latest message")


class IngestHealth(BaseModel):
    generated_at: datetime
    recent: ingest_health.RecentIngest
    quarantine: Quarantine
    completeness: list[ingest_health.ProjectCompleteness]
    completeness_since: datetime
    ingest_metrics: IngestMetrics = Field(
        description="the ingest process's own counters (duplicates absorbed, …), if reachable"
    )
    replica: ReplicaLag = Field(
        description="how far the read replica these figures come from trails the primary"
    )


def ingest_health_for(  # noqa: PLR0917 - the request's two connections and its choices
    request: Request,
    conn: psycopg.Connection,
    primary: psycopg.Connection,
    minutes: int,
    hours: int,
    now: datetime | None = None,
) -> IngestHealth:
    """Read on *conn* (the replica when it serves); the replica's lag against *primary*."""
    now = now or datetime.now(UTC)
    since = now - timedelta(hours=hours)
    reasons = reason_summary(conn, since, now)
    return IngestHealth(
        generated_at=now,
        recent=ingest_health.recent_ingest(conn, now - timedelta(minutes=minutes), now),
        quarantine=Quarantine(
            since=since, until=now, total=sum(r.count for r in reasons), reasons=reasons
        ),
        completeness=ingest_health.completeness(conn, since, now),
        completeness_since=since,
        ingest_metrics=scrape(request.app.state.settings),
        replica=lag_of(request.app.state.reads, primary),
    )


@router.get(
    "/ingest/health",
    response_model=IngestHealth,
    tags=["ingest"],
    summary="Ingest health: message rate, receive lag, quarantine by reason, completeness per "
    "project, and ingest's own counters",
    dependencies=[Depends(require(Permission.READ_INGEST))],
)
def get_ingest_health(
    request: Request,
    conn: ReadConnDep,
    primary: ConnDep,
    minutes: RecentMinutes = DEFAULT_RECENT_MINUTES,
    hours: IngestHours = DEFAULT_INGEST_HOURS,
) -> IngestHealth:
    return ingest_health_for(request, conn, primary, minutes, hours)
