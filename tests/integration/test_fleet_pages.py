"""The ops pages and their JSON: fleet, device, ingest — numbers against a known seed.

A scratch database is seeded through the ingest store (the code path of live ingest, so
device_state and device_hourly are filled as in production) with times relative to now;
every count the API answers is the one the seed implies, the pages carry the same numbers,
and a customer viewer sees only its customer's devices.
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import SecretStr

from services.accounts.roles import Role
from services.core.migrate import migrate
from services.core.settings import Settings
from services.core.topics import MessageKind, device_topic
from services.infra.local import LocalServices
from services.ingest.batch import RawMessage
from services.ingest.directory import DeviceDirectory
from services.ingest.store import store_batch
from services.registry import upserts as registry
from tests.integration.conftest import api_client, mint_token, scratch_database
from tests.integration.live_messages import ago, iso, raw, status, telemetry, usage


def seed_messages(now: datetime) -> list[RawMessage]:
    """Times relative to now, so the recent-minutes numbers hold whenever the test runs."""
    return [
        # a-1: online, upgraded to 1.5.0; two readings, the latest battery is 80
        status("a-1", "online", ago(now, minutes=30), "1.5.0"),
        telemetry("a-1", 0, ago(now, minutes=20), battery=90, rssi=-58, temperature=20),
        telemetry("a-1", 1, ago(now, minutes=5), lag_s=2, battery=80, rssi=-60, temperature=21),
        # a-2: says online, silent for 3 h
        status("a-2", "online", ago(now, hours=3)),
        telemetry("a-2", 1, ago(now, hours=3), battery=50, rssi=-80),
        # a-3: offline 2 h ago; sequence numbers 2 and 3 never arrived
        telemetry("a-3", 1, ago(now, minutes=150), battery=75, rssi=-70),
        telemetry("a-3", 4, ago(now, minutes=130), battery=70, rssi=-72),
        status("a-3", "offline", ago(now, hours=2)),
        # a2-1 (other project): data but no status; a 2-day-old battery reading (too old for
        # the chart), a late message (device time 4 h before it arrived: not in rate or lag)
        # and a replayed one (40 min: in the rate, counted as arrived late, not in the lag)
        telemetry("a2-1", 0, ago(now, days=2), battery=10, rssi=-100),
        usage("a2-1", 1, ago(now, minutes=3), lag_s=4 * 3600),
        usage("a2-1", 2, ago(now, minutes=2), lag_s=40 * 60),
        usage("a2-1", 3, ago(now, minutes=1), lag_s=4),
        # b-1 (other customer): online
        status("b-1", "online", ago(now, minutes=40)),
        telemetry("b-1", 7, ago(now, minutes=2), lag_s=10, battery=30, rssi=-95),
        # quarantined: a revoked device, an unknown one, bad JSON now and 30 h ago
        usage("b-3", 1, ago(now, minutes=4)),
        usage("ghost-1", 1, ago(now, minutes=6)),
        raw("a-1", b"{not json", ago(now, minutes=10)),
        raw("a-1", b"{older, not json", ago(now, hours=30)),
    ]


@dataclass(frozen=True)
class Seeded:
    now: datetime
    settings: Settings
    customer_a: int
    customer_b: int
    customer_c: int
    projects: dict[str, int]
    devices: dict[str, int]


@pytest.fixture(scope="module")
def seeded(local_services: LocalServices, settings: Settings) -> Iterator[Seeded]:
    app_url = settings.database_url.get_secret_value()
    with scratch_database(local_services, app_url, "fieldtrack_fleet") as url:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            a = registry.upsert_customer(conn, "Fleet A", "head", "logistics", "expansion")
            b = registry.upsert_customer(conn, "Fleet B", "tail", "retail", "adoption")
            c = registry.upsert_customer(conn, "Fleet C", "tail", "retail", "onboarding")
            projects = {}
            for key, customer, name in (
                ("a1", a, "Lockers"),
                ("a2", a, "Gateways"),
                ("b1", b, "Dimming"),
                ("c1", c, "Empty"),
            ):
                projects[key] = registry.upsert_project(
                    conn,
                    customer,
                    name,
                    contract_value=1,
                    currency="EUR",
                    go_live_date=None,
                    status="live",
                )
            fleet = {
                "a1": [("a-1", "1.0"), ("a-2", "1.0"), ("a-3", "1.0"), ("a-4", "1.0")],
                "a2": [("a2-1", "2.0")],
                "b1": [("b-1", "3.0"), ("b-2", "3.0"), ("b-3", "3.0")],
            }
            for key, devices in fleet.items():
                registry.provision_devices(
                    conn, None, projects[key], [(s, "T1", fw) for s, fw in devices]
                )
            conn.execute(
                "UPDATE devices SET status = 'revoked', revoked_at = now() WHERE serial = 'b-3'"
            )
            now = datetime.now(UTC).replace(microsecond=0)
            with conn.transaction():
                result = store_batch(
                    conn,
                    seed_messages(now),
                    DeviceDirectory(),
                    max_future_skew=timedelta(minutes=10),
                    now=now,
                    late_data_days=None,
                )
            assert dict(result.quarantined) == {
                "revoked_device": 1,
                "unknown_device": 1,
                "not_json": 2,
            }
            device_ids: dict[str, int] = dict(
                conn.execute("SELECT serial, id FROM devices").fetchall()
            )
        yield Seeded(
            now,
            settings.model_copy(update={"database_url": SecretStr(url)}),
            a,
            b,
            c,
            projects,
            device_ids,
        )


def client(seeded: Seeded, role: Role, customer: int | None = None) -> TestClient:
    url = seeded.settings.database_url.get_secret_value()
    return api_client(seeded.settings, mint_token(url, role, customer))


@pytest.fixture(scope="module")
def ops(seeded: Seeded) -> Iterator[TestClient]:
    with client(seeded, Role.OPS) as c:
        yield c


@pytest.fixture(scope="module")
def viewer_a(seeded: Seeded) -> Iterator[TestClient]:
    with client(seeded, Role.VIEWER, seeded.customer_a) as c:
        yield c


def field(html: str, name: str) -> str:
    """The text of the first element carrying data-field=name."""
    found = re.search(rf'data-field="{re.escape(name)}">([^<]*)<', html)
    assert found, f"no data-field {name} in the page"
    return found.group(1)


# --- fleet --------------------------------------------------------------------------------


def test_fleet_counts_per_project(ops: TestClient, seeded: Seeded) -> None:
    fleet = ops.get("/fleet").json()
    per_project = {
        p["project_name"]: (p["devices"], p["online"], p["offline"], p["never_seen"])
        for p in fleet["projects"]
    }
    assert per_project == {
        "Lockers": (4, 2, 1, 1),
        "Gateways": (1, 0, 1, 0),
        "Dimming": (2, 1, 0, 1),
        "Empty": (0, 0, 0, 0),
    }
    assert fleet["totals"] == {
        "devices": 7,
        "online": 3,
        "offline": 2,
        "never_seen": 2,
        "stale": 2,
    }
    assert fleet["stale_after_seconds"] == 3600
    assert [d["serial"] for d in fleet["stale"]] == ["a-2", "a-3"]  # longest silent first
    a2 = fleet["stale"][0]
    assert a2["online"] is True and a2["firmware"] == "1.0" and a2["project_name"] == "Lockers"
    assert 3 * 3600 <= a2["silent_seconds"] < 3 * 3600 + 120
    assert {f["firmware"]: f["devices"] for f in fleet["firmware"]} == {
        "1.0": 3,
        "3.0": 2,
        "1.5.0": 1,
        "2.0": 1,
    }
    # each active device's latest reading of the last day, by device id
    assert fleet["battery"] == {"metric": "battery", "unit": "%", "values": [80, 50, 70, 30]}
    assert fleet["signal"]["values"] == [-60, -80, -72, -95]


def test_fleet_threshold_and_project_filter(ops: TestClient, seeded: Seeded) -> None:
    longer = ops.get("/fleet", params={"stale_minutes": 150}).json()
    assert [d["serial"] for d in longer["stale"]] == ["a-2"] and longer["totals"]["stale"] == 1
    one = ops.get("/fleet", params={"project": seeded.projects["b1"]}).json()
    assert [p["project_name"] for p in one["projects"]] == ["Dimming"]
    assert one["totals"] == {"devices": 2, "online": 1, "offline": 0, "never_seen": 1, "stale": 0}
    assert one["battery"]["values"] == [30]
    assert {f["firmware"]: f["devices"] for f in one["firmware"]} == {"3.0": 2}
    assert ops.get("/fleet", params={"project": 999_999_999}).status_code == 404
    assert ops.get("/fleet", params={"stale_minutes": 0}).status_code == 422


def test_viewer_sees_only_its_customers_fleet(
    viewer_a: TestClient, seeded: Seeded, ops: TestClient
) -> None:
    fleet = viewer_a.get("/fleet").json()
    assert {p["project_name"] for p in fleet["projects"]} == {"Lockers", "Gateways"}
    assert fleet["totals"] == {"devices": 5, "online": 2, "offline": 2, "never_seen": 1, "stale": 2}
    assert fleet["battery"]["values"] == [80, 50, 70]
    assert viewer_a.get("/fleet", params={"project": seeded.projects["b1"]}).status_code == 404
    foreign = seeded.devices["b-1"]
    assert viewer_a.get(f"/dashboards/devices/{foreign}").status_code == 404
    assert viewer_a.get(f"/devices/{foreign}/telemetry").status_code == 404
    page = viewer_a.get("/dashboards/fleet")
    assert page.status_code == 200
    assert "Dimming" not in page.text and "b-1" not in page.text
    assert viewer_a.get("/dashboards/ingest").status_code == 403
    assert viewer_a.get("/ingest/health").status_code == 403
    assert ops.get(f"/dashboards/devices/{foreign}").status_code == 200


def test_fleet_page_shows_the_api_numbers(ops: TestClient, seeded: Seeded) -> None:
    page = ops.get("/dashboards/fleet")
    assert page.status_code == 200
    html = page.text
    for name, value in {
        "devices": 7,
        "online": 3,
        "offline": 2,
        "never_seen": 2,
        "stale": 2,
    }.items():
        assert field(html, f"totals.{name}") == str(value), name
    assert f'href="/dashboards/devices/{seeded.devices["a-2"]}">a-2</a>' in html
    assert f'href="/dashboards/devices/{seeded.devices["a-3"]}">a-3</a>' in html
    assert 'id="fleet-data"' in html and "/vendor/plotly/plotly.min.js" in html
    # the filter lists every project even when one is shown
    one = ops.get("/dashboards/fleet", params={"project": seeded.projects["a2"]}).text
    assert field(one, "totals.devices") == "1"
    assert f'<option value="{seeded.projects["b1"]}">' in one


def test_empty_states_say_what_to_do(seeded: Seeded) -> None:
    with client(seeded, Role.VIEWER, seeded.customer_c) as viewer_c:
        page = viewer_c.get("/dashboards/fleet")
        assert page.status_code == 200
        assert (
            f"fieldtrack devices provision --project {seeded.projects['c1']} --count 10"
            in page.text
        )
        assert (
            'id="status-chart" role="img" aria-label="devices online, offline and never seen per project" hidden'
            in page.text
        )


# --- one device ---------------------------------------------------------------------------


def test_device_telemetry_and_reporting_history(ops: TestClient, seeded: Seeded) -> None:
    device = seeded.devices["a-1"]
    got = ops.get(
        f"/devices/{device}/telemetry",
        params={
            "since": iso(ago(seeded.now, hours=1)),
            "until": iso(seeded.now + timedelta(minutes=1)),
        },
    ).json()
    assert got["device"]["serial"] == "a-1" and got["device"]["online"] is True
    assert got["device"]["reported_firmware"] == "1.5.0" and got["device"]["firmware"] == "1.0"
    assert got["bucket_seconds"] == 60
    series = {m["name"]: m for m in got["metrics"]}
    assert set(series) == {"battery", "rssi", "temperature"}
    assert [p["avg"] for p in series["battery"]["points"]] == [90, 80]
    assert series["battery"]["unit"] == "%" and series["rssi"]["unit"] is None
    assert sum(h["messages"] for h in got["reporting"]) == 2
    # a-3 skipped two sequence numbers: its reporting history says so
    gaps = ops.get(f"/devices/{seeded.devices['a-3']}/telemetry").json()["reporting"]
    assert sum(h["messages"] for h in gaps) == 2 and sum(h["missing"] for h in gaps) == 2
    assert ops.get("/devices/999999999/telemetry").status_code == 404


def test_device_page(ops: TestClient, seeded: Seeded) -> None:
    page = ops.get(f"/dashboards/devices/{seeded.devices['a-3']}")
    assert page.status_code == 200
    html = page.text
    assert 'id="device-status">offline<' in html
    assert 'id="messages-total">2<' in html and 'id="missing-total">2<' in html
    assert "<h2>Status history</h2>" in html
    assert 'id="status-history">' in html and "<td>offline</td>" in html  # its last will
    assert 'data-metric="battery"' in html and 'data-metric="rssi"' in html
    assert "/quarantine?device=a-3" in html  # ops may read the quarantine
    never = ops.get(f"/dashboards/devices/{seeded.devices['a-4']}").text
    assert 'id="device-status">never seen<' in never and "It has never connected" in never
    assert 'id="status-history" hidden' in never and "No status reported" in never
    # the window picker: 7 days
    week = ops.get(f"/dashboards/devices/{seeded.devices['a2-1']}", params={"days": 7}).text
    assert 'id="messages-total">4<' in week
    # a custom window from the picker's date inputs (plain dates, read as UTC)
    day = seeded.now.date()
    custom = ops.get(
        f"/dashboards/devices/{seeded.devices['a-1']}",
        params={"since": str(day - timedelta(days=1)), "until": str(day + timedelta(days=1))},
    )
    assert custom.status_code == 200 and 'id="messages-total">2<' in custom.text


# --- ingest -------------------------------------------------------------------------------


def test_ingest_health_numbers(ops: TestClient, seeded: Seeded) -> None:
    health = ops.get("/ingest/health").json()
    recent = health["recent"]
    # stored usage/telemetry received in the last 15 min, not counting the 4-hour-late one
    assert recent["messages"] == 4
    assert recent["per_second"] == pytest.approx(4 / 900)
    assert sum(m["messages"] for m in recent["per_minute"]) == 4
    assert len(recent["per_minute"]) in {15, 16}
    # live lags 2, 4 and 10 s: percentile_cont interpolates; the replayed one apart
    assert recent["lag_p50_seconds"] == pytest.approx(4)
    assert recent["lag_p95_seconds"] == pytest.approx(4 + 0.9 * 6)
    assert recent["lag_max_seconds"] == pytest.approx(10)
    assert recent["live_lag_seconds"] == 300
    assert recent["late_messages"] == 1
    assert recent["late_lag_max_seconds"] == pytest.approx(40 * 60)
    quarantine = health["quarantine"]
    assert {r["reason"]: r["count"] for r in quarantine["reasons"]} == {
        "not_json": 1,
        "revoked_device": 1,
        "unknown_device": 1,
    }
    assert quarantine["total"] == 3
    bad = next(r for r in quarantine["reasons"] if r["reason"] == "not_json")
    assert bad["sample"]["payload_preview"] == "{not json"
    two_days = ops.get("/ingest/health", params={"hours": 48}).json()["quarantine"]
    assert {r["reason"]: r["count"] for r in two_days["reasons"]}["not_json"] == 2
    completeness = {p["project_name"]: p for p in health["completeness"]}
    assert (completeness["Lockers"]["received"], completeness["Lockers"]["missing"]) == (5, 2)
    assert completeness["Lockers"]["completeness"] == pytest.approx(5 / 7)
    assert completeness["Lockers"]["devices_reporting"] == 3
    assert (completeness["Gateways"]["received"], completeness["Gateways"]["completeness"]) == (
        3,
        1,
    )
    assert completeness["Empty"]["received"] == 0 and completeness["Empty"]["completeness"] is None
    # the test settings turn ingest's metrics endpoint off
    assert health["ingest_metrics"]["reachable"] is False
    assert "turned off" in health["ingest_metrics"]["error"]


def test_ingest_page_shows_the_api_numbers(ops: TestClient, seeded: Seeded) -> None:
    page = ops.get("/dashboards/ingest")
    assert page.status_code == 200
    html = page.text
    assert field(html, "recent.messages") == "4"
    assert field(html, "recent.per_second") == f"{4 / 900:.4f}"
    assert field(html, "recent.late_messages") == "1"
    assert field(html, "recent.late_lag_max_seconds") == "40 min"
    assert 'id="late-notice" hidden' not in html and "replayed or held back" in html
    assert field(html, "recent.lag_p50_seconds") == "4.00"
    assert field(html, "recent.lag_p95_seconds") == "9.40"
    assert field(html, "quarantine.total") == "3"
    sample = re.search(r'data-reason="not_json">.*?href="/quarantine/(\d+)/payload"', html, re.S)
    assert sample, "no sample payload link for not_json"
    assert ops.get(f"/quarantine/{sample.group(1)}/payload").content == b"{not json"
    assert "ingest metrics not reachable" in html
    assert "71.4%" in html  # Lockers' completeness


class _Exporter(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def test_ingest_counters_when_reachable_and_when_not(seeded: Seeded) -> None:
    registry_ = CollectorRegistry()
    duplicates = Counter("fieldtrack_ingest_duplicates", "", ["kind"], registry=registry_)
    duplicates.labels("usage").inc(3)
    duplicates.labels("metric").inc(5)
    Counter("fieldtrack_ingest_messages", "", registry=registry_).inc(120)
    lag = Histogram("fieldtrack_ingest_publish_to_commit_seconds", "", registry=registry_)
    lag.observe(0.2)
    _Exporter.body = generate_latest(registry_)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        up = seeded.settings.model_copy(update={"ingest_metrics_port": port})
        url = up.database_url.get_secret_value()
        with api_client(up, mint_token(url, Role.OPS)) as c:
            metrics = c.get("/ingest/health").json()["ingest_metrics"]
            assert metrics["reachable"] is True
            assert metrics["duplicates"] == {"usage": 3, "metric": 5}
            assert metrics["messages"] == 120
            page = c.get("/dashboards/ingest").text
            assert 'id="duplicates">8<' in page
            assert "ingest metrics not reachable" in page  # the (hidden) notice is there …
            assert 'id="metrics-down" class="notice" hidden' in page  # … but hidden
    finally:
        server.shutdown()
        server.server_close()
    # nothing listens there any more: the page still answers, and says so
    down = seeded.settings.model_copy(update={"ingest_metrics_port": port})
    with api_client(down, mint_token(url, Role.OPS)) as c:
        metrics = c.get("/ingest/health").json()["ingest_metrics"]
        assert metrics["reachable"] is False and metrics["error"]
        page = c.get("/dashboards/ingest")
        assert page.status_code == 200
        assert 'id="metrics-down" class="notice">' in page.text


def test_status_and_status_history_agree_when_ingest_subscribed_late(
    local_services: LocalServices, settings: Settings
) -> None:
    """Issue 23: a device page said "online since 02:14" above "No status reported": the
    demo's devices connected before ingest subscribed, so ingest first saw their birth as the
    broker's retained copy, set the status from it and left the history empty. A retained
    status with its own time is now kept (a replay of it is the same row); one without a
    time (a last will) is not, and the page says why its history is empty."""
    app_url = settings.database_url.get_secret_value()
    with scratch_database(local_services, app_url, "fieldtrack_status") as url:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            customer = registry.upsert_customer(conn, "S", "tail", "retail", "adoption")
            project = registry.upsert_project(
                conn,
                customer,
                "P",
                contract_value=1,
                currency="EUR",
                go_live_date=None,
                status="live",
            )
            registry.provision_devices(conn, None, project, [("s-1", "T", "1"), ("s-2", "T", "1")])
            now = datetime.now(UTC).replace(microsecond=0)
            birth = status("s-1", "online", ago(now, minutes=30), "1.0")
            will = RawMessage(
                device_topic("s-2", MessageKind.STATUS),
                b'{"v": 1, "state": "offline"}',
                ago(now, minutes=20),
                retained=True,
            )
            for _ in range(2):  # subscribed, then subscribed again: the same replay
                with conn.transaction():
                    store_batch(
                        conn,
                        [birth._replace(retained=True), will],
                        DeviceDirectory(),
                        max_future_skew=timedelta(minutes=10),
                        now=now,
                        late_data_days=None,
                    )
            ids: dict[str, int] = dict(conn.execute("SELECT serial, id FROM devices").fetchall())
            rows = conn.execute(
                "SELECT device_id, online FROM device_status_history ORDER BY device_id"
            ).fetchall()
            assert rows == [(ids["s-1"], True)]
        up = settings.model_copy(update={"database_url": SecretStr(url)})
        with api_client(up, mint_token(url, Role.OPS)) as c:
            one = c.get(f"/dashboards/devices/{ids['s-1']}").text
            assert 'id="status-history">' in one and "<td>online</td>" in one
            two = c.get(f"/dashboards/devices/{ids['s-2']}").text
            assert 'id="status-history" hidden' in two
            assert "No status reported" not in two and "retained copy, replayed" in two
