"""Reading a window [since, until) from the day and month rollups (migration 0007), exactly.

The measures are defined on hours: an hour belongs to the window when its start is in it.
A window is split into whole UTC days (every hour of the day in the window), read from the
month rows (a bitmask of days per device), and at most two edge days read from the day rows
(a bitmask of hours per device); additive totals come from the project tables at day grain
plus the edge hours at hour grain. So a 90-day portfolio reads tens of thousands of rows,
however many raw events there are, and gives the same numbers as the hourly rollups.

The SQL fragments below take their parameters from `Span.params(prefix)` plus
``%(projects)s`` (the project ids); several windows can share one statement by prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def midnight(day: date) -> datetime:
    """The start of a UTC day."""
    return datetime.combine(day, time(), tzinfo=UTC)


def _ceil_day(moment: datetime) -> date:
    floor = moment.date()
    return floor if midnight(floor) == moment else floor + DAY


def _ceil_hours(delta: timedelta) -> int:
    return -int(-delta // HOUR)


@dataclass(frozen=True)
class Span:
    """How a window is read: whole days [full_start, full_end), edge days with hour masks,
    and the edge hours as two [start, end) ranges."""

    since: datetime
    until: datetime
    full_start: date
    full_end: date
    edges: tuple[tuple[date, int], ...]
    hour_ranges: tuple[tuple[datetime, datetime], tuple[datetime, datetime]]

    @classmethod
    def of(cls, since: datetime, until: datetime) -> Span:
        since, until = since.astimezone(UTC), until.astimezone(UTC)
        # day D is whole when D >= since and its last hour D + 23h starts before until
        start, end = _ceil_day(since), _ceil_day(until - 23 * HOUR)
        if end <= start:
            start = end = _ceil_day(since)
            ranges = ((since, until), (until, until))
        else:
            ranges = ((since, min(midnight(start), until)), (max(midnight(end), since), until))
        edges = []
        day = since.date()
        while midnight(day) < until:
            if not start <= day < end:
                lo = max(0, _ceil_hours(since - midnight(day)))
                hi = min(24, _ceil_hours(until - midnight(day)))
                if hi > lo:
                    edges.append((day, (1 << hi) - (1 << lo)))
            day += DAY
        return cls(since, until, start, end, tuple(edges), ranges)

    def params(self, prefix: str = "") -> dict[str, Any]:
        (h1a, h1b), (h2a, h2b) = self.hour_ranges
        values = {
            "fs": self.full_start,
            "fe": self.full_end,
            "fs_month": self.full_start.replace(day=1),
            "edge_days": [d for d, _ in self.edges],
            "edge_masks": [m for _, m in self.edges],
            "h1a": h1a,
            "h1b": h1b,
            "h2a": h2a,
            "h2b": h2b,
        }
        return {f"{prefix}{key}": value for key, value in values.items()}


# A lower bound on days, per row of a joined segment relation (see `segments`): a feature
# measured only from the day it went live. NULL: the whole window.
NO_BOUND = "NULL::date"


def _bound(lo: str) -> str:
    return f"coalesce({lo}, '-infinity'::date)"


def _per_device(
    monthly: str,
    daily: str,
    keys: str,
    where: str,
    p: str,
    *,
    joins: str = "",
    lo: str = NO_BOUND,
) -> str:
    """Per device (and *keys*): the days of the window, from day *lo* on, it appears on in
    the rollup. *joins* may bring in the relation that *lo* is read from."""
    bound = _bound(lo)
    return f"""
    SELECT {keys}, device_id, sum(days)::int AS days FROM (
        SELECT {keys}, device_id,
               bits_set(days & bit_range(greatest(greatest(%({p}fs)s::date, {bound}) - month, 0),
                                         least(%({p}fe)s::date - month, 31))) AS days
        FROM {monthly} {joins}
        WHERE project_id = ANY(%(projects)s::bigint[]) {where}
          AND month >= %({p}fs_month)s::date AND month < %({p}fe)s::date
        UNION ALL
        SELECT {keys}, device_id, 1
        FROM {daily} {joins} JOIN unnest(%({p}edge_days)s::date[], %({p}edge_masks)s::int[])
            AS edge(edge_day, mask) ON day = edge_day
        WHERE project_id = ANY(%(projects)s::bigint[]) {where} AND hours & mask <> 0
          AND day >= {bound}
    ) days WHERE days > 0 GROUP BY {keys}, device_id"""


# The parts of the window that are measured (docs/analytics.md, "Maturity"): per project its
# default lower bound (go-live), per delivered feature its own (the later of go-live and the
# delivery), and every distinct (project, bound) for the devices reporting over each part.
# Bounds are whole UTC days, NULL for "before the window". A feature's bound is never before
# its project's, so a missing or NULL feature bound falls back to the project's.
PROJECT_BOUNDS = (
    "JOIN unnest(%(bound_project)s::bigint[], %(bound_day)s::date[]) AS pb(project_id, project_lo)"
    " USING (project_id)"
)
FEATURE_BOUNDS = (
    PROJECT_BOUNDS + " LEFT JOIN unnest(%(fbound_project)s::bigint[], %(fbound_feature)s::text[],"
    " %(fbound_day)s::date[]) AS fb(project_id, feature_key, feature_lo)"
    " USING (project_id, feature_key)"
)
FEATURE_LO = "coalesce(feature_lo, project_lo)"
SEGMENTS = (
    "JOIN unnest(%(seg_project)s::bigint[], %(seg_day)s::date[]) AS seg(project_id, seg_lo)"
    " USING (project_id)"
)


def using_devices(prefix: str = "", where: str = "", *, bounded: bool = False) -> str:
    """(project_id, feature_key, device_id, days): devices that used a feature, with the
    number of days they used it on; *bounded*: only from the day the feature went live."""
    joins, lo = (FEATURE_BOUNDS, FEATURE_LO) if bounded else ("", NO_BOUND)
    return _per_device(
        "usage_monthly",
        "usage_daily",
        "project_id, feature_key",
        where,
        prefix,
        joins=joins,
        lo=lo,
    )


def enabled_devices(prefix: str = "", where: str = "") -> str:
    """(project_id, feature_key, device_id, days): devices that reported a feature enabled
    (or, under ENABLED_REPORTED, their list at all), from the day the feature went live."""
    return _per_device(
        "enabled_monthly",
        "enabled_daily",
        "project_id, feature_key",
        where,
        prefix,
        joins=FEATURE_BOUNDS,
        lo=FEATURE_LO,
    )


def reporting_devices(prefix: str = "", where: str = "") -> str:
    """(project_id, device_id, days): devices with any stored message, and on how many days."""
    return _per_device("device_monthly", "device_daily", "project_id", where, prefix)


def reporting_by_segment(
    monthly: str = "device_monthly", daily: str = "device_daily", where: str = ""
) -> str:
    """(project_id, seg_lo, device_id, days): devices with any stored message (or any row of
    *monthly* / *daily*) in each measured part of the window, and on how many days."""
    return _per_device(monthly, daily, "project_id, seg_lo", where, "", joins=SEGMENTS, lo="seg_lo")


def _additive(
    table: str,
    columns: str,
    keys: str,
    sums: str,
    p: str,
    *,
    joins: str = "",
    lo: str = NO_BOUND,
) -> str:
    """Totals over the window from `{table}_daily` (whole days) and `{table}_hourly` (edges),
    from day *lo* on."""
    bound = _bound(lo)
    return f"""
    SELECT {keys}, {sums} FROM (
        SELECT {columns} FROM {table}_daily {joins}
        WHERE project_id = ANY(%(projects)s::bigint[])
          AND day >= %({p}fs)s::date AND day < %({p}fe)s::date AND day >= {bound}
        UNION ALL
        SELECT {columns} FROM {table}_hourly {joins}
        WHERE project_id = ANY(%(projects)s::bigint[])
          AND (hour >= %({p}h1a)s AND hour < %({p}h1b)s OR hour >= %({p}h2a)s AND hour < %({p}h2b)s)
          AND hour >= ({bound}::timestamp AT TIME ZONE 'UTC')
    ) totals GROUP BY {keys}"""


def feature_events(prefix: str = "", *, bounded: bool = False) -> str:
    """(project_id, feature_key, events) in the window (*bounded*: from the feature's go-live)."""
    joins, lo = (FEATURE_BOUNDS, FEATURE_LO) if bounded else ("", NO_BOUND)
    return _additive(
        "feature",
        "project_id, feature_key, events",
        "project_id, feature_key",
        "sum(events)::bigint AS events",
        prefix,
        joins=joins,
        lo=lo,
    )


def project_messages(prefix: str = "", *, bounded: bool = False) -> str:
    """(project_id, messages, missing) in the window (*bounded*: from the project's go-live)."""
    joins, lo = (PROJECT_BOUNDS, "project_lo") if bounded else ("", NO_BOUND)
    return _additive(
        "project",
        "project_id, messages, missing",
        "project_id",
        "sum(messages)::bigint AS messages, sum(missing)::bigint AS missing",
        prefix,
        joins=joins,
        lo=lo,
    )
