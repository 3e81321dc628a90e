"""Mosquitto's dynamic-security API: the broker side of device identities.

Commands go to ``$CONTROL/dynamic-security/v1`` as JSON; the broker answers on
``.../response`` with one entry per command, matched here by correlation data.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from services.core.errors import BrokerAdminError, ConflictError, InvalidInputError
from services.core.topics import (
    INGEST_SUBSCRIPTIONS,
    device_prefix_filter,
    device_publish_topics,
    is_reserved_name,
)

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
INGEST_ROLE = "fieldtrack-ingest"
# Mosquitto 2.0's dynamic security does not expand %u/%c in ACLs, so every device gets a
# role of its own naming exactly its topics.
DEVICE_ROLE_PREFIX = "fieldtrack-device-"
# Mosquitto handles a control message as one unit; ~100 commands keeps each reply fast.
COMMANDS_PER_MESSAGE = 100
# Reserved names an operator's own accounts may well have on a shared broker (`admin`): such
# an account is named in a warning at set-up, never disabled, unless it is bound to a reserved
# client id.
PLAIN = frozenset({"admin", "ingest"})
# Higher priority is checked first: a device's own prefix before the catch-all denials.
OWN_PRIORITY = 1
CATCH_ALL_PRIORITY = 0
REPLY_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0

Command = dict[str, Any]


class BrokerAdmin:
    """A short-lived admin connection that sends dynamic-security commands and waits for replies."""

    def __init__(self, host: str, port: int, username: str, password: str) -> None:
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"fieldtrack-admin-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv311,
        )
        self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._host, self._port = host, port
        self._ready = threading.Event()
        self._connect_reason: str | None = None
        self._lock = threading.Lock()
        self._waiting: dict[str, threading.Event] = {}
        self._replies: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> BrokerAdmin:
        try:
            self._client.connect(self._host, self._port, keepalive=30)
        except OSError as exc:
            raise BrokerAdminError(
                f"cannot reach the MQTT broker at {self._host}:{self._port}: {exc}"
            ) from exc
        self._client.loop_start()
        if not self._ready.wait(CONNECT_TIMEOUT_S) or self._connect_reason:
            self._client.loop_stop()
            raise BrokerAdminError(
                f"broker admin login to {self._host}:{self._port} failed: "
                f"{self._connect_reason or 'no answer'}"
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self._connect_reason = str(reason)
            self._ready.set()
            return
        client.subscribe(RESPONSE_TOPIC, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            responses = json.loads(msg.payload).get("responses", [])
        except (ValueError, AttributeError):
            log.warning("unreadable dynamic-security reply: %.200r", msg.payload)
            return
        with self._lock:
            for response in responses:
                key = response.get("correlationData")
                if key in self._waiting:
                    self._replies[key] = response
                    self._waiting.pop(key).set()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        if any(r.is_failure for r in reasons):
            self._connect_reason = f"not allowed to subscribe to {RESPONSE_TOPIC}"
        self._ready.set()

    def execute(self, commands: Sequence[Command]) -> list[dict[str, Any]]:
        """Send commands (batched) and return the broker's reply for each, in order."""
        replies: list[dict[str, Any]] = []
        for start in range(0, len(commands), COMMANDS_PER_MESSAGE):
            replies += self._execute_chunk(commands[start : start + COMMANDS_PER_MESSAGE])
        return replies

    def _execute_chunk(self, commands: Sequence[Command]) -> list[dict[str, Any]]:
        keys = [uuid.uuid4().hex for _ in commands]
        events = [threading.Event() for _ in commands]
        with self._lock:
            self._waiting.update(zip(keys, events, strict=True))
        body = {
            "commands": [
                {**cmd, "correlationData": key} for cmd, key in zip(commands, keys, strict=True)
            ]
        }
        info = self._client.publish(CONTROL_TOPIC, json.dumps(body), qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerAdminError(f"could not send dynamic-security commands: {info.rc}")
        for event in events:
            if not event.wait(REPLY_TIMEOUT_S):
                raise BrokerAdminError("the broker did not answer dynamic-security commands")
        with self._lock:
            return [self._replies.pop(key) for key in keys]

    def check(self, commands: Sequence[Command], *, tolerate: Iterable[str] = ()) -> None:
        """Execute and raise on any error the caller did not say it expects."""
        allowed = tuple(tolerate)
        for cmd, reply in zip(commands, self.execute(commands), strict=True):
            error = reply.get("error")
            if error and not any(text in error for text in allowed):
                raise BrokerAdminError(f"broker refused {cmd['command']}: {error}")

    # --- domain operations -------------------------------------------------

    def ensure_roles(self) -> None:
        """The ingest role, with exactly the subscriptions it needs."""
        self.check(
            [{"command": "createRole", "rolename": INGEST_ROLE}], tolerate=["already exists"]
        )
        # Re-applying the ACLs keeps an existing broker in step with this code.
        self.check(
            [
                {
                    "command": "addRoleACL",
                    "rolename": INGEST_ROLE,
                    "acltype": "subscribePattern",
                    "topic": topic,
                    "allow": True,
                    "priority": 0,
                }
                for topic in INGEST_SUBSCRIPTIONS
            ],
            tolerate=["already exists"],
        )

    def ensure_client(self, username: str, password: str, role: str) -> None:
        """Create the client, or reset its password, role and enabled state if it exists."""
        [reply] = self.execute([{"command": "getClient", "username": username}])
        if reply.get("error"):
            self.check(
                [
                    {
                        "command": "createClient",
                        "username": username,
                        "password": password,
                        "roles": [{"rolename": role}],
                    }
                ]
            )
            return
        roles = {
            r.get("rolename") for r in reply.get("data", {}).get("client", {}).get("roles", [])
        }
        commands: list[Command] = [
            {"command": "setClientPassword", "username": username, "password": password},
            {"command": "enableClient", "username": username},
        ]
        if role not in roles:
            commands.append({"command": "addClientRole", "username": username, "rolename": role})
        self.check(commands)

    def create_devices(self, credentials: Sequence[tuple[str, str]]) -> None:
        """Create (or re-password and re-enable) one broker client and role per device."""
        for serial, _ in credentials:
            refuse_reserved(serial)
        roles = [
            {"command": "createRole", "rolename": device_role(serial), "acls": device_acls(serial)}
            for serial, _ in credentials
        ]
        existing_roles = [
            serial
            for (serial, _), reply in zip(credentials, self.execute(roles), strict=True)
            if _refused(reply, "already exists")
        ]
        creates = [
            {
                "command": "createClient",
                "username": serial,
                "clientid": serial,
                "password": password,
                "roles": [{"rolename": device_role(serial)}],
            }
            for serial, password in credentials
        ]
        existing = []
        for (serial, password), reply in zip(credentials, self.execute(creates), strict=True):
            error = reply.get("error")
            if error and "already exists" in error:
                existing.append((serial, password))
            elif error:
                raise BrokerAdminError(f"broker refused device {serial}: {error}")
        self._refuse_foreign_accounts([serial for serial, _ in existing])
        self.update_device_roles(existing_roles)
        self.check(
            [
                cmd
                for serial, password in existing
                for cmd in (
                    {"command": "setClientPassword", "username": serial, "password": password},
                    {"command": "enableClient", "username": serial},
                )
            ]
        )

    def update_device_roles(self, serials: Sequence[str]) -> None:
        """Bring existing device roles to today's ACLs (a role made by older code may publish
        anywhere under its prefix and receive whatever the broker-wide default allows)."""
        legacy: list[Command] = [
            {
                "command": "removeRoleACL",
                "rolename": device_role(serial),
                "acltype": "publishClientSend",
                "topic": device_prefix_filter(serial),
            }
            for serial in serials
        ]
        self.check(legacy, tolerate=["not found"])
        self.check(
            [
                {"command": "addRoleACL", "rolename": device_role(serial), **acl}
                for serial in serials
                for acl in device_acls(serial)
            ],
            tolerate=["already exists"],
        )

    def outdated_device_roles(self) -> list[str]:
        """Serials whose broker role does not hold exactly the ACLs `device_acls` names."""
        [reply] = self.execute([{"command": "listRoles", "verbose": True, "count": -1}])
        if reply.get("error"):
            raise BrokerAdminError(f"broker refused listRoles: {reply['error']}")
        outdated = []
        for role in reply.get("data", {}).get("roles", []):
            name = role.get("rolename", "")
            if not name.startswith(DEVICE_ROLE_PREFIX):
                continue
            serial = name.removeprefix(DEVICE_ROLE_PREFIX)
            have = {_acl_key(acl) for acl in role.get("acls", [])}
            if have != {_acl_key(acl) for acl in device_acls(serial)}:
                outdated.append(serial)
        return outdated

    def _refuse_foreign_accounts(self, serials: Sequence[str]) -> None:
        """An existing broker account may be re-used for a device only if it is that device's
        own (it holds exactly the device's role). Anything else — the ingest or admin account,
        another application's client — must never have its password reset by provisioning."""
        if not serials:
            return
        replies = self.execute([{"command": "getClient", "username": s} for s in serials])
        for serial, reply in zip(serials, replies, strict=True):
            client = reply.get("data", {}).get("client", {})
            roles = {r.get("rolename") for r in client.get("roles", [])}
            if roles != {device_role(serial)}:
                raise ConflictError(
                    f"the broker already has an account named {serial!r} that is not a "
                    "fieldtrack device; choose another serial"
                )

    def remove_reserved_accounts(self, own: Iterable[str]) -> list[str]:
        """Remove broker accounts named (by username or bound client id) in fieldtrack's
        reserved namespace that are not fieldtrack's own service accounts (*own*). Older code
        provisioned serials like `fieldtrack-ingest-1`, and such an account may log in under
        ingest's client id and take over its session. A device account (holding its device
        role and nothing else) is deleted with its role; any other such account is disabled,
        except one plainly named `admin` or `ingest` and bound to no reserved client id (an
        operator's own, perhaps): that one is only named in a warning.
        Returns one line per account changed, each also logged."""
        keep = set(own)
        [reply] = self.execute([{"command": "listClients", "verbose": True, "count": -1}])
        if reply.get("error"):
            raise BrokerAdminError(f"broker refused listClients: {reply['error']}")
        commands: list[Command] = []
        changed: list[str] = []
        for client in reply.get("data", {}).get("clients", []):
            username = str(client.get("username", ""))
            clientid = str(client.get("clientid") or "")
            if username in keep or not (
                is_reserved_name(username) or (clientid and is_reserved_name(clientid))
            ):
                continue
            roles = {r.get("rolename") for r in client.get("roles", [])}
            if roles == {device_role(username)}:
                commands += [
                    {"command": "deleteClient", "username": username},
                    {"command": "deleteRole", "rolename": device_role(username)},
                ]
                changed.append(f"deleted device account {username!r} (a reserved name)")
            elif not (clientid and is_reserved_name(clientid)) and username.casefold() in PLAIN:
                # Perhaps the operator's own account on a shared broker: not disabled, but
                # unbound it may log in under ingest's client id, so it is named.
                log.warning(
                    "broker setup: left account %r as it is (not fieldtrack's; with no bound "
                    "client id it could log in as ingest): keep such accounts off fieldtrack's "
                    "broker",
                    username,
                )
            elif not client.get("disabled"):
                commands.append({"command": "disableClient", "username": username})
                changed.append(
                    f"disabled account {username!r} (client id {clientid or 'any'!r}): "
                    "a reserved name that is not fieldtrack's own"
                )
        self.check(commands, tolerate=["not found"])
        for line in changed:
            log.warning("broker setup: %s", line)
        return changed

    def disable_device(self, serial: str) -> None:
        """Disable the device's client; the broker disconnects it at once."""
        self.check([{"command": "disableClient", "username": serial}])

    def set_device_password(self, serial: str, password: str) -> None:
        self.check([{"command": "setClientPassword", "username": serial, "password": password}])

    def delete_device(self, serial: str) -> None:
        """Remove the device's client and role; a client that is already gone is fine."""
        self.delete_devices([serial])

    def delete_devices(self, serials: Sequence[str]) -> None:
        self.check(
            [
                cmd
                for serial in serials
                for cmd in (
                    {"command": "deleteClient", "username": serial},
                    {"command": "deleteRole", "rolename": device_role(serial)},
                )
            ],
            tolerate=["not found"],
        )

    def committed(self) -> None:
        """Nothing left to do: dynamic security applied every change as it was made."""


def setup_broker(
    *,
    host: str,
    port: int,
    admin_user: str,
    admin_password: str,
    ingest_user: str,
    ingest_password: str,
) -> list[str]:
    """Roles and the ingest account fieldtrack needs, device roles brought to today's ACLs,
    and accounts under reserved names that are not fieldtrack's own removed (returned, one
    line each); idempotent (local infra and Docker)."""
    with BrokerAdmin(host, port, admin_user, admin_password) as admin:
        admin.ensure_roles()
        admin.ensure_client(ingest_user, ingest_password, INGEST_ROLE)
        removed = admin.remove_reserved_accounts({admin_user, ingest_user})
        admin.update_device_roles(admin.outdated_device_roles())
    return removed


def device_role(serial: str) -> str:
    return f"{DEVICE_ROLE_PREFIX}{serial}"


def device_acls(serial: str) -> list[dict[str, Any]]:
    """A device publishes exactly its kinds' topics and receives nothing outside its prefix.

    The receive and subscribe denials hold whatever the broker-wide default says: a client
    that inherits a persistent session (same client id, clean_session=0) inherits its
    subscriptions too, and Mosquitto then checks only the receive ACL per message.
    """
    rules = [("publishClientSend", topic, True) for topic in device_publish_topics(serial)]
    rules += [("publishClientReceive", "#", False), ("subscribePattern", "#", False)]
    return [
        {"acltype": acltype, "topic": topic, "allow": allow, "priority": CATCH_ALL_PRIORITY}
        for acltype, topic, allow in rules
    ] + [
        {
            "acltype": "publishClientReceive",
            "topic": device_prefix_filter(serial),
            "allow": True,
            "priority": OWN_PRIORITY,
        }
    ]


def refuse_reserved(serial: str) -> None:
    """Provisioning never creates a device named like fieldtrack's own broker identities."""
    if is_reserved_name(serial):
        raise InvalidInputError(
            f"serial {serial!r} is reserved for fieldtrack's own broker accounts "
            "(ingest, admin, fieldtrack-*); choose another serial",
            field="serial",
        )


def _refused(reply: dict[str, Any], tolerated: str) -> bool:
    error = reply.get("error")
    if error and tolerated not in error:
        raise BrokerAdminError(f"broker refused a command: {error}")
    return bool(error)


def _acl_key(acl: dict[str, Any]) -> tuple[str, str, bool, int]:
    kind, topic = str(acl.get("acltype", "")).casefold(), str(acl.get("topic", ""))
    return kind, topic, bool(acl.get("allow")), int(acl.get("priority", 0))
