"""Classifying a batch of raw messages and writing it in one transaction.

Valid readings are COPYed into a staging table and moved with ``ON CONFLICT DO NOTHING``,
so a redelivered message adds nothing; the rollups (hourly, daily, monthly; migrations 0002,
0004, 0007) are fed from the rows that were really inserted, in the same transaction.
Rejected messages go to the quarantine.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

import psycopg
from psycopg.types.string import BytesBinaryDumper

from services.core.payloads import (
    ENABLED_REPORTED,
    QUARANTINE_KEEP_BYTES,
    Accepted,
    DeviceStatus,
    QuarantineReason,
    Rejected,
    StatusMessage,
    TelemetryMessage,
    UsageMessage,
    decode,
    utc_iso,
)
from services.core.topics import MessageKind, parse_topic
from services.ingest.directory import DeviceDirectory, DeviceRef


class RawMessage(NamedTuple):
    """One message as the MQTT thread saw it, before any parsing (a tuple: built for every
    message on the network thread, where a frozen dataclass costs several times more)."""

    topic: str
    payload: bytes
    received_at: datetime
    mid: int = 0
    qos: int = 0
    generation: int = 0  # which broker connection delivered it (acks are per connection)
    retained: bool = False  # replayed by the broker on subscribe, not sent just now
    historical: bool = False  # bulk-imported history: device time, not receipt, is "last seen"
    decoded: Accepted | Rejected | None = None  # decoded on receipt (None: the writer decodes)


@dataclass
class BatchResult:
    messages: int = 0
    usage_rows: int = 0
    usage_duplicates: int = 0
    metric_rows: int = 0
    metric_duplicates: int = 0
    status_updates: int = 0
    # empty retained messages on status topics: a broker-level "forget the retained status",
    # not a device message; counted (metric) but neither stored nor quarantined
    status_cleared: int = 0
    quarantined: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    device_times: list[datetime] = field(default_factory=list)  # of stored usage/telemetry

    def merge(self, other: BatchResult) -> BatchResult:
        """Add *other*'s counts into this result and return it."""
        self.messages += other.messages
        self.usage_rows += other.usage_rows
        self.usage_duplicates += other.usage_duplicates
        self.metric_rows += other.metric_rows
        self.metric_duplicates += other.metric_duplicates
        self.status_updates += other.status_updates
        self.status_cleared += other.status_cleared
        for reason, count in other.quarantined.items():
            self.quarantined[reason] += count
        self.device_times += other.device_times
        return self


@dataclass
class _DeviceSeen:
    last_seen: datetime | None
    online: bool | None = None
    online_since: datetime | None = None
    firmware: str | None = None


STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS incoming_usage (LIKE usage_events) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS incoming_metrics (LIKE metric_samples) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS incoming_device_state (LIKE device_state) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS incoming_device_hourly (LIKE device_hourly) ON COMMIT DELETE ROWS;
"""
COPY_USAGE = """
COPY incoming_usage (device_id, project_id, feature_key, device_time, received_at, seq, item,
                     count, duration_ms) FROM STDIN (FORMAT BINARY)
"""
COPY_METRICS = """
COPY incoming_metrics (device_id, project_id, name, value, unit, device_time, received_at, seq,
                       item) FROM STDIN
"""
# What the move statements send back: reading 0 of each newly stored message (which marks the
# message as stored), then one row with device_id NULL counting every reading inserted. Not
# every reading: a message of 1,000 readings would send 1,000 rows back for one message.
STORED_MESSAGES = """
SELECT device_id, project_id, seq, device_time FROM inserted WHERE item = 0
UNION ALL
SELECT NULL, NULL, count(*), NULL FROM inserted
"""
MOVE_USAGE = (
    """
WITH inserted AS (
    INSERT INTO usage_events SELECT * FROM incoming_usage
    ON CONFLICT DO NOTHING
    RETURNING project_id, feature_key, device_id, device_time, seq, item, count, duration_ms
), rolled AS (
    INSERT INTO usage_hourly AS h (project_id, feature_key, device_id, hour, events, readings,
                                   duration_ms)
    SELECT project_id, feature_key, device_id, time_bucket('1 hour', device_time),
           sum(count), count(*), coalesce(sum(duration_ms), 0)
    FROM inserted
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 4, 3  -- one lock order for every writer: no deadlocks between processes
    ON CONFLICT (project_id, feature_key, hour, device_id) DO UPDATE
    SET events = h.events + excluded.events,
        readings = h.readings + excluded.readings,
        duration_ms = h.duration_ms + excluded.duration_ms
), utc AS (
    SELECT project_id, feature_key, device_id, count,
           time_bucket('1 hour', device_time) AS hour,
           (device_time AT TIME ZONE 'UTC')::date AS day
    FROM inserted
), daily AS (
    INSERT INTO usage_daily AS t (project_id, day, feature_key, device_id, hours)
    SELECT project_id, day, feature_key, device_id,
           bit_or(1 << extract(hour FROM hour AT TIME ZONE 'UTC')::integer)
    FROM utc GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (project_id, day, feature_key, device_id) DO UPDATE
    SET hours = t.hours | excluded.hours WHERE t.hours | excluded.hours <> t.hours
), monthly AS (
    INSERT INTO usage_monthly AS t (project_id, month, feature_key, device_id, days)
    SELECT project_id, date_trunc('month', day)::date, feature_key, device_id,
           bit_or(1 << (extract(day FROM day)::integer - 1))
    FROM utc GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (project_id, month, feature_key, device_id) DO UPDATE
    SET days = t.days | excluded.days WHERE t.days | excluded.days <> t.days
), feature_hours AS (
    INSERT INTO feature_hourly AS t (project_id, hour, feature_key, events)
    SELECT project_id, hour, feature_key, sum(count) FROM utc GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (project_id, hour, feature_key) DO UPDATE SET events = t.events + excluded.events
), feature_days AS (
    INSERT INTO feature_daily AS t (project_id, day, feature_key, events)
    SELECT project_id, day, feature_key, sum(count) FROM utc GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (project_id, day, feature_key) DO UPDATE SET events = t.events + excluded.events
)
"""
    + STORED_MESSAGES
)
# The fast path: the batch's readings COPYed straight into the hypertable (inside a savepoint:
# a reading already stored raises a unique violation, and the batch then takes the staging
# path above, which skips it), and the rollups upserted from sums made in memory.
COPY_USAGE_DIRECT = """
COPY usage_events (device_id, project_id, feature_key, device_time, received_at, seq, item,
                   count, duration_ms) FROM STDIN (FORMAT BINARY)
"""
# Binary COPY: two timestamps a row are the costliest part of text COPY's formatting.
USAGE_TYPES = ("int8", "int8", "text", "timestamptz", "timestamptz", "int8", "int2", "int4",
               "int8")  # fmt: skip


def _mask_upserts(daily: str, monthly: str) -> tuple[str, str]:
    """Statements that OR day rows (hours bitmask) and month rows (days bitmask) into a pair
    of bitmask rollup tables (migrations 0007, 0012) from the column arrays of
    `masks_of_hours`: a redelivered message ORs the same bits and changes nothing."""
    day_rows = f"""
    INSERT INTO {daily} AS t (project_id, day, feature_key, device_id, hours)
    SELECT * FROM unnest(%(d_project)s::bigint[], %(d_day)s::date[], %(d_feature)s::text[],
                         %(d_device)s::bigint[], %(d_hours)s::integer[])
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (project_id, day, feature_key, device_id) DO UPDATE
    SET hours = t.hours | excluded.hours WHERE t.hours | excluded.hours <> t.hours"""
    month_rows = f"""
    INSERT INTO {monthly} AS t (project_id, month, feature_key, device_id, days)
    SELECT * FROM unnest(%(m_project)s::bigint[], %(m_month)s::date[], %(m_feature)s::text[],
                         %(m_device)s::bigint[], %(m_days)s::integer[])
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (project_id, month, feature_key, device_id) DO UPDATE
    SET days = t.days | excluded.days WHERE t.days | excluded.days <> t.days"""
    return day_rows, month_rows


_USAGE_DAYS, _USAGE_MONTHS = _mask_upserts("usage_daily", "usage_monthly")
UPSERT_USAGE_ROLLUPS = f"""
WITH hourly AS (
    INSERT INTO usage_hourly AS h (project_id, feature_key, device_id, hour, events, readings,
                                   duration_ms)
    SELECT * FROM unnest(%(h_project)s::bigint[], %(h_feature)s::text[], %(h_device)s::bigint[],
                         %(h_hour)s::timestamptz[], %(h_events)s::bigint[],
                         %(h_readings)s::bigint[], %(h_duration)s::bigint[])
    ORDER BY 1, 2, 4, 3
    ON CONFLICT (project_id, feature_key, hour, device_id) DO UPDATE
    SET events = h.events + excluded.events,
        readings = h.readings + excluded.readings,
        duration_ms = h.duration_ms + excluded.duration_ms
), daily AS ({_USAGE_DAYS}
), monthly AS ({_USAGE_MONTHS}
), feature_hours AS (
    INSERT INTO feature_hourly AS t (project_id, hour, feature_key, events)
    SELECT * FROM unnest(%(fh_project)s::bigint[], %(fh_hour)s::timestamptz[],
                         %(fh_feature)s::text[], %(fh_events)s::bigint[])
    ORDER BY 1, 2, 3
    ON CONFLICT (project_id, hour, feature_key) DO UPDATE SET events = t.events + excluded.events
)
INSERT INTO feature_daily AS t (project_id, day, feature_key, events)
SELECT * FROM unnest(%(fd_project)s::bigint[], %(fd_day)s::date[], %(fd_feature)s::text[],
                     %(fd_events)s::bigint[])
ORDER BY 1, 2, 3
ON CONFLICT (project_id, day, feature_key) DO UPDATE SET events = t.events + excluded.events
"""
_ENABLED_DAYS, _ENABLED_MONTHS = _mask_upserts("enabled_daily", "enabled_monthly")
# What devices reported as enabled (telemetry's `enabled_features`), by device-hour.
UPSERT_ENABLED = f"WITH daily AS ({_ENABLED_DAYS}\n){_ENABLED_MONTHS}"

MOVE_METRICS = (
    """
WITH inserted AS (
    INSERT INTO metric_samples SELECT * FROM incoming_metrics
    ON CONFLICT DO NOTHING
    RETURNING device_id, project_id, seq, device_time, item
)
"""
    + STORED_MESSAGES
)
# One row per device and hour; only messages stored for the first time are counted. The day,
# month and project rollups follow from the same rows (bitmasks: see migration 0007).
UPSERT_DEVICE_HOURLY = """
WITH hourly AS (
    INSERT INTO device_hourly AS h (device_id, project_id, hour, messages, seq_min, seq_max,
                                    missing)
    SELECT device_id, project_id, hour, messages, seq_min, seq_max, missing
    FROM incoming_device_hourly
    ORDER BY 1, 3
    ON CONFLICT (device_id, hour) DO UPDATE SET
        messages = h.messages + excluded.messages,
        missing = h.missing + excluded.missing,
        seq_min = least(h.seq_min, excluded.seq_min),
        seq_max = greatest(h.seq_max, excluded.seq_max)
), utc AS (
    SELECT project_id, device_id, hour, messages, missing,
           (hour AT TIME ZONE 'UTC')::date AS day FROM incoming_device_hourly
), daily AS (
    INSERT INTO device_daily AS t (project_id, day, device_id, hours)
    SELECT project_id, day, device_id,
           bit_or(1 << extract(hour FROM hour AT TIME ZONE 'UTC')::integer)
    FROM utc GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (project_id, day, device_id) DO UPDATE
    SET hours = t.hours | excluded.hours WHERE t.hours | excluded.hours <> t.hours
), monthly AS (
    INSERT INTO device_monthly AS t (project_id, month, device_id, days)
    SELECT project_id, date_trunc('month', day)::date, device_id,
           bit_or(1 << (extract(day FROM day)::integer - 1))
    FROM utc GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (project_id, month, device_id) DO UPDATE
    SET days = t.days | excluded.days WHERE t.days | excluded.days <> t.days
), project_hours AS (
    INSERT INTO project_hourly AS t (project_id, hour, messages, missing)
    SELECT project_id, hour, sum(messages), sum(missing) FROM utc GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (project_id, hour) DO UPDATE
    SET messages = t.messages + excluded.messages, missing = t.missing + excluded.missing
)
INSERT INTO project_daily AS t (project_id, day, messages, missing)
SELECT project_id, day, sum(messages), sum(missing) FROM utc GROUP BY 1, 2 ORDER BY 1, 2
ON CONFLICT (project_id, day) DO UPDATE
SET messages = t.messages + excluded.messages, missing = t.missing + excluded.missing
"""
COPY_DEVICE_HOURLY = """
COPY incoming_device_hourly (device_id, project_id, hour, messages, seq_min, seq_max, missing)
FROM STDIN
"""
LAST_SEQUENCE = """
SELECT device_id, last_seq, last_seq_at FROM device_state WHERE device_id = ANY(%s)
"""
COPY_DEVICE_STATE = """
COPY incoming_device_state (device_id, online, online_since, last_seen, last_seq, last_seq_at,
                            firmware)
FROM STDIN
"""
INSERT_STATUS_HISTORY = """
INSERT INTO device_status_history (device_id, project_id, at, received_at, online, firmware)
VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING
"""
# Binary: a payload goes over as it is, not as hex text that PostgreSQL decodes again (the
# quarantine takes the garbage, and garbage should be cheap to turn away).
COPY_QUARANTINE = """
COPY quarantine (received_at, topic, device_serial, reason, detail, payload, payload_size)
FROM STDIN (FORMAT BINARY)
"""
QUARANTINE_TYPES = ("timestamptz", "text", "text", "text", "text", "bytea", "int4")
INT4_MAX = 2**31 - 1
UPSERT_DEVICE_STATE = """
INSERT INTO device_state AS s (device_id, online, online_since, last_seen, last_seq, last_seq_at,
                              firmware)
SELECT device_id, online, online_since, last_seen, last_seq, last_seq_at, firmware
FROM incoming_device_state
ORDER BY 1
ON CONFLICT (device_id) DO UPDATE SET
    last_seen = greatest(s.last_seen, excluded.last_seen),
    -- the sequence number of the latest message by device time (numbering restarts on reboot)
    last_seq = CASE WHEN excluded.last_seq_at >= coalesce(s.last_seq_at, '-infinity')
                    THEN excluded.last_seq ELSE s.last_seq END,
    last_seq_at = greatest(s.last_seq_at, excluded.last_seq_at),
    online_since = CASE
        WHEN excluded.online IS NOT NULL AND excluded.online IS DISTINCT FROM s.online
        THEN excluded.online_since ELSE s.online_since END,
    online = coalesce(excluded.online, s.online),
    firmware = coalesce(excluded.firmware, s.firmware)
"""


def store_batch(
    conn: psycopg.Connection,
    batch: list[RawMessage],
    directory: DeviceDirectory,
    *,
    max_future_skew: timedelta,
    now: datetime,
    late_data_days: int | None,
) -> BatchResult:
    """late_data_days None accepts any age (history imports)."""
    """Write one batch in one transaction; the caller commits (by leaving `transaction()`)."""
    result = BatchResult(messages=len(batch))
    cleared = [raw for raw in batch if not raw.payload and _is_status(raw.topic)]
    result.status_cleared = len(cleared)
    decoded = [
        (
            raw,
            raw.decoded
            if raw.decoded is not None
            else decode(raw.topic, raw.payload, now=now, max_future_skew=max_future_skew),
        )
        for raw in batch
        if raw.payload or not _is_status(raw.topic)
    ]
    serials = {d.topic.serial for _, d in decoded if isinstance(d, Accepted)}
    devices = directory.lookup(conn, serials)

    rows = _Rows()

    for raw, outcome in decoded:
        rejected = (
            outcome
            if isinstance(outcome, Rejected)
            else _check_device(outcome, devices, now=now, late_data_days=late_data_days)
        )
        if rejected is None:
            assert isinstance(outcome, Accepted)  # noqa: S101
            rows.add(raw, outcome, devices[outcome.topic.serial], result)
            continue
        rows.quarantine.append(_quarantine_row(raw, rejected))
        result.quarantined[str(rejected.reason)] += 1

    usage, metrics, quarantine, seen = rows.usage, rows.metrics, rows.quarantine, rows.seen
    with conn.cursor() as cur:
        if usage or metrics or seen:
            cur.execute(STAGING_DDL)
        # One entry per newly stored message: (device, project, seq, device time of reading 0).
        # Not keyed by seq: a rebooted device reuses sequence numbers.
        stored: list[tuple[int, int, int, datetime]] = []
        if usage:
            inserted = _insert_usage(cur, usage, stored)
            result.usage_rows = inserted
            result.usage_duplicates = len(usage) - inserted
        if metrics:
            with cur.copy(COPY_METRICS) as copy:
                for row in metrics:
                    copy.write_row(row)
            inserted = _stored_messages(cur.execute(MOVE_METRICS).fetchall(), stored)
            result.metric_rows = inserted
            result.metric_duplicates = len(metrics) - inserted
        latest: dict[int, tuple[int, datetime]] = {}
        if stored:
            previous = {
                device: (seq, at)
                for device, seq, at in cur.execute(
                    LAST_SEQUENCE, (sorted({device for device, *_ in stored}),)
                ).fetchall()
                # state written before sequence tracking has no time: start afresh from here
                if seq is not None and at is not None
            }
            missing, latest = _sequence_gaps(stored, previous)
            with cur.copy(COPY_DEVICE_HOURLY) as copy:
                for row in _device_hours(stored, missing):
                    copy.write_row(row)
            cur.execute(UPSERT_DEVICE_HOURLY)
        if rows.enabled:
            cur.execute(UPSERT_ENABLED, enabled_rollups(rows.enabled))
        if quarantine:
            _copy_quarantine(cur, quarantine)
        if seen:
            _write_device_state(cur, seen, latest, rows.statuses)
    return result


def _insert_usage(
    cur: psycopg.Cursor[Any],
    usage: list[tuple[Any, ...]],
    stored: list[tuple[int, int, int, datetime]],
) -> int:
    """Store usage readings and their rollups; note each newly stored message in *stored*;
    return the readings inserted. Straight into the hypertable when none is stored yet (the
    usual case); through the staging table, skipping what is, after a redelivery."""
    try:
        with cur.connection.transaction():  # a savepoint: a unique violation undoes only this
            with _copying(cur, COPY_USAGE_DIRECT, USAGE_TYPES, usage):
                rollups = usage_rollups(usage)
            cur.execute(UPSERT_USAGE_ROLLUPS, rollups)
    except psycopg.errors.UniqueViolation:
        _copy_rows(cur, COPY_USAGE, USAGE_TYPES, usage)
        return _stored_messages(cur.execute(MOVE_USAGE).fetchall(), stored)
    # reading 0 of each message marks the message (as STORED_MESSAGES does)
    stored.extend((row[0], row[1], row[5], row[3]) for row in usage if row[6] == 0)
    return len(usage)


_EPOCH_DAY = date(1970, 1, 1).toordinal()


def usage_rollups(usage: list[tuple[Any, ...]]) -> dict[str, list[Any]]:
    """The rollup rows of usage readings that are all newly stored, summed in memory exactly
    as MOVE_USAGE sums them in SQL (UTC hours and days; bitmasks of migration 0007), as the
    column arrays UPSERT_USAGE_ROLLUPS takes."""
    hourly: dict[tuple[int, str, int, int], list[int]] = {}
    for device, project, feature, at, _received, _seq, _item, count, duration in usage:
        key = (project, feature, device, int(at.timestamp() // 3600))
        sums = hourly.get(key)
        if sums is None:
            hourly[key] = [count, 1, duration or 0]
        else:
            sums[0] += count
            sums[1] += 1
            sums[2] += duration or 0
    # everything else follows from the (far fewer) hourly sums
    daily: dict[tuple[int, int, str, int], int] = {}
    feature_hours: dict[tuple[int, int, str], int] = {}
    for (project, feature, device, hour), (events, _, _) in hourly.items():
        dkey = (project, hour // 24, feature, device)
        daily[dkey] = daily.get(dkey, 0) | 1 << hour % 24
        fkey = (project, hour, feature)
        feature_hours[fkey] = feature_hours.get(fkey, 0) + events

    def hour_at(hour: int) -> datetime:
        return datetime.fromtimestamp(hour * 3600, UTC)

    feature_days: dict[tuple[int, int, str], int] = {}
    for (project, hour, feature), events in feature_hours.items():
        fdkey = (project, hour // 24, feature)
        feature_days[fdkey] = feature_days.get(fdkey, 0) + events

    h = sorted(hourly.items())
    fh = sorted(feature_hours.items())
    fd = sorted(feature_days.items())
    return {
        "h_project": [k[0] for k, _ in h], "h_feature": [k[1] for k, _ in h],
        "h_device": [k[2] for k, _ in h], "h_hour": [hour_at(k[3]) for k, _ in h],
        "h_events": [v[0] for _, v in h], "h_readings": [v[1] for _, v in h],
        "h_duration": [v[2] for _, v in h],
        **_mask_columns(daily),
        "fh_project": [k[0] for k, _ in fh], "fh_hour": [hour_at(k[1]) for k, _ in fh],
        "fh_feature": [k[2] for k, _ in fh], "fh_events": [v for _, v in fh],
        "fd_project": [k[0] for k, _ in fd], "fd_day": [_date_of(k[1]) for k, _ in fd],
        "fd_feature": [k[2] for k, _ in fd], "fd_events": [v for _, v in fd],
    }  # fmt: skip


def enabled_rollups(enabled: Iterable[tuple[int, int, str, int]]) -> dict[str, list[Any]]:
    """The rows of UPSERT_ENABLED from (device, project, feature key or ENABLED_REPORTED,
    hour since the epoch) of what devices reported as enabled."""
    daily: dict[tuple[int, int, str, int], int] = {}
    for device, project, feature, hour in enabled:
        key = (project, hour // 24, feature, device)
        daily[key] = daily.get(key, 0) | 1 << hour % 24
    return _mask_columns(daily)


@lru_cache(maxsize=4096)
def _date_of(day: int) -> date:
    """The UTC date of *day* days since the epoch (a batch touches a handful)."""
    return date.fromordinal(_EPOCH_DAY + day)


def _mask_columns(daily: dict[tuple[int, int, str, int], int]) -> dict[str, list[Any]]:
    """Day rows (project, day since the epoch, feature, device) → hours bitmask, and the month
    rows they give, as the column arrays of `_mask_upserts`."""
    monthly: dict[tuple[int, date, str, int], int] = {}
    for project, day, feature, device in daily:
        when = _date_of(day)
        mkey = (project, when.replace(day=1), feature, device)
        monthly[mkey] = monthly.get(mkey, 0) | 1 << (when.day - 1)
    d = sorted(daily.items())
    m = sorted(monthly.items())
    return {
        "d_project": [k[0] for k, _ in d], "d_day": [_date_of(k[1]) for k, _ in d],
        "d_feature": [k[2] for k, _ in d], "d_device": [k[3] for k, _ in d],
        "d_hours": [v for _, v in d],
        "m_project": [k[0] for k, _ in m], "m_month": [k[1] for k, _ in m],
        "m_feature": [k[2] for k, _ in m], "m_device": [k[3] for k, _ in m],
        "m_days": [v for _, v in m],
    }  # fmt: skip


def _write_device_state(
    cur: psycopg.Cursor[Any],
    seen: dict[int, _DeviceSeen],
    latest: dict[int, tuple[int, datetime]],
    statuses: list[tuple[object, ...]],
) -> None:
    with cur.copy(COPY_DEVICE_STATE) as copy:
        for i in sorted(seen):
            state = seen[i]
            last_seq, last_seq_at = latest.get(i, (None, None))
            copy.write_row((i, state.online, state.online_since, state.last_seen,
                            last_seq, last_seq_at, state.firmware))  # fmt: skip
    cur.execute(UPSERT_DEVICE_STATE)
    if statuses:  # a few per device and day: no staging table needed
        cur.executemany(INSERT_STATUS_HISTORY, statuses)


def _is_status(topic: str) -> bool:
    where = parse_topic(topic)
    return where is not None and where.kind is MessageKind.STATUS


def _check_device(
    accepted: Accepted, devices: dict[str, DeviceRef], *, now: datetime, late_data_days: int | None
) -> Rejected | None:
    """Why a well-formed message still cannot be stored, or None if it can."""
    serial = accepted.topic.serial
    device = devices.get(serial)
    if device is None:
        return Rejected(
            QuarantineReason.UNKNOWN_DEVICE, "no provisioned device with this serial", serial
        )
    if not device.active:
        return Rejected(QuarantineReason.REVOKED_DEVICE, "device was revoked", serial)
    if late_data_days is None:
        return None
    oldest = accepted.oldest
    window = timedelta(days=device.late_data_days or late_data_days)
    if oldest is not None and oldest < now - window:
        return Rejected(
            QuarantineReason.TOO_OLD,
            f"device time {utc_iso(oldest)} is older than the project's late-data window "
            f"of {window.days} days",
            serial,
        )
    return None


@dataclass
class _Rows:
    """What one batch will write, gathered before any statement runs."""

    usage: list[tuple[object, ...]] = field(default_factory=list)
    metrics: list[tuple[object, ...]] = field(default_factory=list)
    quarantine: list[tuple[object, ...]] = field(default_factory=list)
    seen: dict[int, _DeviceSeen] = field(default_factory=dict)
    statuses: list[tuple[object, ...]] = field(default_factory=list)
    # (device, project, feature key or ENABLED_REPORTED, hour since the epoch)
    enabled: list[tuple[int, int, str, int]] = field(default_factory=list)

    def add(
        self, raw: RawMessage, accepted: Accepted, device: DeviceRef, result: BatchResult
    ) -> None:
        message = accepted.message
        state = self.seen.setdefault(device.id, _DeviceSeen(last_seen=None))
        if raw.historical:
            seen_at = getattr(message, "ts", None) or raw.received_at
            state.last_seen = max(state.last_seen or seen_at, seen_at)
        elif not raw.retained:
            # A retained status replayed on subscribe says nothing about when the device
            # was last heard from; only live messages refresh last_seen.
            state.last_seen = max(state.last_seen or raw.received_at, raw.received_at)
        times = accepted.reading_times
        if isinstance(message, UsageMessage):
            for item, event in enumerate(message.events):
                self.usage.append((
                    device.id, device.project_id, event.feature, times[item],
                    raw.received_at, message.seq, item, event.count, event.duration_ms,
                ))  # fmt: skip
            result.device_times.append(message.ts)
        elif isinstance(message, TelemetryMessage):
            for item, metric in enumerate(message.metrics):
                self.metrics.append((
                    device.id, device.project_id, metric.name, metric.value, metric.unit,
                    times[item], raw.received_at, message.seq, item,
                ))  # fmt: skip
            result.device_times.append(message.ts)
            if message.enabled_features is not None:
                hour = _hour_key(times[0])  # the hour the message counts in, as reporting
                self.enabled += [
                    (device.id, device.project_id, key, hour)
                    for key in {ENABLED_REPORTED, *message.enabled_features}
                ]
        elif isinstance(message, StatusMessage):
            state.online = message.state is DeviceStatus.ONLINE
            state.online_since = message.ts or raw.received_at
            state.firmware = message.firmware or state.firmware
            result.status_updates += 1
            if not raw.retained:  # a replay on subscribe is not a new status
                self.statuses.append((
                    device.id, device.project_id, state.online_since, raw.received_at,
                    state.online, message.firmware,
                ))  # fmt: skip


# Errors that retrying the same batch cannot cure: a message the database refuses, or one
# that trips a bug in our code. Connection and server errors are retried instead.
NOT_TRANSIENT = (
    psycopg.DataError, psycopg.IntegrityError, ValueError, TypeError, UnicodeError,
    ArithmeticError,  # e.g. a date computation out of range
)  # fmt: skip


def store_isolating(
    conn: psycopg.Connection,
    batch: list[RawMessage],
    store: Callable[[list[RawMessage]], BatchResult],
) -> BatchResult:
    """Store a batch, and if it cannot be stored, halve it until the messages that cannot are
    isolated; those are quarantined and everything else is stored."""
    try:
        return store(batch)
    except NOT_TRANSIENT as exc:
        if len(batch) == 1:
            [raw] = batch
            reason = (
                QuarantineReason.REJECTED_BY_DATABASE
                if isinstance(exc, psycopg.Error)
                else QuarantineReason.STORE_FAILED
            )
            where = parse_topic(raw.topic)
            with conn.transaction():
                quarantine_messages(
                    conn, [(raw, Rejected(reason, str(exc)[:500], where.serial if where else None))]
                )
            result = BatchResult(messages=1)
            result.quarantined[reason.value] += 1
            return result
        middle = len(batch) // 2
        first = store_isolating(conn, batch[:middle], store)
        return first.merge(store_isolating(conn, batch[middle:], store))


def quarantine_messages(
    conn: psycopg.Connection,
    rejected: list[tuple[RawMessage, Rejected]],
    *,
    received_bytes: int | None = None,
) -> None:
    """Write messages straight to the quarantine (used when the database refuses a message,
    and by imports). *received_bytes*: the size received, where each payload is only its start."""
    rows = [_quarantine_row(raw, why) for raw, why in rejected]
    if received_bytes is not None:
        # payload_size is an int4: a streamed line of 2 GiB or more says "at least that"
        rows = [(*row[:-1], min(received_bytes, INT4_MAX)) for row in rows]
    with conn.cursor() as cur:
        _copy_quarantine(cur, rows)


def _copy_quarantine(cur: psycopg.Cursor[Any], rows: list[tuple[object, ...]]) -> None:
    _copy_rows(cur, COPY_QUARANTINE, QUARANTINE_TYPES, rows)


@contextmanager
def _copying(
    cur: psycopg.Cursor[Any], statement: str, types: Sequence[str], rows: list[tuple[Any, ...]]
) -> Iterator[None]:
    """A binary COPY of *rows* (columns of *types*). The body of the `with` runs once the rows
    are sent, while PostgreSQL is still taking them in (it lags behind Python)."""
    if "bytea" in types:
        # By oid, psycopg finds dbapi20's bytea dumper (it unwraps Binary objects, in Python);
        # bytes need only the C one: about 1 µs less a quarantined payload.
        cur.adapters.register_dumper(bytes, BytesBinaryDumper)
    with cur.copy(statement) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)
        yield


def _copy_rows(
    cur: psycopg.Cursor[Any], statement: str, types: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    with _copying(cur, statement, types, rows):
        pass


def _quarantine_row(raw: RawMessage, rejected: Rejected) -> tuple[object, ...]:
    return (
        raw.received_at,
        raw.topic.replace("\x00", "\\0")[:1024],
        rejected.serial,
        str(rejected.reason),  # a StrEnum's value, without enum's Python-level `.value`
        rejected.detail.replace("\x00", "\\0")[:2000],
        raw.payload[:QUARANTINE_KEEP_BYTES],
        len(raw.payload),
    )


def _stored_messages(
    rows: list[tuple[Any, ...]], stored: list[tuple[int, int, int, datetime]]
) -> int:
    """Note each newly stored message (its reading 0); return the readings inserted (the
    count row of STORED_MESSAGES)."""
    inserted = 0
    for device, project, seq, at in rows:
        if device is None:
            inserted = int(seq)
        else:
            stored.append((device, project, seq, at))
    return inserted


def _sequence_gaps(
    stored: list[tuple[int, int, int, datetime]],
    previous: dict[int, tuple[int, datetime]],
) -> tuple[dict[tuple[int, int], int], dict[int, tuple[int, datetime]]]:
    """Missing messages per device and hour, from the sequence numbers of newly stored ones.

    Walking each device's new messages in device-time order from its last known (seq, time):
    a jump forward counts the numbers skipped; a lower number at a later time is a restart
    (reboot), not a gap; a message older than the last known one arrived late and fills a
    gap counted before (-1). Returns the counts and each device's latest (seq, time)."""
    missing: dict[tuple[int, int], int] = {}
    latest = dict(previous)
    for device, _project, seq, at in sorted(stored, key=lambda m: (m[0], m[3], m[2])):
        hour = _hour_key(at)
        last = latest.get(device)
        if last is not None:
            last_seq, last_at = last
            if at < last_at:
                if seq < last_seq:
                    missing[(device, hour)] = missing.get((device, hour), 0) - 1
                continue
            if seq > last_seq + 1:
                missing[(device, hour)] = missing.get((device, hour), 0) + seq - last_seq - 1
        latest[device] = (seq, at)
    return missing, {d: v for d, v in latest.items() if previous.get(d) != v}


def _hour_key(at: datetime) -> int:
    """Whole hours since the epoch: a cheap key for the UTC hour of *at* (per message)."""
    return int(at.timestamp() // 3600)


def _device_hours(
    stored: list[tuple[int, int, int, datetime]], missing: dict[tuple[int, int], int]
) -> list[tuple[Any, ...]]:
    """Rows (device, project, hour, messages, seq_min, seq_max, missing) in one lock order."""
    hours: dict[tuple[int, int], list[Any]] = {}
    for device_id, project_id, seq, at in stored:
        entry = hours.setdefault((device_id, _hour_key(at)), [project_id, 0, seq, seq])
        entry[1] += 1
        if seq < entry[2]:
            entry[2] = seq
        elif seq > entry[3]:
            entry[3] = seq
    return [
        (device, hours[key][0], datetime.fromtimestamp(hour * 3600, UTC), *hours[key][1:],
         missing.get(key, 0))
        for key in sorted(hours)
        for device, hour in (key,)
    ]  # fmt: skip
