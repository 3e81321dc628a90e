"""Day and month rollups: the analytics read from them equal the hourly definitions for any
window, ingest keeps them exact under redelivery, and the rebuild equals what ingest kept."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from services.analytics.measures import measure_projects
from services.analytics.portfolio import firmware_breakdown
from services.analytics.recommend import AnalyticsThresholds
from services.analytics.usage import project_usage
from services.analytics.windows import Span
from services.core.migrate import migrate
from services.core.settings import Settings
from services.core.topics import MessageKind
from services.core.windows import Window
from services.infra.local import LocalServices
from services.ingest.history import HistoryImporter
from services.ingest.rollup_sums import MAX_SEQ_GAP
from services.ingest.rollups import (
    ENABLED_TABLES,
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
# The last project goes live in the middle of the history and gets remote_unlock later still:
# its devices report (and use features) before either, which no measure may count.
LATE_GO_LIVE = START.date() + timedelta(days=4)
LATE_DELIVERY = START.date() + timedelta(days=6)
# Half the devices of the first project report a firmware update in a status message.
REPORTED_FIRMWARE = "2.0"
FIRMWARE_AT = START + timedelta(days=5, hours=7)
T = AnalyticsThresholds()


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
        # some devices report which features they have enabled, others never do
        enabled = list(FEATURES) if rng.random() < 0.6 else None
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
                if enabled is not None and rng.random() < 0.5:
                    # what the device has switched on changes now and then; [] is "none"
                    body["enabled_features"] = rng.sample(enabled, rng.randint(0, len(enabled)))
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
            ids = {
                k: upserts.upsert_feature(conn, k, k.replace("_", " "), None, None)
                for k in FEATURES
            }
            project_ids, serials = [], []
            for n in range(4):
                late = n == 3
                pid = upserts.upsert_project(
                    conn,
                    customer,
                    f"Rollups {n}",
                    contract_value=None,
                    currency="EUR",
                    go_live_date=LATE_GO_LIVE if late else START.date() - timedelta(days=3),
                    status="live",
                )
                for key in DELIVERED:
                    upserts.upsert_delivery(
                        conn,
                        pid,
                        ids[key],
                        status="delivered",
                        delivered_on=LATE_DELIVERY if late and key == "remote_unlock" else None,
                        cost_person_days=None,
                        contract_line_value=None,
                        business_score=None,
                        strategic=False,
                    )
                fleet = [(f"rollup-{n}-{d}", "m", rng.choice(["1.0", "1.1"])) for d in range(8)]
                upserts.provision_devices(conn, None, pid, fleet)
                project_ids.append(pid)
                serials += [s for s, _, _ in fleet]
            messages = _messages(serials, rng)
            updated = [f"rollup-0-{d}" for d in range(0, 8, 2)]
            status = {
                "v": 1,
                "state": "online",
                "ts": FIRMWARE_AT.isoformat(),
                "firmware": REPORTED_FIRMWARE,
            }
            messages += [(s, MessageKind.STATUS, json.dumps(status).encode()) for s in updated]
            assert _import(conn, messages) == 0
        yield History(url, project_ids, messages)


def rollup_rows(conn: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4").fetchall()
        for table in (*ROLLUP_TABLES, *ENABLED_TABLES)
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
# Firmware as reported in a status message before the window's end, else as registered.
REF_FIRMWARE = """
WITH reporting AS (
    SELECT DISTINCT h.device_id FROM device_hourly h
    WHERE h.project_id = %(project)s AND h.hour >= %(since)s AND h.hour < %(until)s
), using_ AS (
    SELECT DISTINCT u.device_id FROM usage_hourly u
    WHERE u.project_id = %(project)s AND u.feature_key = %(feature)s
      AND u.hour >= %(since)s AND u.hour < %(until)s
), reported AS (
    SELECT DISTINCT ON (device_id) device_id, firmware FROM device_status_history
    WHERE at < %(until)s AND firmware IS NOT NULL ORDER BY device_id, at DESC
)
SELECT coalesce(rp.firmware, d.firmware, 'unknown'), rp.firmware IS NOT NULL, count(*)::int,
       count(*) FILTER (WHERE d.id IN (SELECT device_id FROM using_))::int
FROM reporting r JOIN devices d ON d.id = r.device_id
LEFT JOIN reported rp ON rp.device_id = r.device_id GROUP BY 1, 2 ORDER BY 1, 2 DESC
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


def _from(day: date | None, window: Window) -> datetime:
    """Where a measure starts: the window's start, or the day it went live when later."""
    if day is None:
        return window.since
    return max(window.since, datetime.combine(day, datetime.min.time(), tzinfo=UTC))


@pytest.mark.parametrize("window", _windows(), ids=lambda w: f"{w.since:%d.%H%M}+{w.days:.2f}d")
def test_measures_equal_the_hourly_definitions(history: History, window: Window) -> None:
    """Every measure equals its hourly definition over the part of the window each project and
    feature was live in; nothing from before go-live or delivery counts."""
    with psycopg.connect(history.url, autocommit=True) as conn:
        measured = measure_projects(conn, history.project_ids, window, T)
        pid_serials: dict[int, set[str]] = defaultdict(set)
        for pid, serial in conn.execute("SELECT project_id, serial FROM devices"):
            pid_serials[pid].add(serial)
        for pid in history.project_ids:
            m = measured[pid]
            row = conn.execute("SELECT go_live_date FROM projects WHERE id = %s", (pid,)).fetchone()
            assert row is not None
            go_live = row[0]
            delivered: dict[str, date] = dict(
                conn.execute(
                    """SELECT f.key, greatest(p.go_live_date, dl.delivered_on)
                       FROM deliveries dl JOIN features f ON f.id = dl.feature_id
                       JOIN projects p ON p.id = dl.project_id WHERE dl.project_id = %s""",
                    (pid,),
                ).fetchall()
            )
            since = _from(go_live, window)
            params = {"project": pid, "since": since, "until": window.until}
            reporting, device_days, received, expected = conn.execute(
                REF_COVERAGE, params
            ).fetchone() or (0, 0, None, None)
            assert (m.coverage.devices_reporting, m.coverage.device_days_reporting) == (
                reporting,
                device_days,
            )
            assert m.coverage.measured_since == min(since, window.until)
            expect = min(1.0, received / expected) if received and expected else None
            assert m.coverage.completeness == expect
            usage = {k: (n, e, d) for k, n, e, d in conn.execute(REF_USAGE, params)}
            prev = {"project": pid, "since": window.previous, "until": window.since}
            previous = {k: n for k, n, _, _ in conn.execute(REF_USAGE, prev)}
            prev_reporting, prev_days, _, _ = conn.execute(REF_COVERAGE, prev).fetchone() or (
                0,
                0,
                None,
                None,
            )
            first_last = {k: (f, la) for k, f, la in conn.execute(REF_FIRST_LAST, params)}
            assert {f.feature_key for f in m.features} == set(DELIVERED) | set(usage)
            for f in m.features:
                live = delivered.get(f.feature_key, go_live)
                fsince = _from(live, window)
                fparams = {**params, "since": fsince}
                n_reporting, n_days, _, _ = conn.execute(REF_COVERAGE, fparams).fetchone() or (
                    0,
                    0,
                    None,
                    None,
                )
                fusage = {k: (n, e, d) for k, n, e, d in conn.execute(REF_USAGE, fparams)}
                n, events, use_days = fusage.get(f.feature_key, (0, 0, 0))
                where = (f.feature_key, fsince)
                assert (f.devices_reporting, f.device_days_reporting) == (n_reporting, n_days)
                assert (f.devices_using, f.events) == (n, events), where
                assert f.stickiness == (use_days / n_days if n_days else 0.0), where
                assert f.adoption == (n / n_reporting if n_reporting else 0.0), where
                assert f.adoption_low <= f.adoption <= f.adoption_high, where
                assert f.measured_since == min(fsince, window.until), where
                reported, enabled = _enabled(history, pid_serials[pid], fsince, window.until)
                assert f.enabled_reporting == len(reported), where
                assert f.devices_enabled == len(enabled.get(f.feature_key, set())), where
                # a trend only when the feature was live through the previous window too, and
                # that window holds at least half the device-days
                through = live is not None and _from(live, prev_window(window)) == window.previous
                expected_prev = (
                    previous.get(f.feature_key, 0) / prev_reporting
                    if prev_reporting and through and prev_days >= 0.5 * n_days
                    else None
                )
                assert f.adoption_previous == expected_prev, where
                assert (f.first_used, f.last_used) == first_last.get(f.feature_key, (None, None)), (
                    f.feature_key
                )
            whole = {**params, "since": window.since}
            for key in FEATURES:
                groups = firmware_breakdown(conn, pid, key, window)
                got = [
                    (g.firmware, g.reported, g.devices_reporting, g.devices_using) for g in groups
                ]
                assert got == conn.execute(REF_FIRMWARE, {**whole, "feature": key}).fetchall()
            page = project_usage(conn, pid, window.since, window.until)
            want = {k: (e, n, h) for k, e, n, h in conn.execute(REF_USAGE_PAGE, whole)}
            got_page = {
                f.feature_key: (f.events, f.devices_using, f.last_used_hour)
                for f in page.features
                if f.feature_key in want or f.events
            }
            assert got_page == want
            hour = window.since.replace(minute=0, second=0, microsecond=0)
            page_reporting = conn.execute(REF_COVERAGE, {**whole, "since": hour}).fetchone()
            assert page.devices_reporting == (page_reporting[0] if page_reporting else 0)


def _enabled(
    history: History, serials: set[str], since: datetime, until: datetime
) -> tuple[set[str], dict[str, set[str]]]:
    """From the messages sent: devices that reported their enabled features in an hour that
    starts in [since, until), and per feature the devices that had it on."""
    reported: set[str] = set()
    enabled: dict[str, set[str]] = defaultdict(set)
    for serial, kind, payload in history.messages:
        body = json.loads(payload)
        if serial not in serials or kind is not MessageKind.TELEMETRY:
            continue
        if "enabled_features" not in body:
            continue
        hour = datetime.fromisoformat(body["ts"]).replace(minute=0, second=0, microsecond=0)
        if since <= hour < until:
            reported.add(serial)
            for key in body["enabled_features"]:
                enabled[key].add(serial)
    return reported, enabled


def prev_window(window: Window) -> Window:
    return Window(window.previous, window.since)


def test_the_history_has_what_the_bounds_and_firmware_checks_need(history: History) -> None:
    """The late project's devices used features before go-live and before the late delivery,
    and reported firmware: otherwise the checks above would pass on nothing."""
    with psycopg.connect(history.url, autocommit=True) as conn:
        late = history.project_ids[-1]
        before = conn.execute(
            """SELECT count(*) FILTER (WHERE hour < %s), count(*) FILTER (WHERE hour < %s AND
                      feature_key = 'remote_unlock') FROM usage_hourly WHERE project_id = %s""",
            (
                datetime.combine(LATE_GO_LIVE, datetime.min.time(), tzinfo=UTC),
                datetime.combine(LATE_DELIVERY, datetime.min.time(), tzinfo=UTC),
                late,
            ),
        ).fetchone()
        assert before is not None and before[0] > 0 and before[1] > 0
        reported = conn.execute(
            "SELECT count(*) FROM device_status_history WHERE firmware = %s", (REPORTED_FIRMWARE,)
        ).fetchone()
        assert reported is not None and reported[0] == 4


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
        first = since.replace(minute=0, second=0) + (
            timedelta(hours=1) if since.minute or since.second else timedelta()
        )
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


def test_a_batch_partly_stored_before_rolls_up_only_its_new_readings(history: History) -> None:
    """A redelivered batch some of whose readings are new takes the staging path (the fast
    path's COPY meets a stored reading): the readings it inserts are rolled up as the fast
    path rolls them up, and nothing else is."""
    with psycopg.connect(history.url, autocommit=True) as conn:
        kept = rollup_rows(conn)
        # readings after the first of their message: the messages stay stored, so sequence
        # accounting is untouched and only the usage rollups lose what these readings held
        lost = conn.execute("DELETE FROM usage_events WHERE item > 0 AND seq % 3 = 0").rowcount
        assert lost > 0
        rebuild_rollups(conn)
        assert rollup_rows(conn)["usage_hourly"] != kept["usage_hourly"]
        importer = HistoryImporter(conn)
        for serial, kind, payload in history.messages:
            importer.add(serial, kind, payload)
        assert importer.finish().usage_rows == lost
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


def test_rebuild_equals_ingest_across_jumps_and_boots(history: History) -> None:
    """Issue 22, findings 4 and 5: a jump to 2^63-1 counts as a jump, not 2^63-2 missing (the
    sums once overflowed), a gap up to MAX_SEQ_GAP is counted, and a new boot is a restart;
    ingest and the rebuild count alike. (Last in this module: it adds a project.)"""
    plan: dict[str, list[tuple[int | None, int]]] = {  # (boot, seq) in device-time order
        "jumps-0": [(None, 0), (None, 2**63 - 1), (None, 5), (None, 9), (None, 2**63 - 1)],
        "jumps-1": [(1, 0), (1, 4), (2, 0), (2, 2), (3, 2**40)],
        "jumps-2": [(None, 10), (None, 11 + MAX_SEQ_GAP), (None, 13 + 2 * MAX_SEQ_GAP)],
    }
    at = START + timedelta(days=2, minutes=7)
    messages = []
    for serial, steps in plan.items():
        for n, (boot, seq) in enumerate(steps):
            stamp = (at + timedelta(minutes=25 * n)).isoformat()
            events = [{"feature": "remote_unlock"}]
            body: dict[str, Any] = {"v": 1, "seq": seq, "ts": stamp, "events": events}
            if boot is not None:
                body["boot"] = boot
            messages.append((serial, MessageKind.USAGE, json.dumps(body).encode()))
    with psycopg.connect(history.url, autocommit=True) as conn:
        customer = upserts.upsert_customer(conn, "Jumps Co", "tail", "retail", "adoption")
        terms: dict[str, Any] = {"contract_value": None, "currency": "EUR", "status": "live"}
        pid = upserts.upsert_project(conn, customer, "Jumps", go_live_date=START.date(), **terms)
        upserts.provision_devices(conn, None, pid, [(s, "m", "1.0") for s in plan])
        assert _import(conn, messages) == 0
        counted = {
            serial: (missing, jumps)
            for serial, missing, jumps in conn.execute(
                """SELECT d.serial, sum(h.missing)::bigint, sum(h.seq_jumps)::bigint
                   FROM device_hourly h JOIN devices d ON d.id = h.device_id
                   WHERE h.project_id = %s GROUP BY 1""",
                (pid,),
            )
        }
        assert counted == {"jumps-0": (3, 2), "jumps-1": (4, 0), "jumps-2": (MAX_SEQ_GAP, 1)}
        kept = rollup_rows(conn)
        assert rebuild_rollups(conn) is None
        assert rollup_rows(conn) == kept
        assert rebuild_rollups(conn, at) == datetime(2025, 1, 1, tzinfo=UTC)
        assert rollup_rows(conn) == kept
