"""MQTT abuse (issues #9 and #22), beyond tests/integration/test_broker_security.py
(anonymous login, foreign topics with reason code 135, `#` and `$SYS/#`, foreign client ids,
disabled devices, old device roles narrowed) and test_provisioning.py (a revoked device is
disconnected within 5 s):

- wildcards in client ids and usernames;
- a device trying to read other devices' traffic, ingest's shared stream or the control API;
- issue #22: a hostile device next to an honest one: publishing to another device's topic, to
  an unlisted subtopic, retained outside `status`, over the size limit, at a flood rate; a
  client id equal to ingest's or another device's; subscribing to `#`; a session inherited
  under its own client id; reserved serials at every provisioning path. Each asserts what the
  broker does and what ingest stores. (The flood while ingest is down is the chaos scenario
  `hostile-device-ingest-down`, short in test_chaos_faults.py.)
- what the broker's own counts do not see: MQTT 5 properties (stripped from device messages),
  retained wills outside `status` (refused), wills sent by reconnecting over and over (charged
  to the device's quota); ingest under a client id outside the reserved namespace (refused).
- garbage mixed into valid traffic: every bad message is quarantined and ingest keeps going;
  the short version of the garbage-share measurement whose long version (`make chaos`) judges
  the issue's "10 % garbage slows valid ingest by at most 10 %".
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sim.device import LAST_WILL_PAYLOAD
from services.accounts.roles import Role
from services.core.broker_admin import BrokerAdmin
from services.core.errors import ConfigError, InvalidInputError
from services.core.payloads import MAX_PAYLOAD_BYTES
from services.core.settings import Settings
from services.core.topics import MessageKind, device_topic
from services.infra.local import LocalServices
from services.infra.mosquitto import (
    DEVICE_BURST_BYTES,
    DEVICE_BYTES_PER_S,
    MAX_PACKET_BYTES,
    WILL_PROPERTIES_BYTES,
)
from services.ingest.service import IngestService, discard_session
from tests.integration.chaos import SHORT, measure_garbage_share
from tests.integration.conftest import Project, api_client, mint_token, wait_for
from tests.integration.ingest_support import iso
from tests.integration.test_broker_security import ACCEPTED, Probe, device_identity

__all__ = ["device_identity"]  # the fixture, shared with test_broker_security.py

NOT_AUTHORISED = 135


@pytest.mark.parametrize("wildcard", ["+", "#", "/", "+/#"])
def test_wildcards_in_client_id_or_username_are_refused(
    settings: Settings, device_identity: tuple[str, str], wildcard: str
) -> None:
    serial, password = device_identity
    for client_id, user in (
        (f"{serial}{wildcard}", serial),  # own username, client id with a wildcard
        (f"{serial}{wildcard}", f"{serial}{wildcard}"),  # both
        (serial, f"{serial}{wildcard}"),  # own client id, username with a wildcard
        (wildcard, wildcard),
    ):
        probe = Probe(settings, client_id, user, password)
        try:
            assert probe.connack is not None and probe.connack.is_failure, (client_id, user)
        finally:
            probe.close()


def test_device_cannot_subscribe_to_other_traffic_or_the_control_api(
    settings: Settings, device_identity: tuple[str, str]
) -> None:
    serial, password = device_identity
    probe = Probe(settings, serial, serial, password)
    try:
        for topic in (
            "fieldtrack/v1/+/usage",  # every device's usage
            "fieldtrack/#",
            "$share/steal/fieldtrack/v1/+/+",  # a share of ingest's stream
            "$share/fieldtrack/fieldtrack/v1/+/+",  # ingest's own default group
            "$SYS/broker/clients/#",
            "$CONTROL/dynamic-security/v1/#",
            "$CONTROL/dynamic-security/v1/response",
            f"fieldtrack/v1/{serial}/#",  # devices publish; they never read, even their own
        ):
            assert probe.subscribe(topic)[0] >= 0x80, topic
        assert probe.publish("$CONTROL/dynamic-security/v1") == NOT_AUTHORISED
    finally:
        probe.close()


# --- garbage mixed into valid traffic ---------------------------------------------------------


@pytest.mark.slow
def test_ten_percent_garbage_is_all_quarantined_and_valid_ingest_keeps_pace(
    local_services: LocalServices, settings: Settings, broker_admin: BrokerAdmin
) -> None:
    """The short version of `make chaos`'s garbage-share measurement: 4 clean and 4 mixed
    drains of 10,000 queued valid messages (tests/integration/chaos.py)."""
    result = measure_garbage_share(local_services, settings, broker_admin, SHORT)
    print("\n" + result.line())
    assert result.complete, "some garbage was neither stored nor quarantined"
    # Issue #9's >= 0.9 is judged by `make chaos` (12 drains of 20,000 valid messages): speed
    # is measured there, not asserted tightly in a timed test on a shared machine. Short runs
    # have measured 0.76-0.93; at 0.9, garbage costs about 0.9x a valid message, and 0.7 fails
    # once it costs about 4x (ratio = 1 / (1 + garbage share x relative cost)).
    assert result.ratio >= 0.7, f"garbage slowed valid ingest by {1 - result.ratio:.0%}"


# --- issue #22: what one device can do to ingest and to the others ----------------------------
#
# Each test below puts a hostile device next to an honest one, both provisioned through the API
# as an ops user would, and asserts what the broker does (CONNACK, SUBACK and PUBACK reason
# codes of MQTT 5, disconnection, what other clients then receive) and what ingest stores. The
# ingest here runs under a client id of fieldtrack's own (`fieldtrack-ingest-…`, reserved), on a
# plain persistent subscription, as a production ingest does.

RESERVED_SERIALS = (
    "fieldtrack-ingest-1",
    "FIELDTRACK-INGEST-1",
    "Fieldtrack-Admin",
    "fieldtrack",
    "ingest",
    "ADMIN",
)
QUIET_S = 0.7  # time for ingest to store anything that slipped through, before asserting none
SESSION_EXPIRY_S = 3600  # a persistent MQTT 5 session outlives the test's disconnects


class Mqtt:
    """A raw MQTT client (5 by default) that records what the broker answers and sends."""

    def __init__(
        self,
        settings: Settings,
        client_id: str,
        user: str,
        password: str,
        *,
        protocol: int = mqtt.MQTTv5,
        persistent: bool = False,
    ) -> None:
        self.connack: Any = None
        self.pubacks: dict[int, int] = {}
        self.received: list[tuple[str, bytes, bool]] = []
        self.messages: list[mqtt.MQTTMessage] = []
        self.disconnected = threading.Event()
        self._cond = threading.Condition()
        kwargs: dict[str, Any] = {"protocol": protocol}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = not persistent
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, **kwargs)
        self.client.username_pw_set(user, password)
        self.client.reconnect_delay_set(min_delay=60, max_delay=120)  # no sneaking back in
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        if protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S if persistent else 0
            self.client.connect(
                settings.mqtt_host, settings.mqtt_port, clean_start=not persistent, properties=props
            )
        else:
            self.client.connect(settings.mqtt_host, settings.mqtt_port)
        self.client.loop_start()
        with self._cond:
            assert self._cond.wait_for(lambda: self.connack is not None, 10), "no CONNACK"

    @property
    def accepted(self) -> bool:
        return not self.connack.is_failure

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._cond:
            self.connack = reason
            self._cond.notify_all()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.disconnected.set()
        with self._cond:
            self._cond.notify_all()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._cond:
            self.pubacks[mid] = reason.value
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.received.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self.messages.append(msg)
            self._cond.notify_all()

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, properties: Any = None
    ) -> int | None:
        """QoS 1; the PUBACK's reason code, or None when the broker hung up instead."""
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        with self._cond:
            self._cond.wait_for(lambda: info.mid in self.pubacks or self.disconnected.is_set(), 10)
            return self.pubacks.get(info.mid)

    def subscribe(self, topic: str) -> int:
        """The SUBACK's reason code for *topic*."""
        codes: list[int] = []
        done = threading.Event()

        def on_subscribe(client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
            codes.extend(r.value for r in reasons)
            done.set()

        self.client.on_subscribe = on_subscribe
        self.client.subscribe(topic, qos=1)
        assert done.wait(10), "no SUBACK"
        return codes[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass(frozen=True)
class GuardedIngest:
    service: IngestService
    client_id: str


@pytest.fixture(scope="module")
def guarded_ingest(settings: Settings) -> Iterator[GuardedIngest]:
    """Ingest under a reserved client id, on a plain persistent subscription."""
    client_id = f"fieldtrack-ingest-t{uuid.uuid4().hex[:8]}"
    own = settings.model_copy(update={"ingest_client_id": client_id, "ingest_share_group": ""})
    service = IngestService(own)
    service.start()
    assert service.wait_connected(15), "ingest could not connect to the broker"
    yield GuardedIngest(service, client_id)
    service.stop()
    discard_session(own, client_id)


@pytest.fixture
def ops_api(settings: Settings) -> Iterator[TestClient]:
    token = mint_token(settings.database_url.get_secret_value(), Role.OPS, name="test-ops")
    with api_client(settings, token) as client:
        yield client


@dataclass
class Pair:
    """A hostile device and an honest one in the same project, both connected (MQTT 5)."""

    project: Project
    hostile: str
    hostile_password: str
    honest: str
    honest_password: str
    bad: Mqtt
    good: Mqtt


@pytest.fixture
def pair(settings: Settings, ops_api: TestClient, project: Project, unique: str) -> Iterator[Pair]:
    creds = []
    for role in ("hostile", "honest"):
        body = {"serial": f"{role}-{unique}", "project_id": project.id}
        response = ops_api.post("/devices", json=body)
        assert response.status_code == 201, response.text
        creds.append((f"{role}-{unique}", response.json()["password"]))
    (hostile, hostile_pw), (honest, honest_pw) = creds
    bad = Mqtt(settings, hostile, hostile, hostile_pw)
    good = Mqtt(settings, honest, honest, honest_pw)
    assert bad.accepted and good.accepted
    yield Pair(project, hostile, hostile_pw, honest, honest_pw, bad, good)
    bad.close()
    good.close()


def usage(feature: str, seq: int) -> bytes:
    events = [{"feature": feature, "count": 1}]
    return json.dumps({"v": 1, "seq": seq, "ts": iso(datetime.now(UTC)), "events": events}).encode()


def stored_seqs(conn: psycopg.Connection, serial: str) -> list[int]:
    rows = conn.execute(
        """SELECT DISTINCT u.seq FROM usage_events u JOIN devices d ON d.id = u.device_id
           WHERE d.serial = %s ORDER BY 1""",
        (serial,),
    )
    return [int(r[0]) for r in rows]


def quarantined(conn: psycopg.Connection, topic_like: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT topic, reason FROM quarantine WHERE topic LIKE %s ORDER BY id", (topic_like,)
    )
    return [(str(t), str(r)) for t, r in rows]


def honest_traffic_is_stored(pair: Pair, conn: psycopg.Connection, seq: int) -> None:
    """The honest device's next message reaches the database: ingest is unharmed."""
    topic = device_topic(pair.honest, MessageKind.USAGE)
    assert pair.good.publish(topic, usage(pair.project.feature_key, seq)) in ACCEPTED
    wait_for(lambda: seq in stored_seqs(conn, pair.honest))


def test_reserved_serials_are_refused_by_every_provisioning_path(
    ops_api: TestClient, broker_admin: BrokerAdmin, conn: psycopg.Connection, project: Project
) -> None:
    """Finding 1: an ops token provisioned `fieldtrack-ingest-1` and took over ingest's session."""
    for serial in RESERVED_SERIALS:
        response = ops_api.post("/devices", json={"serial": serial, "project_id": project.id})
        assert response.status_code == 422, (serial, response.status_code, response.text)
        assert response.json()["detail"][0]["loc"][-1] == "serial", response.text
        assert "reserved" in response.text
        batch = ops_api.post("/devices/batch", json=[{"serial": serial, "project_id": project.id}])
        assert batch.status_code == 422, (serial, batch.text)
        text = f"serial,project_id\n{serial},{project.id}\n"
        csv = ops_api.post("/devices/import", content=text, headers={"Content-Type": "text/csv"})
        assert csv.status_code == 422, (serial, csv.text)
        assert "reserved" in csv.text
        with pytest.raises(InvalidInputError, match="reserved"):
            broker_admin.create_devices([(serial, secrets.token_urlsafe(16))])
        found = conn.execute("SELECT 1 FROM devices WHERE lower(serial) = lower(%s)", (serial,))
        assert found.fetchall() == [], serial
    [reply] = broker_admin.execute([{"command": "getClient", "username": "fieldtrack-ingest-1"}])
    assert reply.get("error"), "a broker account named like ingest's client id exists"


def test_a_device_cannot_take_over_ingests_session(
    settings: Settings,
    guarded_ingest: GuardedIngest,
    ops_api: TestClient,
    pair: Pair,
    conn: psycopg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client id equal to ingest's: the name cannot be provisioned, and no device account
    may log in under it; ingest stays connected and keeps storing."""
    ingest_id = guarded_ingest.client_id
    caplog.set_level(logging.WARNING, logger="services.ingest.service")
    response = ops_api.post("/devices", json={"serial": ingest_id, "project_id": pair.project.id})
    assert response.status_code == 422, response.text
    for user, password in ((pair.hostile, pair.hostile_password), (ingest_id, "guess")):
        for persistent in (False, True):
            thief = Mqtt(
                settings, ingest_id, user, password, persistent=persistent, protocol=mqtt.MQTTv311
            )
            try:
                assert not thief.accepted, f"{user} logged in as ingest ({ingest_id})"
            finally:
                thief.close()
    honest_traffic_is_stored(pair, conn, 1)
    assert "disconnected from broker" not in caplog.text


def test_a_device_cannot_use_another_devices_client_id(
    settings: Settings, guarded_ingest: GuardedIngest, pair: Pair, conn: psycopg.Connection
) -> None:
    thief = Mqtt(settings, pair.honest, pair.hostile, pair.hostile_password)
    try:
        assert not thief.accepted
    finally:
        thief.close()
    assert not pair.good.disconnected.is_set(), "the honest device was kicked off"
    honest_traffic_is_stored(pair, conn, 2)


def test_a_device_receives_nothing_from_a_session_it_inherits(
    settings: Settings, guarded_ingest: GuardedIngest, pair: Pair, conn: psycopg.Connection
) -> None:
    """Finding 1's second half: whoever inherits a persistent session inherits its
    subscriptions and queue (Mosquitto 2.0.11 hands them over whatever the username). A
    device must still receive nothing that is not its own."""
    admin_user = settings.mqtt_admin_username
    admin_password = settings.mqtt_admin_password.get_secret_value()
    # A session under the hostile device's client id, subscribed to every device's traffic
    # (the admin account is not bound to a client id; ingest's session looks like this).
    holder = Mqtt(settings, pair.hostile, admin_user, admin_password, persistent=True)
    assert holder.subscribe("fieldtrack/v1/+/+") in {0, 1}
    holder.close()
    topic = device_topic(pair.honest, MessageKind.USAGE)
    assert pair.good.publish(topic, usage(pair.project.feature_key, 3)) in ACCEPTED  # queued
    pair.bad.close()
    heir = Mqtt(settings, pair.hostile, pair.hostile, pair.hostile_password, persistent=True)
    try:
        assert heir.accepted
        assert pair.good.publish(topic, usage(pair.project.feature_key, 4)) in ACCEPTED
        time.sleep(QUIET_S)
        assert heir.received == [], "a device received another device's traffic"
    finally:
        heir.close()
        Mqtt(settings, pair.hostile, admin_user, admin_password).close()  # drop the session
    wait_for(lambda: {3, 4} <= set(stored_seqs(conn, pair.honest)))


def test_a_device_cannot_subscribe_to_everything(
    guarded_ingest: GuardedIngest, pair: Pair, conn: psycopg.Connection
) -> None:
    for topic in ("#", "fieldtrack/#", "+/+/+/+", f"fieldtrack/v1/{pair.hostile}/#"):
        assert pair.bad.subscribe(topic) >= 0x80, topic
    honest_traffic_is_stored(pair, conn, 5)
    assert pair.bad.received == []


def test_publishing_to_another_devices_topic_is_refused_and_not_stored(
    guarded_ingest: GuardedIngest, pair: Pair, conn: psycopg.Connection
) -> None:
    foreign = device_topic(pair.honest, MessageKind.USAGE)
    assert pair.bad.publish(foreign, usage(pair.project.feature_key, 99)) == NOT_AUTHORISED
    honest_traffic_is_stored(pair, conn, 6)
    time.sleep(QUIET_S)
    assert 99 not in stored_seqs(conn, pair.honest)


def test_publishing_to_an_unlisted_subtopic_is_refused_and_not_quarantined(
    guarded_ingest: GuardedIngest, pair: Pair, conn: psycopg.Connection
) -> None:
    """Finding 3: the ACL names exactly the device's kinds (usage, telemetry, status)."""
    prefix = f"fieldtrack/v1/{pair.hostile}"
    for sub in ("config", "usage/extra", "status/x", "a/b/c"):
        assert pair.bad.publish(f"{prefix}/{sub}", b"{}") == NOT_AUTHORISED, sub
    own = device_topic(pair.hostile, MessageKind.USAGE)
    assert pair.bad.publish(own, usage(pair.project.feature_key, 1)) in ACCEPTED
    wait_for(lambda: stored_seqs(conn, pair.hostile) == [1])
    assert quarantined(conn, f"{prefix}/%") == []


def test_retained_messages_are_refused_outside_status(
    settings: Settings, guarded_ingest: GuardedIngest, pair: Pair, conn: psycopg.Connection
) -> None:
    """Finding 3: a retained message lives in broker memory and persistence until replaced,
    and replays into every new subscription. Dynamic security cannot restrict retain by topic
    (it ignores the flag); fieldtrack's quota plugin refuses retained messages anywhere but on
    `status`. A device therefore keeps at most one retained message in the broker."""
    prefix = f"fieldtrack/v1/{pair.hostile}"
    feature = pair.project.feature_key
    assert pair.bad.publish(f"{prefix}/junk", b"x" * 1000, retain=True) == NOT_AUTHORISED
    for kind in (MessageKind.USAGE, MessageKind.TELEMETRY):
        topic = device_topic(pair.hostile, kind)
        assert pair.bad.publish(topic, usage(feature, 7), retain=True) == NOT_AUTHORISED, kind
    status_topic = device_topic(pair.hostile, MessageKind.STATUS)
    status = {"v": 1, "state": "online", "ts": iso(datetime.now(UTC)), "firmware": "9.9.9"}
    assert pair.bad.publish(status_topic, json.dumps(status).encode(), retain=True) in ACCEPTED
    # the same usage message without the retain flag is a device's ordinary message
    own = device_topic(pair.hostile, MessageKind.USAGE)
    assert pair.bad.publish(own, usage(feature, 8)) in ACCEPTED
    wait_for(lambda: stored_seqs(conn, pair.hostile) == [8])
    firmware = """SELECT s.firmware FROM device_state s JOIN devices d ON d.id = s.device_id
                  WHERE d.serial = %s"""
    wait_for(lambda: conn.execute(firmware, (pair.hostile,)).fetchone() == ("9.9.9",))
    # What the broker keeps for this device: its retained status, nothing else.
    admin_id = f"fieldtrack-admin-t{uuid.uuid4().hex[:6]}"
    admin_password = settings.mqtt_admin_password.get_secret_value()
    admin = Mqtt(settings, admin_id, settings.mqtt_admin_username, admin_password)
    try:
        admin.subscribe(f"{prefix}/#")
        time.sleep(QUIET_S)
        assert [(t, r) for t, _, r in admin.received] == [(status_topic, True)]
        assert pair.bad.publish(status_topic, b"", retain=True) in ACCEPTED  # clear it again
    finally:
        admin.close()
    assert stored_seqs(conn, pair.hostile) == [8]
    assert quarantined(conn, f"{prefix}/%") == []


def test_a_packet_over_the_size_limit_is_refused_and_its_sender_disconnected(
    settings: Settings, guarded_ingest: GuardedIngest, pair: Pair, conn: psycopg.Connection
) -> None:
    """Finding 3: the broker's packet limit is ingest's payload limit plus MQTT overhead."""
    own = device_topic(pair.hostile, MessageKind.USAGE)
    # Just over ingest's limit but within the broker's: accepted, then quarantined.
    assert pair.bad.publish(own, b" " * (MAX_PAYLOAD_BYTES + 1)) in ACCEPTED
    wait_for(lambda: quarantined(conn, own) == [(own, "payload_too_large")])
    # Over the broker's limit (MQTT 3.1.1: paho does not hold it back): cut off, nothing kept.
    big = Mqtt(settings, pair.hostile, pair.hostile, pair.hostile_password, protocol=mqtt.MQTTv311)
    try:
        assert big.accepted
        assert big.publish(own, b" " * MAX_PACKET_BYTES) is None
        assert big.disconnected.is_set(), "the broker kept a connection sending oversized packets"
    finally:
        big.close()
    honest_traffic_is_stored(pair, conn, 8)
    time.sleep(QUIET_S)
    assert quarantined(conn, own) == [(own, "payload_too_large")]


def test_a_flooding_device_is_held_to_its_quota_and_the_others_are_not(
    guarded_ingest: GuardedIngest, pair: Pair, conn: psycopg.Connection
) -> None:
    """At a flood rate (finding 3): Mosquitto 2.0.11 has no per-client rate limit, so the
    quota plugin holds each device to DEVICE_BURST_BYTES then DEVICE_BYTES_PER_S (and the
    same for messages). The flood's excess is refused (MQTT 5: 135), only the flooder's:
    the honest device publishing in the middle of it is accepted and stored, and ingest
    stores exactly what the broker accepted from the flooder."""
    own = device_topic(pair.hostile, MessageKind.USAGE)
    feature = pair.project.feature_key
    padding = MAX_PAYLOAD_BYTES - len(usage(feature, 0)) - 16  # valid JSON, ingest's limit
    over = DEVICE_BURST_BYTES // MAX_PAYLOAD_BYTES + FLOOD_EXTRA

    def big(seq: int) -> bytes:
        return usage(feature, seq)[:-1] + b" " * padding + b"}"

    infos = [pair.bad.client.publish(own, big(seq), qos=1) for seq in range(over)]
    honest_traffic_is_stored(pair, conn, 9)
    for info in infos:
        info.wait_for_publish(60)
    codes = [pair.bad.pubacks[info.mid] for info in infos]
    accepted = [seq for seq, code in enumerate(codes) if code in ACCEPTED]
    refused = [seq for seq, code in enumerate(codes) if code == NOT_AUTHORISED]
    assert len(accepted) + len(refused) == over, set(codes)
    # the burst and what refilled while it was sent, give or take the refill's timing
    assert DEVICE_BURST_BYTES // MAX_PAYLOAD_BYTES - 1 <= len(accepted) < over - FLOOD_EXTRA // 2
    wait_for(lambda: stored_seqs(conn, pair.hostile) == accepted, timeout=60)
    assert stored_seqs(conn, pair.honest) == [9]
    honest = device_topic(pair.honest, MessageKind.USAGE)
    assert pair.good.publish(honest, usage(feature, 10)) in ACCEPTED


# beyond the byte burst: 1 MiB/s refills 4 messages of 256 KiB a second, so sent within a
# few seconds, most of these are refused
FLOOD_EXTRA = 100


# --- what the broker's own counts do not see: MQTT 5 properties and last wills ---------------

BIG_PROPERTIES = [(f"k{i}", "x" * 60_000) for i in range(3)]  # ~180 KiB; one string <= 64 KiB


def admin_watching(settings: Settings, serial: str) -> Mqtt:
    """An MQTT 5 client on the admin account, subscribed to everything under *serial*."""
    admin_id = f"fieldtrack-admin-t{uuid.uuid4().hex[:6]}"
    password = settings.mqtt_admin_password.get_secret_value()
    admin = Mqtt(settings, admin_id, settings.mqtt_admin_username, password)
    assert admin.subscribe(f"fieldtrack/v1/{serial}/#") in {0, 1}
    return admin


def send_will(
    settings: Settings,
    serial: str,
    password: str,
    topic: str,
    payload: bytes,
    *,
    retain: bool,
    protocol: MQTTProtocolVersion = mqtt.MQTTv311,
    properties: Properties | None = None,
) -> None:
    """Log in with a last will, then vanish without DISCONNECT, as a device losing power
    does: the broker then sends the will, if it lets it through."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=serial, protocol=protocol)
    client.username_pw_set(serial, password)
    client.will_set(topic, payload, qos=1, retain=retain, properties=properties)
    answers: list[Any] = []
    client.on_connect = lambda c, u, f, reason, p: answers.append(reason)
    client.connect(settings.mqtt_host, settings.mqtt_port)
    deadline = time.monotonic() + 10
    while not answers and time.monotonic() < deadline:
        client.loop(0.1)
    assert answers and not answers[0].is_failure, f"{serial} could not log in: {answers}"
    sock = client.socket()
    assert isinstance(sock, socket.socket), sock  # a plain TCP connection
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def test_mqtt5_properties_are_stripped_from_device_messages(
    settings: Settings, guarded_ingest: GuardedIngest, pair: Pair, conn: psycopg.Connection
) -> None:
    """Mosquitto 2.0.11's max_queued_bytes and the quota count payload bytes only, so user
    properties (up to the packet limit) would ride along every message uncounted, into
    ingest's queue. The quota plugin strips every property from device messages: subscribers
    get the message without them, and ingest stores it as usual."""
    admin = admin_watching(settings, pair.hostile)
    try:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = BIG_PROPERTIES
        props.ContentType = "application/json"
        props.ResponseTopic = f"fieldtrack/v1/{pair.hostile}/usage"
        props.CorrelationData = b"x" * 1000
        own = device_topic(pair.hostile, MessageKind.USAGE)
        payload = usage(pair.project.feature_key, 1)
        assert pair.bad.publish(own, payload, properties=props) in ACCEPTED
        wait_for(lambda: admin.messages)
        [message] = admin.messages
        assert message.payload == payload
        assert message.properties is None or message.properties.json() == {}, (
            message.properties.json().keys()
        )
    finally:
        admin.close()
    wait_for(lambda: stored_seqs(conn, pair.hostile) == [1])


def test_a_retained_will_outside_status_is_refused_and_the_status_will_works(
    settings: Settings, guarded_ingest: GuardedIngest, pair: Pair, conn: psycopg.Connection
) -> None:
    """Wills raise no message event in Mosquitto 2.0.11, so a device could leave a retained
    will on `usage`: kept by the broker for ever and replayed to every new subscription (an
    ingest reconnecting). The broker asks the ACL check before it sends a will; the quota
    plugin refuses a retained one outside `status` there. The simulator's will (retained
    "offline" on `status`) still arrives."""
    feature = pair.project.feature_key
    prefix = f"fieldtrack/v1/{pair.hostile}"
    for seq, protocol in ((71, mqtt.MQTTv311), (72, mqtt.MQTTv5)):
        for kind in (MessageKind.USAGE, MessageKind.TELEMETRY):
            topic = device_topic(pair.hostile, kind)
            send_will(
                settings,
                pair.hostile,
                pair.hostile_password,
                topic,
                usage(feature, seq),
                retain=True,
                protocol=protocol,
            )
    status_topic = device_topic(pair.hostile, MessageKind.STATUS)
    send_will(
        settings,
        pair.hostile,
        pair.hostile_password,
        status_topic,
        LAST_WILL_PAYLOAD.encode(),
        retain=True,
    )
    online = """SELECT s.online FROM device_state s JOIN devices d ON d.id = s.device_id
                WHERE d.serial = %s"""
    wait_for(lambda: conn.execute(online, (pair.hostile,)).fetchone() == (False,))
    # What a new subscription (ingest reconnecting) gets: the retained status, nothing else.
    admin = admin_watching(settings, pair.hostile)
    try:
        time.sleep(QUIET_S)
        assert [(t, r) for t, _, r in admin.received] == [(status_topic, True)]
    finally:
        admin.close()
    assert stored_seqs(conn, pair.hostile) == []
    assert quarantined(conn, f"{prefix}/%") == []
    cleaner = Mqtt(settings, pair.hostile, pair.hostile, pair.hostile_password)
    try:
        assert cleaner.publish(status_topic, b"", retain=True) in ACCEPTED  # clear it again
    finally:
        cleaner.close()


WILLS = 400  # more than the byte burst lets through when each is charged as a full packet


def settled(count: Callable[[], int], quiet: float = 1.0, timeout: float = 60.0) -> int:
    """*count*'s value once it has not moved for *quiet* seconds."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"still moving after {timeout}s (at {last})")


def test_wills_are_charged_to_the_devices_quota(
    settings: Settings, guarded_ingest: GuardedIngest, pair: Pair, conn: psycopg.Connection
) -> None:
    """A device reconnecting over and over leaves a will each time, each with up to a packet
    of MQTT 5 properties that no plugin of Mosquitto 2.0.11 can see or strip. The quota
    charges every will on the ACL check the broker makes before sending it, as if its
    properties filled the packet: after the byte burst, the device's wills are refused, and
    ingest stores exactly those the broker let through. Ordinary publishes are charged once
    (the flood test above counts them)."""
    feature = pair.project.feature_key
    topic = device_topic(pair.hostile, MessageKind.USAGE)
    props = Properties(PacketTypes.WILLMESSAGE)
    props.UserProperty = BIG_PROPERTIES
    admin = admin_watching(settings, pair.hostile)
    try:
        started = time.monotonic()
        for seq in range(WILLS):
            send_will(
                settings,
                pair.hostile,
                pair.hostile_password,
                topic,
                usage(feature, seq),
                retain=False,
                protocol=mqtt.MQTTv5,
                properties=props,
            )
        elapsed = time.monotonic() - started
        settled(lambda: len(admin.received))
        through = sorted(json.loads(payload)["seq"] for _, payload, _ in admin.received)
    finally:
        admin.close()
    cost = WILL_PROPERTIES_BYTES + len(usage(feature, WILLS))
    most = (DEVICE_BURST_BYTES + DEVICE_BYTES_PER_S * (elapsed + 1)) // cost + 2
    print(f"\n{len(through)} of {WILLS} wills through in {elapsed:.1f}s (at most {most})")
    assert DEVICE_BURST_BYTES // cost - 1 <= len(through) <= most < WILLS
    wait_for(lambda: stored_seqs(conn, pair.hostile) == through, timeout=30)
    honest_traffic_is_stored(pair, conn, 1)


# --- ingest's own client id ---------------------------------------------------------------------


@pytest.mark.parametrize("client_id", ["ingest-2", "sneaky-1", "fieldtrackingest-1"])
def test_ingest_runs_only_under_a_reserved_client_id(settings: Settings, client_id: str) -> None:
    """Outside the reserved namespace, a device could be provisioned under ingest's client
    id and take its session over. Neither the setting, nor `fieldtrack ingest --client-id`,
    nor the service itself accepts such an id."""
    with pytest.raises(ConfigError, match="reserved"):
        IngestService(settings.model_copy(update={"ingest_client_id": client_id}))
    env = {**os.environ, "COLUMNS": "200"}
    for args, extra in (
        (["--client-id", client_id], {}),
        ([], {"FIELDTRACK_INGEST_CLIENT_ID": client_id}),
    ):
        try:
            done = subprocess.run(
                [sys.executable, "-m", "services", "ingest", *args],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                env={**env, **extra},
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"ingest started under client id {client_id!r} ({args or extra})")
        assert done.returncode != 0, done.stdout
        assert "reserved" in done.stderr, done.stderr
