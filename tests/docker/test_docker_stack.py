"""docker-compose.yml run for real: the images built from nothing but Debian's packages and
PyPI, the stack up and healthy, the first admin, a fleet through the broker container, the
API and pages on 127.0.0.1, ingest killed without losing a message, and `down -v` leaving
nothing behind.

The stack is reached through its ports published on 127.0.0.1 only; the docker and compose
commands manage it (and create the admin, as the README says). When no Docker daemon can
run here, the tests fail with the reason: the stack is never skipped silently.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from services.core.broker_admin import BrokerAdmin
from services.core.errors import InfraError
from services.core.nats_jwt import new_account_seed
from services.core.settings import Settings
from services.core.topics import MessageKind, device_topic
from services.infra import timescale
from tests import PROJECT_ROOT
from tests.docker import engine
from tests.integration.cluster_support import device_client
from tests.integration.ingest_support import (
    Background,
    Ledger,
    account,
    create_project,
    fleet,
    publish_streams,
    stored_count,
    usage_body,
    wait_all_stored,
)

# From nothing on 2 CPUs the images take about 5 minutes; the stack then about a minute.
pytestmark = pytest.mark.timeout(900)

PROJECT = "fieldtrack-dockertest"  # its own containers, volumes and network, never a user's
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
# One service per image: compose builds each image once, in parallel.
IMAGE_SERVICES = ("timescaledb", "mosquitto", "api")
LONG_RUNNING = ("timescaledb", "mosquitto", "ingest", "alerts", "api")  # healthchecked
ONE_SHOTS = ("broker-init", "migrate", "broker-setup")
SIMULATOR = "simulator"
SIMULATED_DEVICES = 50  # the demo scenario the simulator seeds
SECRETS = (
    "FIELDTRACK_DB_PASSWORD",
    "FIELDTRACK_MQTT_ADMIN_PASSWORD",
    "FIELDTRACK_MQTT_INGEST_PASSWORD",
    "FIELDTRACK_SESSION_SECRET",
    "FIELDTRACK_GRAFANA_ADMIN_PASSWORD",
    "FIELDTRACK_GRAFANA_DB_PASSWORD",
    "FIELDTRACK_NATS__AUTH_PASSWORD",
    "FIELDTRACK_NATS__SYSTEM_PASSWORD",
)
ISSUER_SEED = "FIELDTRACK_NATS__ISSUER_SEED"  # an nkey seed, not a random string
NATS_NODES = ("NATS1", "NATS2", "NATS3")
HOST_PORTS = (
    "DB",
    "MQTT",
    "API",
    "INGEST_METRICS",
    "ALERTS_METRICS",
    "GRAFANA",
    *NATS_NODES,
    *(f"{node}_MQTT" for node in NATS_NODES),
)
HOST_PORT_RANGE = range(20000, 32000)
BUILD_TIMEOUT_S = 780
HEALTHY_TIMEOUT_S = 180
COMMAND_TIMEOUT_S = 300
EXTENSION_VERSION = "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
ADMIN_PASSWORD = re.compile(r"password \(shown once\): (\S+)")
PAGES = {"/dashboards/fleet": "Fleet · fieldtrack", "/dashboards/ingest": "Ingest · fieldtrack"}
# The ingest kill: devices publish throughout; ingest dies SIGKILL-hard a few seconds in and
# is started again a few seconds later, while the broker queues for its session.
KILL_DEVICES = 4
KILL_MESSAGES_PER_DEVICE = 1500
KILL_RATE = 200.0  # msgs/s over all devices: about 30 s of publishing
KILL_AFTER_S = 5.0
RESTART_AFTER_S = 5.0
# The `cluster` profile, brought up beside the running stack: a device provisioned through the
# API publishes a few messages through two different nodes.
CLUSTER_PROFILE = "cluster"
CLUSTER_LONG_RUNNING = ("nats-1", "nats-2", "nats-3", "ingest-cluster")  # healthchecked
CLUSTER_CALLOUT = "nats-auth"
CLUSTER_ONE_SHOT = "nats-issuer"
CLUSTER_MESSAGES_PER_NODE = 5
PUBLISH_TIMEOUT_S = 10
STORED_TIMEOUT_S = 60
TOKEN_SECRET = re.compile(r"secret \(shown once\):\s*\n(\S+)")


def _report(message: str) -> None:
    print(f"[docker] {message}")


@dataclass
class Stack:
    """The compose project under test: its command, environment and published ports."""

    compose: list[str]
    env: dict[str, str]
    state: Path

    def port(self, name: str) -> int:
        return int(self.env[f"FIELDTRACK_HOST_{name}_PORT"])

    @property
    def database_url(self) -> str:
        password = self.env["FIELDTRACK_DB_PASSWORD"]
        return f"postgresql://fieldtrack:{password}@127.0.0.1:{self.port('DB')}/fieldtrack"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port('API')}"

    def run(self, *args: str, timeout: float = COMMAND_TIMEOUT_S) -> str:
        """A compose command; its output (both streams) or InfraError with it."""
        argv = [*self.compose, "-f", str(COMPOSE_FILE), "-p", PROJECT, *args]
        done = subprocess.run(
            argv,
            env=self.env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise InfraError(f"`{' '.join(argv[len(self.compose) :])}` failed:\n{output[-4000:]}")
        return output

    def containers(self) -> dict[str, dict[str, Any]]:
        """`docker inspect` of the project's containers, by service."""
        ids = _docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}")
        if not ids.split():
            return {}
        inspected = json.loads(_docker("inspect", *ids.split()))
        return {
            c["Config"]["Labels"]["com.docker.compose.service"]: c
            for c in inspected
            if c["Config"]["Labels"].get("com.docker.compose.oneoff", "False") == "False"
        }

    def logs(self) -> str:
        try:
            logs = ("--profile", CLUSTER_PROFILE, "logs", "--no-color", "--tail", "40")
            return self.run(*logs, timeout=60)[-12000:]
        except (InfraError, subprocess.TimeoutExpired) as exc:
            return f"(no logs: {exc})"

    def down(self) -> None:
        # with the profile: its services' containers are the project's too
        self.run("--profile", CLUSTER_PROFILE, "down", "-v", "--remove-orphans", "--timeout", "30")

    def settings(self) -> Settings:
        """fieldtrack's settings as seen from this machine: the published ports."""
        return Settings(
            database_url=self.database_url,
            mqtt_host="127.0.0.1",
            mqtt_port=self.port("MQTT"),
            mqtt_admin_password=self.env["FIELDTRACK_MQTT_ADMIN_PASSWORD"],
            mqtt_ingest_password=self.env["FIELDTRACK_MQTT_INGEST_PASSWORD"],
            session_secret=self.env["FIELDTRACK_SESSION_SECRET"],
        )


def _docker(*args: str) -> str:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise InfraError(f"`docker {' '.join(args)}` failed: {done.stderr[-2000:]}")
    return done.stdout


def _stack_env(compose: list[str], state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDTRACK_")}
    env |= {name: secrets.token_urlsafe(24) for name in SECRETS}
    env[ISSUER_SEED] = new_account_seed()
    ports: list[int] = []
    for name in HOST_PORTS:
        ports.append(_host_port(ports))
        env[f"FIELDTRACK_HOST_{name}_PORT"] = str(ports[-1])
    env["FIELDTRACK_BUILD_CA_CERTIFICATES"] = engine.local_ca_certificates()
    if compose[0] == "docker":
        env["DOCKER_BUILDKIT"] = "0"  # the classic builder: no frontend image to pull
    return env


def _host_port(taken: list[int]) -> int:
    """A free port below Linux's ephemeral range: one picked inside it may become the local
    end of another program's connection before the stack publishes it (seen on a busy host)."""
    while True:
        port = secrets.choice(HOST_PORT_RANGE)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in taken:
            return port


def _wait_healthy(stack: Stack) -> dict[str, dict[str, Any]]:
    """Until every long-running service is healthy, every one-shot exited 0 and the simulator
    runs; fail with the states and logs otherwise."""
    return _wait_services(stack, "the stack", LONG_RUNNING, ONE_SHOTS, (SIMULATOR,))


def _wait_services(
    stack: Stack,
    what: str,
    healthy: tuple[str, ...],
    done: tuple[str, ...],
    running: tuple[str, ...],
) -> dict[str, dict[str, Any]]:
    """The project's containers once *healthy* are, *done* exited 0 and *running* run; fail
    with the states and logs when that does not come or a one-shot failed."""
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        found = stack.containers()
        states = {name: _state(c) for name, c in found.items()}
        failed = [name for name in done if states.get(name, "").startswith("exited(")]
        failed = [name for name in failed if states[name] != "exited(0)"]
        if failed:
            break
        if (
            all(states.get(name) == "healthy" for name in healthy)
            and all(states.get(name) == "exited(0)" for name in done)
            and all(states.get(name) == "running" for name in running)
        ):
            return found
        time.sleep(2)
    pytest.fail(f"{what} is not healthy: {states}\n{stack.logs()}")


def _state(container: dict[str, Any]) -> str:
    status = container["State"]
    if status["Status"] == "exited":
        return f"exited({status['ExitCode']})"
    health = (status.get("Health") or {}).get("Status")
    return str(health or status["Status"])


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    state = Path(os.environ["FIELDTRACK_STATE_DIR"]) / "docker"
    try:
        docker = engine.prepare(state, _report)
    except (InfraError, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"no Docker engine to run the stack on: {exc}")
    stack = Stack(docker.compose, _stack_env(docker.compose, state), state)
    try:
        stack.down()  # what an interrupted earlier run left
        parallel = ["--parallel"] if docker.compose == ["docker-compose"] else []
        started = time.monotonic()
        stack.run("build", *parallel, *IMAGE_SERVICES, timeout=BUILD_TIMEOUT_S)
        _report(f"images built in {time.monotonic() - started:.0f} s")
        started = time.monotonic()
        stack.run("up", "-d")
        _wait_healthy(stack)
        _report(f"stack healthy {time.monotonic() - started:.0f} s after `up`")
        yield stack
    finally:
        try:
            stack.down()
        finally:
            docker.stop()


# --- the tests, in order: up, admin and pages, ingest killed, down ---------------------------


def test_every_service_is_healthy_and_runs_as_its_own_user(stack: Stack) -> None:
    containers = _wait_healthy(stack)
    for name in (*LONG_RUNNING, SIMULATOR):
        _assert_unprivileged_on_loopback(name, containers[name])
    assert "grafana" not in containers, "Grafana starts only under its profile"
    assert CLUSTER_CALLOUT not in containers, "the NATS cluster starts only under its profile"


def _assert_unprivileged_on_loopback(name: str, container: dict[str, Any]) -> None:
    user = container["Config"]["User"]
    assert user and user not in ("root", "0"), f"{name} runs as root"
    published = container["HostConfig"]["PortBindings"] or {}
    for bindings in published.values():
        assert all(b["HostIp"] == "127.0.0.1" for b in bindings), f"{name}: {bindings}"


def test_timescaledb_is_the_version_the_suite_runs(stack: Stack) -> None:
    """Both are built by services/infra/timescale.py from the same source package."""
    with psycopg.connect(stack.database_url, connect_timeout=5) as conn:
        row = conn.execute(EXTENSION_VERSION).fetchone()
    assert row and row[0], "TimescaleDB is not installed in the stack's database"
    if timescale.PG_CONFIG.exists() and (local := timescale.installed_version()):
        assert row[0] == local, f"the image has TimescaleDB {row[0]}, the local services {local}"


def test_the_first_admin_sees_the_simulated_fleet_and_the_pages(stack: Stack) -> None:
    created = stack.run(
        "run", "--rm", "api", "fieldtrack", "users", "add", "admin", "--role", "admin"
    )
    password = ADMIN_PASSWORD.search(created)
    assert password, created
    with Browser(stack.api) as browser:
        browser.log_in("admin", password[1])
        fleet_summary = _wait_for_fleet(browser)
        assert fleet_summary["totals"]["devices"] == SIMULATED_DEVICES
        for path, title in PAGES.items():
            page = browser.get(path)
            assert page.status_code == 200, (path, page.status_code)
            assert f"<title>{title}</title>" in page.text, path
        health = _wait_for_messages(browser)
        assert health["recent"]["messages"] > 0, health


def _wait_for_messages(browser: Browser, timeout: float = 90) -> dict[str, Any]:
    """Ingest health once the fleet's telemetry (not only its births) reached the database."""
    deadline = time.monotonic() + timeout
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        health = browser.get("/ingest/health").json()
        if health["recent"]["messages"] > 0:
            break
        time.sleep(2)
    return health


def _wait_for_fleet(browser: Browser, timeout: float = 90) -> dict[str, Any]:
    """The fleet summary once the simulated devices' messages reached the database."""
    deadline = time.monotonic() + timeout
    summary: dict[str, Any] = {}
    while time.monotonic() < deadline:
        summary = browser.get("/fleet").json()
        if summary["totals"]["online"] == SIMULATED_DEVICES:
            return summary
        time.sleep(2)
    pytest.fail(f"the simulated fleet did not come online through the broker: {summary}")


def test_ingest_killed_and_started_again_loses_nothing(stack: Stack) -> None:
    settings = stack.settings()
    token = secrets.token_hex(4)
    serials = [f"DOCKER-{token}-{i}" for i in range(KILL_DEVICES)]
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        project_id, feature = create_project(conn, token)
    with (
        BrokerAdmin(
            "127.0.0.1",
            stack.port("MQTT"),
            settings.mqtt_admin_username,
            stack.env["FIELDTRACK_MQTT_ADMIN_PASSWORD"],
        ) as admin,
        fleet(stack.database_url, admin, settings, project_id, feature, serials) as devices,
    ):
        ledger = Ledger()
        publishing = Background(
            lambda: publish_streams(
                devices.devices,
                feature,
                range(KILL_MESSAGES_PER_DEVICE),
                datetime.now(UTC),
                rate=KILL_RATE,
                ledger=ledger,
            )
        )
        time.sleep(KILL_AFTER_S)
        stack.run("kill", "-s", "SIGKILL", "ingest")
        assert _state(stack.containers()["ingest"]) == "exited(137)"
        time.sleep(RESTART_AFTER_S)
        stack.run("start", "ingest")
        publishing.join(KILL_MESSAGES_PER_DEVICE * KILL_DEVICES / KILL_RATE + 60)
        assert ledger.wait_acks(30) == 0, "the broker did not acknowledge every message"
        stored, _ = wait_all_stored(stack.database_url, ledger, serials, timeout=120)
        accounting = account(stack.database_url, ledger, serials)
    assert accounting.published == KILL_DEVICES * KILL_MESSAGES_PER_DEVICE, accounting.line()
    accounting.assert_exact()
    assert stored == accounting.published
    _wait_healthy(stack)


def test_a_device_publishes_through_two_cluster_nodes(stack: Stack) -> None:
    """The profile beside the running stack: a device the API provisioned is admitted by the
    auth callout on two nodes, and what it sent through each is stored by ingest-cluster."""
    started = time.monotonic()
    stack.run("--profile", CLUSTER_PROFILE, "up", "-d")
    containers = _wait_services(
        stack, "the cluster", CLUSTER_LONG_RUNNING, (CLUSTER_ONE_SHOT,), (CLUSTER_CALLOUT,)
    )
    _report(f"cluster healthy {time.monotonic() - started:.0f} s after `up`")
    for name in (*CLUSTER_LONG_RUNNING, CLUSTER_CALLOUT):
        _assert_unprivileged_on_loopback(name, containers[name])

    created = stack.run(
        "run", "--rm", "api", "fieldtrack", "tokens", "create", "cluster-test", "--role", "admin"
    )
    token = TOKEN_SECRET.search(created)
    assert token, created
    unique = secrets.token_hex(4)
    serial = f"cluster-{unique}"
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        project_id, feature = create_project(conn, unique)
    provisioned = httpx.post(
        f"{stack.api}/devices",
        json={"serial": serial, "project_id": project_id},
        headers={"Authorization": f"Bearer {token[1]}"},
        timeout=15,
    )
    assert provisioned.status_code == 201, provisioned.text
    password = provisioned.json()["password"]

    base = datetime.now(UTC)
    for i, node in enumerate(NATS_NODES[:2]):
        seqs = range(i * CLUSTER_MESSAGES_PER_NODE, (i + 1) * CLUSTER_MESSAGES_PER_NODE)
        _publish_through(stack.port(f"{node}_MQTT"), serial, password, feature, seqs, base)
    expected = len(NATS_NODES[:2]) * CLUSTER_MESSAGES_PER_NODE
    deadline = time.monotonic() + STORED_TIMEOUT_S
    while (stored := stored_count(stack.database_url, [serial])) < expected:
        if time.monotonic() > deadline:
            pytest.fail(f"{stored} of {expected} messages stored\n{stack.logs()}")
        time.sleep(1)
    assert stored == expected
    _report(f"cluster check done {time.monotonic() - started:.0f} s after `up`")


def _publish_through(
    port: int, serial: str, password: str, feature: str, seqs: range, base: datetime
) -> None:
    """Connect as the device to one node, publish at QoS 1 and wait for every PUBACK."""
    client = device_client(serial, password)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    try:
        for seq in seqs:
            info = client.publish(
                device_topic(serial, MessageKind.USAGE),
                usage_body(seq, base + timedelta(milliseconds=seq), feature),
                qos=1,
            )
            info.wait_for_publish(PUBLISH_TIMEOUT_S)
            assert info.is_published(), f"node on port {port} did not acknowledge seq {seq}"
    finally:
        client.disconnect()
        client.loop_stop()


def test_down_leaves_nothing_of_the_project(stack: Stack) -> None:
    stack.down()
    label = f"label=com.docker.compose.project={PROJECT}"
    assert not _docker("ps", "-aq", "--filter", label).split()
    assert not _docker("volume", "ls", "-q", "--filter", label).split()
    assert not _docker("network", "ls", "-q", "--filter", label).split()


class Browser:
    """An HTTP client that keeps the dashboard's cookies. The session cookies are `Secure`,
    which browsers accept on http://127.0.0.1 but httpx does not send over http."""

    def __init__(self, base_url: str) -> None:
        self._client = httpx.Client(base_url=base_url, timeout=15)
        self._cookies: dict[str, str] = {}

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_: object) -> None:
        self._client.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        cookie = "; ".join(f"{name}={value}" for name, value in self._cookies.items())
        response = self._client.request(method, path, headers={"Cookie": cookie}, **kwargs)
        self._cookies.update(response.cookies)
        return response

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)

    def log_in(self, username: str, password: str) -> None:
        form = self.get("/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert csrf, form.text
        done = self.request(
            "POST",
            "/login",
            data={"username": username, "password": password, "csrf_token": csrf[1], "next": "/"},
        )
        assert done.status_code == 303, (done.status_code, done.text[:500])
