"""Messages that cannot be stored land in the quarantine with a reason; nothing is dropped."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
from fastapi.testclient import TestClient

from device_sim.device import SimDevice
from services.core.broker_admin import BrokerAdmin
from services.core.payloads import MAX_PAYLOAD_BYTES
from services.core.settings import Settings
from services.core.topics import MessageKind, device_topic
from services.infra.local import LocalServices
from services.ingest.retention import run_retention
from services.ingest.service import IngestService, discard_session
from tests.integration.conftest import Project, wait_for
from tests.integration.ingest_support import fault_database, fleet, wait_until_stored

# Over ingest's payload limit yet within the broker's packet limit (the payload limit and 1 KiB
# for the rest of the packet): the broker delivers it, ingest quarantines it as too large.
OVERSIZED = MAX_PAYLOAD_BYTES + 500


def _quarantined(conn: psycopg.Connection, serial: str) -> list[tuple[str, str, bytes]]:
    return [
        (reason, detail, bytes(payload))
        for reason, detail, payload in conn.execute(
            "SELECT reason, detail, payload FROM quarantine WHERE device_serial = %s ORDER BY id",
            (serial,),
        )
    ]


def test_message_from_unknown_device_is_quarantined_with_reason(
    ingest: IngestService,
    conn: psycopg.Connection,
    broker_admin: BrokerAdmin,
    settings: Settings,
    unique: str,
) -> None:
    # The broker knows this identity, fieldtrack's registry does not.
    serial = f"ghost-{unique}"
    password = secrets.token_urlsafe(16)
    broker_admin.create_devices([(serial, password)])
    device = SimDevice(serial, password, settings.broker_nodes())
    device.start()
    try:
        assert device.connected.wait(10)
        device.usage("remote_unlock").wait_for_publish(5)
        rows = wait_for(lambda: [r for r in _quarantined(conn, serial) if b"events" in r[2]])
    finally:
        device.stop()
    reason, detail, payload = rows[0]
    assert reason == "unknown_device"
    assert "no provisioned device" in detail
    assert json.loads(payload)["events"][0]["feature"] == "remote_unlock"
    stored = conn.execute(
        "SELECT count(*) FROM usage_events u JOIN devices d ON d.id = u.device_id WHERE d.serial = %s",
        (serial,),
    ).fetchone()
    assert stored == (0,)


def test_malformed_and_future_messages_are_quarantined_with_reasons(
    ingest: IngestService,
    conn: psycopg.Connection,
    project: Project,
    provision: Callable[[int, str], SimDevice],
    unique: str,
) -> None:
    device = provision(project.id, f"bad-{unique}")
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    bad = [
        b"not json at all",
        b'{"v": 1, "seq": 1, "ts": "2026-01-01T00:00:00Z", "events": [{"feature": "x", "count": NaN}]}',
        json.dumps({"v": 1, "seq": "7", "ts": future, "events": [{"feature": "x"}]}).encode(),
        json.dumps({"v": 1, "seq": 8, "ts": future, "events": [{"feature": "x"}]}).encode(),
        b'{"v": 1, "seq": 9, "ts": "2026-01-01T00:00:00Z", "events": [{"feature": "a\\u0000b"}]}',
        b"x" * OVERSIZED,
    ]
    for payload in bad:
        device.publish(MessageKind.USAGE, payload).wait_for_publish(5)
    rows = wait_for(lambda: (r := _quarantined(conn, device.serial)) and len(r) >= len(bad) and r)
    reasons = [reason for reason, _, _ in rows]
    assert reasons == [
        "not_json",
        "invalid_payload",
        "invalid_payload",
        "future_timestamp",
        "invalid_payload",
        "payload_too_large",
    ]
    assert "seq" in rows[2][1]
    assert len(rows[5][2]) == 64 * 1024  # oversized payloads are kept truncated
    size = conn.execute(
        "SELECT payload_size FROM quarantine WHERE device_serial = %s AND reason = 'payload_too_large'",
        (device.serial,),
    ).fetchone()
    assert size == (OVERSIZED,)


def test_quarantine_older_than_retention_is_purged(
    settings: Settings, conn: psycopg.Connection, unique: str
) -> None:
    serial = f"purge-{unique}"
    old = datetime.now(UTC) - timedelta(days=settings.ingest_quarantine_retention_days + 1)
    recent = datetime.now(UTC) - timedelta(days=1)
    for received in (old, recent):
        conn.execute(
            """INSERT INTO quarantine (received_at, topic, device_serial, reason, detail,
                                       payload, payload_size)
               VALUES (%s, 't', %s, 'not_json', 'test', 'x', 1)""",
            (received, serial),
        )
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as job:
        run_retention(job, settings, datetime.now(UTC))
    kept = conn.execute(
        "SELECT received_at FROM quarantine WHERE device_serial = %s", (serial,)
    ).fetchall()
    assert [row[0] for row in kept] == [recent]


def test_the_list_pages_through_a_time_window_latest_first(
    api: TestClient, conn: psycopg.Connection, unique: str
) -> None:
    """The list walks ids (migration 0011 keeps only a BRIN index on the time): every row of
    the window and filters on exactly one page, latest quarantined first, and rows outside
    the window skipped even where their ids lie between the window's."""
    serial = f"pages-{unique}"
    start = datetime.now(UTC) - timedelta(hours=3)
    inside: list[int] = []
    for i in range(23):
        for received, reason in (
            (start + timedelta(minutes=i), "not_json"),
            (start - timedelta(days=2), "not_json"),  # before the window, id in between
            (start + timedelta(minutes=i, seconds=30), "invalid_payload"),
        ):
            (row_id,) = conn.execute(
                """INSERT INTO quarantine (received_at, topic, device_serial, reason, detail,
                                           payload, payload_size)
                   VALUES (%s, 't', %s, %s, 'test', 'x', 1) RETURNING id""",
                (received, serial, reason),
            ).fetchone() or (0,)
            if received >= start and reason == "not_json":
                inside.append(row_id)
    window = {"since": start.isoformat(), "until": datetime.now(UTC).isoformat()}
    seen: list[int] = []
    for offset in range(0, 30, 7):
        page = api.get(
            "/quarantine",
            params={**window, "device": serial, "reason": "not_json", "limit": 7, "offset": offset},
        )
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["total"] == len(inside)
        seen += [item["id"] for item in body["items"]]
    assert seen == sorted(inside, reverse=True)
    oldest = api.get(
        "/quarantine",
        params={**window, "device": serial, "reason": "not_json", "sort": "id", "limit": 5},
    )
    assert [item["id"] for item in oldest.json()["items"]] == sorted(inside)[:5]
    bad_sort = api.get("/quarantine", params={"sort": "received_at"})
    assert bad_sort.status_code == 422 and "-id" in bad_sort.text, bad_sort.text
    # no rows at all in the window: an empty page, not an error
    empty = api.get("/quarantine", params={"device": f"{serial}-none"})
    assert empty.status_code == 200
    assert empty.json()["items"] == [] and empty.json()["total"] == 0


def test_a_retained_message_replayed_on_every_reconnect_is_quarantined_once(
    local_services: LocalServices, settings: Settings, broker_admin: BrokerAdmin
) -> None:
    """Issue 22, finding 3: a device's retained garbage is replayed by the broker every time
    ingest subscribes again (a plain subscription), and each replay once added a quarantine
    row. The same message quarantined again (same topic, same bytes) now adds no row: its
    row counts it."""
    with fault_database(local_services, settings) as env:
        serial = f"retained-{env.token}"
        project = (env.project_id, env.feature_key)
        with fleet(env.url, broker_admin, settings, *project, [serial]) as devices:
            device = devices.by_serial(serial)
            topic = device_topic(serial, MessageKind.STATUS)
            garbage = b'{"v": 1, "state": "exploded"}'
            ingest = env.ingest("qdedupe", "")  # no share group: retained messages replay

            def rows() -> list[tuple[str, int]]:
                with psycopg.connect(env.url, autocommit=True) as conn:
                    return [
                        (reason, copies)
                        for reason, copies in conn.execute(
                            "SELECT reason, copies FROM quarantine WHERE device_serial = %s "
                            "AND payload = %s ORDER BY id",
                            (serial, garbage),
                        )
                    ]

            def copies_reach(n: int) -> list[tuple[str, int]]:
                reached: list[tuple[str, int]] = wait_for(
                    lambda: (r := rows()) and sum(c for _, c in r) >= n and r
                )
                return reached

            try:
                ingest.start()
                wait_until_stored(env.url, device, env.feature_key, 10**6)  # subscribed
                publish = device._client.publish  # paho's own: SimDevice never retains data
                publish(topic, garbage, qos=1, retain=True).wait_for_publish(5)
                assert copies_reach(1) == [("invalid_payload", 1)]
                publish(topic, garbage, qos=1, retain=True).wait_for_publish(5)  # sent again
                assert copies_reach(2) == [("invalid_payload", 2)]
                for replays in (3, 4):  # each restart subscribes again: the broker replays it
                    ingest.terminate(30)
                    ingest.start()
                    copies_reach(replays)
                time.sleep(0.3)  # a row added after the count would show now
                found = rows()
            finally:
                device._client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
                ingest.ensure_dead()
                discard_session(settings, ingest.client_id)
    print(f"\n[quarantine dedupe] rows of the retained message: {found}")
    assert found == [("invalid_payload", 4)]
