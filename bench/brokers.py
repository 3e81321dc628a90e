"""The brokers the capacity model measures, each described the same way: where devices
connect, which processes are the broker's, how devices are provisioned and how its identity
store is brought to a size before a measurement: Mosquitto (identities in its dynamic-security
store) and the NATS cluster (identities in the registry, checked by the auth callout).
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
from functools import partial

import psutil
import psycopg

from bench.env import bench_project
from services.core.broker_admin import device_acls, device_role
from services.core.identities import open_identities
from services.core.settings import Settings
from services.core.topics import nats_client_id
from services.infra.local import LocalServices
from services.registry import credentials as credentials_module, models, provisioning

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
    nodes: list[tuple[str, int]]  # where devices connect (MQTT); a cluster has several
    pids: Callable[[], list[int]]  # the processes whose CPU is the broker's
    # Bytes of memory the broker holds now. Mosquitto: its own heap count; its RSS keeps
    # the memory it freed after reading its identity store, and thousands of connections
    # fit in that without a byte more of RSS.
    memory: Callable[[], int]
    # Register *serials* in a project and give each a broker identity, as the API does.
    provision: Callable[[psycopg.Connection, int, Sequence[str]], None]
    # Make these device identities present besides the broker's own (none: back to its own),
    # each able to log in with its password; *conn* is the registry's database.
    preload: Callable[[psycopg.Connection, Credentials], None]
    client_id_of: Callable[[str], str] = str  # a device's MQTT client id from its serial
    single_threaded: bool = True  # Mosquitto: one core is its wall; NATS: none


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

    def preload(conn: psycopg.Connection, credentials: Credentials) -> None:
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
        "mosquitto",
        [(settings.mqtt_host, settings.mqtt_port)],
        pids,
        memory,
        partial(provision_devices, settings),
        preload,
    )


def provision_devices(
    settings: Settings, conn: psycopg.Connection, project_id: int, serials: Sequence[str]
) -> None:
    """Register devices and give each a broker identity, as the API's POST /devices does."""
    with open_identities(settings) as identities:
        devices = [models.DeviceCreate(serial=s, project_id=project_id) for s in serials]
        provisioning.provision(conn, identities, devices)


PRELOAD_PROJECT = "capacity-preloaded"
FORGET_PRELOADED = "DELETE FROM devices WHERE serial LIKE %s"
COPY_DEVICES = "COPY devices (serial, project_id) FROM STDIN"
COPY_CREDENTIALS = """
INSERT INTO device_credentials (device_id, secret_hash)
SELECT d.id, c.secret_hash FROM devices d JOIN unnest(%s::text[], %s::bytea[])
    AS c(serial, secret_hash) ON c.serial = d.serial
"""


def nats(services: LocalServices, settings: Settings) -> Broker:
    """The local NATS cluster of *services* (`infra up --cluster`): device identities are the
    registry's rows, checked at login by the auth callout."""

    def pids() -> list[int]:
        found = [pid for node in services.cluster.nodes if (pid := node.pid()) is not None]
        if not found:
            raise RuntimeError("the NATS cluster is not running")
        return found

    def memory() -> int:
        return sum(psutil.Process(pid).memory_info().rss for pid in pids())

    def preload(conn: psycopg.Connection, credentials: Credentials) -> None:
        with conn.transaction():
            conn.execute(FORGET_PRELOADED, (f"{PRELOADED_PREFIX}%",))
            if not credentials:
                return
            project = bench_project(conn, PRELOAD_PROJECT)
            with conn.cursor().copy(COPY_DEVICES) as copy:
                for serial, _ in credentials:
                    copy.write_row((serial, project))
            conn.execute(
                COPY_CREDENTIALS,
                (
                    [serial for serial, _ in credentials],
                    [credentials_module.secret_hash(password) for _, password in credentials],
                ),
            )

    return Broker(
        "nats",
        [("127.0.0.1", node.mqtt_port) for node in services.cluster.nodes],
        pids,
        memory,
        partial(provision_devices, settings),
        preload,
        client_id_of=nats_client_id,
        single_threaded=False,
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


BROKERS: dict[str, Callable[[LocalServices, Settings], Broker]] = {
    "mosquitto": mosquitto,
    "nats": nats,
}
