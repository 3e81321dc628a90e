"""`fieldtrack infra up|down|status`: the local TimescaleDB and Mosquitto, without Docker."""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from services.core.broker_admin import setup_broker
from services.core.errors import InfraError
from services.core.nats_jwt import new_account_seed, public_key
from services.core.nats_stream import prepare_ingest_stream
from services.core.paths import local_env_file, state_dir
from services.core.settings import NatsSettings, Settings
from services.infra import timescale
from services.infra.callout_process import CalloutProcess
from services.infra.mosquitto import QUOTA_BUILD_PACKAGES, LocalMosquitto, port_open
from services.infra.nats import ClusterSecrets, LocalNatsCluster
from services.infra.postgres import LocalPostgres
from services.infra.system import Reporter, ensure_packages

RUNTIME_PACKAGES = ("postgresql-15", "mosquitto", "mosquitto-clients", *QUOTA_BUILD_PACKAGES)
DEFAULT_PG_PORT = 54329  # away from a system PostgreSQL on 5432
DEFAULT_MQTT_PORT = 18830  # away from a system Mosquitto on 1883
DEFAULT_PG_REPLICA_PORT = 54330
DEFAULT_NATS_PORT = 14222  # the cluster's nodes: 14222-14224 (routes +2000, monitor +4000)
DEFAULT_NATS_MQTT_PORT = 18841  # their MQTT listeners: 18841-18843
AUTH_USER = "fieldtrack-auth"
SYSTEM_USER = "fieldtrack-sys"
ADMIN_USER = "fieldtrack-admin"
INGEST_USER = "fieldtrack-ingest"
SECRET_KEYS = (
    "DB_PASSWORD",
    "MQTT_ADMIN_PASSWORD",
    "MQTT_INGEST_PASSWORD",
    "SESSION_SECRET",
    "NATS_AUTH_PASSWORD",
    "NATS_SYSTEM_PASSWORD",
    "NATS_ISSUER_SEED",
)
# Not a random string but an nkey seed: the auth callout's signing key.
NKEY_SECRETS = frozenset({"NATS_ISSUER_SEED"})


@dataclass(frozen=True)
class LocalServices:
    root: Path
    pg_port: int
    mqtt_port: int
    pg_replica_port: int = DEFAULT_PG_REPLICA_PORT
    nats_port: int = DEFAULT_NATS_PORT
    nats_mqtt_port: int = DEFAULT_NATS_MQTT_PORT

    @classmethod
    def from_env(cls) -> LocalServices:
        return cls(
            root=state_dir(),
            pg_port=int(os.environ.get("FIELDTRACK_LOCAL_PG_PORT", DEFAULT_PG_PORT)),
            mqtt_port=int(os.environ.get("FIELDTRACK_LOCAL_MQTT_PORT", DEFAULT_MQTT_PORT)),
            pg_replica_port=int(
                os.environ.get("FIELDTRACK_LOCAL_PG_REPLICA_PORT", DEFAULT_PG_REPLICA_PORT)
            ),
            nats_port=int(os.environ.get("FIELDTRACK_LOCAL_NATS_PORT", DEFAULT_NATS_PORT)),
            nats_mqtt_port=int(
                os.environ.get("FIELDTRACK_LOCAL_NATS_MQTT_PORT", DEFAULT_NATS_MQTT_PORT)
            ),
        )

    @property
    def postgres(self) -> LocalPostgres:
        return LocalPostgres(self.root / "postgres", self.pg_port)

    @property
    def replica(self) -> LocalPostgres:
        """The read replica: a hot standby of `postgres`, made by `infra up --replica`."""
        return LocalPostgres(self.root / "postgres-replica", self.pg_replica_port, self.postgres)

    @property
    def mosquitto(self) -> LocalMosquitto:
        return LocalMosquitto(self.root / "mosquitto", self.mqtt_port)

    @property
    def cluster(self) -> LocalNatsCluster:
        """The NATS cluster `infra up --cluster` runs instead of Mosquitto for devices."""
        return LocalNatsCluster(self.root / "nats", self.nats_port, self.nats_mqtt_port)

    @property
    def cluster_marker(self) -> Path:
        """Present while `infra up --cluster` made the cluster the local broker (a cluster a
        test runs beside Mosquitto has none, and never becomes the broker in the settings)."""
        return self.root / "nats" / "broker"

    def cluster_is_broker(self) -> bool:
        return self.cluster_marker.exists()

    @property
    def callout(self) -> CalloutProcess:
        return CalloutProcess(self.root / "nats")

    @property
    def secrets_file(self) -> Path:
        return self.root / "secrets.env"

    @property
    def build_cache(self) -> Path:
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fieldtrack"

    def load_secrets(self) -> dict[str, str]:
        """Secrets generated on the first `up` and kept (mode 0600) for later runs."""
        values: dict[str, str] = {}
        if self.secrets_file.exists():
            for line in self.secrets_file.read_text().splitlines():
                key, _, value = line.partition("=")
                if key in SECRET_KEYS and value:
                    values[key] = value
        missing = [key for key in SECRET_KEYS if key not in values]
        if missing:
            values.update(
                {
                    key: new_account_seed() if key in NKEY_SECRETS else secrets.token_urlsafe(32)
                    for key in missing
                }
            )
            self._write_private(
                self.secrets_file, "".join(f"{k}={values[k]}\n" for k in SECRET_KEYS)
            )
        return values

    @staticmethod
    def _write_private(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)

    def write_env_file(self, values: dict[str, str]) -> Path:
        """The connection settings every fieldtrack process reads for the local services;
        the read URL while the replica runs."""
        path = local_env_file()
        replica = self.replica
        reads = (
            f"FIELDTRACK_DATABASE_READ_URL={replica.app_url(values['DB_PASSWORD'])}\n"
            if replica.running()
            else ""
        )
        cluster = self.cluster
        broker = (
            "FIELDTRACK_BROKER=nats\n"
            f"FIELDTRACK_NATS__URLS={cluster.urls}\n"
            f"FIELDTRACK_NATS__AUTH_USERNAME={AUTH_USER}\n"
            f"FIELDTRACK_NATS__AUTH_PASSWORD={values['NATS_AUTH_PASSWORD']}\n"
            f"FIELDTRACK_NATS__SYSTEM_USERNAME={SYSTEM_USER}\n"
            f"FIELDTRACK_NATS__SYSTEM_PASSWORD={values['NATS_SYSTEM_PASSWORD']}\n"
            f"FIELDTRACK_NATS__ISSUER_SEED={values['NATS_ISSUER_SEED']}\n"
            f"FIELDTRACK_MQTT_NODES={cluster.mqtt_nodes}\n"
            "FIELDTRACK_MQTT_HOST=127.0.0.1\n"
            f"FIELDTRACK_MQTT_PORT={cluster.nodes[0].mqtt_port}\n"
            if self.cluster_is_broker()
            else f"FIELDTRACK_MQTT_HOST=127.0.0.1\nFIELDTRACK_MQTT_PORT={self.mqtt_port}\n"
        )
        self._write_private(
            path,
            "# written by `fieldtrack infra up`; environment variables override these\n"
            f"FIELDTRACK_DATABASE_URL={self.postgres.app_url(values['DB_PASSWORD'])}\n"
            + reads
            + broker
            + f"FIELDTRACK_MQTT_ADMIN_USERNAME={ADMIN_USER}\n"
            f"FIELDTRACK_MQTT_ADMIN_PASSWORD={values['MQTT_ADMIN_PASSWORD']}\n"
            f"FIELDTRACK_MQTT_INGEST_USERNAME={INGEST_USER}\n"
            f"FIELDTRACK_MQTT_INGEST_PASSWORD={values['MQTT_INGEST_PASSWORD']}\n"
            f"FIELDTRACK_SESSION_SECRET={values['SESSION_SECRET']}\n"
            f"FIELDTRACK_LOCAL_PG_SUPERUSER={self.postgres.superuser_conninfo()}\n",
        )
        return path

    def install(self, report: Reporter) -> None:
        """Install the system packages and build TimescaleDB if missing (the slow, one-time
        part of `up`: minutes on a fresh machine); idempotent."""
        self.root.mkdir(parents=True, exist_ok=True)
        # The services run as their own users and must traverse into the state folder.
        self.root.chmod(0o755)
        installed = ensure_packages([*RUNTIME_PACKAGES, *timescale.BUILD_PACKAGES], report)
        if not installed:
            report("system packages: already installed")
        version = timescale.installed_version()
        if version:
            report(f"TimescaleDB {version}: already installed")
        else:
            version = timescale.ensure_timescaledb(self.build_cache / "timescaledb", report)
            report(f"TimescaleDB {version}: built and installed")

    def up(self, report: Reporter, *, replica: bool = False, cluster: bool = False) -> None:
        """Install, build, initialise and start whatever is missing (with *replica*, the read
        replica too; with *cluster*, the NATS cluster and its auth callout); idempotent."""
        self.install(report)
        values = self.load_secrets()

        pg = self.postgres
        if not pg.running() and port_open("127.0.0.1", pg.port):
            raise InfraError(
                f"port {pg.port} is taken by another program; "
                "set FIELDTRACK_LOCAL_PG_PORT to a free port"
            )
        pg.init(report)
        if not pg.start(report):
            report(f"PostgreSQL: already running on 127.0.0.1:{pg.port} (pid {pg.pid()})")
        pg.wait_ready()
        pg.ensure_app_database(values["DB_PASSWORD"])

        mq = self.mosquitto
        if not mq.running() and port_open("127.0.0.1", mq.port):
            raise InfraError(
                f"port {mq.port} is taken by another program; "
                "set FIELDTRACK_LOCAL_MQTT_PORT to a free port"
            )
        mq.configure(ADMIN_USER, values["MQTT_ADMIN_PASSWORD"], report)
        if not mq.start(report):
            report(f"Mosquitto: already running on 127.0.0.1:{mq.port} (pid {mq.pid()})")
        removed = setup_broker(
            host="127.0.0.1",
            port=mq.port,
            admin_user=ADMIN_USER,
            admin_password=values["MQTT_ADMIN_PASSWORD"],
            ingest_user=INGEST_USER,
            ingest_password=values["MQTT_INGEST_PASSWORD"],
        )
        for line in removed:
            report(f"broker: {line}")
        if replica:
            self.start_replica(report)
        if cluster or self.cluster_is_broker():
            self.cluster.up(self.cluster_secrets(values), report)
            self.cluster_marker.write_text("the NATS cluster is the local broker\n")
        env_file = self.write_env_file(values)
        report(f"connection settings written to {env_file}")
        if self.cluster_is_broker():
            # before the callout lets a device in: a message no consumer wants is not kept
            prepare_ingest_stream(self._cluster_settings(values))
            report("NATS cluster: the MQTT stream and ingest's consumer are ready")
            if self.callout.start():
                report(f"auth callout started (log {self.callout.logfile})")

    def _cluster_settings(self, values: dict[str, str]) -> Settings:
        """What reaching the local cluster as ingest takes (for setting it up)."""
        return Settings(
            database_url=SecretStr(self.postgres.app_url(values["DB_PASSWORD"])),
            broker="nats",
            nats=self.nats_settings(values),
            mqtt_admin_password=SecretStr(values["MQTT_ADMIN_PASSWORD"]),
            mqtt_ingest_username=INGEST_USER,
            mqtt_ingest_password=SecretStr(values["MQTT_INGEST_PASSWORD"]),
        )

    def nats_settings(self, values: dict[str, str]) -> NatsSettings:
        """The local cluster as fieldtrack's processes reach it, from the generated secrets."""
        return NatsSettings(
            urls=self.cluster.urls,
            auth_username=AUTH_USER,
            auth_password=SecretStr(values["NATS_AUTH_PASSWORD"]),
            issuer_seed=SecretStr(values["NATS_ISSUER_SEED"]),
            system_username=SYSTEM_USER,
            system_password=SecretStr(values["NATS_SYSTEM_PASSWORD"]),
        )

    def cluster_secrets(self, values: dict[str, str]) -> ClusterSecrets:
        return ClusterSecrets(
            auth_user=AUTH_USER,
            auth_password=values["NATS_AUTH_PASSWORD"],
            ingest_user=INGEST_USER,
            ingest_password=values["MQTT_INGEST_PASSWORD"],
            system_user=SYSTEM_USER,
            system_password=values["NATS_SYSTEM_PASSWORD"],
            issuer=public_key(values["NATS_ISSUER_SEED"]),
        )

    def remove_cluster(self, report: Reporter) -> None:
        """Stop the NATS cluster and its callout and remove their data; devices go back to
        Mosquitto."""
        if self.callout.stop():
            report("auth callout stopped")
        self.cluster.remove(report)
        if local_env_file().exists():
            self.write_env_file(self.load_secrets())

    def start_replica(self, report: Reporter) -> None:
        """Make the read replica from the running primary if there is none, and start it."""
        standby = self.replica
        if not standby.running() and port_open("127.0.0.1", standby.port):
            raise InfraError(
                f"port {standby.port} is taken by another program; "
                "set FIELDTRACK_LOCAL_PG_REPLICA_PORT to a free port"
            )
        standby.init(report)
        if not standby.start(report):
            report(f"replica: already running on 127.0.0.1:{standby.port} (pid {standby.pid()})")
        standby.wait_ready()

    def remove_replica(self, report: Reporter) -> None:
        """Stop the read replica, drop its slot and data; reads go back to the primary."""
        standby = self.replica
        if standby.stop():
            report("replica stopped")
        standby.drop_slot()
        if standby.root.exists():
            shutil.rmtree(standby.root)
            report(f"replica removed ({standby.root})")
        if local_env_file().exists():
            self.write_env_file(self.load_secrets())

    def down(self, report: Reporter) -> None:
        if self.callout.stop():
            report("auth callout stopped")
        self.cluster.down(report)
        if self.mosquitto.stop():
            report("Mosquitto stopped")
        else:
            report("Mosquitto: not running")
        # the standby first: stopped after its primary it would retry the stream meanwhile
        if self.replica.stop():
            report("replica stopped")
        if self.postgres.stop():
            report("PostgreSQL stopped")
        else:
            report("PostgreSQL: not running")

    def status(self) -> list[dict[str, str]]:
        """One row per service: what it is, whether it runs, where, and its files."""
        pg, mq, standby = self.postgres, self.mosquitto, self.replica
        ts_version = timescale.installed_version() if timescale.PG_CONFIG.exists() else None
        pg_pid, mq_pid, standby_pid = pg.pid(), mq.pid(), standby.pid()
        replica_rows = (
            [
                {
                    "service": "read replica (hot standby)",
                    "state": f"running, pid {standby_pid}" if standby_pid else "stopped",
                    "address": f"127.0.0.1:{standby.port} database fieldtrack",
                    "detail": f"streaming from 127.0.0.1:{pg.port}; data {standby.data}; "
                    f"log {standby.logfile}",
                }
            ]
            if standby.initialised()
            else []
        )
        return [
            {
                "service": "TimescaleDB (PostgreSQL 15)",
                "state": f"running, pid {pg_pid}" if pg_pid else "stopped",
                "address": f"127.0.0.1:{pg.port} database fieldtrack",
                "detail": f"extension {ts_version or 'not installed'}; data {pg.data}; "
                f"log {pg.logfile}",
            },
            *replica_rows,
            {
                "service": "Mosquitto",
                "state": f"running, pid {mq_pid}" if mq_pid else "stopped",
                "address": f"127.0.0.1:{mq.port} (MQTT, no anonymous access)",
                "detail": f"config {mq.config}; log {mq.logfile}",
            },
            *self._cluster_rows(),
            {
                "service": "connection settings",
                "state": "written" if local_env_file().exists() else "missing (run infra up)",
                "address": "",
                "detail": str(local_env_file()),
            },
        ]

    def _cluster_rows(self) -> list[dict[str, str]]:
        cluster = self.cluster
        if not cluster.initialised():
            return []
        rows = [
            {
                "service": f"NATS {node.name}",
                "state": f"running, pid {pid}" if (pid := node.pid()) else "stopped",
                "address": f"127.0.0.1:{node.client_port} (NATS), {node.mqtt_port} (MQTT)",
                "detail": f"config {node.config}; log {node.logfile}",
            }
            for node in cluster.nodes
        ]
        pid = self.callout.pid()
        rows.append(
            {
                "service": "NATS auth callout",
                "state": f"running, pid {pid}" if pid else "stopped",
                "address": "",
                "detail": f"log {self.callout.logfile}",
            }
        )
        return rows
