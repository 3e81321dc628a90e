"""Per-project feature usage over a window, beside what was delivered."""

from __future__ import annotations

from datetime import date, datetime

import psycopg
from psycopg.rows import class_row
from pydantic import BaseModel, Field

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
    devices_reporting: int = Field(description="devices with any message in the window")
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
REPORTING = """
SELECT count(*) FROM devices d JOIN device_state s ON s.device_id = d.id
WHERE d.project_id = %(project)s AND s.last_seen >= %(since)s AND s.last_seen < %(until)s
"""
FEATURES = """
WITH used AS (
    SELECT feature_key, sum(events)::bigint AS events,
           count(DISTINCT device_id)::int AS devices_using, max(hour) AS last_used_hour
    FROM usage_hourly
    WHERE project_id = %(project)s AND hour >= time_bucket('1 hour', %(since)s::timestamptz)
      AND hour < %(until)s
    GROUP BY feature_key
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


def project_usage(
    conn: psycopg.Connection, project_id: int, since: datetime, until: datetime
) -> ProjectUsage:
    params = {"project": project_id, "since": since, "until": until}
    with conn.cursor(row_factory=class_row(_Project)) as cur:
        project = cur.execute(PROJECT, params).fetchone()
    if project is None:
        raise NotFoundError(f"project {project_id} not found")
    reporting = conn.execute(REPORTING, params).fetchone()
    with conn.cursor(row_factory=class_row(FeatureUsage)) as cur:
        features = cur.execute(FEATURES, params).fetchall()
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


# Whole UTC days overlapping the window, for charts of use over time.
DAILY = """
SELECT feature_key, (time_bucket('1 day', hour))::date AS day, sum(events)::bigint AS events,
       count(DISTINCT device_id)::int AS devices_using
FROM usage_hourly
WHERE project_id = %(project)s
  AND hour >= time_bucket('1 day', %(since)s::timestamptz) AND hour < %(until)s
GROUP BY 1, 2 ORDER BY 1, 2
"""


def daily_usage(
    conn: psycopg.Connection, project_id: int, since: datetime, until: datetime
) -> list[DailyUsage]:
    """Use per feature and UTC day; days without use are absent."""
    with conn.cursor(row_factory=class_row(DailyUsage)) as cur:
        return cur.execute(
            DAILY, {"project": project_id, "since": since, "until": until}
        ).fetchall()
