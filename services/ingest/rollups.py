"""Rebuilding every rollup from the raw rows, set-based, in one transaction.

Ingest keeps the rollups up to date message by message (`rollup_sums.py`); this is for
operators (after a repair of raw rows, or to check them) and for loading generated data
in bulk (bench/dataset.py). It recomputes, from the month that holds *since* on:

- ``usage_hourly`` from ``usage_events``;
- ``device_hourly`` from the messages (reading 0 of each stored usage or telemetry message):
  messages, sequence range, the sequence numbers skipped and the jumps too long to be gaps,
  walking each device's messages in device-time order exactly as ingest does when messages
  arrive in order (rollup_sums.sequence_gaps; a late message that ingest counted as filling an
  earlier gap is simply in its place here);
- the day, month and project rollups from those two (``rollups_from_hourly``, migration 0007);
- the month rows of what devices reported as enabled, from its day rows (migration 0012).

It never starts before the point where retention has deleted raw rows (migration 0019): the
rollups are all that is left of those. The rollup tables are locked against writes while it
runs: ingest waits (the broker keeps its messages) and readers keep reading the old rows until
the commit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from services.core.errors import ConfigError
from services.ingest.rollup_sums import MAX_SEQ_GAP

ROLLUP_TABLES = (
    "usage_hourly",
    "device_hourly",
    "usage_daily",
    "usage_monthly",
    "device_daily",
    "device_monthly",
    "feature_hourly",
    "feature_daily",
    "project_hourly",
    "project_daily",
)

# What devices reported as enabled: the day rows are the record (ingest writes no raw rows for
# it), so a rebuild keeps them and recomputes only the month rows (migration 0012).
ENABLED_TABLES = ("enabled_daily", "enabled_monthly")
LOCK = f"LOCK TABLE {', '.join(ROLLUP_TABLES + ENABLED_TABLES)} IN EXCLUSIVE MODE"
INDEXES = """
SELECT c.relname, i.relname, con.conname, pg_get_constraintdef(con.oid), pg_get_indexdef(i.oid)
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid
LEFT JOIN pg_constraint con ON con.conindid = i.oid AND con.conrelid = c.oid
WHERE c.relname = ANY(%s) AND c.relnamespace = 'public'::regnamespace
"""
# How far back retention may have deleted some project's raw rows (migration 0019).
RAW_ROWS_GONE_BEFORE = "SELECT max(deleted_before) FROM raw_retention"
USAGE_HOURLY = """
INSERT INTO usage_hourly (project_id, feature_key, device_id, hour, events, readings, duration_ms)
SELECT project_id, feature_key, device_id, time_bucket('1 hour', device_time),
       sum(count), count(*), coalesce(sum(duration_ms), 0)
FROM usage_events
WHERE device_time >= %(from)s::timestamptz AND device_time < %(until)s::timestamptz
GROUP BY 1, 2, 3, 4
"""
# The walk of rollup_sums.sequence_gaps, as a window: within one boot (-1: none), a step forward of
# up to max_gap + 1 counts the numbers skipped and a longer one is a jump; a lower number, or
# another boot, is a restart. The first message after `from` continues from the device's last
# message before it, so walking [from, until) in pieces gives what one walk does. Steps are
# differences of two sequence numbers (never sums): no bigint can overflow.
DEVICE_HOURLY = """
WITH messages AS (
    SELECT device_id, project_id, boot, seq, device_time FROM usage_events
    WHERE item = 0 AND device_time >= %(from)s::timestamptz
      AND device_time < %(until)s::timestamptz
    UNION ALL
    SELECT device_id, project_id, boot, seq, device_time FROM metric_samples
    WHERE item = 0 AND device_time >= %(from)s::timestamptz
      AND device_time < %(until)s::timestamptz
), walked AS (
    SELECT device_id, project_id, boot, seq, device_time,
           lag(ARRAY[boot, seq]) OVER (PARTITION BY device_id ORDER BY device_time, seq, boot)
               AS previous
    FROM messages
), steps AS (
    SELECT device_id, project_id, seq, time_bucket('1 hour', device_time) AS hour, boot,
           coalesce(previous, CASE WHEN %(from)s::timestamptz > '-infinity'::timestamptz THEN (
               SELECT ARRAY[p.boot, p.seq] FROM (
                   (SELECT boot, seq, device_time FROM usage_events e
                    WHERE e.device_id = walked.device_id AND e.item = 0
                      AND e.device_time < %(from)s::timestamptz
                    ORDER BY device_time DESC, seq DESC, boot DESC LIMIT 1)
                   UNION ALL
                   (SELECT boot, seq, device_time FROM metric_samples m
                    WHERE m.device_id = walked.device_id AND m.item = 0
                      AND m.device_time < %(from)s::timestamptz
                    ORDER BY device_time DESC, seq DESC, boot DESC LIMIT 1)
               ) p ORDER BY p.device_time DESC, p.seq DESC, p.boot DESC LIMIT 1) END) AS previous
    FROM walked
), gaps AS (
    SELECT device_id, project_id, seq, hour,
           CASE WHEN previous[1] = boot THEN seq - previous[2] END AS step
    FROM steps
)
INSERT INTO device_hourly (device_id, project_id, hour, messages, seq_min, seq_max, missing,
                           seq_jumps)
SELECT device_id, min(project_id), hour, count(*), min(seq), max(seq),
       coalesce(sum(step - 1) FILTER (WHERE step > 1 AND step <= %(max_gap)s + 1), 0),
       count(*) FILTER (WHERE step > %(max_gap)s + 1)
FROM gaps GROUP BY device_id, hour
"""


def month_start(moment: datetime) -> datetime:
    utc = moment.astimezone(UTC)
    return utc.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Index:
    """An index, or the key or unique constraint it backs, as it was defined."""

    table: str
    name: str
    constraint: str | None
    constraint_def: str | None
    index_def: str

    def drop(self, cur: psycopg.Cursor[tuple[Any, ...]]) -> None:
        if self.constraint:
            cur.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(self.table), sql.Identifier(self.constraint)
                )
            )
        else:
            cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(self.name)))

    def create(self, cur: psycopg.Cursor[tuple[Any, ...]]) -> None:
        if self.constraint:
            add = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}")
            names = sql.Identifier(self.table), sql.Identifier(self.constraint)
            cur.execute(add.format(*names, sql.SQL(self.constraint_def or "")))
        else:
            cur.execute(sql.SQL(self.index_def))


def drop_indexes(cur: psycopg.Cursor[tuple[Any, ...]], tables: Sequence[str]) -> list[Index]:
    """Drop the indexes (and keys) of *tables*; return them to be created again."""
    found = [Index(*row) for row in cur.execute(INDEXES, (list(tables),)).fetchall()]
    for index in found:
        index.drop(cur)
    return found


@contextmanager
def without_indexes(cur: psycopg.Cursor[tuple[Any, ...]], tables: Sequence[str]) -> Iterator[None]:
    """Drop the indexes (and keys) of *tables* and create them again on exit: a bulk load
    into emptied tables then sorts each index once instead of inserting row by row."""
    found = drop_indexes(cur, tables)
    yield
    for index in found:
        index.create(cur)


def rebuild_rollups(conn: psycopg.Connection, since: datetime | None = None) -> datetime | None:
    """Recompute every rollup from the raw rows from the month of *since* on (None: all).

    Returns the start of what was rebuilt (a UTC month start; None for everything). Rebuilding
    everything empties the tables and recreates their indexes after the load (readers wait);
    a partial rebuild only locks them against writes. Refused (ConfigError) from before the
    point where retention has deleted raw rows: their rollups are all that is left of them."""
    start = None if since is None else month_start(since)
    params = {"from": "-infinity" if start is None else start}
    with conn.transaction(), conn.cursor() as cur:
        _check_raw_rows_kept(cur, start)
        if start is None:
            cur.execute(LOCK)
            cur.execute(
                sql.SQL("TRUNCATE {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, ROLLUP_TABLES))
                )
            )
            with without_indexes(cur, ROLLUP_TABLES):
                _rebuild(cur, start)
        else:
            cur.execute(LOCK)
            cur.execute("DELETE FROM usage_hourly WHERE hour >= %(from)s::timestamptz", params)
            cur.execute("DELETE FROM device_hourly WHERE hour >= %(from)s::timestamptz", params)
            _rebuild(cur, start)
    return start


def _check_raw_rows_kept(cur: psycopg.Cursor[tuple[Any, ...]], start: datetime | None) -> None:
    row = cur.execute(RAW_ROWS_GONE_BEFORE).fetchone()
    gone_before = None if row is None else row[0]
    if gone_before is not None and (start is None or start < gone_before):
        first = month_start(gone_before)
        if first < gone_before:
            first = month_start(first + timedelta(days=32))
        raise ConfigError(
            f"raw rows before {gone_before:%Y-%m-%d %H:%M} UTC were deleted by retention, so "
            f"rollups before then cannot be rebuilt (they are all that is left); rebuild from "
            f"{first:%Y-%m-%d} on (--since {first:%Y-%m-%d}) or later"
        )


def hourly_rollups(
    cur: psycopg.Cursor[tuple[Any, ...]], since: datetime | None, until: datetime | None = None
) -> None:
    """Add ``usage_hourly`` and ``device_hourly`` for the raw rows in [since, until) (None:
    unbounded). With bounds on hour boundaries, pieces add up to what one pass over all gives."""
    for bound in (since, until):
        if bound is not None and bound != bound.astimezone(UTC).replace(
            minute=0, second=0, microsecond=0
        ):
            raise ValueError(f"rollup pieces start and end on whole UTC hours, not {bound}")
    params = {"from": since or "-infinity", "until": until or "infinity"}
    cur.execute(USAGE_HOURLY, params)
    cur.execute(DEVICE_HOURLY, {**params, "max_gap": MAX_SEQ_GAP})


def rollups_from_hourly(cur: psycopg.Cursor[tuple[Any, ...]], since: datetime | None) -> None:
    """Recompute the day, month and project rollups from the hourly ones (migration 0007), and
    the month rows of what was enabled from their day rows (migration 0012)."""
    cur.execute("SELECT rollups_from_hourly(%s::timestamptz)", (since,))
    cur.execute("SELECT enabled_from_daily(%s::timestamptz)", (since,))


def _rebuild(cur: psycopg.Cursor[tuple[Any, ...]], start: datetime | None) -> None:
    hourly_rollups(cur, start)
    rollups_from_hourly(cur, start)
