"""Retention: raw rows older than their project's retention are deleted; the rollups stay.

One pass (`run_retention`), oldest data first:

1. each project's cutoff is now − its `retention_days`, or − FIELDTRACK_RAW_RETENTION_DAYS
   when it has none (`cutoffs`);
2. chunks of `usage_events` and `metric_samples` that end before every cutoff are dropped
   whole with TimescaleDB's `drop_chunks`, one chunk per transaction;
3. in the chunks left, each project's rows older than its cutoff are deleted in batches of
   FIELDTRACK_RETENTION_BATCH_ROWS picked by the table's unique key inside one chunk, each
   batch its own transaction (`plan` lists the work);
4. quarantined messages older than FIELDTRACK_INGEST_QUARANTINE_RETENTION_DAYS are purged.

Before anything is deleted, the cutoff is recorded per project in `raw_retention` (migration
0019), so the rollup rebuild knows where raw rows may be gone even after an interrupted pass.

Every transaction waits at most LOCK_TIMEOUT for a lock; one that cannot get it gives up and
its work is left to the next pass. Ingest therefore never queues behind the job for longer
than that, and a pass is safe to stop or repeat at any point. One pass runs at a time across
processes (an advisory lock).

Status history is never dropped by the chunk, and the rows where a device's reported firmware
changed are kept past retention: the firmware breakdown reads the firmware a device last
reported before a window's end, for any window.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import psycopg
from prometheus_client import Counter, Gauge
from psycopg import sql

from services.core.settings import Settings
from services.ingest.quarantine.purge import purge_quarantine

log = logging.getLogger(__name__)

# How long any statement of the job waits for a lock before it gives up (and retries on the
# next pass): the longest ingest can queue behind it.
LOCK_TIMEOUT = "200ms"
# One pass at a time across processes (several ingest processes, the CLI).
RETENTION_LOCK_KEY = 0x6674726574656E  # "ftreten"

ROWS_DELETED = Counter(
    "fieldtrack_retention_rows_deleted_total", "rows deleted past retention", ["table"]
)
CHUNKS_DROPPED = Counter(
    "fieldtrack_retention_chunks_dropped_total", "whole chunks dropped past retention", ["table"]
)
LOCKS_MISSED = Counter(
    "fieldtrack_retention_lock_timeouts_total",
    "retention transactions that gave up waiting for a lock (retried on the next pass)",
)
LAST_RUN_SECONDS = Gauge("fieldtrack_retention_last_run_seconds", "duration of the last pass")
LAST_RUN_END = Gauge(
    "fieldtrack_retention_last_run_timestamp_seconds", "when the last pass ended (Unix time)"
)

PROJECT_RETENTION = "SELECT id, retention_days FROM projects"
CHUNKS = """
SELECT hypertable_name, range_start, range_end FROM timescaledb_information.chunks
WHERE hypertable_schema = 'public' AND hypertable_name = ANY(%(tables)s)
  AND range_start < %(before)s
ORDER BY range_start, hypertable_name
"""
RECORD_CUTOFFS = """
INSERT INTO raw_retention (project_id, deleted_before)
SELECT * FROM unnest(%(projects)s::bigint[], %(before)s::timestamptz[])
ON CONFLICT (project_id) DO UPDATE
SET deleted_before = greatest(raw_retention.deleted_before, excluded.deleted_before),
    recorded_at = now()
"""
# Drops the chunks that end at or before the given end: called oldest chunk first, each call
# drops one chunk (and any older one that appeared since, which is past every cutoff too).
DROP_CHUNKS = "SELECT count(*) FROM drop_chunks(%(table)s::regclass, older_than => %(end)s)"

# Usage events and metric samples share their time column and unique key.
READINGS_OLDEST = """
SELECT min(device_time) FROM {table}
WHERE project_id = %(project)s AND device_time < %(cutoff)s
"""
# A batch is picked by the unique key within one chunk's time range (never by ctid, which is
# unique only inside one chunk); the delete repeats the range so it touches that chunk only.
READINGS_DELETE = """
WITH doomed AS (
    SELECT device_id, device_time, seq, item, boot FROM {table}
    WHERE project_id = %(project)s AND device_time >= %(start)s AND device_time < %(before)s
    LIMIT %(limit)s
)
DELETE FROM {table} r USING doomed d
WHERE r.device_time >= %(start)s AND r.device_time < %(before)s
  AND r.device_id = d.device_id AND r.device_time = d.device_time AND r.seq = d.seq
  AND r.item = d.item AND r.boot = d.boot
"""
# A status row that changed its device's firmware (its first report included) is kept: the
# firmware a device last reported before any moment is then still there to read.
_STATUS_KEPT = """
    h.firmware IS NOT NULL AND h.firmware IS DISTINCT FROM (
        SELECT p.firmware FROM device_status_history p
        WHERE p.device_id = h.device_id AND p.firmware IS NOT NULL AND p.at < h.at
        ORDER BY p.at DESC LIMIT 1)
"""
STATUS_OLDEST = f"""
SELECT min(h.at) FROM device_status_history h
WHERE h.project_id = %(project)s AND h.at < %(cutoff)s AND NOT ({_STATUS_KEPT})
"""
STATUS_DELETE = f"""
WITH doomed AS (
    SELECT h.device_id, h.at, h.online FROM device_status_history h
    WHERE h.project_id = %(project)s AND h.at >= %(start)s AND h.at < %(before)s
      AND NOT ({_STATUS_KEPT})
    LIMIT %(limit)s
)
DELETE FROM device_status_history s USING doomed d
WHERE s.at >= %(start)s AND s.at < %(before)s
  AND s.device_id = d.device_id AND s.at = d.at AND s.online = d.online
"""


@dataclass(frozen=True)
class RawTable:
    """A hypertable of raw rows, and how the job deletes from it."""

    name: str
    oldest: sql.SQL | sql.Composed  # a project's oldest deletable row (None: nothing to delete)
    delete: sql.SQL | sql.Composed  # one batch of a project's rows within one chunk
    drops_chunks: bool  # whole chunks past every cutoff may be dropped

    @classmethod
    def of_readings(cls, name: str) -> RawTable:
        table = sql.Identifier(name)
        oldest, delete = sql.SQL(READINGS_OLDEST), sql.SQL(READINGS_DELETE)
        return cls(name, oldest.format(table=table), delete.format(table=table), True)


RAW_TABLES = (
    RawTable.of_readings("usage_events"),
    RawTable.of_readings("metric_samples"),
    RawTable("device_status_history", sql.SQL(STATUS_OLDEST), sql.SQL(STATUS_DELETE), False),
)
TABLES = {table.name: table for table in RAW_TABLES}


@dataclass(frozen=True)
class Chunk:
    table: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Delete:
    """One project's rows of one chunk older than its cutoff: [start, before)."""

    table: str
    project_id: int
    start: datetime
    before: datetime


@dataclass(frozen=True)
class Plan:
    drops: list[Chunk]
    deletes: list[Delete]

    def recorded_cutoffs(self) -> dict[int, datetime]:
        """Per project, how far back its raw rows will be gone once the plan has run."""
        gone: dict[int, datetime] = {}
        for delete in self.deletes:
            gone[delete.project_id] = max(gone.get(delete.project_id, delete.before), delete.before)
        return gone


def cutoffs(
    retention_days: Mapping[int, int | None], default_days: int, now: datetime
) -> dict[int, datetime]:
    """Each project's cutoff: raw rows older than it are deleted."""
    return {
        project: now - timedelta(days=days or default_days)
        for project, days in retention_days.items()
    }


def plan(
    chunks: Iterable[Chunk],
    cutoff_of: Mapping[int, datetime],
    default_cutoff: datetime,
    oldest: Mapping[tuple[str, int], datetime],
) -> Plan:
    """What one pass does, oldest chunk first. A chunk that ends before every project's cutoff
    (and the default one, which covers rows of projects not listed) is dropped whole if its
    table allows it; in the others, each project with rows older than its cutoff (*oldest*,
    by table and project) gets a delete bounded to the chunk and to its cutoff."""
    horizon = min([default_cutoff, *cutoff_of.values()])
    drops: list[Chunk] = []
    deletes: list[Delete] = []
    for chunk in sorted(chunks, key=lambda c: (c.start, c.table)):
        if TABLES[chunk.table].drops_chunks and chunk.end <= horizon:
            drops.append(chunk)
            continue
        for project, cutoff in sorted(cutoff_of.items()):
            first = oldest.get((chunk.table, project))
            if first is not None and first < chunk.end and chunk.start < cutoff:
                deletes.append(Delete(chunk.table, project, chunk.start, min(chunk.end, cutoff)))
    return Plan(drops, deletes)


@dataclass
class RetentionReport:
    """What one pass did."""

    ran: bool = True  # False: another process was running one
    rows_deleted: dict[str, int] = field(default_factory=dict)  # by table, quarantine included
    chunks_dropped: dict[str, int] = field(default_factory=dict)
    lock_timeouts: int = 0
    seconds: float = 0.0

    def deleted(self, table: str, rows: int) -> None:
        self.rows_deleted[table] = self.rows_deleted.get(table, 0) + rows
        ROWS_DELETED.labels(table).inc(rows)

    def dropped(self, table: str, chunks: int) -> None:
        self.chunks_dropped[table] = self.chunks_dropped.get(table, 0) + chunks
        CHUNKS_DROPPED.labels(table).inc(chunks)


def run_retention(
    conn: psycopg.Connection,
    settings: Settings,
    now: datetime,
    stopping: Callable[[], bool] = lambda: False,
) -> RetentionReport:
    """One pass over the raw tables and the quarantine on *conn* (autocommit: every batch is
    its own transaction). *stopping* is asked between transactions."""
    if not conn.autocommit:
        raise ValueError("the retention job needs an autocommit connection")
    started = time.perf_counter()
    if not _scalar(conn, "SELECT pg_try_advisory_lock(%s)", (RETENTION_LOCK_KEY,)):
        log.info("retention: another process is running a pass; skipped")
        return RetentionReport(ran=False)
    report = RetentionReport()
    try:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (LOCK_TIMEOUT,))
        _raw_rows(conn, settings, now, report, stopping)
        if not stopping():
            _quarantine(conn, settings, now, report)
    finally:
        conn.execute("SELECT set_config('lock_timeout', '0', false)")
        conn.execute("SELECT pg_advisory_unlock(%s)", (RETENTION_LOCK_KEY,))
    report.seconds = time.perf_counter() - started
    LAST_RUN_SECONDS.set(report.seconds)
    LAST_RUN_END.set(time.time())
    return report


def _scalar(
    conn: psycopg.Connection,
    query: str | sql.SQL | sql.Composed,
    params: Sequence[object] | Mapping[str, object],
) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def _raw_rows(
    conn: psycopg.Connection,
    settings: Settings,
    now: datetime,
    report: RetentionReport,
    stopping: Callable[[], bool],
) -> None:
    retention_days: dict[int, int | None] = dict(conn.execute(PROJECT_RETENTION).fetchall())
    cutoff_of = cutoffs(retention_days, settings.raw_retention_days, now)
    default_cutoff = now - timedelta(days=settings.raw_retention_days)
    latest = max([default_cutoff, *cutoff_of.values()])
    chunks = [
        Chunk(*row) for row in conn.execute(CHUNKS, {"tables": list(TABLES), "before": latest})
    ]
    oldest: dict[tuple[str, int], datetime] = {}
    for table in RAW_TABLES:
        for project, cutoff in cutoff_of.items():
            first = _scalar(conn, table.oldest, {"project": project, "cutoff": cutoff})
            if first is not None:
                oldest[table.name, project] = first
    work = plan(chunks, cutoff_of, default_cutoff, oldest)
    _record(conn, work, cutoff_of)
    for chunk in work.drops:
        if stopping():
            return
        dropped = _attempt(report, partial(_drop, conn, chunk))
        if dropped:
            report.dropped(chunk.table, dropped)
    for delete in work.deletes:
        while not stopping():
            rows = _attempt(
                report, partial(_delete_batch, conn, delete, settings.retention_batch_rows)
            )
            if rows is None:
                break
            report.deleted(delete.table, rows)
            if rows < settings.retention_batch_rows:
                break


def _record(conn: psycopg.Connection, work: Plan, cutoff_of: Mapping[int, datetime]) -> None:
    """Record how far back each project's raw rows will be gone, before anything goes: a
    dropped chunk held rows of any project."""
    gone = work.recorded_cutoffs()
    if work.drops:
        newest_drop = max(chunk.end for chunk in work.drops)
        gone = {p: max(gone.get(p, newest_drop), newest_drop) for p in cutoff_of}
    if gone:
        projects = sorted(gone)
        conn.execute(RECORD_CUTOFFS, {"projects": projects, "before": [gone[p] for p in projects]})


def _drop(conn: psycopg.Connection, chunk: Chunk) -> int:
    return int(_scalar(conn, DROP_CHUNKS, {"table": chunk.table, "end": chunk.end}))


def _delete_batch(conn: psycopg.Connection, delete: Delete, limit: int) -> int:
    params = {
        "project": delete.project_id,
        "start": delete.start,
        "before": delete.before,
        "limit": limit,
    }
    with conn.transaction():
        return conn.execute(TABLES[delete.table].delete, params).rowcount


def _attempt(report: RetentionReport, work: Callable[[], int]) -> int | None:
    """Run one transaction of the job; None if it gave up waiting for a lock."""
    try:
        return work()
    except psycopg.errors.LockNotAvailable:
        report.lock_timeouts += 1
        LOCKS_MISSED.inc()
        log.info("retention: a lock was busy for %s; left for the next pass", LOCK_TIMEOUT)
        return None


def _quarantine(
    conn: psycopg.Connection, settings: Settings, now: datetime, report: RetentionReport
) -> None:
    before = now - timedelta(days=settings.ingest_quarantine_retention_days)
    limit = settings.retention_batch_rows
    while (purged := _attempt(report, partial(purge_quarantine, conn, before, limit))) is not None:
        report.deleted("quarantine", purged)
        if purged < limit:
            break


class RetentionSchedule:
    """Runs a pass every FIELDTRACK_RETENTION_EVERY_S on a thread of its own, with its own
    database connection: the job never holds up the ingest writer."""

    def __init__(self, settings: Settings, now: Callable[[], datetime]) -> None:
        self._settings = settings
        self._now = now
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ingest-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._settings.database_url.get_secret_value(),
                    autocommit=True,
                    connect_timeout=5,
                ) as conn:
                    report = run_retention(conn, self._settings, self._now(), self._stop.is_set)
                if report.ran:
                    log.info(
                        "retention: deleted %s, dropped %s chunks in %.1fs",
                        report.rows_deleted,
                        report.chunks_dropped,
                        report.seconds,
                    )
            except Exception:
                # Retention is housekeeping: a failed pass must not stop ingest; the next one
                # picks up where it left off.
                log.exception(
                    "retention pass failed; retrying in %ss", self._settings.retention_every_s
                )
            self._stop.wait(self._settings.retention_every_s)
