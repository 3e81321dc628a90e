"""The thin path: a device publishes over MQTT → ingest stores it → API and dashboard show it."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
from fastapi.testclient import TestClient

from device_sim.device import SimDevice
from services.core.topics import MessageKind
from services.ingest.service import IngestService
from tests.integration.conftest import Project, wait_for


def _usage_rows(conn: psycopg.Connection, serial: str) -> list[tuple[object, ...]]:
    return conn.execute(
        """SELECT u.feature_key, u.count, u.seq, u.device_time, u.received_at
           FROM usage_events u JOIN devices d ON d.id = u.device_id WHERE d.serial = %s""",
        (serial,),
    ).fetchall()


def test_usage_event_flows_from_device_to_api_and_dashboard(
    ingest: IngestService,
    api: TestClient,
    conn: psycopg.Connection,
    project: Project,
    provision: Callable[[int, str], SimDevice],
    unique: str,
) -> None:
    device = provision(project.id, f"e2e-{unique}")
    device.usage(project.feature_key, count=3, duration_ms=1500).wait_for_publish(5)

    rows = wait_for(lambda: _usage_rows(conn, device.serial))
    assert len(rows) == 1
    feature_key, count, _seq, device_time, received_at = rows[0]
    assert (feature_key, count) == (project.feature_key, 3)
    assert isinstance(device_time, datetime) and isinstance(received_at, datetime)
    assert received_at >= device_time.replace(microsecond=0)

    response = api.get(f"/projects/{project.id}/usage")
    assert response.status_code == 200
    body = response.json()
    [feature] = [f for f in body["features"] if f["feature_key"] == project.feature_key]
    assert feature["events"] == 3
    assert feature["devices_using"] == 1
    assert feature["delivery_status"] == "delivered"
    assert body["devices_reporting"] == 1

    page = api.get(f"/dashboards/projects/{project.id}")
    assert page.status_code == 200
    assert f'data-feature="{project.feature_key}"' in page.text
    assert '<td class="num events" data-value="3">3</td>' in page.text


def test_redelivered_message_is_stored_once(
    ingest: IngestService,
    conn: psycopg.Connection,
    project: Project,
    provision: Callable[[int, str], SimDevice],
    unique: str,
) -> None:
    device = provision(project.id, f"dup-{unique}")
    body = {
        "v": 1,
        "seq": 42,
        "ts": datetime.now(UTC).isoformat(),
        "events": [{"feature": project.feature_key, "count": 2}],
    }
    before = ingest.totals.usage_duplicates
    for _ in range(3):
        device.publish(MessageKind.USAGE, json.dumps(body).encode()).wait_for_publish(5)
    wait_for(lambda: ingest.totals.usage_duplicates >= before + 2)
    assert len(_usage_rows(conn, device.serial)) == 1
    events = conn.execute(
        "SELECT sum(events) FROM usage_hourly WHERE project_id = %s AND feature_key = %s",
        (project.id, project.feature_key),
    ).fetchone()
    assert events is not None and events[0] == 2  # the rollup counted the message once


def test_status_birth_and_will_drive_device_state(
    ingest: IngestService,
    conn: psycopg.Connection,
    api: TestClient,
    project: Project,
    provision: Callable[[int, str], SimDevice],
    unique: str,
) -> None:
    device = provision(project.id, f"state-{unique}")

    def state() -> tuple[object, ...] | None:
        return conn.execute(
            """SELECT s.online, s.last_seen FROM device_state s JOIN devices d ON d.id = s.device_id
               WHERE d.serial = %s""",
            (device.serial,),
        ).fetchone()

    assert wait_for(lambda: (row := state()) and row[0] is True)
    device.stop()
    assert wait_for(lambda: (row := state()) and row[0] is False)

    # both statuses are kept as history, newest first, and the device page shows them
    device_id = conn.execute(
        "SELECT id FROM devices WHERE serial = %s", (device.serial,)
    ).fetchone()
    assert device_id
    telemetry = api.get(f"/devices/{device_id[0]}/telemetry").json()
    assert [s["online"] for s in telemetry["status_history"]] == [False, True]
    page = api.get(f"/dashboards/devices/{device_id[0]}")
    assert page.status_code == 200 and page.text.count("<td>offline</td>") == 1
    # a status the broker replays (retained) on a new subscription is not a new status
    stored = conn.execute(
        "SELECT count(*) FROM device_status_history WHERE device_id = %s", (device_id[0],)
    ).fetchone()
    assert stored == (2,)


def test_unknown_project_usage_is_404_with_a_message(api: TestClient) -> None:
    response = api.get("/projects/999999999/usage")
    assert response.status_code == 404
    assert "999999999" in response.json()["detail"]


def test_window_without_time_zone_is_422(api: TestClient, project: Project) -> None:
    response = api.get(f"/projects/{project.id}/usage", params={"since": "2026-01-01T00:00:00"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", "since"]
    assert "time zone" in error["msg"]
