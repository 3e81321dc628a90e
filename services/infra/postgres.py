"""A project-owned PostgreSQL 15 cluster with TimescaleDB preloaded."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from services.core.errors import InfraError
from services.infra.system import Reporter, chown_tree, is_root, log_tail, run

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SERVICE_USER = "postgres"  # PostgreSQL refuses to run as root
APP_ROLE = "fieldtrack"
APP_DATABASE = "fieldtrack"
START_TIMEOUT_S = 60
# fieldtrack's server settings, shared by the local cluster and the Docker image.
SERVER_SETTINGS = (
    "shared_preload_libraries = 'timescaledb'",
    "timescaledb.telemetry_level = off",
    "max_connections = 200",
    "shared_buffers = 512MB",
    "max_wal_size = 4GB",
    "password_encryption = 'scram-sha-256'",
)
# Local clusters only: a replication slot keeps the WAL a stopped replica still needs, up to
# this much; beyond it the slot is given up and the replica must be made again.
PRIMARY_SETTINGS = ("max_slot_wal_keep_size = 4GB",)
# A hot standby's: queries on it hold back the primary's vacuum rather than being cancelled
# when the replay would remove rows they still read (long analytics would fail otherwise).
STANDBY_SETTINGS = ("hot_standby = on", "hot_standby_feedback = on")
REPLICATION_SLOT = "fieldtrack_replica"


DROP_SLOT = """
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s
"""


@dataclass(frozen=True)
class LocalPostgres:
    """A cluster of its own, or (*primary* set) a hot standby streaming from that one."""

    root: Path
    port: int
    primary: LocalPostgres | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def logfile(self) -> Path:
        return self.root / "postgres.log"

    def superuser_conninfo(self, dbname: str = "postgres") -> str:
        """Over the private Unix socket, which only the service user (and root) can reach."""
        return f"host={self.socket_dir} port={self.port} user={SERVICE_USER} dbname={dbname}"

    def app_url(self, password: str, dbname: str = APP_DATABASE) -> str:
        return f"postgresql://{APP_ROLE}:{password}@127.0.0.1:{self.port}/{dbname}"

    def _user(self) -> str | None:
        return SERVICE_USER if is_root() else None

    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def running(self) -> bool:
        pidfile = self.data / "postmaster.pid"
        if not pidfile.exists():
            return False
        try:
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError, PermissionError):
            return False
        return True

    def pid(self) -> int | None:
        if not self.running():
            return None
        return int((self.data / "postmaster.pid").read_text().splitlines()[0])

    def init(self, report: Reporter) -> bool:
        """Create the cluster if there is none; return True when it was created."""
        if self.initialised():
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        chown_tree(self.root, SERVICE_USER)
        if self.primary is not None:
            self._clone(self.primary, report)
            return True
        report(f"creating PostgreSQL cluster in {self.data}")
        run(
            [
                PG_BIN / "initdb",
                "-D",
                self.data,
                "-U",
                SERVICE_USER,
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ],
            what="initdb",
            as_user=self._user(),
        )
        conf = self.data / "postgresql.conf"
        with conf.open("a") as handle:
            handle.write("\ninclude_if_exists = 'fieldtrack.conf'\n")
        return True

    def _clone(self, primary: LocalPostgres, report: Reporter) -> None:
        """A base backup of *primary* that starts as its standby (`-R`), streaming through a
        replication slot (`-C -S`) so the primary keeps the WAL it has not yet received."""
        report(f"copying the primary on port {primary.port} into {self.data} (pg_basebackup)")
        with psycopg.connect(primary.superuser_conninfo(), autocommit=True) as conn:
            # a slot left by an earlier replica would hold WAL for a copy that is gone
            conn.execute(DROP_SLOT, (REPLICATION_SLOT,))
        run(
            [
                PG_BIN / "pg_basebackup",
                "--pgdata",
                self.data,
                "--dbname",
                primary.superuser_conninfo(),
                "--write-recovery-conf",
                "--create-slot",
                "--slot",
                REPLICATION_SLOT,
                "--checkpoint=fast",
                "--wal-method=stream",
            ],
            what="pg_basebackup",
            as_user=self._user(),
        )

    def drop_slot(self) -> None:
        """Forget the standby's replication slot on the primary (its WAL is freed)."""
        if self.primary is not None and self.primary.running():
            with psycopg.connect(self.primary.superuser_conninfo(), autocommit=True) as conn:
                conn.execute(DROP_SLOT, (REPLICATION_SLOT,))

    def write_config(self) -> None:
        """fieldtrack's settings, rewritten on every start so a changed port applies."""
        role = STANDBY_SETTINGS if self.primary is not None else PRIMARY_SETTINGS
        (self.data / "fieldtrack.conf").write_text(
            "# written by `fieldtrack infra up`; edits are overwritten\n"
            f"port = {self.port}\n"
            "listen_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
            "unix_socket_permissions = 0700\n"
            + "".join(f"{line}\n" for line in (*SERVER_SETTINGS, *role))
        )
        chown_tree(self.data / "fieldtrack.conf", SERVICE_USER)

    def start(self, report: Reporter) -> bool:
        """Start the cluster unless it runs; return True when it was started."""
        if self.running():
            return False
        self.write_config()
        report(f"starting PostgreSQL on 127.0.0.1:{self.port}")
        try:
            run(
                [
                    PG_BIN / "pg_ctl",
                    "-D",
                    self.data,
                    "-l",
                    self.logfile,
                    "-w",
                    "-t",
                    str(START_TIMEOUT_S),
                    "start",
                ],
                what="PostgreSQL start",
                as_user=self._user(),
            )
        except InfraError as exc:
            raise InfraError(f"{exc}\n--- {self.logfile} ---\n{self.log_tail()}") from exc
        return True

    def stop(self) -> bool:
        if not self.running():
            return False
        run(
            [PG_BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"],
            what="PostgreSQL stop",
            as_user=self._user(),
        )
        return True

    def log_tail(self) -> str:
        return log_tail(self.logfile)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.superuser_conninfo(), connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.2)
        raise InfraError(f"PostgreSQL did not accept connections: {last}\n{self.log_tail()}")

    def ensure_app_database(self, password: str, dbname: str = APP_DATABASE) -> None:
        """Create (or re-password) the application role, its database and the extension."""
        with psycopg.connect(self.superuser_conninfo(), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)
            ).fetchone()
            verb = sql.SQL("ALTER") if exists else sql.SQL("CREATE")
            conn.execute(
                sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                    verb, sql.Identifier(APP_ROLE), sql.Literal(password)
                )
            )
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)
            ).fetchone():
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(dbname), sql.Identifier(APP_ROLE)
                    )
                )
        # The extension needs a superuser; migrations then find it in place.
        with psycopg.connect(self.superuser_conninfo(dbname), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")

    @contextmanager
    def scratch_database(self, app_url: str, prefix: str) -> Iterator[str]:
        """A new database owned by the app role, with TimescaleDB; yields its URL (the app
        URL with the database name replaced) and drops it on exit."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.superuser_conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(APP_ROLE)
                )
            )
        with psycopg.connect(self.superuser_conninfo(name), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION timescaledb")
        try:
            yield app_url.rsplit("/", 1)[0] + f"/{name}"
        finally:
            with psycopg.connect(self.superuser_conninfo(), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))

    def timescaledb_version(self) -> str | None:
        try:
            with psycopg.connect(self.superuser_conninfo(APP_DATABASE), connect_timeout=2) as conn:
                row = conn.execute(
                    "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
                ).fetchone()
        except psycopg.Error:
            return None
        return str(row[0]) if row else None


# The settings file deploy/timescaledb/Dockerfile installs; tests check the committed copy.
DOCKER_CONFIG = "deploy/timescaledb/fieldtrack.conf"


def render_docker_config() -> str:
    """The TimescaleDB image's settings: the local cluster's, listening on the container's
    network (its port is published on the host's loopback only)."""
    return (
        f"# fieldtrack's PostgreSQL settings in the TimescaleDB image, rendered by\n"
        f"# `python -m services.infra.postgres > {DOCKER_CONFIG}`.\n"
        "listen_addresses = '*'\n" + "".join(f"{line}\n" for line in SERVER_SETTINGS)
    )


if __name__ == "__main__":
    print(render_docker_config(), end="")
