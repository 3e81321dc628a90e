"""The statements the ingest store runs: the staging tables and COPYs of a batch, the moves of
readings, and the upserts of device state and rollups. Every value is bound.
"""

from __future__ import annotations

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


# What MOVE_METRICS sends back (telemetry has no rollups of its own): reading 0 of each newly
# stored message (which marks the message as stored), then one row with device_id NULL counting
# every reading inserted. Not every reading: a message of 1,000 readings would send 1,000 rows
# back for one message. (A redelivered usage batch does send its new readings back: their
# rollups are summed from them.)
STORED_MESSAGES = """
SELECT device_id, project_id, seq, device_time, boot FROM inserted WHERE item = 0
UNION ALL
SELECT NULL, NULL, count(*), NULL, NULL FROM inserted
"""


# A redelivered batch's readings, moved from the staging table skipping those stored already;
# the readings newly stored come back (in the layout of COPY_USAGE) to be rolled up as the
# fast path's are (usage_rollups, UPSERT_USAGE_ROLLUPS).
MOVE_USAGE = """
INSERT INTO usage_events SELECT * FROM incoming_usage
ON CONFLICT DO NOTHING
RETURNING device_id, project_id, feature_key, device_time, received_at, seq, item, count,
          duration_ms, boot
"""


# The fast path: the batch's readings COPYed straight into the hypertable (inside a savepoint:
# a reading already stored raises a unique violation, and the batch then takes the staging
# path above, which skips it). Both paths upsert the rollups from sums made in memory.
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


def _mask_upserts(daily: str, monthly: str) -> tuple[str, str]:
    """Statements that OR day rows (hours bitmask) and month rows (days bitmask) into a pair
    of bitmask rollup tables (migrations 0007, 0012) from the column arrays of
    `rollup_sums._mask_columns`: a redelivered message ORs the same bits and changes nothing."""
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
