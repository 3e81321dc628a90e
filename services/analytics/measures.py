"""Delivered vs. used, per project and feature over a window — read from the rollups only.

Definitions (also in docs/analytics.md, in a PM's words):
- reporting devices: devices of the project that sent any message in the window. Silent
  devices are counted apart and never lower adoption.
- adoption: devices that used the feature ÷ reporting devices.
- frequency: uses per using device per day of the window.
- stickiness: device-days with use ÷ device-days reporting.
- trend: adoption now minus adoption in the previous window of the same length.
- completeness: messages received ÷ (received + missing), where missing counts the sequence
  numbers devices skipped (ingest tracks them message by message, across reboots).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import psycopg
from pydantic import BaseModel, Field

from services.core.errors import NotFoundError


class ProjectContext(BaseModel):
    project_id: int
    project_name: str
    customer_id: int
    customer_name: str
    tier: str
    industry: str
    lifecycle_stage: str
    go_live_date: date | None
    devices_total: int = Field(description="active devices provisioned to the project")


class Coverage(BaseModel):
    devices_reporting: int = Field(description="devices with any message in the window")
    devices_silent: int = Field(description="active devices with no message in the window")
    reporting_share: float = Field(description="devices_reporting ÷ devices_total")
    device_days_reporting: int
    completeness: float | None = Field(
        description="messages received ÷ expected from sequence numbers; null without data"
    )


class FeatureMeasures(BaseModel):
    feature_key: str
    feature_name: str | None
    delivery_status: str | None = Field(description="null: used but never delivered here")
    devices_using: int
    events: int
    adoption: float = Field(description="devices using ÷ devices reporting (0..1)")
    frequency: float = Field(description="uses per using device per day")
    stickiness: float = Field(description="device-days with use ÷ device-days reporting")
    adoption_previous: float | None = Field(description="adoption in the previous window")
    trend: float | None = Field(description="adoption − adoption_previous (null without data)")
    first_used: datetime | None = Field(description="first use ever (hour)")
    days_to_first_use: float | None = Field(description="from go-live to first use")
    last_used: datetime | None = Field(description="last use in or before the window (hour)")


class ProjectMeasures(BaseModel):
    project: ProjectContext
    since: datetime
    until: datetime
    coverage: Coverage
    features: list[FeatureMeasures]


CONTEXT = """
SELECT p.id AS project_id, p.name AS project_name, c.id AS customer_id, c.name AS customer_name,
       c.tier, c.industry, c.lifecycle_stage, p.go_live_date,
       (SELECT count(*) FROM devices d WHERE d.project_id = p.id AND d.status = 'active')::int
           AS devices_total
FROM projects p JOIN customers c ON c.id = p.customer_id WHERE p.id = %(project)s
"""
COVERAGE = """
SELECT count(DISTINCT device_id)::int,
       count(DISTINCT (device_id, date_trunc('day', hour, 'UTC')))::int,
       sum(messages)::bigint, (sum(messages) + greatest(sum(missing), 0))::bigint
FROM device_hourly
WHERE project_id = %(project)s AND hour >= %(since)s AND hour < %(until)s
"""
USAGE = """
WITH per_device AS (
    SELECT feature_key, device_id, sum(events) AS events,
           count(DISTINCT date_trunc('day', hour, 'UTC')) AS use_days
    FROM usage_hourly
    WHERE project_id = %(project)s AND hour >= %(since)s AND hour < %(until)s
    GROUP BY 1, 2
)
SELECT feature_key, count(*)::int, sum(events)::bigint, sum(use_days)::bigint
FROM per_device GROUP BY 1
"""
PREVIOUS = """
SELECT feature_key, count(DISTINCT device_id)::int FROM usage_hourly
WHERE project_id = %(project)s AND hour >= %(prev)s AND hour < %(since)s GROUP BY 1
"""
PREVIOUS_REPORTING = """
SELECT count(DISTINCT device_id)::int FROM device_hourly
WHERE project_id = %(project)s AND hour >= %(prev)s AND hour < %(since)s
"""
FIRST_LAST = """
SELECT feature_key, min(hour), max(hour) FILTER (WHERE hour < %(until)s)
FROM usage_hourly WHERE project_id = %(project)s GROUP BY 1
"""
CATALOG = """
SELECT f.key, f.name, dl.status
FROM features f LEFT JOIN deliveries dl ON dl.feature_id = f.id AND dl.project_id = %(project)s
WHERE dl.project_id IS NOT NULL OR f.key = ANY(%(used)s)
"""


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime

    @property
    def days(self) -> float:
        return (self.until - self.since) / timedelta(days=1)

    @property
    def previous(self) -> datetime:
        return self.since - (self.until - self.since)


def _days_since(day: date | None, moment: datetime | None) -> float | None:
    if day is None or moment is None:
        return None
    start = datetime(day.year, day.month, day.day, tzinfo=moment.tzinfo)
    return (moment - start) / timedelta(days=1)


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def project_measures(conn: psycopg.Connection, project_id: int, window: Window) -> ProjectMeasures:
    params = {"project": project_id, "since": window.since, "until": window.until,
              "prev": window.previous}  # fmt: skip
    with conn.cursor() as cur:
        cur.row_factory = psycopg.rows.dict_row  # type: ignore[assignment]
        row = cur.execute(CONTEXT, params).fetchone()
    if row is None:
        raise NotFoundError(f"project {project_id} not found")
    context = ProjectContext.model_validate(row)
    reporting, device_days, received, expected = conn.execute(COVERAGE, params).fetchone() or (
        0, 0, None, None,
    )  # fmt: skip
    coverage = Coverage(
        devices_reporting=reporting,
        devices_silent=max(0, context.devices_total - reporting),
        reporting_share=_ratio(reporting, context.devices_total),
        device_days_reporting=device_days,
        completeness=min(1.0, received / expected) if received and expected else None,
    )
    usage = {key: (n, events, days) for key, n, events, days in conn.execute(USAGE, params)}
    previous: dict[str, int] = dict(conn.execute(PREVIOUS, params).fetchall())
    prev_row = conn.execute(PREVIOUS_REPORTING, params).fetchone()
    prev_reporting = prev_row[0] if prev_row else 0
    first_last = {key: (first, last) for key, first, last in conn.execute(FIRST_LAST, params)}
    catalog = conn.execute(CATALOG, {**params, "used": list(usage)}).fetchall()
    known = {key for key, _, _ in catalog}
    catalog += [(key, None, None) for key in usage if key not in known]
    features = []
    for key, name, status in catalog:
        devices_using, events, use_days = usage.get(key, (0, 0, 0))
        adoption = _ratio(devices_using, reporting)
        adoption_previous = _ratio(previous.get(key, 0), prev_reporting) if prev_reporting else None
        first, last = first_last.get(key, (None, None))
        features.append(
            FeatureMeasures(
                feature_key=key, feature_name=name, delivery_status=status,
                devices_using=devices_using, events=events, adoption=adoption,
                frequency=_ratio(events, devices_using * window.days),
                stickiness=_ratio(use_days, device_days),
                adoption_previous=adoption_previous,
                trend=adoption - adoption_previous if adoption_previous is not None else None,
                first_used=first,
                days_to_first_use=_days_since(context.go_live_date, first),
                last_used=last,
            )
        )  # fmt: skip
    features.sort(key=lambda f: (f.delivery_status is None, -f.adoption, f.feature_key))
    return ProjectMeasures(
        project=context, since=window.since, until=window.until, coverage=coverage,
        features=features,
    )  # fmt: skip
