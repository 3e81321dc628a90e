"""Classifying a batch of raw messages and writing it in one transaction.

Valid readings are COPYed into a staging table and moved with ``ON CONFLICT DO NOTHING``,
so a redelivered message adds nothing; the rollups (hourly, daily, monthly; migrations 0002,
0004, 0007) are fed from the rows that were really inserted, in the same transaction.
Rejected messages go to the quarantine, where the same message quarantined again is counted on
its row instead of adding one (migration 0014).

Message identity (migration 0014): a message that carries a boot counter is the same message as
another of its device with the same (boot, seq), whatever their times; one without is the same
as another with the same (seq, time). The hypertables' unique key (device, reading time, seq,
item, boot) refuses every exact repeat; a repeat with another time (an outbox resent with a
fresh `ts`) is found in the device's identity window (`_note`) before anything is written.
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any, NamedTuple, cast

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
    origin: str | None = None  # where an imported record came from ("line 7"): in its detail


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
    # forward jumps in a device's numbering over MAX_SEQ_GAP: restarts, not lost messages
    seq_jumps: int = 0
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
        self.seq_jumps += other.seq_jumps
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
                     count, duration_ms, boot) FROM STDIN (FORMAT BINARY)
"""
COPY_METRICS = """
COPY incoming_metrics (device_id, project_id, name, value, unit, device_time, received_at, seq,
                       item, boot) FROM STDIN
"""
# What the move statements send back: reading 0 of each newly stored message (which marks the
# message as stored), then one row with device_id NULL counting every reading inserted. Not
# every reading: a message of 1,000 readings would send 1,000 rows back for one message.
STORED_MESSAGES = """
SELECT device_id, project_id, seq, device_time, boot FROM inserted WHERE item = 0
UNION ALL
SELECT NULL, NULL, count(*), NULL, NULL FROM inserted
"""
MOVE_USAGE = (
    """
WITH inserted AS (
    INSERT INTO usage_events SELECT * FROM incoming_usage
    ON CONFLICT DO NOTHING
    RETURNING project_id, feature_key, device_id, device_time, seq, item, count, duration_ms,
              boot
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
                   count, duration_ms, boot) FROM STDIN (FORMAT BINARY)
"""
# Binary COPY: two timestamps a row are the costliest part of text COPY's formatting.
USAGE_TYPES = (
    "int8",
    "int8",
    "text",
    "timestamptz",
    "timestamptz",
    "int8",
    "int2",
    "int4",
    "int8",
    "int4",
)
# The boot column of a reading whose message carried no boot counter (migration 0014).
NO_BOOT = -1


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
    RETURNING device_id, project_id, seq, device_time, item, boot
)
"""
    + STORED_MESSAGES
)
# One row per device and hour; only messages stored for the first time are counted. The day,
# month and project rollups follow from the same rows (bitmasks: see migration 0007).
UPSERT_DEVICE_HOURLY = """
WITH hourly AS (
    INSERT INTO device_hourly AS h (device_id, project_id, hour, messages, seq_min, seq_max,
                                    missing, seq_jumps)
    SELECT device_id, project_id, hour, messages, seq_min, seq_max, missing, seq_jumps
    FROM incoming_device_hourly
    ORDER BY 1, 3
    ON CONFLICT (device_id, hour) DO UPDATE SET
        messages = h.messages + excluded.messages,
        missing = h.missing + excluded.missing,
        seq_jumps = h.seq_jumps + excluded.seq_jumps,
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
COPY incoming_device_hourly (device_id, project_id, hour, messages, seq_min, seq_max, missing,
                             seq_jumps)
FROM STDIN
"""
# The batch's devices' sequence accounting and identity windows, read before anything is
# written and locked in one order by every writer: two ingest processes given messages of one
# device take turns, so neither counts gaps or judges repeats from what the other has not
# committed. Every device the batch touches: the state upsert at the end then takes no lock
# out of that order.
DEVICE_SEQUENCES = """
SELECT device_id, last_seq, last_seq_at, last_boot, identity_window FROM device_state
WHERE device_id = ANY(%s) ORDER BY device_id FOR NO KEY UPDATE
"""
COPY_DEVICE_STATE = """
COPY incoming_device_state (device_id, online, online_since, last_seen, last_seq, last_seq_at,
                            last_boot, identity_window, firmware)
FROM STDIN
"""
INSERT_STATUS_HISTORY = """
INSERT INTO device_status_history (device_id, project_id, at, received_at, online, firmware)
VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING
"""
# The same message quarantined again adds no row: its row counts it and says why it was refused
# this time (migration 0014). A batch's rejects are COPYed (binary: a payload goes over as it
# is) into a staging table compressed as the quarantine is, so each payload is compressed
# once and moved as it is, then upserted: 11 µs a row here, against 36 bound as arrays.
QUARANTINE_STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS incoming_quarantine (LIKE quarantine INCLUDING COMPRESSION)
ON COMMIT DELETE ROWS
"""
COPY_QUARANTINE = """
COPY incoming_quarantine (received_at, topic, device_serial, reason, detail, payload,
                          payload_size, digest, copies, last_received_at, id)
FROM STDIN (FORMAT BINARY)
"""
QUARANTINE_TYPES = (
    *("timestamptz", "text", "text", "text", "text", "bytea", "int4", "bytea"),
    *("int4", "timestamptz", "int8"),
)
MOVE_QUARANTINE = """
INSERT INTO quarantine AS q (received_at, topic, device_serial, reason, detail, payload,
                             payload_size, digest, copies, last_received_at)
SELECT received_at, topic, device_serial, reason, detail, payload, payload_size, digest, copies,
       last_received_at
FROM incoming_quarantine
ORDER BY id  -- the order received: the quarantine's ids say in which order it took them
ON CONFLICT (digest) DO UPDATE SET
    copies = q.copies + excluded.copies,
    last_received_at = greatest(q.last_received_at, excluded.last_received_at),
    reason = excluded.reason,
    detail = excluded.detail
"""
QUARANTINE_DIGEST_BYTES = 16  # BLAKE2b-128: no accidental collision among 2^40 rows
INT4_MAX = 2**31 - 1
UPSERT_DEVICE_STATE = """
INSERT INTO device_state AS s (device_id, online, online_since, last_seen, last_seq, last_seq_at,
                              last_boot, identity_window, firmware)
SELECT device_id, online, online_since, last_seen, last_seq, last_seq_at, last_boot,
       identity_window, firmware
FROM incoming_device_state
ORDER BY 1
ON CONFLICT (device_id) DO UPDATE SET
    last_seen = greatest(s.last_seen, excluded.last_seen),
    -- the sequence number of the latest message by device time (numbering restarts on reboot)
    last_seq = CASE WHEN excluded.last_seq_at >= coalesce(s.last_seq_at, '-infinity')
                    THEN excluded.last_seq ELSE s.last_seq END,
    last_boot = CASE WHEN excluded.last_seq_at >= coalesce(s.last_seq_at, '-infinity')
                     THEN excluded.last_boot ELSE s.last_boot END,
    last_seq_at = greatest(s.last_seq_at, excluded.last_seq_at),
    -- worked out from the row as locked by DEVICE_SEQUENCES: it replaces it
    identity_window = coalesce(excluded.identity_window, s.identity_window),
    online_since = CASE
        WHEN excluded.online IS NOT NULL AND excluded.online IS DISTINCT FROM s.online
        THEN excluded.online_since ELSE s.online_since END,
    online = coalesce(excluded.online, s.online),
    firmware = coalesce(excluded.firmware, s.firmware)
"""


class Fate(StrEnum):
    """What became of a message (history imports report it per line)."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # the same message was stored before: nothing added
    QUARANTINED = "quarantined"
    CLEARED = "cleared"  # an empty retained status: clears the broker's copy, nothing stored


class Outcome(NamedTuple):
    fate: Fate
    reason: str | None = None  # why it was quarantined
    detail: str | None = None


# One entry per newly stored message: (device, project, seq, device time of reading 0, boot).
# Not keyed by seq: a rebooted device reuses sequence numbers.
Stored = list[tuple[int, int, int, datetime, int]]


def store_batch(
    conn: psycopg.Connection,
    batch: list[RawMessage],
    directory: DeviceDirectory,
    *,
    max_future_skew: timedelta,
    now: datetime,
    late_data_days: int | None,
    outcomes: list[Outcome] | None = None,
) -> BatchResult:
    """Write one batch in one transaction; the caller commits (by leaving `transaction()`).

    *late_data_days* None accepts any age (history imports). *outcomes*, if given, receives
    what became of each message of *batch*, in its order."""
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
    verdicts: list[Accepted | Rejected] | None = None if outcomes is None else []
    for index, (raw, outcome) in enumerate(decoded):
        rejected = (
            outcome
            if isinstance(outcome, Rejected)
            else _check_device(outcome, devices, now=now, late_data_days=late_data_days)
        )
        if rejected is None:
            assert isinstance(outcome, Accepted)  # noqa: S101
            rows.add(index, raw, outcome, devices[outcome.topic.serial], result)
        else:
            rows.quarantine.append(_quarantine_row(raw, rejected))
            result.quarantined[str(rejected.reason)] += 1
        if verdicts is not None:
            verdicts.append(outcome if rejected is None else rejected)

    with conn.cursor() as cur:
        stored, repeats = _write(cur, rows, result)
    if outcomes is not None and verdicts is not None:
        outcomes += _outcomes(
            batch, decoded, verdicts, devices=devices, stored=stored, repeats=repeats
        )
    return result


def _write(
    cur: psycopg.Cursor[Any], rows: _Rows, result: BatchResult
) -> tuple[Stored, list[_Identified]]:
    """Write a batch's rows; count in *result*. Returns the messages newly stored and those
    their identity shows stored before."""
    offered_usage, offered_metrics = len(rows.usage), len(rows.metrics)
    stored: Stored = []
    repeats: list[_Identified] = []
    if rows.usage or rows.metrics or rows.seen:
        cur.execute(STAGING_DDL)
    previous: dict[int, tuple[int, datetime, int]] = {}
    windows: dict[int, bytes] = {}
    if rows.seen:
        previous, found = _lock_devices(cur, rows.seen)
        if rows.identified:
            repeats, windows = _identity_check(rows.identified, found)
            if repeats:
                rows.drop(repeats)
    if rows.usage:
        result.usage_rows = _insert_usage(cur, rows.usage, stored)
    if rows.metrics:
        with cur.copy(COPY_METRICS) as copy:
            for row in rows.metrics:
                copy.write_row(row)
        result.metric_rows = _stored_messages(cur.execute(MOVE_METRICS).fetchall(), stored)
    result.usage_duplicates = offered_usage - result.usage_rows
    result.metric_duplicates = offered_metrics - result.metric_rows
    latest: dict[int, tuple[int, datetime, int]] = {}
    if stored:
        gaps, latest = _sequence_gaps(stored, previous)
        result.seq_jumps = sum(jumps for _, jumps in gaps.values())
        with cur.copy(COPY_DEVICE_HOURLY) as copy:
            for row in _device_hours(stored, gaps):
                copy.write_row(row)
        cur.execute(UPSERT_DEVICE_HOURLY)
    if rows.enabled:
        cur.execute(UPSERT_ENABLED, enabled_rollups(rows.enabled))
    if rows.quarantine:
        _write_quarantine(cur, rows.quarantine)
    if rows.seen:
        _write_device_state(cur, rows.seen, latest, windows, rows.statuses)
    return stored, repeats


def _lock_devices(
    cur: psycopg.Cursor[Any], devices: Iterable[int]
) -> tuple[dict[int, tuple[int, datetime, int]], dict[int, bytes | None]]:
    """Lock the devices' state rows (DEVICE_SEQUENCES); return each one's latest (seq, time,
    boot) by device time, and its identity window as stored."""
    previous: dict[int, tuple[int, datetime, int]] = {}
    windows: dict[int, bytes | None] = {}
    for device, seq, at, boot, window in cur.execute(DEVICE_SEQUENCES, (sorted(devices),)):
        # state written before sequence tracking has no time: start afresh from here
        if seq is not None and at is not None:
            previous[device] = (seq, at, boot)
        windows[device] = window
    return previous, windows


def _outcomes(
    batch: list[RawMessage],
    decoded: list[tuple[RawMessage, Accepted | Rejected]],
    verdicts: list[Accepted | Rejected],
    *,
    devices: dict[str, DeviceRef],
    stored: Stored,
    repeats: list[_Identified],
) -> list[Outcome]:
    """What became of each message of *batch*, from what store_batch found and inserted."""
    # a message was stored if its reading 0 was; two copies of one message in the batch
    # share that row: the first is the stored one
    fresh = Counter((device, seq, at, boot) for device, _, seq, at, boot in stored)
    repeated = {repeat.position for repeat in repeats}
    fates: dict[int, Outcome] = {}  # by id() of the raw message: tuples may be equal
    for index, ((raw, _), verdict) in enumerate(zip(decoded, verdicts, strict=True)):
        if isinstance(verdict, Rejected):
            fate = Outcome(Fate.QUARANTINED, str(verdict.reason), verdict.detail)
        elif isinstance(verdict.message, StatusMessage):
            fate = Outcome(Fate.STORED)
        elif index in repeated:
            fate = Outcome(Fate.DUPLICATE)
        else:
            message = verdict.message
            boot = NO_BOOT if message.boot is None else message.boot
            key = (devices[verdict.topic.serial].id, message.seq, verdict.reading_times[0], boot)
            fate = Outcome(Fate.STORED if fresh[key] > 0 else Fate.DUPLICATE)
            fresh[key] -= 1
        fates[id(raw)] = fate
    return [fates.get(id(raw), Outcome(Fate.CLEARED)) for raw in batch]


# A device's identity window (device_state.identity_window): for each of its latest boots (most
# recently used first), the highest seq stored and which of the IDENTITY_WINDOW_SEQS numbers up
# to it were. A message seen again with another time is recognised while its seq is in there.
IDENTITY_WINDOW_SEQS = 1024  # an outbox of a day of messages at one every 90 s: 128 bytes
IDENTITY_WINDOW_BOOTS = 2  # the latest and the one before: an outbox resent after a restart
_WINDOW_ENTRY = struct.Struct(f"<iq{IDENTITY_WINDOW_SEQS // 8}s")  # boot, highest seq, bits
_WINDOW_MASK = (1 << IDENTITY_WINDOW_SEQS) - 1


def _identity_check(
    identified: list[_Identified], stored_windows: dict[int, bytes | None]
) -> tuple[list[_Identified], dict[int, bytes]]:
    """The messages their device's identity window shows stored already (in the batch order:
    of two copies in one batch, the second), and the windows with the others noted in them."""
    windows: dict[int, list[list[int]]] = {}
    repeats = []
    for message in identified:
        window = windows.get(message.device)
        if window is None:
            window = windows[message.device] = _read_window(stored_windows.get(message.device))
        if not _note(window, message.boot, message.seq):
            repeats.append(message)
    return repeats, {device: _pack_window(window) for device, window in windows.items()}


def _note(window: list[list[int]], boot: int, seq: int) -> bool:
    """Note (boot, seq) as stored in a device's window; False if it was already."""
    for place, entry in enumerate(window):
        if entry[0] != boot:
            continue
        if place:
            window.insert(0, window.pop(place))
        _, highest, bits = entry
        if seq > highest:
            shift = seq - highest  # up to 2^63: never shifted by
            entry[1] = seq
            entry[2] = 1 if shift >= IDENTITY_WINDOW_SEQS else (bits << shift | 1) & _WINDOW_MASK
            return True
        behind = highest - seq
        if behind >= IDENTITY_WINDOW_SEQS:
            return True  # older than the window: only an exact repeat is recognised
        if bits >> behind & 1:
            return False
        entry[2] = bits | 1 << behind
        return True
    window.insert(0, [boot, seq, 1])  # a new boot (or one forgotten): remembered from here
    del window[IDENTITY_WINDOW_BOOTS:]
    return True


def _read_window(stored: bytes | None) -> list[list[int]]:
    if not stored or len(stored) % _WINDOW_ENTRY.size:
        return []  # none yet (or of another layout: forgotten, as for a new device)
    return [
        [boot, highest, int.from_bytes(bits, "little")]
        for boot, highest, bits in _WINDOW_ENTRY.iter_unpack(stored)
    ]


def _pack_window(window: list[list[int]]) -> bytes:
    return b"".join(
        _WINDOW_ENTRY.pack(boot, highest, bits.to_bytes(IDENTITY_WINDOW_SEQS // 8, "little"))
        for boot, highest, bits in window
    )


def _insert_usage(cur: psycopg.Cursor[Any], usage: list[tuple[Any, ...]], stored: Stored) -> int:
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
    stored.extend((row[0], row[1], row[5], row[3], row[9]) for row in usage if row[6] == 0)
    return len(usage)


_EPOCH_DAY = date(1970, 1, 1).toordinal()


def usage_rollups(usage: list[tuple[Any, ...]]) -> dict[str, list[Any]]:
    """The rollup rows of usage readings that are all newly stored, summed in memory exactly
    as MOVE_USAGE sums them in SQL (UTC hours and days; bitmasks of migration 0007), as the
    column arrays UPSERT_USAGE_ROLLUPS takes."""
    hourly: dict[tuple[int, str, int, int], list[int]] = {}
    for device, project, feature, at, _received, _seq, _item, count, duration, _ in usage:
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
        "h_project": [k[0] for k, _ in h],
        "h_feature": [k[1] for k, _ in h],
        "h_device": [k[2] for k, _ in h],
        "h_hour": [hour_at(k[3]) for k, _ in h],
        "h_events": [v[0] for _, v in h],
        "h_readings": [v[1] for _, v in h],
        "h_duration": [v[2] for _, v in h],
        **_mask_columns(daily),
        "fh_project": [k[0] for k, _ in fh],
        "fh_hour": [hour_at(k[1]) for k, _ in fh],
        "fh_feature": [k[2] for k, _ in fh],
        "fh_events": [v for _, v in fh],
        "fd_project": [k[0] for k, _ in fd],
        "fd_day": [_date_of(k[1]) for k, _ in fd],
        "fd_feature": [k[2] for k, _ in fd],
        "fd_events": [v for _, v in fd],
    }


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
        "d_project": [k[0] for k, _ in d],
        "d_day": [_date_of(k[1]) for k, _ in d],
        "d_feature": [k[2] for k, _ in d],
        "d_device": [k[3] for k, _ in d],
        "d_hours": [v for _, v in d],
        "m_project": [k[0] for k, _ in m],
        "m_month": [k[1] for k, _ in m],
        "m_feature": [k[2] for k, _ in m],
        "m_device": [k[3] for k, _ in m],
        "m_days": [v for _, v in m],
    }


def _write_device_state(
    cur: psycopg.Cursor[Any],
    seen: dict[int, _DeviceSeen],
    latest: dict[int, tuple[int, datetime, int]],
    windows: dict[int, bytes],
    statuses: list[tuple[object, ...]],
) -> None:
    with cur.copy(COPY_DEVICE_STATE) as copy:
        for i in sorted(seen):
            state = seen[i]
            last_seq, last_seq_at, last_boot = latest.get(i, (None, None, NO_BOOT))
            copy.write_row(
                (
                    i,
                    state.online,
                    state.online_since,
                    state.last_seen,
                    last_seq,
                    last_seq_at,
                    last_boot,
                    windows.get(i),
                    state.firmware,
                )
            )
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
    # Never later than the project keeps raw rows: a redelivery of a message whose rows
    # retention deleted would otherwise be stored again and counted twice in the rollups.
    days = device.late_data_days or late_data_days
    window = timedelta(days=min(days, device.retention_days or days))
    if oldest is not None and oldest < now - window:
        return Rejected(
            QuarantineReason.TOO_OLD,
            f"device time {utc_iso(oldest)} is older than the project's late-data window "
            f"of {window.days} days",
            serial,
        )
    return None


class _Identified(NamedTuple):
    """A message that carries a boot counter, and where its rows are in _Rows."""

    position: int  # its place among the batch's decoded messages
    device: int
    boot: int
    seq: int
    usage: bool  # its readings are in _Rows.usage, else in _Rows.metrics
    readings: range
    enabled: range


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
    identified: list[_Identified] = field(default_factory=list)  # judged by identity window

    def drop(self, repeats: list[_Identified]) -> None:
        """Leave out the rows of messages found stored already."""
        usage = {i for r in repeats if r.usage for i in r.readings}
        metrics = {i for r in repeats if not r.usage for i in r.readings}
        enabled = {i for r in repeats for i in r.enabled}
        self.usage = [row for i, row in enumerate(self.usage) if i not in usage]
        self.metrics = [row for i, row in enumerate(self.metrics) if i not in metrics]
        self.enabled = [row for i, row in enumerate(self.enabled) if i not in enabled]

    def add(
        self,
        index: int,
        raw: RawMessage,
        accepted: Accepted,
        device: DeviceRef,
        result: BatchResult,
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
            boot = NO_BOOT if message.boot is None else message.boot
            first = len(self.usage)
            for item, event in enumerate(message.events):
                self.usage.append(
                    (
                        device.id,
                        device.project_id,
                        event.feature,
                        times[item],
                        raw.received_at,
                        message.seq,
                        item,
                        event.count,
                        event.duration_ms,
                        boot,
                    )
                )
            result.device_times.append(message.ts)
            if message.boot is not None:
                readings = range(first, len(self.usage))
                self.identified.append(
                    _Identified(index, device.id, boot, message.seq, True, readings, range(0))
                )
        elif isinstance(message, TelemetryMessage):
            boot = NO_BOOT if message.boot is None else message.boot
            first, first_enabled = len(self.metrics), len(self.enabled)
            for item, metric in enumerate(message.metrics):
                self.metrics.append(
                    (
                        device.id,
                        device.project_id,
                        metric.name,
                        metric.value,
                        metric.unit,
                        times[item],
                        raw.received_at,
                        message.seq,
                        item,
                        boot,
                    )
                )
            result.device_times.append(message.ts)
            if message.enabled_features is not None:
                hour = _hour_key(times[0])  # the hour the message counts in, as reporting
                self.enabled += [
                    (device.id, device.project_id, key, hour)
                    for key in {ENABLED_REPORTED, *message.enabled_features}
                ]
            if message.boot is not None:
                readings = range(first, len(self.metrics))
                enabled = range(first_enabled, len(self.enabled))
                self.identified.append(
                    _Identified(index, device.id, boot, message.seq, False, readings, enabled)
                )
        elif isinstance(message, StatusMessage):
            state.online = message.state is DeviceStatus.ONLINE
            state.online_since = message.ts or raw.received_at
            state.firmware = message.firmware or state.firmware
            result.status_updates += 1
            # A status the broker replays on subscribe (retained) may be one ingest never saw
            # live (the device connected before ingest subscribed): kept if it carries its
            # time, which makes a replay of one already stored the same row (the history's
            # key is device, time, state). One without a time (a last will) would be stamped
            # with each replay's arrival, a new row every time: only the live one is kept.
            if not raw.retained or message.ts is not None:
                self.statuses.append(
                    (
                        device.id,
                        device.project_id,
                        state.online_since,
                        raw.received_at,
                        state.online,
                        message.firmware,
                    )
                )


# Data errors: PostgreSQL refused a message's values (SQLSTATE class 22, and the constraints of
# class 23 a value can break). Retrying cannot cure them and they belong to one message, so it
# is isolated and quarantined. Nothing else is: a Python exception (TypeError, ValueError, ...)
# on a message that passed validation, or a NOT NULL violation (validated messages fill every
# required column: a NULL is our code, or a schema newer than the code mid-deploy), is a bug,
# and quarantining on it would drain all traffic into the quarantine; ingest stops instead.
NOT_TRANSIENT = (
    psycopg.DataError,
    psycopg.errors.CheckViolation,
    psycopg.errors.UniqueViolation,
    psycopg.errors.ForeignKeyViolation,
    psycopg.errors.ExclusionViolation,
)


def store_isolating(
    conn: psycopg.Connection,
    batch: list[RawMessage],
    store: Callable[[list[RawMessage]], BatchResult],
) -> BatchResult:
    """Store a batch, and if the database refuses some of it (a data error), halve it until
    the messages it refuses are isolated; those are quarantined and everything else is
    stored. Any other error propagates: it is never a reason to quarantine a message."""
    try:
        return store(batch)
    except NOT_TRANSIENT as exc:
        if len(batch) == 1:
            [raw] = batch
            reason = QuarantineReason.REJECTED_BY_DATABASE
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
        rows = [(*row[:6], min(received_bytes, INT4_MAX), row[7]) for row in rows]
    with conn.cursor() as cur:
        _write_quarantine(cur, rows)


# Oldest first by id (the order they were quarantined), so each pass takes the oldest rows.
PURGE_QUARANTINE = """
DELETE FROM quarantine WHERE id IN (
    SELECT id FROM quarantine WHERE received_at < %(before)s ORDER BY id LIMIT %(limit)s
)
"""


def purge_quarantine(conn: psycopg.Connection, before: datetime, limit: int) -> int:
    """Delete at most *limit* quarantine rows first received before *before*, in one short
    transaction; return how many went (fewer than *limit*: none older are left)."""
    with conn.transaction():
        return conn.execute(PURGE_QUARANTINE, {"before": before, "limit": limit}).rowcount


def _write_quarantine(cur: psycopg.Cursor[Any], rows: list[tuple[object, ...]]) -> None:
    """Quarantine *rows* (of `_quarantine_row`): a message already there is counted on its row,
    as are the copies of one message within *rows*."""
    merged: dict[object, list[object]] = {}
    for row in rows:
        entry = merged.get(row[7])
        if entry is None:
            # copies, latest receipt, and the place received (the staging table's id)
            merged[row[7]] = [*row, 1, row[0], len(merged)]
        else:
            entry[3:5] = row[3:5]  # why it was refused the last time
            entry[8] = cast(int, entry[8]) + 1
            entry[9] = row[0]  # received in batch order
    cur.execute(QUARANTINE_STAGING_DDL)
    _copy_rows(cur, COPY_QUARANTINE, QUARANTINE_TYPES, [tuple(row) for row in merged.values()])
    cur.execute(MOVE_QUARANTINE)


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
    detail = rejected.detail if raw.origin is None else f"{raw.origin}: {rejected.detail}"
    serial = None if rejected.serial is None else _storable_text(rejected.serial)
    return (
        raw.received_at,
        _storable_text(raw.topic)[:1024],
        serial,
        str(rejected.reason),  # a StrEnum's value, without enum's Python-level `.value`
        _storable_text(detail)[:2000],
        raw.payload[:QUARANTINE_KEEP_BYTES],
        len(raw.payload),
        _digest(raw.topic, raw.payload),
    )


def _storable_text(text: str) -> str:
    """*text* as PostgreSQL can store it: NUL and lone surrogates (which a history import's
    JSON can carry) written out as escapes."""
    text = text.replace("\x00", "\\0")
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="backslashreplace").decode()
    return text


def _digest(topic: str, payload: bytes) -> bytes:
    """What makes two quarantined messages the same: the topic and the whole payload."""
    try:
        name = topic.encode(errors="surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate outside surrogateescape's range
        name = topic.encode(errors="backslashreplace")
    digest = hashlib.blake2b(len(name).to_bytes(4, "big"), digest_size=QUARANTINE_DIGEST_BYTES)
    digest.update(name)
    digest.update(payload)
    return digest.digest()


def _stored_messages(rows: list[tuple[Any, ...]], stored: Stored) -> int:
    """Note each newly stored message (its reading 0); return the readings inserted (the
    count row of STORED_MESSAGES)."""
    inserted = 0
    for device, project, seq, at, boot in rows:
        if device is None:
            inserted = int(seq)
        else:
            stored.append((device, project, seq, at, boot))
    return inserted


# A forward jump of more sequence numbers than this is not lost messages but the numbering
# starting over elsewhere (a counter reset, a re-flash, a corrupt counter): counted as a jump
# (device_hourly.seq_jumps), not as missing. A million is 11 days of a message a second lost
# between two stored messages; and no sum of gaps can overflow a bigint below 9·10^12 messages.
MAX_SEQ_GAP = 1_000_000


def _sequence_gaps(
    stored: Stored, previous: dict[int, tuple[int, datetime, int]]
) -> tuple[dict[tuple[int, int], list[int]], dict[int, tuple[int, datetime, int]]]:
    """Missing messages and jumps per device and hour, from the newly stored messages.

    Walking each device's new messages in device-time order from its last known (seq, time,
    boot), within one boot (or none): a step forward of up to MAX_SEQ_GAP + 1 counts the
    numbers skipped, a longer one is a jump (a restart elsewhere, not a gap); a lower number
    at a later time is a restart (reboot); a message older than the last known one arrived
    late and fills a gap counted before (-1) if its number is up to MAX_SEQ_GAP below. A
    message of another boot is a restart. Rollups' DEVICE_HOURLY walks the same way.
    Returns [missing, jumps] per (device, hour) and each device's latest (seq, time, boot)."""
    counts: dict[tuple[int, int], list[int]] = {}
    latest = dict(previous)
    for device, _project, seq, at, boot in sorted(stored, key=lambda m: (m[0], m[3], m[2], m[4])):
        last = latest.get(device)
        if last is not None:
            last_seq, last_at, last_boot = last
            step = seq - last_seq if boot == last_boot else None
            if at < last_at:
                if step is not None and -MAX_SEQ_GAP <= step < 0:
                    counts.setdefault((device, _hour_key(at)), [0, 0])[0] -= 1
                continue
            if step is not None and step > 1:
                count = counts.setdefault((device, _hour_key(at)), [0, 0])
                if step <= MAX_SEQ_GAP + 1:
                    count[0] += step - 1
                else:
                    count[1] += 1
        latest[device] = (seq, at, boot)
    return counts, {d: v for d, v in latest.items() if previous.get(d) != v}


def _hour_key(at: datetime) -> int:
    """Whole hours since the epoch: a cheap key for the UTC hour of *at* (per message)."""
    return int(at.timestamp() // 3600)


def _device_hours(stored: Stored, gaps: dict[tuple[int, int], list[int]]) -> list[tuple[Any, ...]]:
    """Rows (device, project, hour, messages, seq_min, seq_max, missing, seq_jumps) in one
    lock order."""
    hours: dict[tuple[int, int], list[Any]] = {}
    no_gaps = (0, 0)
    for device_id, project_id, seq, at, _boot in stored:
        entry = hours.setdefault((device_id, _hour_key(at)), [project_id, 0, seq, seq])
        entry[1] += 1
        if seq < entry[2]:
            entry[2] = seq
        elif seq > entry[3]:
            entry[3] = seq
    return [
        (
            device,
            hours[key][0],
            datetime.fromtimestamp(hour * 3600, UTC),
            *hours[key][1:],
            *gaps.get(key, no_gaps),
        )
        for key in sorted(hours)
        for device, hour in (key,)
    ]
