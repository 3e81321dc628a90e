"""Every Grafana panel's SQL, run as Grafana would run it, against known data.

Grafana cannot run here. Instead, a scratch database is seeded through the ingest store (the
same code path as live ingest, so the rollups are filled exactly as in production), the
read-only role is created by dashboards/grafana/reader.sql (as docker compose does), and each
dashboard's template variables are resolved by running their own queries. Then every panel's
SQL is expanded as Grafana's PostgreSQL data source expands it (tests/grafana_sql.py), run as
that role, and its columns and rows are compared with what the seed implies — in both modes
of the data source (TimescaleDB's time_bucket, and plain PostgreSQL's epoch arithmetic).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from services.core.migrate import migrate
from services.core.settings import Settings
from services.core.topics import MessageKind, device_topic
from services.infra.local import LocalServices
from services.ingest.batch import RawMessage
from services.ingest.directory import DeviceDirectory
from services.ingest.store import store_batch
from services.registry import upserts as registry
from tests.grafana_sql import (
    READER_SQL,
    TimeRange,
    Variable,
    custom_options,
    load_dashboards,
    panels,
    parse_interval,
    provisioned_datasource,
    render,
    variable_sql,
)
from tests.integration.conftest import scratch_database

START = datetime(2026, 3, 2, tzinfo=UTC)
RANGE = TimeRange(START, START + timedelta(hours=24))
# The interval Grafana would compute for the panel width; a panel's own `interval` (its
# minimum, 1h for the hourly rollups) wins when larger, as in Grafana.
BASE_INTERVAL = timedelta(minutes=30)
READER = "fieldtrack_grafana"
ANY = object()  # a cell whose value the test does not pin (but must not be NULL)

LOCKERS, GATEWAYS, DIMMING = (
    "Acme Logistics / Smart Lockers",
    "Acme Logistics / Fleet Gateways",
    "Bistro Group / Dimming",
)


def at(hours: int, minutes: int = 0) -> datetime:
    return START + timedelta(hours=hours, minutes=minutes)


# --- seeding, through the ingest store ---------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _message(serial: str, kind: MessageKind, body: dict[str, Any], when: datetime) -> RawMessage:
    """A device message; usage and telemetry as history (last seen = device time), status
    as received live at *when*."""
    return RawMessage(
        device_topic(serial, kind),
        json.dumps(body).encode(),
        when,
        historical=kind is not MessageKind.STATUS,
    )


def telemetry(serial: str, seq: int, when: datetime, battery: float, rssi: float) -> RawMessage:
    metrics = [
        {"name": "battery", "value": battery, "unit": "%"},
        {"name": "rssi", "value": rssi, "unit": "dBm"},
    ]
    body = {"v": 1, "seq": seq, "ts": _iso(when), "metrics": metrics}
    return _message(serial, MessageKind.TELEMETRY, body, when)


def usage(serial: str, seq: int, when: datetime, feature: str, count: int) -> RawMessage:
    body = {"v": 1, "seq": seq, "ts": _iso(when), "events": [{"feature": feature, "count": count}]}
    return _message(serial, MessageKind.USAGE, body, when)


def status(serial: str, state: str, when: datetime, firmware: str | None = None) -> RawMessage:
    body: dict[str, Any] = {"v": 1, "state": state, "ts": _iso(when)}
    if firmware:
        body["firmware"] = firmware
    return _message(serial, MessageKind.STATUS, body, when)


def raw(serial: str, payload: bytes, when: datetime) -> RawMessage:
    return RawMessage(device_topic(serial, MessageKind.USAGE), payload, when)


MESSAGES = sorted(
    [
        # lck-1: online, upgraded to 1.5.0, reports all day
        status("lck-1", "online", at(0, 5), "1.5.0"),
        telemetry("lck-1", 1, at(1, 10), 90, -60),
        usage("lck-1", 2, at(1, 20), "remote_unlock", 2),
        usage("lck-1", 3, at(2, 20), "remote_unlock", 1),
        telemetry("lck-1", 4, at(23, 30), 85, -62),
        # lck-2: went offline early; sequence numbers 3 and 4 never arrive
        status("lck-2", "online", at(0, 10)),
        telemetry("lck-2", 1, at(1, 10), 80, -75),
        usage("lck-2", 2, at(1, 30), "remote_unlock", 1),
        telemetry("lck-2", 5, at(2, 10), 78, -77),
        usage("lck-2", 6, at(2, 30), "energy_report", 4),
        status("lck-2", "offline", at(2, 40)),
        # gw-1: says online but has been silent since 01:40; uses an undelivered feature
        status("gw-1", "online", at(0, 15), "2.1.0"),
        telemetry("gw-1", 10, at(1, 10), 70, -90),
        usage("gw-1", 11, at(1, 40), "remote_unlock", 5),
        # dim-1: one message lost (seq 2), offline at the end of the day
        status("dim-1", "online", at(0, 20)),
        telemetry("dim-1", 1, at(23, 10), 50, -80),
        usage("dim-1", 3, at(23, 15), "scheduled_dimming", 2),
        status("dim-1", "offline", at(23, 40)),
        # quarantined, one of them before the time range (different bytes: the same bytes
        # again would be one row with two copies)
        raw("lck-1", b"{not json", at(-2)),
        raw("lck-1", b"{not json, again", at(3, 5)),
        usage("ghost-1", 1, at(3, 10), "remote_unlock", 1),  # unknown device
        telemetry("lck-4", 1, at(3, 15), 60, -70),  # revoked device
        raw("lck-1", b"{also not json", at(5, 0)),
        raw(
            "lck-1", b'{"v": 1, "seq": "5", "ts": "2026-03-02T05:30:00Z", "events": []}', at(5, 30)
        ),
    ],
    key=lambda m: m.received_at,
)


SEED_ALERT = """
INSERT INTO alerts (rule_id, kind, project_id, subject, state, summary, evidence, fired_at,
                    acknowledged_at, acknowledged_by, resolved_at, updated_at)
SELECT r.id, r.kind, %(project)s, %(subject)s, %(state)s, %(summary)s, '{"secret": 1}',
       %(fired)s, %(acked)s, %(by)s, %(resolved)s, %(fired)s
FROM alert_rules r WHERE r.kind = %(kind)s AND r.project_id IS NULL
"""
# (kind, project, state, fired, acknowledged by then, resolved): one before the range
ALERTS = [
    ("completeness_low", "lockers", "resolved", at(-5), None, at(-4)),
    ("device_silent", "lockers", "acknowledged", at(1, 30), ("sam", at(2)), None),
    ("project_silent", "gateways", "firing", at(2), None, None),
    ("quarantine_rate", None, "firing", at(3, 10), None, None),
    ("devices_offline", "dimming", "resolved", at(23), None, at(23, 50)),
]


def seed_alerts(conn: psycopg.Connection, ids: Mapping[str, int]) -> None:
    for kind, project, state, fired, acknowledged, resolved in ALERTS:
        by, acked = acknowledged or (None, None)
        conn.execute(
            SEED_ALERT,
            {
                "kind": kind,
                "project": ids[project] if project else None,
                "subject": f"project:{ids[project]}" if project else "reason:not_json",
                "state": state,
                "summary": f"{kind} alert",
                "fired": fired,
                "acked": acked,
                "by": by,
                "resolved": resolved,
            },
        )


def seed(conn: psycopg.Connection) -> dict[str, int]:
    acme = registry.upsert_customer(conn, "Acme Logistics", "head", "logistics", "expansion")
    bistro = registry.upsert_customer(conn, "Bistro Group", "tail", "hospitality", "adoption")
    projects = {
        "lockers": (acme, "Smart Lockers"),
        "gateways": (acme, "Fleet Gateways"),
        "dimming": (bistro, "Dimming"),
    }
    ids = {"acme": acme, "bistro": bistro}
    for key, (customer, name) in projects.items():
        ids[key] = registry.upsert_project(
            conn,
            customer,
            name,
            contract_value=10000,
            currency="EUR",
            go_live_date=None,
            status="live",
        )
    features = {
        key: registry.upsert_feature(conn, key, key.replace("_", " "), "test", None)
        for key in ("remote_unlock", "energy_report", "scheduled_dimming")
    }
    for project, feature in (
        ("lockers", "remote_unlock"),
        ("lockers", "energy_report"),
        ("dimming", "scheduled_dimming"),
    ):
        registry.upsert_delivery(
            conn,
            ids[project],
            features[feature],
            status="delivered",
            delivered_on=None,
            cost_person_days=1,
            contract_line_value=100,
            business_score=3,
            strategic=False,
        )
    fleet = {
        "lockers": [("lck-1", "1.4.2"), ("lck-2", "1.4.2"), ("lck-3", "1.4.2"), ("lck-4", "1.4.2")],
        "gateways": [("gw-1", "2.0.0")],
        "dimming": [("dim-1", "3.1.0"), ("dim-2", "3.1.0")],
    }
    for project, devices in fleet.items():
        registry.provision_devices(conn, None, ids[project], [(s, "T1", fw) for s, fw in devices])
    conn.execute(
        "UPDATE devices SET status = 'revoked', revoked_at = %s WHERE serial = 'lck-4'", (START,)
    )
    with conn.transaction():
        result = store_batch(
            conn,
            MESSAGES,
            DeviceDirectory(),
            max_future_skew=timedelta(minutes=10),
            now=RANGE.end + timedelta(days=1),
            late_data_days=None,
        )
    assert dict(result.quarantined) == {
        "not_json": 3,
        "unknown_device": 1,
        "revoked_device": 1,
        "invalid_payload": 1,
    }, result
    seed_alerts(conn, ids)
    return ids


@dataclass(frozen=True)
class GrafanaDatabase:
    reader_url: str
    ids: dict[str, int]


def _as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


def run_reader_sql(local_services: LocalServices, dbname: str, password: str) -> None:
    """dashboards/grafana/reader.sql with psql, as docker compose runs it: the password from
    the environment, never on the command line."""
    psql = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    done = subprocess.run(
        [
            psql,
            local_services.postgres.superuser_conninfo(dbname),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "\\getenv reader_password FIELDTRACK_GRAFANA_DB_PASSWORD",
            "-f",
            str(READER_SQL),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "FIELDTRACK_GRAFANA_DB_PASSWORD": password},
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def grafana_db(local_services: LocalServices, base_settings: Settings) -> Iterator[GrafanaDatabase]:
    app_url = base_settings.database_url.get_secret_value()
    with scratch_database(local_services, app_url, "fieldtrack_grafana") as url:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            ids = seed(conn)
        password = secrets.token_urlsafe(18)
        dbname = urlsplit(url).path.lstrip("/")
        run_reader_sql(local_services, dbname, "an-older-password")
        run_reader_sql(local_services, dbname, password)  # again: idempotent, new password
        yield GrafanaDatabase(_as_user(url, READER, password), ids)


@pytest.fixture
def reader(grafana_db: GrafanaDatabase) -> Iterator[psycopg.Connection]:
    with psycopg.connect(grafana_db.reader_url, autocommit=True) as conn:
        yield conn


# --- running dashboards as Grafana would ---------------------------------------------------------


def _rows(conn: psycopg.Connection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    with conn.cursor() as cur:
        cur.execute(sql.encode())
        assert cur.description is not None, sql
        return [c.name for c in cur.description], cur.fetchall()


def resolve_variables(
    conn: psycopg.Connection,
    dashboard: Mapping[str, Any],
    chosen: Mapping[str, Sequence[str]],
    *,
    timescaledb: bool,
) -> tuple[dict[str, Variable], dict[str, list[str]]]:
    """Each variable in order, by running its query: the texts named in *chosen*, else All
    (or the default of a custom variable). Returns the variables and each one's option texts."""
    defined: dict[str, Variable] = {}
    texts: dict[str, list[str]] = {}
    for variable in dashboard["templating"]["list"]:
        name = variable["name"]
        if variable["type"] == "query":
            sql = render(
                variable_sql(variable), RANGE, BASE_INTERVAL, defined, timescaledb=timescaledb
            )
            columns, rows = _rows(conn, sql)
            if "__value" in columns:
                text_at, value_at = columns.index("__text"), columns.index("__value")
                options = [(str(r[text_at]), str(r[value_at])) for r in rows]
            else:
                options = [(str(r[0]), str(r[0])) for r in rows]
        elif variable["type"] == "custom":
            options = [(o, o) for o in custom_options(variable)]
        else:
            raise AssertionError(f"variable type {variable['type']!r} is not handled here")
        texts[name] = [text for text, _ in options]
        if name in chosen:
            values = tuple(value for text, value in options if text in chosen[name])
            assert len(values) == len(chosen[name]), (name, chosen[name], texts[name])
        elif variable.get("includeAll"):
            values = tuple(value for _, value in options)
        else:  # the saved current value if it is still an option, else the first (as Grafana)
            current = str((variable.get("current") or {}).get("value", ""))
            all_values = [value for _, value in options]
            values = (current if current in all_values else all_values[0],)
        defined[name] = Variable(
            values, bool(variable.get("multi")), bool(variable.get("includeAll"))
        )
    return defined, texts


def _cell(value: Any, *, is_time: bool) -> Any:
    if is_time and isinstance(value, int | float | Decimal):
        return datetime.fromtimestamp(float(value), UTC)  # epoch seconds: Grafana's time too
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, Decimal):
        return float(value)
    return value


def run_panel(
    conn: psycopg.Connection,
    panel: Mapping[str, Any],
    variables: Mapping[str, Variable],
    *,
    timescaledb: bool,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    [target] = panel["targets"]
    interval = max(BASE_INTERVAL, parse_interval(panel.get("interval", "0s")))
    sql = render(target["rawSql"], RANGE, interval, variables, timescaledb=timescaledb)
    columns, rows = _rows(conn, sql)
    if target["format"] == "time_series":
        assert columns[0] == "time", f"{panel['title']}: a time series needs a `time` column first"
        times = [row[0] for row in rows]
        assert times == sorted(times), f"{panel['title']}: time series rows must be sorted by time"
        assert all(
            isinstance(v, int | float | Decimal)
            for row in rows
            for v in row[2 if columns[1] == "metric" else 1 :]
        ), f"{panel['title']}: value columns must be numeric"
    normalized = [
        tuple(_cell(v, is_time=(c == "time")) for c, v in zip(columns, row, strict=True))
        for row in rows
    ]
    return columns, normalized


def assert_rows(title: str, got: list[tuple[Any, ...]], expected: list[tuple[Any, ...]]) -> None:
    assert len(got) == len(expected), f"{title}: {len(got)} rows, expected {len(expected)}:\n{got}"
    for row, want in zip(got, expected, strict=True):
        assert len(row) == len(want), f"{title}: {row} vs {want}"
        for value, wanted in zip(row, want, strict=True):
            if wanted is ANY:
                assert value is not None, f"{title}: {row}"
            elif isinstance(wanted, float):
                assert value == pytest.approx(wanted, abs=1e-4), f"{title}: {row} vs {want}"
            else:
                assert value == wanted, f"{title}: {row} vs {want}"


# --- what the seed implies, panel by panel --------------------------------------------------------

Expected = tuple[list[str], list[tuple[Any, ...]]]
PERCENTILES = ["time", "p10", "median", "p90"]

ALL_PROJECTS: dict[tuple[str, str], Expected] = {
    ("fieldtrack-fleet", "Devices per project: online, offline, never seen"): (
        ["project", "online", "offline", "never_seen"],
        [(GATEWAYS, 1, 0, 0), (LOCKERS, 1, 1, 1), (DIMMING, 0, 1, 1)],
    ),
    ("fieldtrack-fleet", "Devices not seen for longer than $stale_after"): (
        ["device", "project", "last_seen", "silent_for", "last_status", "firmware"],
        [
            ("gw-1", GATEWAYS, at(1, 40), 80400, "online", "2.1.0"),
            ("lck-2", LOCKERS, at(2, 40), 76800, "offline", "1.4.2"),
        ],
    ),
    ("fieldtrack-fleet", "Firmware in the field"): (
        ["firmware", "devices"],
        [("1.4.2", 2), ("3.1.0", 2), ("1.5.0", 1), ("2.1.0", 1)],
    ),
    ("fieldtrack-fleet", "Battery across devices (p10, median, p90)"): (
        PERCENTILES,
        [
            (at(1), 72.0, 80.0, 88.0),
            (at(2), 78.0, 78.0, 78.0),
            (at(23), 50.0, 50.0, 50.0),
            (at(23, 30), 85.0, 85.0, 85.0),
        ],
    ),
    ("fieldtrack-fleet", "Signal strength (RSSI) across devices (p10, median, p90)"): (
        PERCENTILES,
        [
            (at(1), -87.0, -75.0, -63.0),
            (at(2), -77.0, -77.0, -77.0),
            (at(23), -80.0, -80.0, -80.0),
            (at(23, 30), -62.0, -62.0, -62.0),
        ],
    ),
    ("fieldtrack-ingest", "Messages stored per hour, by project"): (
        ["time", "metric", "messages_per_hour"],
        [
            (at(1), GATEWAYS, 2.0),
            (at(1), LOCKERS, 4.0),
            (at(2), LOCKERS, 3.0),
            (at(23), LOCKERS, 1.0),
            (at(23), DIMMING, 2.0),
        ],
    ),
    ("fieldtrack-ingest", "Messages stored per minute (average over the range)"): (
        ["messages_per_minute"],
        [(12 / 1440,)],
    ),
    ("fieldtrack-ingest", "Received and missing messages (sequence gaps)"): (
        ["time", "received", "missing"],
        [(at(1), 6.0, 0.0), (at(2), 3.0, 2.0), (at(23), 3.0, 1.0)],
    ),
    ("fieldtrack-ingest", "Data completeness per project"): (
        ["project", "devices_reporting", "received", "missing", "completeness"],
        [(DIMMING, 1, 2.0, 1.0, 0.6667), (LOCKERS, 2, 8.0, 2.0, 0.8), (GATEWAYS, 1, 2.0, 0.0, 1.0)],
    ),
    ("fieldtrack-ingest", "Quarantined messages by reason"): (
        ["time", "metric", "messages"],
        [
            (at(3), "not_json", 1),
            (at(3), "revoked_device", 1),
            (at(3), "unknown_device", 1),
            (at(5), "not_json", 1),
            (at(5, 30), "invalid_payload", 1),
        ],
    ),
    ("fieldtrack-ingest", "Quarantine by reason, latest detail"): (
        ["reason", "messages", "latest", "latest_detail"],
        [
            ("not_json", 2, at(5), ANY),
            ("invalid_payload", 1, at(5, 30), ANY),
            ("revoked_device", 1, at(3, 15), "device was revoked"),
            ("unknown_device", 1, at(3, 10), "no provisioned device with this serial"),
        ],
    ),
    ("fieldtrack-ingest", "Open alerts"): (
        ["state", "kind", "about", "summary", "fired", "acknowledged_by"],
        [
            (
                "firing",
                "quarantine_rate",
                "reason:not_json",
                "quarantine_rate alert",
                at(3, 10),
                None,
            ),
            ("firing", "project_silent", GATEWAYS, "project_silent alert", at(2), None),
            ("acknowledged", "device_silent", LOCKERS, "device_silent alert", at(1, 30), "sam"),
        ],
    ),
    ("fieldtrack-ingest", "Alerts fired, by kind"): (
        ["time", "metric", "alerts"],
        [
            (at(1), "device_silent", 1),
            (at(2), "project_silent", 1),
            (at(3), "quarantine_rate", 1),
            (at(23), "devices_offline", 1),
        ],
    ),
}
FEATURE_TABLE = ["feature", "delivery", "events", "using_devices", "reporting_devices", "adoption"]
USAGE_OF_LOCKERS: dict[tuple[str, str], Expected] = {
    ("fieldtrack-usage", "Usage events per feature"): (
        ["time", "metric", "events"],
        [
            (at(1), "remote_unlock", 3.0),
            (at(2), "energy_report", 4.0),
            (at(2), "remote_unlock", 1.0),
        ],
    ),
    ("fieldtrack-usage", "Devices using each feature"): (
        ["time", "metric", "devices"],
        [(at(1), "remote_unlock", 2), (at(2), "energy_report", 1), (at(2), "remote_unlock", 1)],
    ),
    ("fieldtrack-usage", "Delivered features and their use"): (
        FEATURE_TABLE,
        [
            ("energy_report", "delivered", 4.0, 1, 2, 0.5),
            ("remote_unlock", "delivered", 4.0, 2, 2, 1.0),
        ],
    ),
}
DASHBOARDS = {d["uid"]: d for d in load_dashboards().values()}
SCENARIOS = {
    "fieldtrack-fleet": ({}, ALL_PROJECTS),
    "fieldtrack-ingest": ({}, ALL_PROJECTS),
    "fieldtrack-usage": (
        {"customer": ["Acme Logistics"], "project": ["Smart Lockers"]},
        USAGE_OF_LOCKERS,
    ),
}
MODES = pytest.mark.parametrize("timescaledb", [True, False], ids=["timescaledb", "postgresql"])


def test_every_panel_has_expectations() -> None:
    """A new panel must come with what it should show on the seed."""
    panels_found = {
        (uid, p["title"]) for uid, d in DASHBOARDS.items() for p in panels(d) if p["type"] != "row"
    }
    expected = set(ALL_PROJECTS) | set(USAGE_OF_LOCKERS)
    assert panels_found == expected
    assert set(SCENARIOS) == set(DASHBOARDS)
    assert provisioned_datasource()["jsonData"]["timescaledb"] is True  # the first mode below


@MODES
@pytest.mark.parametrize("uid", sorted(SCENARIOS))
def test_panels_show_what_was_seeded(
    reader: psycopg.Connection, uid: str, timescaledb: bool
) -> None:
    dashboard = DASHBOARDS[uid]
    chosen, expectations = SCENARIOS[uid]
    variables, _ = resolve_variables(reader, dashboard, chosen, timescaledb=timescaledb)
    for panel in panels(dashboard):
        columns, rows = run_panel(reader, panel, variables, timescaledb=timescaledb)
        want_columns, want_rows = expectations[(uid, panel["title"])]
        assert columns == want_columns, panel["title"]
        assert_rows(panel["title"], rows, want_rows)


@MODES
def test_variable_queries_list_customers_and_their_projects(
    reader: psycopg.Connection, grafana_db: GrafanaDatabase, timescaledb: bool
) -> None:
    fleet, usage = DASHBOARDS["fieldtrack-fleet"], DASHBOARDS["fieldtrack-usage"]
    variables, texts = resolve_variables(reader, fleet, {}, timescaledb=timescaledb)
    assert texts["customer"] == ["Acme Logistics", "Bistro Group"]
    assert texts["project"] == [GATEWAYS, LOCKERS, DIMMING]
    ids = grafana_db.ids
    assert set(variables["project"].values) == {
        str(ids[p]) for p in ("lockers", "gateways", "dimming")
    }
    assert texts["stale_after"][:2] == ["15 minutes", "1 hour"]
    _, texts = resolve_variables(
        reader, fleet, {"customer": ["Bistro Group"]}, timescaledb=timescaledb
    )
    assert texts["project"] == [DIMMING]
    variables, texts = resolve_variables(
        reader, usage, {"customer": ["Acme Logistics"]}, timescaledb=timescaledb
    )
    assert texts["project"] == ["Fleet Gateways", "Smart Lockers"]


def test_filters_narrow_the_fleet_to_the_chosen_project(reader: psycopg.Connection) -> None:
    fleet = DASHBOARDS["fieldtrack-fleet"]
    chosen = {"customer": ["Acme Logistics"], "project": [LOCKERS], "stale_after": ["15 minutes"]}
    variables, _ = resolve_variables(reader, fleet, chosen, timescaledb=True)
    by_title = {p["title"]: p for p in panels(fleet)}
    _, states = run_panel(
        reader,
        by_title["Devices per project: online, offline, never seen"],
        variables,
        timescaledb=True,
    )
    assert states == [(LOCKERS, 1, 1, 1)]
    _, stale = run_panel(
        reader,
        by_title["Devices not seen for longer than $stale_after"],
        variables,
        timescaledb=True,
    )
    # 15 minutes before the end of the range: lck-1 (23:30) is silent too now
    assert [row[0] for row in stale] == ["lck-2", "lck-1"]
    _, firmware = run_panel(reader, by_title["Firmware in the field"], variables, timescaledb=True)
    assert firmware == [("1.4.2", 2), ("1.5.0", 1)]  # the revoked lck-4 is not counted


def test_usage_of_a_project_without_deliveries_is_shown_as_not_delivered(
    reader: psycopg.Connection,
) -> None:
    usage = DASHBOARDS["fieldtrack-usage"]
    chosen = {"customer": ["Acme Logistics"], "project": ["Fleet Gateways"]}
    variables, _ = resolve_variables(reader, usage, chosen, timescaledb=True)
    [table] = [p for p in panels(usage) if p["title"] == "Delivered features and their use"]
    columns, rows = run_panel(reader, table, variables, timescaledb=True)
    assert columns == FEATURE_TABLE
    assert_rows("gateways", rows, [("remote_unlock", "not delivered", 5.0, 1, 1, 1.0)])


def test_the_grafana_role_reads_only_what_the_dashboards_need(reader: psycopg.Connection) -> None:
    assert reader.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
    assert reader.execute("SELECT count(*) FROM quarantine").fetchone() == (6,)
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        reader.execute("CREATE TEMP TABLE scratch (x int)")
    assert reader.execute("SELECT count(*) FROM alerts").fetchone() == (len(ALERTS),)
    for forbidden in (
        "SELECT payload FROM quarantine",
        "SELECT evidence FROM alerts",
        "SELECT secret FROM alert_channels",
        "SELECT * FROM alert_notifications",
        "SELECT * FROM decisions",
        "SELECT * FROM usage_events",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute(forbidden.encode())
    writable = reader.execute(
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v')
             AND (has_table_privilege(c.oid, 'INSERT') OR has_table_privilege(c.oid, 'UPDATE')
                  OR has_table_privilege(c.oid, 'DELETE') OR has_table_privilege(c.oid, 'TRUNCATE'))"""
    ).fetchall()
    assert writable == [], "the Grafana role may write to these tables"
