"""Retention: a project keeps exactly its `retention_days` of raw rows, one without keeps
everything the default allows, the rollups (and so the analytics) stay as they were, the
quarantine is purged by the same job, and ingest keeps committing while the job runs over a
hypertable of many chunks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from services.analytics.adoption import project_adoption
from services.analytics.portfolio import firmware_breakdown, project_analytics
from services.analytics.recommend import AnalyticsThresholds
from services.analytics.usage import project_usage
from services.core.errors import ConfigError
from services.core.migrate import migrate
from services.core.settings import Settings
from services.core.topics import MessageKind, device_topic
from services.core.windows import Window
from services.infra.local import LocalServices
from services.ingest.batch import RawMessage
from services.ingest.directory import DeviceDirectory
from services.ingest.history import HistoryImporter
from services.ingest.retention import run_retention
from services.ingest.rollups import ENABLED_TABLES, ROLLUP_TABLES, rebuild_rollups
from services.ingest.store import store_batch
from services.registry import upserts
from tests.integration.conftest import scratch_database

T = AnalyticsThresholds()
DAY = timedelta(days=1)
# The analytics are read for windows that end at a whole hour before the test runs, so the
# same call gives the same answer before and after the job (no "days so far" moves).
UNTIL = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
HISTORY_DAYS = 30
RETENTION_DAYS = 7
FEATURES = ("remote_unlock", "energy_report")
RAW = {"usage_events": "device_time", "metric_samples": "device_time"}
STATUS = "device_status_history"


@dataclass(frozen=True)
class History:
    url: str
    short: int  # retention_days = 7
    keeps: int  # no retention_days: the default (400 days) keeps all 30


def _history(serials: list[str]) -> Iterator[tuple[str, MessageKind, bytes]]:
    """30 days of use and telemetry every 40 minutes per device, and a status with the
    firmware every other day (a firmware update 12 days ago)."""
    start = UNTIL - HISTORY_DAYS * DAY
    for n, serial in enumerate(serials):
        at, seq = start + timedelta(minutes=7 * n), 0
        while at < UNTIL:
            seq += 1
            stamp = at.isoformat()
            if seq % 2:
                events = [{"feature": FEATURES[(seq // 2 + n) % 2], "count": 1 + seq % 3}]
                body: dict[str, Any] = {"v": 1, "seq": seq, "ts": stamp, "events": events}
                yield serial, MessageKind.USAGE, json.dumps(body).encode()
            else:
                metrics = [{"name": "battery", "value": 90 - seq % 50, "unit": "%"}]
                body = {"v": 1, "seq": seq, "ts": stamp, "metrics": metrics}
                yield serial, MessageKind.TELEMETRY, json.dumps(body).encode()
            at += timedelta(minutes=40)
        for day in range(0, HISTORY_DAYS, 2):
            at = start + day * DAY + timedelta(hours=3, minutes=n)
            firmware = "1.0" if at < UNTIL - 12 * DAY else "1.1"
            body = {"v": 1, "state": "online", "ts": at.isoformat(), "firmware": firmware}
            yield serial, MessageKind.STATUS, json.dumps(body).encode()


@pytest.fixture(scope="module")
def history(local_services: LocalServices, settings: Settings) -> Iterator[History]:
    app_url = settings.database_url.get_secret_value()
    with scratch_database(local_services, app_url, "fieldtrack_retention") as url:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            customer = upserts.upsert_customer(conn, "Retention Co", "waist", "retail", "adoption")
            features = [upserts.upsert_feature(conn, k, k, None, None) for k in FEATURES]
            ids, serials = [], []
            for name in ("short", "keeps"):
                pid = upserts.upsert_project(
                    conn,
                    customer,
                    name,
                    contract_value=1000,
                    currency="EUR",
                    go_live_date=(UNTIL - 60 * DAY).date(),
                    status="live",
                )
                for feature in features:
                    upserts.upsert_delivery(
                        conn,
                        pid,
                        feature,
                        status="delivered",
                        delivered_on=None,
                        cost_person_days=None,
                        contract_line_value=100,
                        business_score=3,
                        strategic=False,
                    )
                fleet = [(f"ret-{name}-{d}", "m", "1.0") for d in range(6)]
                upserts.provision_devices(conn, None, pid, fleet)
                ids.append(pid)
                serials += [s for s, _, _ in fleet]
            conn.execute(
                "UPDATE projects SET retention_days = %s WHERE id = %s", (RETENTION_DAYS, ids[0])
            )
            importer = HistoryImporter(conn)
            for serial, kind, payload in _history(serials):
                importer.add(serial, kind, payload)
            assert importer.finish().duplicates == 0
        yield History(url, ids[0], ids[1])


def _raw_counts(conn: psycopg.Connection, project: int, since: datetime | None) -> dict[str, int]:
    """Raw rows of a project per table, from *since* on (None: all)."""
    counts = {}
    for table, column in (*RAW.items(), (STATUS, "at")):
        query = f"SELECT count(*) FROM {table} WHERE project_id = %s AND {column} >= %s"
        row = conn.execute(query, (project, since or datetime.min.replace(tzinfo=UTC))).fetchone()
        assert row is not None
        counts[table] = row[0]
    return counts


def _analytics(conn: psycopg.Connection, project: int, window: Window) -> dict[str, Any]:
    """What the API serves about a project for a window: analytics with verdicts, usage,
    weekly adoption, and the firmware breakdown of each feature."""
    analytics = project_analytics(conn, project, window, T)
    return {
        "analytics": analytics.model_dump(),
        "usage": project_usage(conn, project, window.since, window.until).model_dump(),
        "adoption": project_adoption(conn, project, window, analytics.features).model_dump(),
        "firmware": {
            key: [g.model_dump() for g in firmware_breakdown(conn, project, key, window)]
            for key in FEATURES
        },
    }


def _rollups(conn: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4").fetchall()
        for table in (*ROLLUP_TABLES, *ENABLED_TABLES)
    }


def test_a_project_keeps_its_retention_of_raw_rows_and_all_its_analytics(
    history: History, settings: Settings
) -> None:
    job_settings = settings.model_copy(update={"database_url": SecretStr(history.url)})
    cutoff = UNTIL - RETENTION_DAYS * DAY
    month = Window(UNTIL - HISTORY_DAYS * DAY, UNTIL)
    old_weeks = Window(UNTIL - HISTORY_DAYS * DAY, UNTIL - 14 * DAY)  # wholly past retention
    with psycopg.connect(history.url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO quarantine (received_at, topic, device_serial, reason, detail,
                                       payload, payload_size)
               VALUES (%s, 't', 'q-old', 'not_json', 'test', 'x', 1),
                      (%s, 't', 'q-new', 'not_json', 'test', 'y', 1)""",
            (UNTIL - 31 * DAY, UNTIL - 29 * DAY),
        )
        short_all = _raw_counts(conn, history.short, None)
        short_kept = _raw_counts(conn, history.short, cutoff)
        keeps_all = _raw_counts(conn, history.keeps, None)
        assert all(short_all[t] > short_kept[t] > 0 for t in short_all)
        analytics = {
            (p, w): _analytics(conn, p, w)
            for p in (history.short, history.keeps)
            for w in (month, old_weeks)
        }
        rollups = _rollups(conn)

        first = run_retention(conn, job_settings, UNTIL)

        assert first.ran
        kept = _raw_counts(conn, history.short, None)
        # usage and metrics: exactly the last 7 days
        for table in RAW:
            assert kept[table] == short_kept[table], table
        # status history: the last 7 days, and the firmware changes before (each device's
        # first report, 1.0, and its update to 1.1 twelve days ago)
        devices = conn.execute(
            "SELECT count(*) FROM devices WHERE project_id = %s", (history.short,)
        ).fetchone()
        assert kept[STATUS] == short_kept[STATUS] + 2 * (devices[0] if devices else 0)
        assert _raw_counts(conn, history.keeps, None) == keeps_all
        assert first.rows_deleted == {
            **{t: short_all[t] - kept[t] for t in short_all},
            "quarantine": 1,
        }
        serials = [r[0] for r in conn.execute("SELECT device_serial FROM quarantine")]
        assert serials == ["q-new"]
        # the rollups, and so every analytics answer, are as they were
        assert _rollups(conn) == rollups
        for (project, window), before in analytics.items():
            assert _analytics(conn, project, window) == before, (project, window)

        second = run_retention(conn, job_settings, UNTIL)
        assert second.ran
        assert not any(second.rows_deleted.values())
        assert not second.chunks_dropped

        # a rebuild would recompute the old months from rows that are gone: refused
        gone = conn.execute(
            "SELECT deleted_before FROM raw_retention WHERE project_id = %s", (history.short,)
        ).fetchone()
        assert gone == (cutoff,)
        for since in (None, UNTIL - 10 * DAY):
            with pytest.raises(ConfigError, match="deleted by retention"):
                rebuild_rollups(conn, since)


# The lock footprint: many daily chunks, enough rows that a pass takes seconds.
CHUNK_DAYS = 70
DEFAULT_DAYS = 30  # chunks older than this (and than every project's cutoff) are dropped
DEVICES = 5
# The longest a commit of ingest may wait while the job runs. The job's own transactions wait
# at most LOCK_TIMEOUT (200 ms) for a lock; anything near a second means ingest queued
# behind it.
MAX_COMMIT_GAP_S = 1.0
SEED_ROWS = """
INSERT INTO {table} (device_id, project_id, {columns}, device_time, received_at, seq, item)
SELECT d.id, d.project_id, {values}, t, t, (extract(epoch FROM t) / 60)::bigint, 0
FROM devices d,
     generate_series(%(start)s::timestamptz, %(until)s::timestamptz, interval '1 minute') t
WHERE d.project_id = %(project)s
"""


def _seed(conn: psycopg.Connection, project: int, start: datetime, until: datetime) -> None:
    params = {"project": project, "start": start, "until": until}
    for table, columns, values in (
        ("usage_events", "feature_key, count", "'remote_unlock', 1"),
        ("metric_samples", "name, value, unit", "'battery', 80, '%%'"),
    ):
        sql = SEED_ROWS.format(table=table, columns=columns, values=values)
        conn.execute(sql, params)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ingest_keeps_committing_while_the_job_works_through_many_chunks(
    local_services: LocalServices, settings: Settings
) -> None:
    app_url = settings.database_url.get_secret_value()
    now = datetime.now(UTC)
    with (
        scratch_database(local_services, app_url, "fieldtrack_retention_locks") as url,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        migrate(url)
        customer = upserts.upsert_customer(conn, "Locks Co", "waist", "retail", "adoption")
        projects = {}
        for name, retention in (("short", RETENTION_DAYS), ("default", None), ("live", None)):
            pid = upserts.upsert_project(
                conn,
                customer,
                name,
                contract_value=None,
                currency="EUR",
                go_live_date=None,
                status="live",
            )
            conn.execute("UPDATE projects SET retention_days = %s WHERE id = %s", (retention, pid))
            count = 1 if name == "live" else DEVICES
            upserts.provision_devices(
                conn, None, pid, [(f"lock-{name}-{d}", "m", "1.0") for d in range(count)]
            )
            projects[name] = pid
        start = now - CHUNK_DAYS * DAY
        _seed(conn, projects["short"], start, now)
        _seed(conn, projects["default"], start, now)
        conn.execute("ANALYZE usage_events")
        conn.execute("ANALYZE metric_samples")
        chunks = conn.execute(
            "SELECT count(*) FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'usage_events'"
        ).fetchone()
        assert chunks is not None
        assert chunks[0] >= 60

        # Ingest's store path, on its own connection, committing batches all along: readings
        # of now, and late ones of ten days ago (in chunks the job deletes from).
        commits: list[float] = []
        stop = threading.Event()
        failures: list[BaseException] = []

        def ingest() -> None:
            directory = DeviceDirectory()
            seq = 0
            try:
                with psycopg.connect(url) as writer:
                    while not stop.is_set():
                        batch = []
                        for age in (timedelta(0), timedelta(0), 10 * DAY):
                            seq += 1
                            ts = datetime.now(UTC) - age
                            events = [{"feature": "remote_unlock", "count": 1}]
                            body = {"v": 1, "seq": seq, "ts": ts.isoformat(), "events": events}
                            topic = device_topic("lock-live-0", MessageKind.USAGE)
                            batch.append(RawMessage(topic, json.dumps(body).encode(), ts))
                        with writer.transaction():
                            store_batch(
                                writer,
                                batch,
                                directory,
                                max_future_skew=timedelta(minutes=10),
                                now=datetime.now(UTC),
                                late_data_days=30,
                            )
                        commits.append(time.monotonic())
                        time.sleep(0.01)
            except BaseException as exc:
                failures.append(exc)

        writer = threading.Thread(target=ingest, name="test-ingest")
        writer.start()
        try:
            time.sleep(0.5)
            job_settings = settings.model_copy(
                update={
                    "database_url": SecretStr(url),
                    "raw_retention_days": DEFAULT_DAYS,
                    "retention_batch_rows": 2000,
                }
            )
            began = time.monotonic()
            report = run_retention(conn, job_settings, datetime.now(UTC))
            ended = time.monotonic()
            time.sleep(0.5)
        finally:
            stop.set()
            writer.join(30)
        assert not failures, failures
        during = [t for t in commits if began <= t <= ended]
        around = [max(t for t in commits if t < began), *during]
        around.append(min(t for t in commits if t > ended))
        longest = max(b - a for a, b in pairwise(around))
        print(
            f"\nretention pass: {ended - began:.2f}s, rows deleted {report.rows_deleted}, "
            f"chunks dropped {report.chunks_dropped}, lock timeouts {report.lock_timeouts}; "
            f"ingest committed {len(during)} batches during it, longest gap {longest:.3f}s"
        )
        assert report.ran
        assert ended - began > 1.0, "too little work to say anything about the lock footprint"
        assert longest < MAX_COMMIT_GAP_S
        assert report.chunks_dropped["usage_events"] >= CHUNK_DAYS - DEFAULT_DAYS - 1
        assert report.rows_deleted["usage_events"] > 0
        for table in RAW:
            oldest = conn.execute(
                f"SELECT project_id, min(device_time) FROM {table} GROUP BY 1"
            ).fetchall()
            by_project: dict[int, datetime] = dict(oldest)
            assert by_project[projects["short"]] >= now - RETENTION_DAYS * DAY
            assert by_project[projects["default"]] >= now - DEFAULT_DAYS * DAY
        live = conn.execute(
            "SELECT count(*) FROM usage_events WHERE project_id = %s", (projects["live"],)
        ).fetchone()
        assert live is not None
        assert live[0] == 3 * len(commits)  # nothing of what ingest stored was deleted


def test_readings_older_than_the_projects_retention_are_too_old_for_live_ingest(
    history: History,
) -> None:
    """Otherwise a late redelivery of a message whose rows retention deleted would be stored
    again and counted twice in the rollups."""
    with psycopg.connect(history.url) as conn:
        batch = []
        for serial in ("ret-short-0", "ret-keeps-0"):
            at = datetime.now(UTC) - (RETENTION_DAYS + 1) * DAY
            events = [{"feature": FEATURES[0], "count": 1}]
            body = {"v": 1, "seq": 10**6, "ts": at.isoformat(), "events": events}
            batch.append(
                RawMessage(device_topic(serial, MessageKind.USAGE), json.dumps(body).encode(), at)
            )
        with conn.transaction():
            result = store_batch(
                conn,
                batch,
                DeviceDirectory(),
                max_future_skew=timedelta(minutes=10),
                now=datetime.now(UTC),
                late_data_days=30,
            )
    assert result.usage_rows == 1  # the project without retention_days took its reading
    assert dict(result.quarantined) == {"too_old": 1}
