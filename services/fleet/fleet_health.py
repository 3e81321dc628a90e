"""Fleet health, read from the rollups: devices online, offline and never seen per project,
stale devices, firmware, battery and signal, and one device's telemetry.

Device status comes from `device_state` (current only), reporting volumes and sequence gaps
from `device_hourly`; raw `metric_samples` are read only bounded by time and project or
device, for the latest battery / signal readings and a device's telemetry.

Definitions (the same as the Grafana fleet-health dashboard):
- a device counts when it is active (revoked devices are left out);
- online: its last status message said online; offline: it said offline, or nothing yet but
  it has sent data; never seen: no status and no data at all;
- stale: not heard from for longer than the threshold (never-seen devices are counted apart).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.rows import class_row
from pydantic import BaseModel, Field

from services.core.db import fetch_one

# Battery and signal are each device's latest reading within this long.
LATEST_WITHIN = timedelta(days=1)
# Metric names the simulated devices publish (device_sim/generator.py) for these charts.
BATTERY, SIGNAL = "battery", "rssi"
STALE_LIST_LIMIT = 500
# A telemetry chart holds at most about this many points per metric.
CHART_POINTS = 300
BUCKETS = tuple(
    timedelta(minutes=m) for m in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880)
)


class ProjectFleet(BaseModel):
    project_id: int
    project_name: str
    customer_id: int
    customer_name: str
    devices: int = Field(description="active devices")
    online: int
    offline: int
    never_seen: int


class StaleDevice(BaseModel):
    device_id: int
    serial: str
    project_id: int
    project_name: str
    last_seen: datetime
    silent_seconds: int = Field(description="seconds since last seen, at generated_at")
    online: bool | None = Field(description="what its last status message said")
    firmware: str | None


class FirmwareCount(BaseModel):
    firmware: str = Field(description="reported by the device, else the registry's, else unknown")
    devices: int


class Distribution(BaseModel):
    metric: str
    unit: str | None
    values: list[float] = Field(description="each device's latest reading, by device id")


class FleetTotals(BaseModel):
    devices: int
    online: int
    offline: int
    never_seen: int
    stale: int = Field(description="devices not seen for longer than the threshold")


class FleetSummary(BaseModel):
    generated_at: datetime
    project_id: int | None = Field(description="the project filter, if any")
    stale_after_seconds: int
    latest_within_seconds: int = Field(description="battery and signal: latest reading within")
    totals: FleetTotals
    projects: list[ProjectFleet]
    stale: list[StaleDevice] = Field(
        description=f"longest silent first, at most {STALE_LIST_LIMIT}"
    )
    firmware: list[FirmwareCount]
    battery: Distribution
    signal: Distribution


SCOPE = """
    (%(customer)s::bigint IS NULL OR p.customer_id = %(customer)s)
    AND (%(project)s::bigint IS NULL OR p.id = %(project)s)
"""
PROJECTS = f"""
SELECT p.id AS project_id, p.name AS project_name, c.id AS customer_id,
       c.name AS customer_name,
       count(d.id)::int AS devices,
       count(d.id) FILTER (WHERE s.online IS TRUE)::int AS online,
       count(d.id) FILTER (WHERE s.online IS NOT TRUE
                           AND (s.last_seen IS NOT NULL OR s.online IS NOT NULL))::int AS offline,
       count(d.id) FILTER (WHERE s.last_seen IS NULL AND s.online IS NULL)::int AS never_seen
FROM projects p
JOIN customers c ON c.id = p.customer_id
LEFT JOIN devices d ON d.project_id = p.id AND d.status = 'active'
LEFT JOIN device_state s ON s.device_id = d.id
WHERE {SCOPE}
GROUP BY p.id, c.id
ORDER BY c.name, p.name, p.id
"""
STALE = f"""
SELECT d.id AS device_id, d.serial, d.project_id, p.name AS project_name, s.last_seen,
       s.online, coalesce(s.firmware, d.firmware) AS firmware, count(*) OVER () AS total
FROM devices d
JOIN device_state s ON s.device_id = d.id
JOIN projects p ON p.id = d.project_id
WHERE d.status = 'active' AND s.last_seen < %(cutoff)s AND {SCOPE}
ORDER BY s.last_seen, d.serial
LIMIT %(limit)s
"""
FIRMWARE = f"""
SELECT coalesce(s.firmware, d.firmware, 'unknown') AS firmware, count(*)::int AS devices
FROM devices d
JOIN projects p ON p.id = d.project_id
LEFT JOIN device_state s ON s.device_id = d.id
WHERE d.status = 'active' AND {SCOPE}
GROUP BY 1
ORDER BY 2 DESC, 1
"""
# One index probe per device (newest first on the device's identity index), not a sort of
# every reading of the day: 3,000 devices × 2 days of 5-minute telemetry took 3.5 s per metric
# with DISTINCT ON, and takes a fraction of that this way.
LATEST_READINGS = """
SELECT r.value, r.unit
FROM devices d
CROSS JOIN LATERAL (
    SELECT m.value, m.unit FROM metric_samples m
    WHERE m.device_id = d.id AND m.project_id = d.project_id AND m.name = %(metric)s
      AND m.device_time >= %(since)s
    ORDER BY m.device_time DESC
    LIMIT 1
) r
WHERE d.status = 'active' AND d.project_id = ANY(%(projects)s)
ORDER BY d.id
"""


class _Stale(BaseModel):
    device_id: int
    serial: str
    project_id: int
    project_name: str
    last_seen: datetime
    online: bool | None
    firmware: str | None
    total: int


def fleet_summary(
    conn: psycopg.Connection,
    *,
    customer_id: int | None,
    project_id: int | None,
    stale_after: timedelta,
    now: datetime | None = None,
) -> FleetSummary:
    """Per-project device status, stale devices, firmware, battery and signal; a customer's
    projects only when customer_id is set, one project when project_id is."""
    now = now or datetime.now(UTC)
    scope = {"customer": customer_id, "project": project_id}
    projects = project_fleet(conn, customer_id=customer_id, project_id=project_id)
    with conn.cursor(row_factory=class_row(_Stale)) as cur:
        stale_rows = cur.execute(
            STALE, {**scope, "cutoff": now - stale_after, "limit": STALE_LIST_LIMIT}
        ).fetchall()
    with conn.cursor(row_factory=class_row(FirmwareCount)) as cur:
        firmware = cur.execute(FIRMWARE, scope).fetchall()
    project_ids = [p.project_id for p in projects]
    stale = [
        StaleDevice(
            silent_seconds=int((now - row.last_seen).total_seconds()),
            **row.model_dump(exclude={"total"}),
        )
        for row in stale_rows
    ]
    return FleetSummary(
        generated_at=now,
        project_id=project_id,
        stale_after_seconds=int(stale_after.total_seconds()),
        latest_within_seconds=int(LATEST_WITHIN.total_seconds()),
        totals=FleetTotals(
            devices=sum(p.devices for p in projects),
            online=sum(p.online for p in projects),
            offline=sum(p.offline for p in projects),
            never_seen=sum(p.never_seen for p in projects),
            stale=stale_rows[0].total if stale_rows else 0,
        ),
        projects=projects,
        stale=stale,
        firmware=firmware,
        battery=latest_readings(conn, project_ids, BATTERY, now - LATEST_WITHIN),
        signal=latest_readings(conn, project_ids, SIGNAL, now - LATEST_WITHIN),
    )


def project_fleet(
    conn: psycopg.Connection, *, customer_id: int | None, project_id: int | None = None
) -> list[ProjectFleet]:
    """Device status counts per project (every project of the scope, even without devices)."""
    with conn.cursor(row_factory=class_row(ProjectFleet)) as cur:
        return cur.execute(PROJECTS, {"customer": customer_id, "project": project_id}).fetchall()


def latest_readings(
    conn: psycopg.Connection, project_ids: list[int], metric: str, since: datetime
) -> Distribution:
    """Each active device's latest reading of *metric* since *since*."""
    rows = (
        conn.execute(
            LATEST_READINGS, {"projects": project_ids, "metric": metric, "since": since}
        ).fetchall()
        if project_ids
        else []
    )
    units = {unit for _, unit in rows if unit}
    return Distribution(
        metric=metric,
        unit=units.pop() if len(units) == 1 else None,
        values=[float(value) for value, _ in rows],
    )


# --- one device ---------------------------------------------------------------------------


class DeviceDetail(BaseModel):
    id: int
    serial: str
    project_id: int
    project_name: str
    customer_id: int
    customer_name: str
    model: str | None
    firmware: str | None = Field(description="as registered")
    reported_firmware: str | None = Field(description="as the device last reported it")
    site: str | None
    tags: list[str]
    status: str = Field(description="active or revoked")
    created_at: datetime
    revoked_at: datetime | None
    online: bool | None = Field(description="what its last status message said; null: none")
    online_since: datetime | None = Field(description="time of its last status change")
    last_seen: datetime | None
    last_seq: int | None = Field(description="sequence number of its latest message")

    @property
    def state(self) -> str:
        """online / offline / never seen, as the fleet counts them."""
        if self.online:
            return "online"
        if self.online is None and self.last_seen is None:
            return "never seen"
        return "offline"


DEVICE = """
SELECT d.id, d.serial, d.project_id, p.name AS project_name, p.customer_id,
       c.name AS customer_name, d.model, d.firmware, s.firmware AS reported_firmware, d.site,
       d.tags, d.status, d.created_at, d.revoked_at, s.online, s.online_since, s.last_seen,
       s.last_seq
FROM devices d
JOIN projects p ON p.id = d.project_id
JOIN customers c ON c.id = p.customer_id
LEFT JOIN device_state s ON s.device_id = d.id
WHERE d.id = %(device)s AND (%(customer)s::bigint IS NULL OR p.customer_id = %(customer)s)
"""


def device_detail(
    conn: psycopg.Connection, device_id: int, customer_id: int | None
) -> DeviceDetail:
    """The device with its project and state; another customer's device is not found."""
    params = {"device": device_id, "customer": customer_id}
    return fetch_one(conn, DEVICE, params, DeviceDetail, f"device {device_id}")


# A flapping device can report thousands of statuses; the page shows the latest ones.
STATUS_LIMIT = 200


class MetricPoint(BaseModel):
    t: datetime = Field(description="start of the bucket (device time)")
    avg: float
    min: float
    max: float
    samples: int


class MetricSeries(BaseModel):
    name: str
    unit: str | None
    points: list[MetricPoint]


class ReportingHour(BaseModel):
    hour: datetime
    messages: int = Field(description="messages stored with a device time in this hour")
    missing: int = Field(description="sequence numbers skipped (negative: a gap filled late)")


class StatusChange(BaseModel):
    at: datetime = Field(description="the device's time of the status (or its arrival)")
    online: bool
    firmware: str | None
    received_at: datetime


class DeviceTelemetry(BaseModel):
    device: DeviceDetail
    since: datetime
    until: datetime
    bucket_seconds: int = Field(description="readings are averaged over buckets this long")
    metrics: list[MetricSeries]
    reporting: list[ReportingHour] = Field(
        description="messages and sequence gaps per hour: the device's reporting history"
    )
    status_history: list[StatusChange] = Field(
        description=f"online / offline statuses in the window, newest first (at most "
        f"{STATUS_LIMIT})"
    )


TELEMETRY = """
SELECT name, max(unit) AS unit, time_bucket(%(bucket)s, device_time) AS t, avg(value) AS avg,
       min(value) AS min, max(value) AS max, count(*)::int AS samples
FROM metric_samples
WHERE project_id = %(project)s AND device_id = %(device)s
  AND device_time >= %(since)s AND device_time < %(until)s
GROUP BY name, t
ORDER BY name, t
"""
STATUS_HISTORY = """
SELECT at, online, firmware, received_at FROM device_status_history
WHERE device_id = %(device)s AND at >= %(since)s AND at < %(until)s
ORDER BY at DESC LIMIT %(limit)s
"""
REPORTING = """
SELECT hour, messages, missing
FROM device_hourly
WHERE device_id = %(device)s
  AND hour >= time_bucket('1 hour', %(since)s::timestamptz) AND hour < %(until)s
ORDER BY hour
"""


class _Bucket(BaseModel):
    name: str
    unit: str | None
    t: datetime
    avg: float
    min: float
    max: float
    samples: int


def bucket_for(span: timedelta) -> timedelta:
    """The smallest round bucket that keeps a chart of *span* within CHART_POINTS points."""
    return next((b for b in BUCKETS if span / b <= CHART_POINTS), BUCKETS[-1])


def device_telemetry(
    conn: psycopg.Connection, device: DeviceDetail, since: datetime, until: datetime
) -> DeviceTelemetry:
    bucket = bucket_for(until - since)
    params = {
        "project": device.project_id,
        "device": device.id,
        "since": since,
        "until": until,
        "bucket": bucket,
    }
    series: dict[str, MetricSeries] = {}
    with conn.cursor(row_factory=class_row(_Bucket)) as cur:
        for row in cur.execute(TELEMETRY, params):
            entry = series.setdefault(row.name, MetricSeries(name=row.name, unit=None, points=[]))
            entry.unit = entry.unit or row.unit
            entry.points.append(MetricPoint(**row.model_dump(exclude={"name", "unit"})))
    with conn.cursor(row_factory=class_row(ReportingHour)) as cur:
        reporting = cur.execute(REPORTING, params).fetchall()
    with conn.cursor(row_factory=class_row(StatusChange)) as cur:
        statuses = cur.execute(STATUS_HISTORY, {**params, "limit": STATUS_LIMIT}).fetchall()
    return DeviceTelemetry(
        device=device,
        since=since,
        until=until,
        bucket_seconds=int(bucket.total_seconds()),
        metrics=list(series.values()),
        reporting=reporting,
        status_history=statuses,
    )
