"""Real services for integration tests: TimescaleDB and Mosquitto started by the suite.

If they cannot start, every integration test errors with the reason: nothing is skipped.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from device_sim.device import SimDevice
from services.accounts import store as accounts
from services.accounts.roles import Role
from services.accounts.store import TokenCreate
from services.alerts.rules import AUDIENCE, Audience, RuleKind
from services.api.app import create_app
from services.api.background import serve_in_thread
from services.core.broker_admin import BrokerAdmin
from services.core.migrate import migrate
from services.core.settings import Settings, get_settings
from services.infra.local import LocalServices
from services.ingest.service import IngestService, discard_session
from services.registry import upserts as registry
from tests.integration.cluster_support import cluster  # noqa: F401 - the NATS cluster fixture


@pytest.fixture(scope="session")
def local_services() -> LocalServices:
    services = LocalServices.from_env()
    # Each session starts with an empty broker store: the test broker holds only what tests
    # made, and sessions or identities left by an earlier run would slow every later one.
    services.mosquitto.stop()
    shutil.rmtree(services.mosquitto.data, ignore_errors=True)
    # The suite's broker is Mosquitto; the NATS cluster is started by its own tests
    # (cluster_support.py), never named in the suite's connection settings.
    services.remove_cluster(lambda message: print(f"[infra] {message}"))
    services.up(lambda message: print(f"[infra] {message}"))
    return services


@pytest.fixture(scope="session")
def base_settings(local_services: LocalServices) -> Settings:
    get_settings.cache_clear()
    return get_settings()


@contextmanager
def scratch_database(services: LocalServices, app_url: str, prefix: str) -> Iterator[str]:
    """A new database owned by the app role, with TimescaleDB; dropped on exit."""
    with services.postgres.scratch_database(app_url, prefix) as url:
        yield url


@pytest.fixture(scope="session")
def database(local_services: LocalServices, base_settings: Settings) -> Iterator[str]:
    """A fresh database for this session, migrated; dropped afterwards."""
    app_url = base_settings.database_url.get_secret_value()
    with scratch_database(local_services, app_url, "fieldtrack_test") as url:
        migrate(url)
        yield url
        forget_broker_identities(base_settings, url)


def forget_broker_identities(settings: Settings, database_url: str) -> None:
    """Remove the broker accounts of a test database's devices, so the suite's broker does
    not grow from run to run."""
    with psycopg.connect(database_url) as conn:
        serials = [row[0] for row in conn.execute("SELECT serial FROM devices")]
    if not serials:
        return
    with BrokerAdmin(
        settings.mqtt_host,
        settings.mqtt_port,
        settings.mqtt_admin_username,
        settings.mqtt_admin_password.get_secret_value(),
    ) as admin:
        admin.delete_devices(serials)


@pytest.fixture(scope="session")
def settings(base_settings: Settings, database: str) -> Settings:
    """Settings pointing at this session's database, with its own ingest identity."""
    return base_settings.model_copy(
        update={
            "database_url": SecretStr(database),
            # a replica left running by `infra up --replica` serves another database
            "database_read_url": None,
            "ingest_client_id": f"fieldtrack-ingest-test-{uuid.uuid4().hex[:8]}",
            "ingest_share_group": f"test-{uuid.uuid4().hex[:8]}",
            "ingest_batch_wait_ms": 50,
            "ingest_metrics_port": 0,
        }
    )


@pytest.fixture
def conn(settings: Settings) -> Iterator[psycopg.Connection]:
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as c:
        yield c


@pytest.fixture(scope="session")
def broker_admin(settings: Settings) -> Iterator[BrokerAdmin]:
    with BrokerAdmin(
        settings.mqtt_host,
        settings.mqtt_port,
        settings.mqtt_admin_username,
        settings.mqtt_admin_password.get_secret_value(),
    ) as admin:
        yield admin


@pytest.fixture(scope="session")
def ingest(settings: Settings) -> Iterator[IngestService]:
    service = IngestService(settings)
    service.start()
    assert service.wait_connected(15), "ingest could not connect to the broker"
    yield service
    service.stop()
    # The session was persistent; drop it so the broker stops queueing for this client id.
    discard_session(settings, settings.ingest_client_id)


@pytest.fixture(scope="session")
def api_url(settings: Settings) -> Iterator[str]:
    """The real API, served by uvicorn in a background thread on a free 127.0.0.1 port
    (for clients that speak HTTP, like the CLI)."""
    with serve_in_thread(settings) as url:
        yield url


def mint_token(
    database_url: str, role: Role = Role.ADMIN, customer_id: int | None = None, name: str = "test"
) -> str:
    """A fresh API token with a role, straight in the database (as `fieldtrack tokens create`)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        body = TokenCreate(name=name, role=role, customer_id=customer_id)
        return accounts.create_token(conn, body).token


def api_client(settings: Settings, token: str | None) -> TestClient:
    """A client of the real app; https so the Secure session cookie is sent back."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return TestClient(create_app(settings), base_url="https://testserver", headers=headers)


@pytest.fixture(scope="session")
def admin_token(settings: Settings) -> str:
    return mint_token(settings.database_url.get_secret_value(), name="test-admin")


@pytest.fixture(scope="session")
def api(settings: Settings, admin_token: str) -> Iterator[TestClient]:
    """The API as an admin (access rules have their own tests)."""
    with api_client(settings, admin_token) as client:
        yield client


@dataclass(frozen=True)
class Project:
    id: int
    customer_id: int
    feature_key: str


@pytest.fixture
def project(conn: psycopg.Connection, unique: str) -> Project:
    """A customer with one project and one delivered feature."""
    return make_project(conn, unique)


def make_project(conn: psycopg.Connection, unique: str) -> Project:
    """A customer with one project and one delivered feature, named after *unique*."""
    customer_id = registry.upsert_customer(
        conn, f"Customer {unique}", "waist", "retail", "adoption"
    )
    project_id = registry.upsert_project(
        conn,
        customer_id,
        f"Project {unique}",
        contract_value=1000,
        currency="EUR",
        go_live_date=None,
        status="live",
    )
    feature_key = f"feature_{unique}"
    feature_id = registry.upsert_feature(conn, feature_key, f"Feature {unique}", "test", None)
    registry.upsert_delivery(
        conn,
        project_id,
        feature_id,
        status="delivered",
        delivered_on=None,
        cost_person_days=3,
        contract_line_value=500,
        business_score=3,
        strategic=False,
    )
    return Project(project_id, customer_id, feature_key)


@pytest.fixture
def other_project(conn: psycopg.Connection, unique: str) -> Project:
    """A project of another customer (no features)."""
    customer = registry.upsert_customer(conn, f"Other {unique}", "waist", "retail", "adoption")
    project = registry.upsert_project(
        conn,
        customer,
        f"Other {unique}",
        contract_value=1,
        currency="EUR",
        go_live_date=None,
        status="live",
    )
    return Project(project, customer, "none")


OPEN_ALERT = """
INSERT INTO alerts (rule_id, kind, project_id, subject, state, summary, evidence, fired_at,
                    updated_at)
SELECT r.id, r.kind, %(project)s, %(subject)s, 'firing', %(summary)s, %(evidence)s, now(), now()
FROM alert_rules r WHERE r.kind = %(kind)s AND r.project_id IS NULL
RETURNING id
"""


def open_alert(
    conn: psycopg.Connection,
    kind: RuleKind,
    project_id: int | None,
    subject: str,
    summary: str,
    evidence: dict[str, Any],
) -> int:
    """A firing alert of a kind's portfolio-wide rule, written as the evaluator would."""
    params = {
        "kind": kind.value,
        "project": project_id,
        "subject": subject,
        "summary": summary,
        "evidence": Jsonb(evidence),
    }
    row = conn.execute(OPEN_ALERT, params).fetchone()
    assert row is not None
    alert_id: int = row[0]
    return alert_id


@pytest.fixture
def alerts_of(conn: psycopg.Connection) -> Callable[[Project, str], dict[RuleKind, int]]:
    """One firing alert of each kind about a project (the ingest kinds about no project)."""

    def make(project: Project, tag: str) -> dict[RuleKind, int]:
        return {
            kind: open_alert(
                conn,
                kind,
                None if AUDIENCE[kind] is Audience.OPS else project.id,
                f"test:{tag}:{project.id}",
                f"{kind} {tag}",
                {"tag": tag},
            )
            for kind in RuleKind
        }

    return make


@pytest.fixture
def provision(
    conn: psycopg.Connection, broker_admin: BrokerAdmin, settings: Settings
) -> Iterator[Callable[[int, str], SimDevice]]:
    """Provision a device into a project and return it connected, as a real device would be."""
    devices: list[SimDevice] = []

    def make(project_id: int, serial: str) -> SimDevice:
        [credential] = registry.provision_devices(
            conn, broker_admin, project_id, [(serial, "T1", "1.0")]
        )
        device = SimDevice(serial, credential.password, settings.broker_nodes())
        device.start()
        assert device.connected.wait(10), f"device {serial} could not connect: {device.refused}"
        devices.append(device)
        return device

    yield make
    for device in devices:
        device.stop()


@pytest.fixture
def unique() -> str:
    """A short random token for names and serials, so tests never collide."""
    return uuid.uuid4().hex[:8]


def wait_for(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until check() returns something truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")


@pytest.fixture
def mqtt_login(settings: Settings) -> Callable[[str, str], bool]:
    """Whether the broker accepts a device login (username = client id = serial)."""

    def login(serial: str, password: str) -> bool:
        answered = threading.Event()
        result: list[bool] = []

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            result.append(not reason.is_failure)
            client.disconnect()
            answered.set()

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=serial, protocol=mqtt.MQTTv5)
        client.username_pw_set(serial, password)
        client.on_connect = on_connect
        client.connect(settings.mqtt_host, settings.mqtt_port)
        client.loop_start()
        try:
            assert answered.wait(10), f"no CONNACK for {serial}"
        finally:
            client.disconnect()
            client.loop_stop()
        return result[0]

    return login


def keys_of(value: object) -> set[str]:
    """Every key anywhere in a JSON value: what a response says, however deeply nested."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_of(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_of(v)}
    return set()
