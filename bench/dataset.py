"""Benchmark datasets: the `portfolio` scenario's registry (6 customers, 12 projects, 3,000
devices) with 90 days of raw usage events and telemetry generated inside PostgreSQL.

Python through the store manages a few thousand messages a second; 50 million events need
set-based SQL. The raw rows are produced per day by ``INSERT … SELECT generate_series`` (two
connections, one day — one chunk — each at a time), then the rollups are built from them by
the statements of the rebuild operators use (services/ingest/rollups.py), the hourly ones a
day at a time on both connections. Each size lives in its own database
(``fieldtrack_bench_10m``, ``…_50m``) and is reused while its spec and size match.

What the data look like, per project and feature from the scenario's deliveries (and its
undelivered use): a device adopts a feature (``never_share``, the adoption ramp after
go-live) and uses it on a day with the scenario's ``per_device_day`` chance; a device that
reports sends 4 telemetry messages a day (battery, signal) and its usage messages, one
reading each, spread over the day, with dense sequence numbers; 0.3 % of messages are lost
(sequence gaps), 2 % of devices never report, devices of flaky fleets miss days. The events
per device-day scale so the total reaches the requested size.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from queue import Empty, Queue
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from device_sim.cli import scenario_path
from device_sim.scenario import Scenario, delivered_on, go_live, load
from device_sim.seed import seed
from services.core.migrate import migrate
from services.core.payloads import ENABLED_REPORTED
from services.infra.local import LocalServices
from services.ingest.rollups import (
    ROLLUP_TABLES,
    Index,
    drop_indexes,
    hourly_rollups,
    rollups_from_hourly,
)

SPEC = "portfolio-v5"  # change when the generator changes: cached datasets are then rebuilt
DAYS = 90
LOST_SHARE = 0.003
DEAD_SHARE = 0.02
TELEMETRY_PER_DAY = 4

RAW_TABLES = ("usage_events", "metric_samples")

Report = Callable[[str], None]
Cursor = psycopg.Cursor[tuple[Any, ...]]
T = TypeVar("T")

SETUP = """
CREATE OR REPLACE FUNCTION bench_u(x bigint, salt integer) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (hashint8extended(x, salt) & 2147483647)::float8 / 2147483648.0;
DROP TABLE IF EXISTS bench_params, bench_projects, bench_device_days, bench_enabled;
CREATE TABLE bench_enabled (project_id bigint NOT NULL, feature_key text NOT NULL,
                            share float8 NOT NULL);
CREATE TABLE bench_projects (project_id bigint PRIMARY KEY, go_live_day integer NOT NULL,
                             offline_share float8 NOT NULL);
CREATE TABLE bench_params (project_id bigint NOT NULL, fidx integer NOT NULL,
                           feature_key text NOT NULL, p_day float8 NOT NULL,
                           never_share float8 NOT NULL, a_start float8 NOT NULL,
                           a_end float8 NOT NULL, ramp_days integer NOT NULL,
                           weight float8 NOT NULL, live_day integer NOT NULL);
CREATE TABLE IF NOT EXISTS bench_dataset (
    target bigint NOT NULL, spec text NOT NULL, start_day date NOT NULL, days integer NOT NULL,
    usage_rows bigint NOT NULL, metric_rows bigint NOT NULL, generate_s float8 NOT NULL,
    rebuild_s float8 NOT NULL, created_at timestamptz NOT NULL DEFAULT now()
);
"""
# One row per device and day it reports: the features it uses that day (with weights as
# cumulative thresholds), how many usage readings it sends (n) and its first sequence number.
DEVICE_DAYS = """
CREATE TABLE bench_device_days AS
WITH dev AS (
    SELECT d.id AS device_id, d.project_id, p.go_live_day, p.offline_share,
           0.5 + bench_u(d.id, 1) AS activity
    FROM devices d JOIN bench_projects p ON p.project_id = d.project_id
    WHERE bench_u(d.id, 2) >= %(dead)s
), days AS (
    SELECT dev.*, day FROM dev CROSS JOIN generate_series(0, %(days)s - 1) AS day
    WHERE day >= go_live_day
      AND NOT (bench_u(device_id, 3) < offline_share AND bench_u(device_id * 1000 + day, 4) < 0.15)
), used AS (
    SELECT days.device_id, days.day, pr.fidx, pr.feature_key, pr.weight
    FROM days JOIN bench_params pr ON pr.project_id = days.project_id
    WHERE days.day >= pr.live_day  -- used from its delivery on
      AND bench_u(days.device_id * 100 + pr.fidx, 5) >= pr.never_share
      AND bench_u(days.device_id * 100 + pr.fidx, 6) < CASE
          WHEN days.day <= days.go_live_day THEN pr.a_start
          WHEN pr.ramp_days = 0 THEN pr.a_end
          ELSE pr.a_start + (pr.a_end - pr.a_start)
               * least(1.0, (days.day - days.go_live_day)::float8 / pr.ramp_days) END
      AND bench_u((days.device_id * 1000 + days.day) * 100 + pr.fidx, 7) < pr.p_day
), per_day AS (
    SELECT device_id, day, array_agg(feature_key ORDER BY fidx) AS feats,
           array_agg(weight ORDER BY fidx) AS weights, sum(weight) AS weight
    FROM used GROUP BY 1, 2
)
SELECT days.device_id, days.project_id, days.day, days.activity, per_day.feats,
       per_day.weights, coalesce(per_day.weight, 0) AS weight,
       0 AS n, 0 AS m, 0::bigint AS base, NULL::float8[] AS thr
FROM days LEFT JOIN per_day USING (device_id, day)
"""
# Readings per device-day scaled to the target; dense sequence numbers across the days.
SIZE_DEVICE_DAYS = """
WITH scale AS (
    SELECT %(target)s / sum(weight * activity) AS k FROM bench_device_days
), sized AS (
    SELECT device_id, day, round(k * weight * activity)::int AS n FROM bench_device_days, scale
)
UPDATE bench_device_days dd
SET n = sized.n, m = sized.n + %(telemetry)s,
    thr = (SELECT array_agg(c ORDER BY i) FROM (
              SELECT i, sum(w) OVER (ORDER BY i) / dd.weight AS c
              FROM unnest(dd.weights) WITH ORDINALITY AS x(w, i)) cs
           WHERE i < array_length(dd.weights, 1)) || ARRAY[2.0::float8]
FROM sized WHERE sized.device_id = dd.device_id AND sized.day = dd.day
"""
NUMBER_DEVICE_DAYS = """
UPDATE bench_device_days dd SET base = b.base
FROM (SELECT device_id, day, sum(m) OVER (PARTITION BY device_id ORDER BY day) - m AS base
      FROM bench_device_days) b
WHERE b.device_id = dd.device_id AND b.day = dd.day;
CREATE INDEX ON bench_device_days (day, device_id);
ANALYZE bench_device_days;
"""
# Position j of a device-day's m messages: telemetry at the 4 positions ceil(k·m/4), usage
# elsewhere (its feature by a low-discrepancy walk over the weights); lost ones skipped.
USAGE = """
INSERT INTO usage_events (device_id, project_id, feature_key, device_time, received_at, seq,
                          item, count, duration_ms)
SELECT dd.device_id, dd.project_id,
       dd.feats[1 + width_bucket(j * 0.6180339887498949::float8
                                 - floor(j * 0.6180339887498949::float8), dd.thr)],
       at.t, at.t + interval '2 seconds', dd.base + j, 0, 1 + ((dd.base + j) %% 5 = 0)::int,
       NULL
FROM bench_device_days dd
CROSS JOIN LATERAL generate_series(0, dd.m - 1) AS j
CROSS JOIN LATERAL (SELECT %(start)s::timestamptz + dd.day * interval '1 day'
                           + (j + 0.5) / dd.m * interval '1 day' AS t) AS at
WHERE dd.day = %(day)s AND dd.n > 0 AND (j * %(telemetry)s) %% dd.m >= %(telemetry)s
  AND bench_u(dd.device_id * 1000000000 + dd.base + j, 8) >= %(lost)s
ORDER BY dd.device_id, j
"""
TELEMETRY = """
INSERT INTO metric_samples (device_id, project_id, name, value, unit, device_time, received_at,
                            seq, item)
SELECT dd.device_id, dd.project_id, metric.name, metric.value, metric.unit, at.t,
       at.t + interval '2 seconds', dd.base + pos.j, metric.item
FROM bench_device_days dd
CROSS JOIN generate_series(0, %(telemetry)s - 1) AS k
CROSS JOIN LATERAL (SELECT (k * dd.m + %(telemetry)s - 1) / %(telemetry)s AS j) AS pos
CROSS JOIN LATERAL (SELECT %(start)s::timestamptz + dd.day * interval '1 day'
                           + (pos.j + 0.5) / dd.m * interval '1 day' AS t) AS at
CROSS JOIN LATERAL (VALUES
    (0, 'battery', 100.0 - dd.day * 0.5 - bench_u(dd.device_id, 9) * 20, '%%'),
    (1, 'rssi', -50.0 - bench_u(dd.device_id * 1000 + dd.day, 10) * 40, 'dBm')
) AS metric(item, name, value, unit)
WHERE dd.day = %(day)s
  AND bench_u(dd.device_id * 1000000000 + dd.base + pos.j, 8) >= %(lost)s
ORDER BY dd.device_id, pos.j, metric.item
"""
# What fleets that report their settings say is switched on (the scenario's enabled_share,
# and '*' for "reported its list"), on every day a device reports, in the hours of its four
# telemetry messages.
ENABLED = """
INSERT INTO enabled_daily (project_id, day, feature_key, device_id, hours)
SELECT dd.project_id, %(start_day)s::date + dd.day, e.feature_key, dd.device_id,
       (1 << 0) | (1 << 6) | (1 << 12) | (1 << 18)
FROM bench_device_days dd JOIN bench_enabled e ON e.project_id = dd.project_id
WHERE bench_u(dd.device_id * 1000 + hashtext(e.feature_key) %% 1000, 11) < e.share
"""
DEVICE_STATE = """
INSERT INTO device_state (device_id, online, online_since, last_seen, last_seq, last_seq_at,
                          firmware)
SELECT d.id, true, %(start)s::timestamptz + last.day * interval '1 day',
       %(start)s::timestamptz + (last.day + 1) * interval '1 day' - interval '1 minute',
       last.base + last.m - 1,
       %(start)s::timestamptz + (last.day + 1) * interval '1 day' - interval '1 minute',
       d.firmware
FROM devices d JOIN LATERAL (
    SELECT day, base, m FROM bench_device_days dd WHERE dd.device_id = d.id
    ORDER BY day DESC LIMIT 1) AS last ON true
ON CONFLICT (device_id) DO NOTHING
"""
# A chunk is created under a lock on its hypertable held to the end of the transaction: made
# all at once first, so the day loaders (one chunk each) do not wait for one another.
CREATE_CHUNKS = (
    """INSERT INTO usage_events (device_id, project_id, feature_key, device_time, received_at,
                              seq, count)
       SELECT 0, 0, '', %(start)s::timestamptz + day * interval '1 day',
              %(start)s::timestamptz, 0, 0
       FROM generate_series(0, %(days)s - 1) AS day""",
    """INSERT INTO metric_samples (device_id, project_id, name, value, device_time, received_at,
                                seq)
       SELECT 0, 0, '', 0, %(start)s::timestamptz + day * interval '1 day',
              %(start)s::timestamptz, 0
       FROM generate_series(0, %(days)s - 1) AS day""",
    "DELETE FROM usage_events WHERE device_id = 0",
    "DELETE FROM metric_samples WHERE device_id = 0",
)
# The raw hypertables first (their root's own size is 0: the rows are in the chunks), then
# largest first, so the two connections analysing them finish together.
TABLES = """
SELECT c.relname FROM pg_class c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
ORDER BY c.relname NOT IN ('usage_events', 'metric_samples'), pg_total_relation_size(c.oid) DESC
"""
RECORD = """
INSERT INTO bench_dataset (target, spec, start_day, days, usage_rows, metric_rows, generate_s,
                           rebuild_s)
VALUES (%(target)s, %(spec)s, %(start_day)s, %(days)s, %(usage_rows)s, %(metric_rows)s,
        %(generate_s)s, %(rebuild_s)s)
"""


@dataclass(frozen=True)
class Dataset:
    url: str
    database: str
    target: int
    start: datetime  # UTC midnight; the data cover [start, end)
    end: datetime
    usage_rows: int
    metric_rows: int
    generate_s: float  # raw rows (when this dataset was made)
    rebuild_s: float  # rollups from the raw rows (idem)
    reused: bool
    size_bytes: int


def database_name(target: int) -> str:
    return (
        f"fieldtrack_bench_{target // 1_000_000}m"
        if target >= 1_000_000
        else (f"fieldtrack_bench_{target}")
    )


def _existing(url: str, target: int) -> tuple[date, int, int, float, float] | None:
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                """SELECT start_day, usage_rows, metric_rows, generate_s, rebuild_s
                   FROM bench_dataset WHERE target = %s AND spec = %s AND days = %s""",
                (target, SPEC, DAYS),
            ).fetchone()
    except psycopg.Error:
        return None
    return (row[0], int(row[1]), int(row[2]), float(row[3]), float(row[4])) if row else None


def ensure_dataset(
    services: LocalServices, target: int, report: Report = print, *, workers: int = 2
) -> Dataset:
    """The dataset of *target* raw usage events: reused when present, generated otherwise."""
    name = database_name(target)
    password = services.load_secrets()["DB_PASSWORD"]
    url = services.postgres.app_url(password, name)
    found = _existing(url, target) if _database_exists(services, name) else None
    if found is None:
        report(f"{name}: generating {target:,} usage events ({DAYS} days)")
        _drop_database(services, name)
        services.postgres.ensure_app_database(password, name)
        migrate(url)
        _generate(url, target, report, workers)
        found = _existing(url, target)
        assert found is not None  # noqa: S101 - _generate records it
        reused = False
    else:
        reused = True
    start_day, usage_rows, metric_rows, generate_s, rebuild_s = found
    start = datetime(start_day.year, start_day.month, start_day.day, tzinfo=UTC)
    with psycopg.connect(services.postgres.superuser_conninfo(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(%s)", (name,)).fetchone()
    size = int(row[0]) if row else 0
    if reused:
        report(f"{name}: reusing {usage_rows:,} usage events ({size / 2**30:.1f} GiB)")
    return Dataset(
        url,
        name,
        target,
        start,
        start + timedelta(days=DAYS),
        usage_rows,
        metric_rows,
        generate_s,
        rebuild_s,
        reused,
        size,
    )


def _database_exists(services: LocalServices, name: str) -> bool:
    with psycopg.connect(services.postgres.superuser_conninfo(), autocommit=True) as conn:
        return (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            is not None
        )


def _drop_database(services: LocalServices, name: str) -> None:
    with psycopg.connect(services.postgres.superuser_conninfo(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _scenario_params(conn: psycopg.Connection, scenario: Scenario, end: date, start: date) -> None:
    ids: dict[str, int] = dict(conn.execute("SELECT name, id FROM projects").fetchall())
    projects, params, enabled = [], [], []
    for _, project in scenario.projects():
        pid = ids[project.name]
        live = (go_live(project, end) - start).days
        projects.append((pid, live, project.fleet.offline.share))
        uses = [
            (d.feature, d.usage, max(live, (delivered_on(project, d, end) - start).days))
            for d in project.deliveries
        ]
        uses += [(u.feature, u.usage, live) for u in project.undelivered_use]
        for fidx, (key, usage, live_day) in enumerate(uses):
            low, high = usage.events_per_use
            a = usage.adoption
            params.append(
                (
                    pid,
                    fidx,
                    key,
                    usage.per_device_day,
                    usage.never_share,
                    a.start,
                    a.end,
                    a.ramp_days,
                    (low + high) / 2,
                    live_day,
                )
            )
        if project.fleet.reports_enabled:
            enabled.append((pid, ENABLED_REPORTED, 1.0))
            enabled += [
                (pid, d.feature, d.enabled_share)
                for d in project.deliveries
                if d.status == "delivered"
            ]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO bench_projects VALUES (%s, %s, %s)", projects)
        cur.executemany(
            "INSERT INTO bench_params VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", params
        )
        cur.executemany("INSERT INTO bench_enabled VALUES (%s, %s, %s)", enabled)


def _generate(url: str, target: int, report: Report, workers: int) -> None:
    scenario = load(scenario_path("portfolio"))
    end = datetime.now(UTC).date()
    start = end - timedelta(days=DAYS)
    start_ts = datetime(start.year, start.month, start.day, tzinfo=UTC)
    began = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        seed(conn, None, scenario, end)
        conn.execute(SETUP)
        _scenario_params(conn, scenario, end, start)
        conn.execute(DEVICE_DAYS, {"dead": DEAD_SHARE, "days": DAYS})
        conn.execute(SIZE_DEVICE_DAYS, {"target": target, "telemetry": TELEMETRY_PER_DAY})
        conn.execute(NUMBER_DEVICE_DAYS)
        with conn.transaction():
            for statement in CREATE_CHUNKS:
                conn.execute(statement, {"start": start_ts, "days": DAYS})
    report(f"  registry and plan: {time.monotonic() - began:.1f}s")
    params = {"start": start_ts, "telemetry": TELEMETRY_PER_DAY, "lost": LOST_SHARE}
    loaded = {"usage_rows": 0, "metric_rows": 0}
    lock = threading.Lock()

    def load_day(cur: Cursor, day: int) -> None:
        usage = cur.execute(USAGE, {**params, "day": day}).rowcount
        metric = cur.execute(TELEMETRY, {**params, "day": day}).rowcount
        with lock:
            loaded["usage_rows"] += usage
            loaded["metric_rows"] += metric

    # the raw tables are empty: load them without indexes, then build each index once
    with _bulk_load(url, RAW_TABLES, workers):
        _each_day(url, load_day, workers, report, began)
        report(f"  raw rows loaded: {time.monotonic() - began:.0f}s; indexing")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(DEVICE_STATE, {"start": start_ts})
        conn.execute(ENABLED, {"start_day": start})
    generate_s = time.monotonic() - began
    report(f"  raw rows: {generate_s:.1f}s")
    began = time.monotonic()

    def roll_day(cur: Cursor, day: int) -> None:
        since = start_ts + timedelta(days=day)
        hourly_rollups(cur, since, since + timedelta(days=1))

    # what rebuild_rollups does in one walk, a day at a time on every worker
    with _bulk_load(url, ROLLUP_TABLES, workers) as cur:
        _each_day(url, roll_day, workers, report, began)
        report(f"  hourly rollups: {time.monotonic() - began:.0f}s")
        rollups_from_hourly(cur, None)
        report(f"  day and month rollups: {time.monotonic() - began:.0f}s; indexing")
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [name for (name,) in conn.execute(TABLES)]
    _in_parallel(url, tables, _analyze, workers)
    rebuild_s = time.monotonic() - began
    report(f"  rollups built and tables analysed: {rebuild_s:.1f}s")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            RECORD,
            {
                "target": target,
                "spec": SPEC,
                "start_day": start,
                "days": DAYS,
                **loaded,
                "generate_s": generate_s,
                "rebuild_s": rebuild_s,
            },
        )


def _analyze(cur: Cursor, table: str) -> None:
    cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))  # a hypertable's chunks too


@contextmanager
def _bulk_load(url: str, tables: Sequence[str], workers: int) -> Iterator[Cursor]:
    """Drop the indexes of the (empty) *tables* for the body, then build them again, one
    index per connection on *workers* connections (a hypertable's index is built chunk by
    chunk, on one core)."""
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SET work_mem = '1GB'")  # the day and month rollups group whole tables
        found = drop_indexes(cur, tables)
        yield cur
    # a table's key first (adding it locks the table), then one index of each table in
    # turn, largest table first (*tables*' order): the connections seldom wait on each other
    turn: dict[Index, int] = {}
    per_table: Counter[str] = Counter()
    for index in sorted(found, key=lambda index: index.constraint is None):
        turn[index] = per_table[index.table]
        per_table[index.table] += 1
    in_turn = sorted(found, key=lambda index: (turn[index], tables.index(index.table)))
    _in_parallel(url, in_turn, lambda cur, index: index.create(cur), workers)


def _each_day(
    url: str, task: Callable[[Cursor, int], None], workers: int, report: Report, began: float
) -> None:
    """Run *task* for every day of the dataset, a day (one chunk) at a time on *workers*
    connections, reporting every ten days."""
    done = [0]
    lock = threading.Lock()

    def day_task(cur: Cursor, day: int) -> None:
        task(cur, day)
        with lock:
            done[0] += 1
            if done[0] % 10 == 0:
                report(f"  {done[0]}/{DAYS} days, {time.monotonic() - began:.0f}s")

    _in_parallel(url, range(DAYS), day_task, workers)


def _in_parallel(
    url: str, items: Iterable[T], task: Callable[[Cursor, T], None], workers: int
) -> None:
    """Run *task* for every item, in order, on *workers* connections of their own."""
    queue: Queue[T] = Queue()
    for item in items:
        queue.put(item)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
                cur.execute("SET synchronous_commit = off")
                cur.execute("SET work_mem = '256MB'")  # a day's sorts stay in memory
                cur.execute("SET maintenance_work_mem = '1GB'")
                # a statement over a hypertable of 90 chunks would spend seconds compiling
                # code for every chunk's plan; these are many and each is short
                cur.execute("SET jit = off")
                while not errors:
                    try:
                        item = queue.get_nowait()
                    except Empty:
                        return
                    task(cur, item)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    if workers < 1:
        raise ValueError(f"workers must be 1 or more, not {workers}")
    threads = [threading.Thread(target=work, name=f"bench-gen-{n}") for n in range(workers)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException as exc:  # Ctrl-C: the workers stop after the statement they run
        errors.append(exc)
        raise
    if errors:
        raise errors[0]
