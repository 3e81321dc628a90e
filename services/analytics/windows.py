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


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _ceil_day(moment: datetime) -> date:
    floor = moment.date()
    return floor if _midnight(floor) == moment else floor + DAY


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
            ranges = ((since, min(_midnight(start), until)), (max(_midnight(end), since), until))
        edges = []
        day = since.date()
        while _midnight(day) < until:
            if not start <= day < end:
                lo = max(0, _ceil_hours(since - _midnight(day)))
                hi = min(24, _ceil_hours(until - _midnight(day)))
                if hi > lo:
                    edges.append((day, (1 << hi) - (1 << lo)))
            day += DAY
        return cls(since, until, start, end, tuple(edges), ranges)

    def params(self, prefix: str = "") -> dict[str, Any]:
        (h1a, h1b), (h2a, h2b) = self.hour_ranges
        values = {
            "fs": self.full_start, "fe": self.full_end,
            "fs_month": self.full_start.replace(day=1),
            "edge_days": [d for d, _ in self.edges], "edge_masks": [m for _, m in self.edges],
            "h1a": h1a, "h1b": h1b, "h2a": h2a, "h2b": h2b,
        }  # fmt: skip
        return {f"{prefix}{key}": value for key, value in values.items()}


def _per_device(monthly: str, daily: str, keys: str, where: str, p: str) -> str:
    """Per device (and *keys*): the days of the window it appears on in the rollup."""
    return f"""
    SELECT {keys}, device_id, sum(days)::int AS days FROM (
        SELECT {keys}, device_id,
               bits_set(days & bit_range(greatest(%({p}fs)s::date - month, 0),
                                         least(%({p}fe)s::date - month, 31))) AS days
        FROM {monthly}
        WHERE project_id = ANY(%(projects)s::bigint[]) {where}
          AND month >= %({p}fs_month)s::date AND month < %({p}fe)s::date
        UNION ALL
        SELECT {keys}, device_id, 1
        FROM {daily} JOIN unnest(%({p}edge_days)s::date[], %({p}edge_masks)s::int[])
            AS edge(edge_day, mask) ON day = edge_day
        WHERE project_id = ANY(%(projects)s::bigint[]) {where} AND hours & mask <> 0
    ) days WHERE days > 0 GROUP BY {keys}, device_id"""


def using_devices(prefix: str = "", where: str = "") -> str:
    """(project_id, feature_key, device_id, days): devices that used a feature, with the
    number of days they used it on."""
    return _per_device("usage_monthly", "usage_daily", "project_id, feature_key", where, prefix)


def reporting_devices(prefix: str = "", where: str = "") -> str:
    """(project_id, device_id, days): devices with any stored message, and on how many days."""
    return _per_device("device_monthly", "device_daily", "project_id", where, prefix)


def _additive(table: str, columns: str, keys: str, sums: str, p: str) -> str:
    """Totals over the window from `{table}_daily` (whole days) and `{table}_hourly` (edges)."""
    return f"""
    SELECT {keys}, {sums} FROM (
        SELECT {columns} FROM {table}_daily
        WHERE project_id = ANY(%(projects)s::bigint[])
          AND day >= %({p}fs)s::date AND day < %({p}fe)s::date
        UNION ALL
        SELECT {columns} FROM {table}_hourly
        WHERE project_id = ANY(%(projects)s::bigint[])
          AND (hour >= %({p}h1a)s AND hour < %({p}h1b)s OR hour >= %({p}h2a)s AND hour < %({p}h2b)s)
    ) totals GROUP BY {keys}"""


def feature_events(prefix: str = "") -> str:
    """(project_id, feature_key, events) in the window."""
    return _additive(
        "feature", "project_id, feature_key, events", "project_id, feature_key",
        "sum(events)::bigint AS events", prefix,
    )  # fmt: skip


def project_messages(prefix: str = "") -> str:
    """(project_id, messages, missing) in the window."""
    return _additive(
        "project", "project_id, messages, missing", "project_id",
        "sum(messages)::bigint AS messages, sum(missing)::bigint AS missing", prefix,
    )  # fmt: skip
