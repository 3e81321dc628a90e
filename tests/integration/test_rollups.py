"""Day and month rollups: the analytics read from them equal the hourly definitions for any
window, ingest keeps them exact under redelivery, and the rebuild equals what ingest kept."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from services.analytics.measures import Window, measure_projects
from services.analytics.portfolio import firmware_breakdown
from services.analytics.usage import project_usage
from services.analytics.windows import Span
from services.core.migrate import migrate
from services.core.settings import Settings
from services.core.topics import MessageKind
from services.infra.local import LocalServices
from services.ingest.history import HistoryImporter
from services.ingest.rollups import (
    ROLLUP_TABLES,
    hourly_rollups,
    rebuild_rollups,
    rollups_from_hourly,
)
from services.registry import upserts
from tests.integration.conftest import scratch_database

START = datetime(2025, 1, 27, 5, 17, tzinfo=UTC)  # the history crosses a month boundary
DAYS = 10
FEATURES = ("remote_unlock", "access_logs", "energy_report", "guest_access")
DELIVERED = FEATURES[:3]  # guest_access is used without being delivered


@dataclass(frozen=True)
class History:
    url: str
    project_ids: list[int]
    messages: list[tuple[str, MessageKind, bytes]]


def _messages(serials: list[str], rng: random.Random) -> list[tuple[str, MessageKind, bytes]]:
    """Each device's messages in order: usage and telemetry at random intervals, with lost
    messages (sequence gaps), reboots (numbering restarts) and silent spells."""
    out = []
    for serial in serials:
        seq, at = rng.randint(0, 50), START + timedelta(minutes=rng.randint(0, 600))
        features = rng.sample(FEATURES, rng.randint(0, len(FEATURES)))
        while at < START + timedelta(days=DAYS):
            roll = rng.random()
            seq = 1 if roll < 0.01 else seq + (rng.randint(2, 4) if roll < 0.05 else 1)
            stamp = at.isoformat()
            if features and rng.random() < 0.7:
                events = [
                    {"feature": rng.choice(features), "count": rng.randint(0, 3)}
                    for _ in range(rng.randint(1, 3))
                ]
                body = {"v": 1, "seq": seq, "ts": stamp, "events": events}
                out.append((serial, MessageKind.USAGE, json.dumps(body).encode()))
            else:
                metrics = [{"name": "battery", "value": 80.0, "unit": "%"}]
                body = {"v": 1, "seq": seq, "ts": stamp, "metrics": metrics}
                out.append((serial, MessageKind.TELEMETRY, json.dumps(body).encode()))
            silent = rng.random() < 0.01
            at += (
                timedelta(hours=rng.randint(12, 60))
                if silent
                else timedelta(minutes=rng.randint(5, 150))
            )
    return out


def _import(conn: psycopg.Connection, messages: list[tuple[str, MessageKind, bytes]]) -> int:
    importer = HistoryImporter(conn)
    for n, (serial, kind, payload) in enumerate(messages, 1):
        importer.add(serial, kind, payload)
        if n % 97 == 0:  # many small transactions: the rollups' upsert paths are exercised
            importer.flush()
    return importer.finish().duplicates


@pytest.fixture(scope="module")
def history(local_services: LocalServices, settings: Settings) -> Iterator[History]:
    app_url = settings.database_url.get_secret_value()
    with scratch_database(local_services, app_url, "fieldtrack_rollups") as url:
        migrate(url)
        rng = random.Random(6)
        with psycopg.connect(url, autocommit=True) as conn:
            customer = upserts.upsert_customer(conn, "Rollup Co", "waist", "retail", "adoption")
            ids = {k: upserts.upsert_feature(conn, k, k.replace("_", " "), None, None)
                   for k in FEATURES}  # fmt: skip
            project_ids, serials = [], []
            for n in range(3):
                pid = upserts.upsert_project(
                    conn, customer, f"Rollups {n}", contract_value=None, currency="EUR",
                    go_live_date=START.date() - timedelta(days=3), status="live",
                )  # fmt: skip
                for key in DELIVERED:
                    upserts.upsert_delivery(
                        conn, pid, ids[key], status="delivered", delivered_on=None,
                        cost_person_days=None, contract_line_value=None, business_score=None,
                        strategic=False,
                    )  # fmt: skip
                fleet = [(f"rollup-{n}-{d}", "m", rng.choice(["1.0", "1.1"])) for d in range(8)]
                upserts.provision_devices(conn, None, pid, fleet)
                project_ids.append(pid)
                serials += [s for s, _, _ in fleet]
            messages = _messages(serials, rng)
            assert _import(conn, messages) == 0
        yield History(url, project_ids, messages)


def rollup_rows(conn: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4").fetchall()
        for table in ROLLUP_TABLES
    }


# The hourly definitions the rollups must reproduce (the queries they replaced).
REF_COVERAGE = """
SELECT count(DISTINCT device_id)::int,
       count(DISTINCT (device_id, date_trunc('day', hour, 'UTC')))::int,
       sum(messages)::bigint, (sum(messages) + greatest(sum(missing), 0))::bigint
FROM device_hourly WHERE project_id = %(project)s AND hour >= %(since)s AND hour < %(until)s
"""
REF_USAGE = """
WITH per_device AS (
    SELECT feature_key, device_id, sum(events) AS events,
           count(DISTINCT date_trunc('day', hour, 'UTC')) AS use_days
    FROM usage_hourly
    WHERE project_id = %(project)s AND hour >= %(since)s AND hour < %(until)s
    GROUP BY 1, 2
)
SELECT feature_key, count(*)::int, sum(events)::bigint, sum(use_days)::bigint
FROM per_device GROUP BY 1
"""
REF_FIRST_LAST = """
SELECT feature_key, min(hour), max(hour) FILTER (WHERE hour < %(until)s)
FROM usage_hourly WHERE project_id = %(project)s GROUP BY 1
"""
REF_FIRMWARE = """
WITH reporting AS (
    SELECT DISTINCT h.device_id FROM device_hourly h
    WHERE h.project_id = %(project)s AND h.hour >= %(since)s AND h.hour < %(until)s
), using_ AS (
    SELECT DISTINCT u.device_id FROM usage_hourly u
    WHERE u.project_id = %(project)s AND u.feature_key = %(feature)s
      AND u.hour >= %(since)s AND u.hour < %(until)s
)
SELECT coalesce(d.firmware, 'unknown'), count(*)::int,
       count(*) FILTER (WHERE d.id IN (SELECT device_id FROM using_))::int
FROM reporting r JOIN devices d ON d.id = r.device_id GROUP BY 1 ORDER BY 1
"""
REF_USAGE_PAGE = """
SELECT feature_key, sum(events)::bigint, count(DISTINCT device_id)::int, max(hour)
FROM usage_hourly
WHERE project_id = %(project)s AND hour >= time_bucket('1 hour', %(since)s::timestamptz)
  AND hour < %(until)s
GROUP BY feature_key
"""


def _windows() -> list[Window]:
    """Aligned and unaligned windows, inside a day, across the month boundary, whole days."""
    rng = random.Random(11)
    day0 = START.replace(hour=0, minute=0)
    windows = [
        Window(day0 + timedelta(days=2), day0 + timedelta(days=9)),
        Window(day0 + timedelta(days=4, hours=3), day0 + timedelta(days=4, hours=9)),
        Window(day0 + timedelta(days=4, hours=3, minutes=30), day0 + timedelta(days=5, hours=1)),
        Window(day0 + timedelta(hours=23, minutes=59), day0 + timedelta(days=8, seconds=1)),
        Window(START - timedelta(days=30), START + timedelta(days=30)),
    ]
    for _ in range(12):
        since = START + timedelta(minutes=rng.randint(-600, DAYS * 1440))
        windows.append(Window(since, since + timedelta(minutes=rng.randint(1, 6 * 1440))))
    return windows


@pytest.mark.parametrize("window", _windows(), ids=lambda w: f"{w.since:%d.%H%M}+{w.days:.2f}d")
def test_measures_equal_the_hourly_definitions(history: History, window: Window) -> None:
    with psycopg.connect(history.url, autocommit=True) as conn:
        measured = measure_projects(conn, history.project_ids, window)
        for pid in history.project_ids:
            m = measured[pid]
            params = {"project": pid, "since": window.since, "until": window.until}
            reporting, device_days, received, expected = conn.execute(
                REF_COVERAGE, params
            ).fetchone() or (0, 0, None, None)
            assert (m.coverage.devices_reporting, m.coverage.device_days_reporting) == (
                reporting, device_days,
            )  # fmt: skip
            expect = min(1.0, received / expected) if received and expected else None
            assert m.coverage.completeness == expect
            usage = {k: (n, e, d) for k, n, e, d in conn.execute(REF_USAGE, params)}
            prev = {"project": pid, "since": window.previous, "until": window.since}
            previous = {k: n for k, n, _, _ in conn.execute(REF_USAGE, prev)}
            prev_reporting = (conn.execute(REF_COVERAGE, prev).fetchone() or (0,))[0]
            first_last = {k: (f, la) for k, f, la in conn.execute(REF_FIRST_LAST, params)}
            assert {f.feature_key for f in m.features} == set(DELIVERED) | set(usage)
            for f in m.features:
                n, events, use_days = usage.get(f.feature_key, (0, 0, 0))
                assert (f.devices_using, f.events) == (n, events), f.feature_key
                assert f.stickiness == (use_days / device_days if device_days else 0.0)
                expected_prev = (
                    previous.get(f.feature_key, 0) / prev_reporting if prev_reporting else None
                )
                assert f.adoption_previous == expected_prev, f.feature_key
                assert (f.first_used, f.last_used) == first_last.get(f.feature_key, (None, None)), (
                    f.feature_key
                )
            for key in FEATURES:
                groups = firmware_breakdown(conn, pid, key, window)
                got = [(g.firmware, g.devices_reporting, g.devices_using) for g in groups]
                assert got == conn.execute(REF_FIRMWARE, {**params, "feature": key}).fetchall()
            page = project_usage(conn, pid, window.since, window.until)
            want = {k: (e, n, h) for k, e, n, h in conn.execute(REF_USAGE_PAGE, params)}
            got_page = {
                f.feature_key: (f.events, f.devices_using, f.last_used_hour)
                for f in page.features if f.feature_key in want or f.events
            }  # fmt: skip
            assert got_page == want


def test_span_edges_cover_exactly_the_window_hours() -> None:
    rng = random.Random(3)
    for _ in range(500):
        since = START + timedelta(minutes=rng.randint(0, 20000), seconds=rng.randint(0, 59))
        until = since + timedelta(minutes=rng.randint(1, 9000))
        span = Span.of(since, until)
        hours = set()
        day = span.full_start
        while day < span.full_end:
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            hours |= {start + timedelta(hours=h) for h in range(24)}
            day += timedelta(days=1)
        for day, mask in span.edges:
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            hours |= {start + timedelta(hours=h) for h in range(24) if mask >> h & 1}
        first = since.replace(minute=0, second=0) + (timedelta(hours=1) if since.minute or
                                                     since.second else timedelta())  # fmt: skip
        want, hour = set(), first
        while hour < until:
            want.add(hour)
            hour += timedelta(hours=1)
        assert hours == want, (since, until)


def test_redelivery_adds_nothing_and_rebuild_equals_ingest(history: History) -> None:
    with psycopg.connect(history.url, autocommit=True) as conn:
        kept = rollup_rows(conn)
        assert all(kept.values()), "every rollup has rows"
        duplicates = _import(conn, history.messages[::7])  # redelivered: nothing new
        assert duplicates > 0
        assert rollup_rows(conn) == kept
        assert rebuild_rollups(conn) is None
        assert rollup_rows(conn) == kept
        assert rebuild_rollups(conn, START + timedelta(days=6)) == datetime(2025, 2, 1, tzinfo=UTC)
        assert rollup_rows(conn) == kept


def test_hourly_rollups_walked_in_pieces_equal_one_walk(history: History) -> None:
    """The bench builds its datasets' hourly rollups a day at a time on two connections: any
    cut on hour boundaries must give what one walk gives, across gaps, reboots, silent spells
    longer than a piece and a month boundary."""
    rng = random.Random(11)
    with psycopg.connect(history.url, autocommit=True) as conn:
        kept = rollup_rows(conn)
        cuts = [START.replace(minute=0) + timedelta(hours=3)]
        while cuts[-1] < START + timedelta(days=DAYS):
            cuts.append(cuts[-1] + timedelta(hours=rng.choice([1, 5, 24, 31])))
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("TRUNCATE usage_hourly, device_hourly")
            for since, until in zip([None, *cuts], [*cuts, None], strict=True):
                hourly_rollups(cur, since, until)
            rollups_from_hourly(cur, None)
        assert rollup_rows(conn) == kept
