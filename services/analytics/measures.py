"""Delivered vs. used, per project and feature over a window — read from the rollups only
(day and month grain with hour-exact edges, windows.py; every project in one pass).

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

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import psycopg
from psycopg.rows import class_row
from pydantic import BaseModel, Field

from services.analytics.windows import (
    Span,
    feature_events,
    project_messages,
    reporting_devices,
    using_devices,
)
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


CONTEXTS = """
SELECT p.id AS project_id, p.name AS project_name, c.id AS customer_id, c.name AS customer_name,
       c.tier, c.industry, c.lifecycle_stage, p.go_live_date,
       (SELECT count(*) FROM devices d WHERE d.project_id = p.id AND d.status = 'active')::int
           AS devices_total
FROM projects p JOIN customers c ON c.id = p.customer_id
WHERE p.id = ANY(%(projects)s::bigint[]) ORDER BY p.id
"""
# Every query below covers all the projects asked for at once, from the day and month
# rollups (windows.py): the same numbers as the hourly definitions in the docstring.
COVERAGE = f"""
WITH reporting AS ({reporting_devices()}),
per_project AS (
    SELECT project_id, count(*)::int AS devices, sum(days)::int AS device_days
    FROM reporting GROUP BY 1
), messages AS ({project_messages()})
SELECT p.id, coalesce(r.devices, 0), coalesce(r.device_days, 0), m.messages,
       m.messages + greatest(m.missing, 0)
FROM unnest(%(projects)s::bigint[]) AS p(id)
LEFT JOIN per_project r ON r.project_id = p.id LEFT JOIN messages m ON m.project_id = p.id
"""
USAGE = f"""
WITH per_device AS ({using_devices()}),
used AS (
    SELECT project_id, feature_key, count(*)::int AS devices, sum(days)::bigint AS use_days
    FROM per_device GROUP BY 1, 2
), events AS ({feature_events()})
SELECT u.project_id, u.feature_key, u.devices, coalesce(e.events, 0), u.use_days
FROM used u LEFT JOIN events e USING (project_id, feature_key)
"""
PREVIOUS = f"""
WITH per_device AS ({using_devices("prev_")})
SELECT project_id, feature_key, count(*)::int FROM per_device GROUP BY 1, 2
"""
PREVIOUS_REPORTING = f"""
WITH reporting AS ({reporting_devices("prev_")})
SELECT project_id, count(*)::int FROM reporting GROUP BY 1
"""
# First use ever and last use before the window's end, per project and feature: two index
# probes each into usage_hourly (its key starts with project, feature, hour).
FIRST_LAST = """
SELECT k.project_id, k.feature_key,
       (SELECT min(hour) FROM usage_hourly u
        WHERE u.project_id = k.project_id AND u.feature_key = k.feature_key),
       (SELECT max(hour) FROM usage_hourly u
        WHERE u.project_id = k.project_id AND u.feature_key = k.feature_key
          AND u.hour < %(until)s)
FROM unnest(%(pids)s::bigint[], %(keys)s::text[]) AS k(project_id, feature_key)
"""
DELIVERED = """
SELECT dl.project_id, f.key, f.name, dl.status
FROM deliveries dl JOIN features f ON f.id = dl.feature_id
WHERE dl.project_id = ANY(%(projects)s::bigint[])
"""
FEATURE_NAMES = "SELECT key, name FROM features WHERE key = ANY(%(keys)s)"


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
    measured = measure_projects(conn, [project_id], window)
    if project_id not in measured:
        raise NotFoundError(f"project {project_id} not found")
    return measured[project_id]


def measure_projects(
    conn: psycopg.Connection, project_ids: Sequence[int], window: Window
) -> dict[int, ProjectMeasures]:
    """The measures of every project asked for (unknown ids are left out), in a few
    set-based queries over the rollups."""
    params = {
        "projects": list(project_ids), "until": window.until,
        **Span.of(window.since, window.until).params(),
        **Span.of(window.previous, window.since).params("prev_"),
    }  # fmt: skip
    with conn.cursor(row_factory=class_row(ProjectContext)) as cur:
        contexts = {c.project_id: c for c in cur.execute(CONTEXTS, params)}
    coverage = {
        pid: (reporting, device_days, received, expected)
        for pid, reporting, device_days, received, expected in conn.execute(COVERAGE, params)
    }
    usage: dict[int, dict[str, tuple[int, int, int]]] = defaultdict(dict)
    for pid, key, n, events, days in conn.execute(USAGE, params):
        usage[pid][key] = (n, events, days)
    previous: dict[int, dict[str, int]] = defaultdict(dict)
    for pid, key, n in conn.execute(PREVIOUS, params):
        previous[pid][key] = n
    prev_reporting: dict[int, int] = dict(conn.execute(PREVIOUS_REPORTING, params).fetchall())
    catalog: dict[int, dict[str, tuple[str | None, str | None]]] = defaultdict(dict)
    for pid, key, name, status in conn.execute(DELIVERED, params):
        catalog[pid][key] = (name, status)
    used_keys = sorted({key for features in usage.values() for key in features})
    names: dict[str, str] = dict(conn.execute(FEATURE_NAMES, {"keys": used_keys}).fetchall())
    for pid, features in usage.items():
        for key in features:
            catalog[pid].setdefault(key, (names.get(key), None))
    pairs = [(pid, key) for pid in contexts for key in sorted(catalog[pid])]
    first_last = {
        (pid, key): (first, last)
        for pid, key, first, last in conn.execute(
            FIRST_LAST, {"pids": [p for p, _ in pairs], "keys": [k for _, k in pairs],
                         "until": window.until},
        )
    }  # fmt: skip
    return {
        pid: _measures(
            context, window, covered=coverage.get(pid, (0, 0, None, None)), usage=usage[pid],
            previous=previous[pid], prev_reporting=prev_reporting.get(pid, 0),
            catalog=catalog[pid], first_last=first_last,
        )
        for pid, context in contexts.items()
    }  # fmt: skip


def _measures(
    context: ProjectContext, window: Window, *, covered: tuple[int, int, int | None, int | None],
    usage: dict[str, tuple[int, int, int]], previous: dict[str, int], prev_reporting: int,
    catalog: dict[str, tuple[str | None, str | None]],
    first_last: dict[tuple[int, str], tuple[datetime | None, datetime | None]],
) -> ProjectMeasures:  # fmt: skip
    reporting, device_days, received, expected = covered
    coverage = Coverage(
        devices_reporting=reporting,
        devices_silent=max(0, context.devices_total - reporting),
        reporting_share=_ratio(reporting, context.devices_total),
        device_days_reporting=device_days,
        completeness=min(1.0, received / expected) if received and expected else None,
    )
    features = []
    for key, (name, status) in catalog.items():
        devices_using, events, use_days = usage.get(key, (0, 0, 0))
        adoption = _ratio(devices_using, reporting)
        adoption_previous = _ratio(previous.get(key, 0), prev_reporting) if prev_reporting else None
        first, last = first_last.get((context.project_id, key), (None, None))
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
