"""The brokers the capacity model measures, each described the same way: where devices
connect, which processes are the broker's, how devices are provisioned and how its identity
store is brought to a size before a measurement. Mosquitto is the one implemented here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg

from services.core.broker_admin import BrokerAdmin, device_acls, device_role
from services.core.settings import Settings
from services.infra.local import LocalServices
from services.registry import models, provisioning

# Identities written straight into a store are named so, and replaced by the next preload.
PRELOADED_PREFIX = "capacity-pre-"
# What Mosquitto 2.0's dynamic security hashes a password with (PBKDF2-SHA512).
DYNSEC_ITERATIONS = 101
DYNSEC_SALT_BYTES = 12
HEAP_TOPIC = "$SYS/broker/heap/current"  # bytes Mosquitto has allocated
SYS_WAIT_S = 30

Credentials = Sequence[tuple[str, str]]  # (serial, password)


@dataclass(frozen=True)
class Broker:
    """A broker under measurement."""

    name: str
    host: str
    port: int
    pids: Callable[[], list[int]]  # the processes whose CPU is the broker's
    # Bytes of memory the broker holds now. Mosquitto: its own heap count; its RSS keeps
    # the memory it freed after reading its identity store, and thousands of connections
    # fit in that without a byte more of RSS.
    memory: Callable[[], int]
    # Register *serials* in a project and give each a broker identity, as the API does.
    provision: Callable[[psycopg.Connection, int, Sequence[str]], None]
    # Restart the broker with these device identities present besides its own (none: back to
    # its own); each can log in with its password.
    preload: Callable[[Credentials], None]


def preloaded(count: int) -> list[tuple[str, str]]:
    """*count* device identities for a preload, each with a password of its own."""
    return [(f"{PRELOADED_PREFIX}{i:07d}", secrets.token_urlsafe(16)) for i in range(count)]


def mosquitto(services: LocalServices, settings: Settings) -> Broker:
    """The local Mosquitto of *services*, provisioned through its dynamic-security API."""

    def pids() -> list[int]:
        pid = services.mosquitto.pid()
        if pid is None:
            raise RuntimeError("Mosquitto is not running")
        return [pid]

    def memory() -> int:
        # $SYS is published every 10 s, retained: the second message is a fresh count
        found = subprocess.run(
            [
                shutil.which("mosquitto_sub") or "mosquitto_sub",
                *("-h", settings.mqtt_host, "-p", str(settings.mqtt_port)),
                *("-u", settings.mqtt_admin_username),
                *("-P", settings.mqtt_admin_password.get_secret_value()),
                *("-t", HEAP_TOPIC, "-C", "2", "-W", str(SYS_WAIT_S)),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(found.stdout.split()[-1])

    def provision(conn: psycopg.Connection, project_id: int, serials: Sequence[str]) -> None:
        admin = BrokerAdmin(
            settings.mqtt_host,
            settings.mqtt_port,
            settings.mqtt_admin_username,
            settings.mqtt_admin_password.get_secret_value(),
        )
        with admin:
            devices = [models.DeviceCreate(serial=s, project_id=project_id) for s in serials]
            provisioning.provision(conn, admin, devices)

    def preload(credentials: Credentials) -> None:
        broker = services.mosquitto
        broker.stop()
        store = json.loads(broker.dynsec_file.read_text())
        store["clients"] = [
            c for c in store["clients"] if not c["username"].startswith(PRELOADED_PREFIX)
        ] + [dynsec_client(serial, password) for serial, password in credentials]
        own = device_role(PRELOADED_PREFIX)
        store["roles"] = [r for r in store["roles"] if not r["rolename"].startswith(own)] + [
            {"rolename": device_role(serial), "acls": device_acls(serial)}
            for serial, _ in credentials
        ]
        # written in place: the file keeps the owner and mode the broker runs with
        broker.dynsec_file.write_text(json.dumps(store))
        broker.start(lambda message: None)

    return Broker(
        "mosquitto", settings.mqtt_host, settings.mqtt_port, pids, memory, provision, preload
    )


def dynsec_client(serial: str, password: str) -> dict[str, object]:
    """A device's client as `createClient` stores it in Mosquitto's dynamic-security file."""
    salt = secrets.token_bytes(DYNSEC_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, DYNSEC_ITERATIONS)
    return {
        "username": serial,
        "clientid": serial,
        "roles": [{"rolename": device_role(serial)}],
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": DYNSEC_ITERATIONS,
    }


BROKERS: dict[str, Callable[[LocalServices, Settings], Broker]] = {"mosquitto": mosquitto}
