"""Adoption over time in one project: a weekly series per feature and a cohort table.

Weeks run Monday to Sunday in UTC and count whole days; the first and last weeks of a window
may be partial (`days` says how many of their days were measured). A feature's weeks start on
the day it went live on the project, as every other measure does (measures.py). Read from the
month rollups (a bitmask of days per device), so a 90-day window reads a few thousand rows.

- weekly: devices that used the feature in the week ÷ devices that reported in it, with the
  95 % Wilson interval.
- cohorts: devices grouped by the week of their first report in the project; for each later
  week, the share of the cohort's devices reporting that week that used the feature.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import psycopg
from pydantic import BaseModel, Field

from services.analytics.measures import FeatureMeasures
from services.analytics.recommend import wilson
from services.core.windows import Window

WEEK = timedelta(days=7)

# (feature, week, cohort) → devices reporting that week, and of them devices using the feature.
WEEKLY = """
WITH bounds AS (
    SELECT * FROM unnest(%(keys)s::text[], %(firsts)s::date[]) AS b(feature_key, first_day)
), weeks AS (
    SELECT s.first_day, w::date AS week, greatest(w::date, s.first_day) AS a,
           least(w::date + 7, %(end)s::date) AS b
    FROM (SELECT DISTINCT first_day FROM bounds) s,
         generate_series(date_trunc('week', s.first_day::timestamp), %(last)s::timestamp,
                         interval '7 days') w
), first_reports AS (
    -- the lowest set bit of a month's day mask is the device's first day in it
    SELECT DISTINCT ON (device_id) device_id,
           date_trunc('week', (month + bits_set(((days & -days) - 1)::bigint))::timestamp)::date
               AS cohort
    FROM device_monthly WHERE project_id = %(project)s AND days <> 0
    ORDER BY device_id, month
), reporting AS (
    SELECT DISTINCT w.first_day, w.week, m.device_id
    FROM device_monthly m JOIN weeks w
      ON w.a < (m.month + interval '1 month')::date AND w.b > m.month
    WHERE m.project_id = %(project)s AND m.month >= %(first_month)s::date
      AND m.month <= %(last)s::date
      AND m.days & bit_range(greatest(w.a - m.month, 0), least(w.b - m.month, 31)) <> 0
), using_ AS (
    SELECT DISTINCT u.feature_key, w.week, u.device_id
    FROM usage_monthly u JOIN bounds b USING (feature_key)
    JOIN weeks w ON w.first_day = b.first_day
     AND w.a < (u.month + interval '1 month')::date AND w.b > u.month
    WHERE u.project_id = %(project)s AND u.month >= %(first_month)s::date
      AND u.month <= %(last)s::date
      AND u.days & bit_range(greatest(w.a - u.month, 0), least(w.b - u.month, 31)) <> 0
)
SELECT b.feature_key, r.week, f.cohort, count(*)::int, count(u.device_id)::int
FROM bounds b JOIN reporting r ON r.first_day = b.first_day
JOIN first_reports f ON f.device_id = r.device_id
LEFT JOIN using_ u ON u.feature_key = b.feature_key AND u.week = r.week
                  AND u.device_id = r.device_id
GROUP BY 1, 2, 3
"""


class WeekPoint(BaseModel):
    week: date = Field(description="the Monday the week starts on (UTC)")
    days: int = Field(description="days of the week measured (fewer at the window's edges)")
    devices_reporting: int
    devices_using: int
    adoption: float
    adoption_low: float = Field(description="lower bound of the 95 % Wilson interval")
    adoption_high: float = Field(description="upper bound of the 95 % Wilson interval")


class CohortCell(BaseModel):
    weeks_since: int = Field(description="weeks after the cohort's first week (0: that week)")
    devices_reporting: int = Field(description="of the cohort, devices reporting that week")
    devices_using: int = Field(description="of those, devices that used the feature")
    share: float


class Cohort(BaseModel):
    cohort: date = Field(description="the week (its Monday) the devices first reported in")
    devices: int = Field(description="devices whose first report fell in that week")
    cells: list[CohortCell]


class FeatureAdoption(BaseModel):
    feature_key: str
    weekly: list[WeekPoint]
    cohorts: list[Cohort] = Field(
        description="devices that first reported within the series' weeks, by that week"
    )


class ProjectAdoption(BaseModel):
    project_id: int
    since: datetime
    until: datetime
    features: list[FeatureAdoption]


def _day_after_end(until: datetime) -> date:
    """The day after the last day the window touches (its end is exclusive)."""
    return (until.astimezone(UTC) - timedelta(microseconds=1)).date() + timedelta(days=1)


def project_adoption(
    conn: psycopg.Connection, project_id: int, window: Window, features: Iterable[FeatureMeasures]
) -> ProjectAdoption:
    """The weekly series and cohorts of these measured features of a project, each from the
    day it went live (as its measures are)."""
    end = _day_after_end(window.until)
    firsts = {
        f.feature_key: max(f.measured_since.astimezone(UTC).date(), f.live_since or date.min)
        for f in features
        if f.measured_days > 0
    }
    out = ProjectAdoption(
        project_id=project_id, since=window.since, until=window.until, features=[]
    )
    if not firsts:
        return out
    params = {
        "project": project_id,
        "keys": list(firsts),
        "firsts": list(firsts.values()),
        "end": end,
        "last": end - timedelta(days=1),
        "first_month": min(firsts.values()).replace(day=1),
    }
    counts: dict[str, dict[date, dict[date, tuple[int, int]]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for key, week, cohort, reporting, using in conn.execute(WEEKLY, params):
        counts[key][week][cohort] = (reporting, using)
    for key, first in firsts.items():
        weeks = counts.get(key, {})
        weekly = []
        for week in sorted(weeks):
            reporting = sum(n for n, _ in weeks[week].values())
            using = sum(u for _, u in weeks[week].values())
            interval = wilson(using, reporting)
            weekly.append(
                WeekPoint(
                    week=week,
                    days=(min(week + WEEK, end) - max(week, first)).days,
                    devices_reporting=reporting,
                    devices_using=using,
                    adoption=interval.share,
                    adoption_low=interval.low,
                    adoption_high=interval.high,
                )
            )
        out.features.append(
            FeatureAdoption(feature_key=key, weekly=weekly, cohorts=_cohorts(weeks, first))
        )
    return out


def _cohorts(weeks: dict[date, dict[date, tuple[int, int]]], first: date) -> list[Cohort]:
    """Cohorts that first reported within the series (earlier devices have no week 0 here)."""
    start = first - timedelta(days=first.weekday())
    by_cohort: dict[date, list[CohortCell]] = defaultdict(list)
    for week in sorted(weeks):
        for cohort, (reporting, using) in weeks[week].items():
            if cohort < start or week < cohort:
                continue
            by_cohort[cohort].append(
                CohortCell(
                    weeks_since=(week - cohort).days // 7,
                    devices_reporting=reporting,
                    devices_using=using,
                    share=using / reporting if reporting else 0.0,
                )
            )
    return [
        Cohort(cohort=cohort, devices=cells[0].devices_reporting if cells else 0, cells=cells)
        for cohort, cells in sorted(by_cohort.items())
        if cells and cells[0].weeks_since == 0
    ]
