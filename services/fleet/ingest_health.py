"""Ingest health from the stored messages: the last minutes' receive rate and lag (live and
late apart), and completeness per project from the sequence gaps in `device_hourly`.

Raw `usage_events` and `metric_samples` are read only bounded by receive time. What the ingest
process says about itself is in ingest_metrics.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.rows import class_row
from pydantic import BaseModel, Field

# Receive-time queries look at device times at most this much older than the lookback, so
# they read one or two chunks; messages arriving later than that (history imports, a device
# catching up after a long spell offline) are not in the recent rate and lag.
LATE_ALLOWANCE = timedelta(hours=1)
# A message received more than this after its device time is *late*: replayed (a simulator or
# device catching up, history sent over MQTT), held back (a device that buffered while
# offline) or queued (a broker or ingest backlog). Late messages are counted apart: their
# age says nothing about how fast live traffic flows, and would swamp the lag figures.
LIVE_LAG = timedelta(minutes=5)


class MinuteCount(BaseModel):
    minute: datetime
    messages: int


class RecentIngest(BaseModel):
    since: datetime
    until: datetime
    messages: int = Field(description="usage and telemetry messages received in the window")
    per_second: float
    per_minute: list[MinuteCount] = Field(description="every minute of the window, oldest first")
    lag_p50_seconds: float | None = Field(
        description="receive time − device time, median, of the messages received within "
        "live_lag_seconds of their device time (late ones are counted apart)"
    )
    lag_p95_seconds: float | None
    lag_max_seconds: float | None
    live_lag_seconds: float = Field(description="the lag beyond which a message counts as late")
    late_messages: int = Field(
        default=0,
        description="messages received more than live_lag_seconds after their device time: "
        "replayed, buffered by a device while offline, or queued behind a backlog",
    )
    late_lag_max_seconds: float | None = Field(
        default=None, description="the largest lag of a late message"
    )


class ProjectCompleteness(BaseModel):
    project_id: int
    project_name: str
    customer_name: str
    devices_reporting: int
    received: int
    missing: int = Field(description="sequence numbers skipped, net of gaps filled late")
    completeness: float | None = Field(description="received ÷ (received + missing)")


# One row per stored usage or telemetry message (its reading 0) received in the window.
RECENT_MESSAGES = """
    SELECT received_at, device_time FROM usage_events
    WHERE item = 0 AND received_at >= %(since)s AND received_at < %(until)s
      AND device_time >= %(oldest)s
    UNION ALL
    SELECT received_at, device_time FROM metric_samples
    WHERE item = 0 AND received_at >= %(since)s AND received_at < %(until)s
      AND device_time >= %(oldest)s
"""
PER_MINUTE = f"""
SELECT time_bucket('1 minute', received_at) AS minute, count(*)::int AS messages
FROM ({RECENT_MESSAGES}) recent GROUP BY 1 ORDER BY 1
"""
LAG = f"""
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) FILTER (WHERE lag <= %(live)s) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY lag) FILTER (WHERE lag <= %(live)s) AS p95,
       max(lag) FILTER (WHERE lag <= %(live)s) AS max,
       count(*) FILTER (WHERE lag > %(live)s)::int AS late,
       max(lag) FILTER (WHERE lag > %(live)s) AS late_max
FROM (SELECT extract(epoch FROM received_at - device_time)::float8 AS lag
      FROM ({RECENT_MESSAGES}) recent) lags
"""
COMPLETENESS = """
SELECT p.id AS project_id, p.name AS project_name, c.name AS customer_name,
       count(DISTINCT h.device_id)::int AS devices_reporting,
       coalesce(sum(h.messages), 0)::bigint AS received,
       greatest(coalesce(sum(h.missing), 0), 0)::bigint AS missing
FROM projects p
JOIN customers c ON c.id = p.customer_id
LEFT JOIN device_hourly h ON h.project_id = p.id
     AND h.hour >= time_bucket('1 hour', %(since)s::timestamptz) AND h.hour < %(until)s
GROUP BY p.id, c.id
ORDER BY c.name, p.name, p.id
"""


class _Completeness(BaseModel):
    project_id: int
    project_name: str
    customer_name: str
    devices_reporting: int
    received: int
    missing: int


def recent_ingest(conn: psycopg.Connection, since: datetime, until: datetime) -> RecentIngest:
    """Messages received per minute in [since, until) and their receive − device time, live
    ones and late ones (LIVE_LAG) apart."""
    live = LIVE_LAG.total_seconds()
    params = {"since": since, "until": until, "oldest": since - LATE_ALLOWANCE, "live": live}
    counted: dict[datetime, int] = dict(conn.execute(PER_MINUTE, params).fetchall())
    lag = conn.execute(LAG, params).fetchone()
    p50, p95, worst, late, late_max = lag if lag else (None, None, None, 0, None)
    minutes = []
    minute = since.astimezone(UTC).replace(second=0, microsecond=0)
    while minute < until:
        minutes.append(MinuteCount(minute=minute, messages=counted.get(minute, 0)))
        minute += timedelta(minutes=1)
    total = sum(counted.values())
    return RecentIngest(
        since=since,
        until=until,
        messages=total,
        per_second=total / max((until - since).total_seconds(), 1.0),
        per_minute=minutes,
        lag_p50_seconds=p50,
        lag_p95_seconds=p95,
        lag_max_seconds=worst,
        live_lag_seconds=live,
        late_messages=late,
        late_lag_max_seconds=late_max,
    )


def completeness(
    conn: psycopg.Connection, since: datetime, until: datetime
) -> list[ProjectCompleteness]:
    """Messages received and missed (sequence gaps) per project in hours overlapping the window;
    every project is listed, silent ones with nothing received."""
    with conn.cursor(row_factory=class_row(_Completeness)) as cur:
        rows = cur.execute(COMPLETENESS, {"since": since, "until": until}).fetchall()
    return [
        ProjectCompleteness(
            completeness=r.received / (r.received + r.missing) if r.received else None,
            **r.model_dump(),
        )
        for r in rows
    ]
