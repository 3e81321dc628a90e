"""The NATS cluster as fieldtrack's broker: three real nodes with JetStream and MQTT, devices
admitted by the auth callout from the registry, ingest consuming the replicated MQTT stream.

Every boundary is tried from the wrong side: wrong passwords, unknown and revoked devices,
another device's client id or topics, device credentials over the NATS protocol.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import nats
import psycopg
import pytest

from services.core.aio import run_sync
from services.core.identities import open_identities
from services.core.settings import Settings
from services.core.topics import MessageKind, device_topic
from services.ingest.service import IngestService
from services.registry import provisioning, upserts as registry
from tests.integration.cluster_support import Cluster, device_client
from tests.integration.conftest import Project, api_client, mint_token, wait_for
from tests.integration.ingest_support import Ledger, account, stored_count, usage_body

pytestmark = pytest.mark.usefixtures("cluster")

CONNACK_WAIT_S = 10.0


class Login:
    """One device connection attempt, watched: its CONNACK and when it was disconnected."""

    def __init__(self, serial: str, password: str, port: int, client_id: str | None = None):
        self.answered = threading.Event()
        self.dropped = threading.Event()
        self.refused: str | None = None
        self.dropped_at = 0.0
        self.client = device_client(serial, password, client_id=client_id)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.refused = str(reason) if reason.is_failure else None
        self.answered.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if not self.dropped.is_set():
            self.dropped_at = time.monotonic()
            self.dropped.set()

    def accepted(self) -> bool:
        assert self.answered.wait(CONNACK_WAIT_S), "no CONNACK"
        return self.refused is None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def login(cluster: Cluster) -> Iterator[Any]:
    opened: list[Login] = []

    def make(serial: str, password: str, *, node: int = 0, client_id: str | None = None) -> Login:
        attempt = Login(serial, password, cluster.mqtt_ports[node], client_id)
        opened.append(attempt)
        return attempt

    yield make
    for attempt in opened:
        attempt.close()


def provision(settings: Settings, project_id: int, serials: list[str]) -> dict[str, str]:
    url = settings.database_url.get_secret_value()
    with psycopg.connect(url, autocommit=True) as conn, open_identities(settings) as identities:
        made = registry.provision_devices(
            conn, identities, project_id, [(s, "T1", "1.0") for s in serials]
        )
    return {c.serial: c.password for c in made}


def device_id(conn: psycopg.Connection, serial: str) -> int:
    row = conn.execute("SELECT id FROM devices WHERE serial = %s", (serial,)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def two_ingests(cluster: Cluster) -> Iterator[list[IngestService]]:
    # small fetches, so both processes have pull requests waiting while messages arrive
    shared = cluster.settings.model_copy(update={"ingest_batch_max": 10})
    services = [IngestService(shared) for _ in range(2)]
    for service in services:
        service.start()
    for service in services:
        assert service.wait_connected(20), "ingest could not reach the cluster"
    yield services
    for service in services:
        service.stop()


def test_devices_on_every_node_are_stored_once_through_the_shared_consumer(
    cluster: Cluster, project: Project, unique: str, two_ingests: list[IngestService]
) -> None:
    serials = [f"nc-{unique}-{i}" for i in range(9)] + [f"nc.{unique}.dotted"]
    passwords = provision(cluster.settings, project.id, serials)
    ledger = Ledger()
    logins = []
    for i, serial in enumerate(serials):
        attempt = Login(serial, passwords[serial], cluster.mqtt_ports[i % 3])
        assert attempt.accepted(), f"{serial} refused: {attempt.refused}"
        logins.append(attempt)
    base = datetime.now(UTC)
    try:
        for seq in range(1, 41):
            for attempt, serial in zip(logins, serials, strict=True):
                info = attempt.client.publish(
                    device_topic(serial, MessageKind.USAGE),
                    usage_body(seq, base, project.feature_key),
                    qos=1,
                )
                ledger.record(serial, seq, info)
        assert ledger.wait_acks(30) == 0
        url = cluster.settings.database_url.get_secret_value()
        wait_for(lambda: stored_count(url, serials) == 400, timeout=30)
        result = account(url, ledger, serials)
    finally:
        for attempt in logins:
            attempt.close()
    assert (result.lost, result.duplicated, result.unexpected) == (0, 0, 0)
    # the consumer is shared: both processes took part of the stream
    assert all(service.totals.messages > 0 for service in two_ingests), [
        service.totals.messages for service in two_ingests
    ]


def test_the_callout_refuses_every_wrong_login(
    cluster: Cluster, project: Project, unique: str, login: Any
) -> None:
    serial, other = f"nr-{unique}", f"nr-{unique}-b"
    passwords = provision(cluster.settings, project.id, [serial, other])
    assert login(serial, passwords[serial], node=1).accepted()
    assert not login(serial, "wrong-" + passwords[serial], node=0).accepted()
    assert not login(f"nobody-{unique}", passwords[serial], node=2).accepted()
    # another device's client id: would end that device's MQTT session
    assert not login(serial, passwords[serial], node=0, client_id=other).accepted()
    # fieldtrack's own accounts are not devices, whatever password is tried
    assert not login("fieldtrack-ingest", passwords[serial], client_id="fieldtrack-x").accepted()
    assert not login("", "", client_id="").accepted()


def test_device_credentials_do_not_open_the_nats_protocol(
    cluster: Cluster, project: Project, unique: str
) -> None:
    serial = f"np-{unique}"
    password = provision(cluster.settings, project.id, [serial])[serial]

    async def attempt() -> None:
        client = await nats.connect(
            servers=cluster.settings.nats.url_list(),
            user=serial,
            password=password,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=3,
        )
        await client.close()

    with pytest.raises(Exception, match=r"(?i)authoriz|auth|timeout|connect"):
        run_sync(attempt)


def test_a_device_cannot_publish_on_another_devices_topic(
    cluster: Cluster, project: Project, unique: str, two_ingests: list[IngestService], login: Any
) -> None:
    serial, victim = f"nt-{unique}", f"nt-{unique}-v"
    passwords = provision(cluster.settings, project.id, [serial, victim])
    attacker = login(serial, passwords[serial], node=2)
    assert attacker.accepted()
    base = datetime.now(UTC)
    forged = attacker.client.publish(
        device_topic(victim, MessageKind.USAGE), usage_body(1, base, project.feature_key), qos=1
    )
    own = attacker.client.publish(
        device_topic(serial, MessageKind.USAGE), usage_body(1, base, project.feature_key), qos=1
    )
    forged.wait_for_publish(10)
    own.wait_for_publish(10)
    url = cluster.settings.database_url.get_secret_value()
    wait_for(lambda: stored_count(url, [serial]) == 1, timeout=20)
    time.sleep(1)  # the forged message would have arrived with the device's own
    assert stored_count(url, [victim]) == 0


def test_revocation_cuts_a_connected_device_off_within_a_second(
    cluster: Cluster, project: Project, unique: str, conn: psycopg.Connection, login: Any
) -> None:
    serial = f"nv-{unique}"
    password = provision(cluster.settings, project.id, [serial])[serial]
    device = login(serial, password, node=1)
    assert device.accepted()
    started = time.monotonic()
    with open_identities(cluster.settings) as identities:
        provisioning.revoke(conn, identities, device_id(conn, serial))
    assert device.dropped.wait(1.0), "the revoked device is still connected after 1 s"
    assert device.dropped_at - started < 1.0
    # and every later login is refused, on every node
    for node in range(3):
        assert not login(serial, password, node=node).accepted()


def test_rotation_ends_the_old_password_and_its_connection(
    cluster: Cluster, project: Project, unique: str, conn: psycopg.Connection, login: Any
) -> None:
    serial = f"nw-{unique}"
    old = provision(cluster.settings, project.id, [serial])[serial]
    device = login(serial, old, node=0)
    assert device.accepted()
    with open_identities(cluster.settings) as identities:
        rotated = provisioning.rotate_credentials(conn, identities, device_id(conn, serial))
    assert device.dropped.wait(1.0)
    assert not login(serial, old, node=2).accepted()
    assert login(serial, rotated.password, node=2).accepted()


def test_the_api_revokes_and_rotates_on_the_cluster_after_its_commit(
    cluster: Cluster, project: Project, unique: str, login: Any
) -> None:
    """Through the API (a pooled connection in a transaction, not autocommit): the device is
    cut off and its reconnects are refused, so the kick came after the commit."""
    url = cluster.settings.database_url.get_secret_value()
    with api_client(cluster.settings, mint_token(url, name=f"nats-{unique}")) as api:
        made = api.post("/devices", json={"serial": f"na-{unique}", "project_id": project.id})
        assert made.status_code == 201, made.text
        device_id, serial = made.json()["device"]["id"], made.json()["device"]["serial"]
        device = login(serial, made.json()["password"], node=0)
        assert device.accepted()
        rotated = api.post(f"/devices/{device_id}/credentials")
        assert rotated.status_code == 200, rotated.text
        assert device.dropped.wait(1.0), "rotation left the old connection open"
        # paho reconnects with the old password at once: refused, again and again
        time.sleep(2.5)
        assert not device.client.is_connected()
        renewed = login(serial, rotated.json()["password"], node=1)
        assert renewed.accepted()
        revoked = api.post(f"/devices/{device_id}/revoke")
        assert revoked.status_code == 200, revoked.text
        assert renewed.dropped.wait(1.0), "revocation left the connection open"
        time.sleep(2.5)
        assert not renewed.client.is_connected()


def test_a_device_may_not_subscribe_or_publish_qos2(
    cluster: Cluster, project: Project, unique: str, login: Any
) -> None:
    serial = f"ns-{unique}"
    password = provision(cluster.settings, project.id, [serial])[serial]
    device = login(serial, password, node=2)
    assert device.accepted()
    granted: list[Any] = []
    done = threading.Event()

    def on_subscribe(client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        granted.extend(reasons)
        done.set()

    device.client.on_subscribe = on_subscribe
    # even its own prefix: on NATS a subscription is a durable consumer that keeps messages
    device.client.subscribe(f"fieldtrack/v1/{serial}/#", qos=1)
    assert done.wait(5), "no SUBACK"
    assert all(reason.is_failure for reason in granted), granted
    device.client.publish(device_topic(serial, MessageKind.USAGE), b"{}", qos=2)
    assert device.dropped.wait(5), "a QoS 2 publish was accepted"


def test_ingest_account_is_no_device_and_cannot_forge_device_messages(
    cluster: Cluster, login: Any
) -> None:
    settings = cluster.settings
    password = settings.mqtt_ingest_password.get_secret_value()
    # over MQTT it is refused (it could otherwise take any device's client id)
    assert not login(settings.mqtt_ingest_username, password, client_id="fieldtrack-x").accepted()

    async def forge() -> None:
        client = await nats.connect(
            servers=settings.nats.url_list(),
            user=settings.mqtt_ingest_username,
            password=password,
            allow_reconnect=False,
            max_reconnect_attempts=0,
        )
        errors: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            errors.append(exc)

        client._error_cb = on_error
        try:
            await client.publish("$MQTT.msgs.fieldtrack.v1.someone.usage", b"{}")
            await client.publish("fieldtrack.v1.someone.usage", b"{}")
            await client.flush()
            await asyncio.sleep(0.5)
        finally:
            await client.close()
        assert len(errors) == 2 and all("ermission" in str(e) for e in errors), errors

    run_sync(forge)


def test_provisioning_again_disconnects_the_old_password(
    cluster: Cluster, project: Project, unique: str, login: Any
) -> None:
    serial = f"nq-{unique}"
    old = provision(cluster.settings, project.id, [serial])[serial]
    device = login(serial, old, node=1)
    assert device.accepted()
    new = provision(cluster.settings, project.id, [serial])[serial]
    assert device.dropped.wait(1.0), "the re-provisioned device kept its old connection"
    assert not login(serial, old, node=0).accepted()
    assert login(serial, new, node=0).accepted()
