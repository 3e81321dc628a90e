"""Provisioning through the API: the registry row and the broker identity move together.

Devices log in as real devices do (username = client id = serial) over MQTT 5, so a refused
publish shows its reason code (135 = not authorised)."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from services.core.broker_admin import BrokerAdmin, device_acls, device_role, setup_broker
from services.core.migrate import migrate
from services.core.settings import Settings
from services.core.topics import SERIAL_RE, parse_topic
from services.infra.local import LocalServices
from services.ingest.service import IngestService
from services.registry import upserts as registry
from tests.integration.conftest import Project, scratch_database, wait_for

NOT_AUTHORISED = 135
# 16 = "no matching subscribers": accepted, though nobody listened at that moment.
ACCEPTED = {0, 16}
MAX_BIGINT = 2**63 - 1


class DeviceClient:
    """An MQTT 5 device: records CONNACK, PUBACK reason codes and disconnection."""

    def __init__(
        self, settings: Settings, serial: str, password: str, client_id: str | None = None
    ) -> None:
        self.connack: Any = None
        self.pubacks: dict[int, int] = {}
        self.disconnected = threading.Event()
        self._connack_seen = threading.Event()
        self._puback_seen = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or serial, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(serial, password)
        # A refused or dropped device must not sneak back in by itself during a test.
        self.client.reconnect_delay_set(min_delay=60, max_delay=120)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect
        self.client.connect(settings.mqtt_host, settings.mqtt_port)
        self.client.loop_start()
        assert self._connack_seen.wait(10), "no CONNACK"

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason
        if reason.is_failure:
            client.disconnect()  # refused: do not try again
        self._connack_seen.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.disconnected.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._puback_seen:
            self.pubacks[mid] = reason.value
            self._puback_seen.notify_all()

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish with QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1)
        with self._puback_seen:
            assert self._puback_seen.wait_for(lambda: info.mid in self.pubacks, 10), "no PUBACK"
            return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


Connect = Callable[..., DeviceClient]


@pytest.fixture
def connect(settings: Settings) -> Iterator[Connect]:
    """Open device connections; all are closed after the test."""
    opened: list[DeviceClient] = []

    def open_client(serial: str, password: str, client_id: str | None = None) -> DeviceClient:
        client = DeviceClient(settings, serial, password, client_id)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()


def expect(response: httpx.Response, status: int) -> Any:
    assert response.status_code < 500, f"server error: {response.text}"
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: expected {status}, "
        f"got {response.status_code}: {response.text}"
    )
    return response.json() if response.content else None


def provision(
    api: TestClient, project_id: int, serial: str, **fields: Any
) -> tuple[dict[str, Any], str]:
    body = expect(
        api.post("/devices", json={"serial": serial, "project_id": project_id, **fields}), 201
    )
    return body["device"], body["password"]


def usage_payload(feature: str, seq: int, count: int = 1) -> bytes:
    ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = {"v": 1, "seq": seq, "ts": ts, "events": [{"feature": feature, "count": count}]}
    return json.dumps(body).encode()


def usage_rows(conn: psycopg.Connection, serial: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        """SELECT u.feature_key, u.count, u.seq, u.project_id
           FROM usage_events u JOIN devices d ON d.id = u.device_id
           WHERE d.serial = %s ORDER BY u.seq""",
        (serial,),
    ).fetchall()


def stored_serials(conn: psycopg.Connection, serials: list[str]) -> list[str]:
    rows = conn.execute("SELECT serial FROM devices WHERE serial = ANY(%s)", (serials,))
    return sorted(r[0] for r in rows)


def topic(serial: str) -> str:
    return f"fieldtrack/v1/{serial}/usage"


# --- provisioning ---------------------------------------------------------------------------


def test_password_is_shown_once_and_never_again(
    api: TestClient, conn: psycopg.Connection, project: Project, unique: str
) -> None:
    response = api.post("/devices", json={"serial": f"once-{unique}", "project_id": project.id})
    body = expect(response, 201)
    password = body["password"]
    assert isinstance(password, str) and len(password) >= 32
    device = body["device"]
    assert (device["serial"], device["project_id"], device["status"]) == (
        f"once-{unique}",
        project.id,
        "active",
    )

    for url, params in (
        (f"/devices/{device['id']}", {}),
        ("/devices", {"project_id": project.id}),
        ("/devices", {"q": f"once-{unique}"}),
    ):
        shown = api.get(url, params=params)
        expect(shown, 200)
        assert password not in shown.text
        assert "password" not in shown.text
    # fieldtrack keeps no copy: the broker holds only a salted hash
    [row] = conn.execute(
        "SELECT row_to_json(d)::text FROM devices d WHERE id = %s", (device["id"],)
    ).fetchall()
    assert password not in row[0]

    another = expect(
        api.post("/devices", json={"serial": f"once2-{unique}", "project_id": project.id}), 201
    )
    assert another["password"] != password


def test_provisioned_device_publishes_only_its_own_usage_and_ingest_stores_it(
    api: TestClient,
    ingest: IngestService,
    conn: psycopg.Connection,
    connect: Connect,
    project: Project,
    unique: str,
) -> None:
    device, password = provision(api, project.id, f"pub-{unique}")
    neighbour, _ = provision(api, project.id, f"pub2-{unique}")
    serial = device["serial"]

    client = connect(serial, password)
    assert client.accepted, client.connack
    assert client.publish(topic(serial), usage_payload(project.feature_key, 7, count=3)) in ACCEPTED

    rows = wait_for(lambda: usage_rows(conn, serial))
    assert rows == [(project.feature_key, 3, 7, project.id)]

    # not on another device's topic, nor outside its own prefix
    assert client.publish(topic(neighbour["serial"]), usage_payload(project.feature_key, 8)) == (
        NOT_AUTHORISED
    )
    assert client.publish(topic(f"ghost-{unique}"), usage_payload(project.feature_key, 9)) == (
        NOT_AUTHORISED
    )
    assert client.publish(f"fieldtrack/v1/{serial}x/usage", b"{}") == NOT_AUTHORISED
    time.sleep(0.5)  # give ingest time to store anything that slipped through
    assert usage_rows(conn, neighbour["serial"]) == []
    assert usage_rows(conn, serial) == [(project.feature_key, 3, 7, project.id)]


def test_device_logs_in_only_with_its_serial_as_client_id_and_its_password(
    api: TestClient, connect: Connect, project: Project, unique: str
) -> None:
    device, password = provision(api, project.id, f"login-{unique}")
    serial = device["serial"]
    assert not connect(serial, password, client_id=f"other-{unique}").accepted
    assert not connect(serial, password + "x").accepted
    assert not connect(serial, "").accepted
    assert connect(serial, password).accepted


def test_unknown_project_is_422_and_provisions_nothing(
    api: TestClient, conn: psycopg.Connection, unique: str
) -> None:
    response = api.post("/devices", json={"serial": f"orph-{unique}", "project_id": MAX_BIGINT})
    body = expect(response, 422)
    assert body["detail"][0]["loc"][-1] == "project_id"
    assert stored_serials(conn, [f"orph-{unique}"]) == []


# --- revoke -----------------------------------------------------------------------------------


def test_revoke_disconnects_refuses_and_keeps_history(
    api: TestClient,
    ingest: IngestService,
    conn: psycopg.Connection,
    connect: Connect,
    project: Project,
    unique: str,
) -> None:
    device, password = provision(api, project.id, f"rev-{unique}")
    serial = device["serial"]
    client = connect(serial, password)
    assert client.accepted, client.connack
    assert client.publish(topic(serial), usage_payload(project.feature_key, 1)) in ACCEPTED
    history = wait_for(lambda: usage_rows(conn, serial))
    assert expect(api.get(f"/projects/{project.id}"), 200)["devices"] == 1

    revoked = expect(api.post(f"/devices/{device['id']}/revoke"), 200)
    assert (revoked["id"], revoked["status"]) == (device["id"], "revoked")
    assert revoked["revoked_at"] is not None
    assert "password" not in revoked

    assert client.disconnected.wait(5), "the broker did not disconnect the revoked device"
    assert not connect(serial, password).accepted

    assert usage_rows(conn, serial) == history
    assert expect(api.get(f"/devices/{device['id']}"), 200)["status"] == "revoked"
    assert expect(api.get(f"/projects/{project.id}"), 200)["devices"] == 0
    # revoking again changes nothing
    again = expect(api.post(f"/devices/{device['id']}/revoke"), 200)
    assert again == expect(api.get(f"/devices/{device['id']}"), 200)
    assert again["revoked_at"] == revoked["revoked_at"]


def test_revoke_of_a_device_that_never_connected(
    api: TestClient, connect: Connect, project: Project, unique: str
) -> None:
    device, password = provision(api, project.id, f"rev0-{unique}")
    expect(api.post(f"/devices/{device['id']}/revoke"), 200)
    assert not connect(device["serial"], password).accepted


def test_unknown_device_is_404_for_every_action(api: TestClient) -> None:
    for response in (
        api.post(f"/devices/{MAX_BIGINT}/revoke"),
        api.post(f"/devices/{MAX_BIGINT}/credentials"),
        api.delete(f"/devices/{MAX_BIGINT}"),
    ):
        assert str(MAX_BIGINT) in expect(response, 404)["detail"]
    for path in ("/devices/0/revoke", f"/devices/{2**63}/credentials"):
        expect(api.post(path), 422)


# --- credentials ------------------------------------------------------------------------------


def test_rotated_credentials_replace_the_old_password(
    api: TestClient, connect: Connect, project: Project, unique: str
) -> None:
    device, old = provision(api, project.id, f"rot-{unique}")
    serial = device["serial"]
    first = connect(serial, old)
    assert first.accepted
    first.close()

    rotated = expect(api.post(f"/devices/{device['id']}/credentials"), 200)
    new = rotated["password"]
    assert isinstance(new, str) and len(new) >= 32 and new != old
    assert rotated["device"]["id"] == device["id"]
    assert rotated["device"]["status"] == "active"

    assert not connect(serial, old).accepted
    client = connect(serial, new)
    assert client.accepted, client.connack
    assert client.publish(topic(serial), b"{}") in ACCEPTED
    assert new not in api.get(f"/devices/{device['id']}").text


def test_rotating_a_revoked_device_is_409(
    api: TestClient, connect: Connect, project: Project, unique: str
) -> None:
    device, password = provision(api, project.id, f"rotrev-{unique}")
    expect(api.post(f"/devices/{device['id']}/revoke"), 200)
    body = expect(api.post(f"/devices/{device['id']}/credentials"), 409)
    assert "revoked" in body["detail"]
    assert not connect(device["serial"], password).accepted
    assert expect(api.get(f"/devices/{device['id']}"), 200)["status"] == "revoked"


# --- delete -----------------------------------------------------------------------------------


def test_device_that_sent_data_cannot_be_deleted(
    api: TestClient,
    ingest: IngestService,
    conn: psycopg.Connection,
    connect: Connect,
    project: Project,
    unique: str,
) -> None:
    device, password = provision(api, project.id, f"del-{unique}")
    serial = device["serial"]
    client = connect(serial, password)
    assert client.publish(topic(serial), usage_payload(project.feature_key, 1)) in ACCEPTED
    wait_for(lambda: usage_rows(conn, serial))

    body = expect(api.delete(f"/devices/{device['id']}"), 409)
    assert "revoke" in body["detail"]
    assert expect(api.get(f"/devices/{device['id']}"), 200)["status"] == "active"
    assert connect(serial, password).accepted  # its broker identity is untouched too
    assert usage_rows(conn, serial)


def test_device_that_never_connected_is_deleted_with_its_broker_login(
    api: TestClient, conn: psycopg.Connection, connect: Connect, project: Project, unique: str
) -> None:
    device, password = provision(api, project.id, f"del0-{unique}")
    expect(api.delete(f"/devices/{device['id']}"), 204)
    expect(api.get(f"/devices/{device['id']}"), 404)
    assert stored_serials(conn, [device["serial"]]) == []
    assert not connect(device["serial"], password).accepted
    expect(api.delete(f"/devices/{device['id']}"), 404)


# --- batch ------------------------------------------------------------------------------------


def test_batch_provisions_every_device_with_its_own_password(
    api: TestClient, conn: psycopg.Connection, connect: Connect, project: Project, unique: str
) -> None:
    serials = [f"bat-{unique}-{i}" for i in range(3)]
    body = [
        {"serial": s, "project_id": project.id, "tags": [f"t{i}"]} for i, s in enumerate(serials)
    ]
    provisioned = expect(api.post("/devices/batch", json=body), 201)
    assert [p["device"]["serial"] for p in provisioned] == serials
    assert [p["device"]["tags"] for p in provisioned] == [["t0"], ["t1"], ["t2"]]
    passwords = [p["password"] for p in provisioned]
    assert len(set(passwords)) == 3 and all(len(p) >= 32 for p in passwords)
    assert stored_serials(conn, serials) == sorted(serials)
    for serial, password in zip(serials, passwords, strict=True):
        assert connect(serial, password).accepted, serial
    # passwords belong to their own device only
    assert not connect(serials[0], passwords[1]).accepted


def test_batch_with_a_repeated_serial_is_422_and_creates_nothing(
    api: TestClient, conn: psycopg.Connection, project: Project, unique: str
) -> None:
    serials = [f"batd-{unique}-1", f"batd-{unique}-2", f"batd-{unique}-1"]
    body = [{"serial": s, "project_id": project.id} for s in serials]
    error = expect(api.post("/devices/batch", json=body), 422)
    assert error["detail"][0]["loc"][-1] == "serial"
    assert stored_serials(conn, serials) == []


def test_batch_with_an_existing_serial_is_422_and_creates_nothing(
    api: TestClient, conn: psycopg.Connection, project: Project, unique: str
) -> None:
    provision(api, project.id, f"bate-{unique}-old")
    serials = [f"bate-{unique}-new", f"bate-{unique}-old"]
    body = [{"serial": s, "project_id": project.id} for s in serials]
    error = expect(api.post("/devices/batch", json=body), 422)
    assert error["detail"][0]["loc"][-1] == "serial"
    assert stored_serials(conn, serials) == [f"bate-{unique}-old"]


def test_batch_with_an_unknown_project_is_422_and_creates_nothing(
    api: TestClient, conn: psycopg.Connection, project: Project, unique: str
) -> None:
    body: list[dict[str, Any]] = [
        {"serial": f"batp-{unique}-1", "project_id": project.id},
        {"serial": f"batp-{unique}-2", "project_id": MAX_BIGINT},
        {"serial": f"batp-{unique}-3", "project_id": project.id},
    ]
    error = expect(api.post("/devices/batch", json=body), 422)
    assert error["detail"][0]["loc"][-1] == "project_id"
    assert stored_serials(conn, [d["serial"] for d in body]) == []


def test_batch_with_an_invalid_item_is_422_naming_it(
    api: TestClient, conn: psycopg.Connection, project: Project, unique: str
) -> None:
    body = [
        {"serial": f"bati-{unique}-1", "project_id": project.id},
        {"serial": "not a serial", "project_id": project.id},
    ]
    error = expect(api.post("/devices/batch", json=body), 422)
    assert error["detail"][0]["loc"] == ["body", 1, "serial"]
    assert stored_serials(conn, [f"bati-{unique}-1"]) == []
    expect(api.post("/devices/batch", json=[]), 422)
    expect(api.post("/devices/batch", json={"serial": f"bati-{unique}-3"}), 422)


def test_provisioning_does_not_take_over_another_broker_account(
    api: TestClient,
    conn: psycopg.Connection,
    broker_admin: BrokerAdmin,
    connect: Connect,
    project: Project,
    unique: str,
) -> None:
    """A serial may spell the name of a broker account that is no device (a service account,
    like fieldtrack-ingest or fieldtrack-admin). Provisioning must not hand out a new password
    for it: that account keeps its password, and no device is registered."""
    username, password = f"svc-{unique}", secrets.token_urlsafe(16)
    broker_admin.check([{"command": "createClient", "username": username, "password": password}])
    try:
        assert connect(username, password).accepted
        response = api.post("/devices", json={"serial": username, "project_id": project.id})
        assert response.status_code < 500, response.text
        assert response.status_code in {409, 422}, (
            f"provisioning re-passworded the existing broker account {username}: {response.text}"
        )
        assert connect(username, password).accepted, "the account's own password stopped working"
        assert stored_serials(conn, [username]) == []
    finally:
        broker_admin.delete_device(username)


def test_a_serial_with_a_trailing_newline_is_no_serial(
    api: TestClient, conn: psycopg.Connection, project: Project, unique: str
) -> None:
    """Issue #22, finding 9: `^…$` also matches before a final newline. A serial is a topic
    level: ingest must not read `fieldtrack/v1/<serial>\\n/usage` as a device topic, and
    provisioning refuses the name."""
    serial = f"nl-{unique}"
    response = api.post("/devices", json={"serial": f"{serial}\n", "project_id": project.id})
    assert expect(response, 422)["detail"][0]["loc"][-1] == "serial"
    assert stored_serials(conn, [serial, f"{serial}\n"]) == []
    assert SERIAL_RE.fullmatch(f"{serial}\n") is None
    assert parse_topic(f"fieldtrack/v1/{serial}\n/usage") is None
    assert parse_topic(f"fieldtrack/v1/{serial}/usage") is not None


RESERVED_MIGRATION = "0016_reserved_serials"


def test_devices_provisioned_under_reserved_serials_before_the_check_are_removed(
    local_services: LocalServices,
    database: str,
    settings: Settings,
    broker_admin: BrokerAdmin,
    connect: Connect,
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Older code provisioned any serial, `fieldtrack-ingest-1` included: a registry row and
    a broker account that may log in under that client id (ingest's namespace) and take
    ingest's session over. On upgrade, the migration revokes such devices (saying which) and
    `broker-setup` deletes their broker accounts; other devices are untouched."""
    reserved = [f"fieldtrack-ingest-{unique}", f"FieldTrack-{unique}"]
    kept = f"ingestor-{unique}"
    passwords = {serial: secrets.token_urlsafe(16) for serial in [*reserved, kept]}
    with scratch_database(local_services, database, "fieldtrack_reserved") as url:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            # the database as it was before the migration: the devices registered
            conn.execute("DELETE FROM schema_migrations WHERE version = %s", (RESERVED_MIGRATION,))
            customer = registry.upsert_customer(conn, f"C {unique}", "tail", "retail", "adoption")
            project = registry.upsert_project(
                conn,
                customer,
                f"P {unique}",
                contract_value=1,
                currency="EUR",
                go_live_date=None,
                status="live",
            )
            for serial in passwords:
                conn.execute(
                    "INSERT INTO devices (serial, project_id) VALUES (%s, %s)", (serial, project)
                )
        # ... and their broker accounts, as provisioning made them then
        broker_admin.check(
            [
                cmd
                for serial, password in passwords.items()
                for cmd in (
                    {
                        "command": "createRole",
                        "rolename": device_role(serial),
                        "acls": device_acls(serial),
                    },
                    {
                        "command": "createClient",
                        "username": serial,
                        "clientid": serial,
                        "password": password,
                        "roles": [{"rolename": device_role(serial)}],
                    },
                )
            ]
        )
        try:
            for serial, password in passwords.items():
                assert connect(serial, password).accepted, serial
            with caplog.at_level(logging.WARNING, logger="services.core.migrate"):
                assert migrate(url) == [RESERVED_MIGRATION]
            assert all(serial in caplog.text for serial in reserved), caplog.text
            assert kept not in caplog.text
            with psycopg.connect(url) as conn:
                statuses: dict[str, str] = dict(
                    conn.execute("SELECT serial, status FROM devices").fetchall()
                )
            assert statuses == {**dict.fromkeys(reserved, "revoked"), kept: "active"}
            setup_broker(
                host=settings.mqtt_host,
                port=settings.mqtt_port,
                admin_user=settings.mqtt_admin_username,
                admin_password=settings.mqtt_admin_password.get_secret_value(),
                ingest_user=settings.mqtt_ingest_username,
                ingest_password=settings.mqtt_ingest_password.get_secret_value(),
            )
            for serial in reserved:
                assert not connect(serial, passwords[serial]).accepted, f"{serial} logged in"
            assert connect(kept, passwords[kept]).accepted
        finally:
            broker_admin.delete_devices(list(passwords))
