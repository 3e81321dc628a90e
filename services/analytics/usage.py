"""Per-project feature usage over a window, beside what was delivered."""

from __future__ import annotations

from datetime import UTC, date, datetime

import psycopg
from psycopg.rows import class_row
from pydantic import BaseModel, Field

from services.analytics.windows import Span, feature_events, reporting_devices, using_devices
from services.core.errors import NotFoundError


class FeatureUsage(BaseModel):
    feature_key: str = Field(examples=["remote_unlock"])
    feature_name: str | None = Field(description="catalog name; null when not in the catalog")
    delivery_status: str | None = Field(
        description="delivered / planned / cut, or null for usage of a feature never delivered "
        "to this project"
    )
    events: int = Field(description="uses counted in the window")
    devices_using: int = Field(description="distinct devices that used it in the window")
    last_used_hour: datetime | None = Field(description="start of the last hour with use")


class ProjectUsage(BaseModel):
    project_id: int
    project_name: str
    customer_name: str
    since: datetime
    until: datetime
    devices_total: int = Field(description="active devices provisioned to the project")
    devices_reporting: int = Field(
        description="devices with any stored message in the window (from the hour holding since)"
    )
    features: list[FeatureUsage]


class _Project(BaseModel):
    project_name: str
    customer_name: str
    devices_total: int


PROJECT = """
SELECT p.name AS project_name, c.name AS customer_name,
       (SELECT count(*) FROM devices d WHERE d.project_id = p.id AND d.status = 'active')
           AS devices_total
FROM projects p JOIN customers c ON c.id = p.customer_id
WHERE p.id = %(project)s
"""
# The window starts at the start of the hour holding `since` (this page counts whole hours);
# read from the day and month rollups (windows.py), so any window counts the devices that
# sent a message in it (not the ones whose latest message happens to fall in it).
REPORTING = f"WITH reporting AS ({reporting_devices()}) SELECT count(*)::int FROM reporting"
FEATURES = f"""
WITH per_device AS ({using_devices()}),
events AS ({feature_events()}),
used AS (
    SELECT p.feature_key, coalesce(e.events, 0)::bigint AS events,
           count(*)::int AS devices_using,
           (SELECT max(hour) FROM usage_hourly h
            WHERE h.project_id = %(project)s AND h.feature_key = p.feature_key
              AND h.hour >= %(since)s AND h.hour < %(until)s) AS last_used_hour
    FROM per_device p LEFT JOIN events e USING (project_id, feature_key)
    GROUP BY p.feature_key, e.events
), delivered AS (
    SELECT f.key AS feature_key, f.name AS feature_name, dl.status
    FROM deliveries dl JOIN features f ON f.id = dl.feature_id
    WHERE dl.project_id = %(project)s
)
SELECT coalesce(d.feature_key, u.feature_key) AS feature_key,
       coalesce(d.feature_name, f.name) AS feature_name,
       d.status AS delivery_status,
       coalesce(u.events, 0) AS events,
       coalesce(u.devices_using, 0) AS devices_using,
       u.last_used_hour
FROM delivered d
FULL JOIN used u ON u.feature_key = d.feature_key
LEFT JOIN features f ON f.key = u.feature_key
ORDER BY d.status IS NULL, coalesce(u.events, 0) DESC, 1
"""


DELIVERED_KEYS = """
SELECT f.key FROM deliveries dl JOIN features f ON f.id = dl.feature_id
WHERE dl.project_id = %(project)s AND dl.status = 'delivered'
"""


def delivered_keys(conn: psycopg.Connection, project_id: int) -> set[str]:
    """The features delivered to a project: all of its usage a customer's own staff may see
    (use of anything else is demand, or misconfiguration, for the solution company)."""
    return {key for (key,) in conn.execute(DELIVERED_KEYS, {"project": project_id})}


def project_usage(
    conn: psycopg.Connection,
    project_id: int,
    since: datetime,
    until: datetime,
    *,
    delivered_only: bool = False,
) -> ProjectUsage:
    params = {"project": project_id, "since": since, "until": until}
    with conn.cursor(row_factory=class_row(_Project)) as cur:
        project = cur.execute(PROJECT, params).fetchone()
    if project is None:
        raise NotFoundError(f"project {project_id} not found")
    start = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    hours = {"projects": [project_id], **params, "since": start, **Span.of(start, until).params()}
    reporting = conn.execute(REPORTING, hours).fetchone()
    with conn.cursor(row_factory=class_row(FeatureUsage)) as cur:
        features = cur.execute(FEATURES, hours).fetchall()
    if delivered_only:
        features = [f for f in features if f.delivery_status == "delivered"]
    return ProjectUsage(
        project_id=project_id,
        since=since,
        until=until,
        devices_reporting=int(reporting[0]) if reporting else 0,
        features=features,
        **project.model_dump(),
    )


class DailyUsage(BaseModel):
    feature_key: str
    day: date
    events: int = Field(description="uses counted that UTC day")
    devices_using: int = Field(description="distinct devices that used it that day")


# Whole UTC days overlapping the window, for charts of use over time: events from the
# per-project day totals, distinct devices from the per-device day rows (migration 0007).
DAILY = """
WITH days AS (
    SELECT (%(since)s::timestamptz AT TIME ZONE 'UTC')::date AS first,
           %(until)s::timestamptz AT TIME ZONE 'UTC' AS until
), devices AS (
    SELECT u.day, u.feature_key, count(*)::int AS devices_using
    FROM usage_daily u, days
    WHERE u.project_id = %(project)s AND u.day >= days.first AND u.day::timestamp < days.until
    GROUP BY 1, 2
)
SELECT f.feature_key, f.day, f.events::bigint AS events,
       coalesce(d.devices_using, 0) AS devices_using
FROM feature_daily f CROSS JOIN days
LEFT JOIN devices d ON d.day = f.day AND d.feature_key = f.feature_key
WHERE f.project_id = %(project)s AND f.day >= days.first AND f.day::timestamp < days.until
  AND f.events > 0
ORDER BY 1, 2
"""


def daily_usage(
    conn: psycopg.Connection,
    project_id: int,
    since: datetime,
    until: datetime,
    *,
    delivered_only: bool = False,
) -> list[DailyUsage]:
    """Use per feature and UTC day; days without use are absent."""
    with conn.cursor(row_factory=class_row(DailyUsage)) as cur:
        rows = cur.execute(
            DAILY, {"project": project_id, "since": since, "until": until}
        ).fetchall()
    if delivered_only:
        keys = delivered_keys(conn, project_id)
        rows = [r for r in rows if r.feature_key in keys]
    return rows
