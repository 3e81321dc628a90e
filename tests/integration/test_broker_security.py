"""The broker the suite starts is locked down: no anonymous access, devices confined to
their own topics. MQTT 5 is used so a denied publish shows its reason code (135)."""

from __future__ import annotations

import secrets
import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from services.core.broker_admin import BrokerAdmin, device_acls, device_role, setup_broker
from services.core.settings import Settings

NOT_AUTHORISED = 135
# An authorised publish is acknowledged with 0, or 16 ("no matching subscribers") when no
# ingest happens to be subscribed yet.
ACCEPTED = {0, 16}


class Probe:
    """A raw MQTT 5 client that records what the broker answers."""

    def __init__(self, settings: Settings, client_id: str, user: str | None, password: str | None):
        self.connack: ReasonCode | None = None
        self.pubacks: dict[int, int] = {}
        self.subacks: list[int] = []
        self._events = {name: threading.Event() for name in ("connect", "puback", "suback")}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(settings.mqtt_host, settings.mqtt_port)
        self.client.loop_start()
        assert self._events["connect"].wait(10), "no CONNACK"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason
        self._events["connect"].set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self.pubacks[mid] = reason.value
        self._events["puback"].set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self.subacks = [r.value for r in reasons]
        self._events["suback"].set()

    def publish(self, topic: str) -> int:
        self._events["puback"].clear()
        info = self.client.publish(topic, b"{}", qos=1)
        assert self._events["puback"].wait(10), "no PUBACK"
        return self.pubacks[info.mid]

    def subscribe(self, topic: str) -> list[int]:
        self._events["suback"].clear()
        self.client.subscribe(topic, qos=1)
        assert self._events["suback"].wait(10), "no SUBACK"
        return self.subacks

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def device_identity(broker_admin: BrokerAdmin, unique: str) -> tuple[str, str]:
    serial, password = f"sec-{unique}", secrets.token_urlsafe(16)
    broker_admin.create_devices([(serial, password)])
    return serial, password


def test_anonymous_connect_is_refused(settings: Settings) -> None:
    probe = Probe(settings, "anonymous-probe", None, None)
    try:
        assert probe.connack is not None and probe.connack.is_failure
    finally:
        probe.close()


def test_wrong_password_is_refused(settings: Settings, device_identity: tuple[str, str]) -> None:
    serial, _ = device_identity
    probe = Probe(settings, serial, serial, "not-the-password")
    try:
        assert probe.connack is not None and probe.connack.is_failure
    finally:
        probe.close()


def test_device_publishes_only_to_its_own_topics(
    settings: Settings, device_identity: tuple[str, str], unique: str
) -> None:
    serial, password = device_identity
    probe = Probe(settings, serial, serial, password)
    try:
        assert probe.connack is not None and not probe.connack.is_failure
        assert probe.publish(f"fieldtrack/v1/{serial}/usage") in ACCEPTED
        assert probe.publish(f"fieldtrack/v1/other-{unique}/usage") == NOT_AUTHORISED
        assert probe.publish("elsewhere/entirely") == NOT_AUTHORISED
        assert probe.subscribe("#")[0] >= 0x80
        assert probe.subscribe("$SYS/#")[0] >= 0x80
    finally:
        probe.close()


def test_device_must_use_its_own_client_id(
    settings: Settings, device_identity: tuple[str, str]
) -> None:
    serial, password = device_identity
    probe = Probe(settings, "someone-else", serial, password)
    try:
        assert probe.connack is not None and probe.connack.is_failure
    finally:
        probe.close()


def test_disabled_device_is_refused(
    settings: Settings, broker_admin: BrokerAdmin, device_identity: tuple[str, str]
) -> None:
    serial, password = device_identity
    broker_admin.disable_device(serial)
    probe = Probe(settings, serial, serial, password)
    try:
        assert probe.connack is not None and probe.connack.is_failure
    finally:
        probe.close()


def test_broker_setup_narrows_a_device_role_made_by_older_code(
    settings: Settings, broker_admin: BrokerAdmin, unique: str
) -> None:
    """Issue #22: roles provisioned before the fix may publish anywhere under the device's
    prefix (and receive whatever the broker-wide default allows). `broker-setup` (run by
    `infra up` and by docker-compose) brings them to exactly the device's kinds."""
    serial, password = f"old-{unique}", secrets.token_urlsafe(16)
    role = device_role(serial)
    legacy = {"acltype": "publishClientSend", "topic": f"fieldtrack/v1/{serial}/#", "allow": True}
    client = {"username": serial, "clientid": serial, "password": password}
    broker_admin.check(
        [
            {"command": "createRole", "rolename": role, "acls": [legacy]},
            {"command": "createClient", **client, "roles": [{"rolename": role}]},
        ]
    )
    try:
        assert serial in broker_admin.outdated_device_roles()
        setup_broker(
            host=settings.mqtt_host,
            port=settings.mqtt_port,
            admin_user=settings.mqtt_admin_username,
            admin_password=settings.mqtt_admin_password.get_secret_value(),
            ingest_user=settings.mqtt_ingest_username,
            ingest_password=settings.mqtt_ingest_password.get_secret_value(),
        )
        assert serial not in broker_admin.outdated_device_roles()
        probe = Probe(settings, serial, serial, password)
        try:
            assert probe.publish(f"fieldtrack/v1/{serial}/usage") in ACCEPTED
            assert probe.publish(f"fieldtrack/v1/{serial}/anything") == NOT_AUTHORISED
        finally:
            probe.close()
    finally:
        broker_admin.delete_device(serial)


def test_broker_setup_removes_accounts_under_reserved_names(
    settings: Settings, broker_admin: BrokerAdmin, unique: str
) -> None:
    """Accounts left from before reserved names were checked: a device provisioned as
    `fieldtrack-ingest-…` (it may log in under that client id, in ingest's namespace) and
    another account bound to a reserved client id. `broker-setup` (run by `infra up` and by
    docker-compose) deletes the device account with its role and disables the other;
    fieldtrack's own admin and ingest accounts stay."""
    serial, password = f"fieldtrack-ingest-{unique}", secrets.token_urlsafe(16)
    other, other_password = f"tool-{unique}", secrets.token_urlsafe(16)
    other_client_id = f"fieldtrack-admin-{unique}"
    role = device_role(serial)
    broker_admin.check(
        [
            {"command": "createRole", "rolename": role, "acls": device_acls(serial)},
            {
                "command": "createClient",
                "username": serial,
                "clientid": serial,
                "password": password,
                "roles": [{"rolename": role}],
            },
            {
                "command": "createClient",
                "username": other,
                "clientid": other_client_id,
                "password": other_password,
            },
        ]
    )
    try:
        for client_id, user, secret in (
            (serial, serial, password),
            (other_client_id, other, other_password),
        ):
            probe = Probe(settings, client_id, user, secret)
            probe.close()
            assert probe.connack is not None and not probe.connack.is_failure, user
        changed = setup_broker(
            host=settings.mqtt_host,
            port=settings.mqtt_port,
            admin_user=settings.mqtt_admin_username,
            admin_password=settings.mqtt_admin_password.get_secret_value(),
            ingest_user=settings.mqtt_ingest_username,
            ingest_password=settings.mqtt_ingest_password.get_secret_value(),
        )
        assert any(serial in line for line in changed), changed
        assert any(other in line for line in changed), changed
        for client_id, user, secret in (
            (serial, serial, password),
            (other_client_id, other, other_password),
        ):
            probe = Probe(settings, client_id, user, secret)
            probe.close()
            assert probe.connack is not None and probe.connack.is_failure, f"{user} logged in"
        [client, own_role] = broker_admin.execute(
            [{"command": "getClient", "username": serial}, {"command": "getRole", "rolename": role}]
        )
        assert client.get("error") and own_role.get("error"), (client, own_role)
        ingest_password = settings.mqtt_ingest_password.get_secret_value()
        ingest = Probe(
            settings, f"fieldtrack-ingest-t{unique}", settings.mqtt_ingest_username, ingest_password
        )
        ingest.close()
        assert ingest.connack is not None and not ingest.connack.is_failure
        # a second run has nothing left to change
        assert (
            setup_broker(
                host=settings.mqtt_host,
                port=settings.mqtt_port,
                admin_user=settings.mqtt_admin_username,
                admin_password=settings.mqtt_admin_password.get_secret_value(),
                ingest_user=settings.mqtt_ingest_username,
                ingest_password=ingest_password,
            )
            == []
        )
    finally:
        broker_admin.delete_device(serial)
        broker_admin.check([{"command": "deleteClient", "username": other}], tolerate=["not found"])


def test_broker_setup_leaves_an_operators_plain_admin_account_alone(
    settings: Settings, broker_admin: BrokerAdmin
) -> None:
    """On a shared broker the operator's own account may be called `admin`: set-up names it
    in a warning but does not disable it (bound to a reserved client id, it would be)."""
    password = secrets.token_urlsafe(16)
    broker_admin.check(
        [{"command": "createClient", "username": "admin", "password": password}],
        tolerate=["already exists"],
    )
    try:
        changed = setup_broker(
            host=settings.mqtt_host,
            port=settings.mqtt_port,
            admin_user=settings.mqtt_admin_username,
            admin_password=settings.mqtt_admin_password.get_secret_value(),
            ingest_user=settings.mqtt_ingest_username,
            ingest_password=settings.mqtt_ingest_password.get_secret_value(),
        )
        assert not [line for line in changed if "'admin'" in line], changed
        probe = Probe(settings, f"operator-{secrets.token_hex(4)}", "admin", password)
        probe.close()
        assert probe.connack is not None and not probe.connack.is_failure
    finally:
        broker_admin.check(
            [{"command": "deleteClient", "username": "admin"}], tolerate=["not found"]
        )
