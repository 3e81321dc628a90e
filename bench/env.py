"""The benchmark's services and data.

`make bench` runs its own TimescaleDB and Mosquitto in `.state/bench` on ports of its own
(54349 / 18850, or FIELDTRACK_LOCAL_PG_PORT / FIELDTRACK_LOCAL_MQTT_PORT), so it never
touches the demo's or the tests' data. Each run works in a scratch database that it drops at
the end, with one project of load devices (provisioned in the broker, each with its own
credentials) and one probe device in a project of its own, left out of every count.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psycopg
from pydantic import SecretStr

from bench import PROJECT_ROOT
from services.core.identities import open_identities
from services.core.migrate import migrate
from services.core.settings import Settings
from services.infra.local import ADMIN_USER, INGEST_USER, LocalServices
from services.infra.mosquitto import QUOTA_SWITCH
from services.registry import upserts as registry
from services.registry.upserts import DeviceCredential

BENCH_PG_PORT = 54349
BENCH_MQTT_PORT = 18850
FEATURE = "remote_unlock"
# mosquitto_pub processes in parallel for the broker ceiling (one per core).
CEILING_PUBLISHERS = 2

Say = Callable[[str], None]


def bench_services(
    state: str = "bench", pg_port: int = BENCH_PG_PORT, mqtt_port: int = BENCH_MQTT_PORT
) -> LocalServices:
    """A bench command's own local services in .state/*state* (or
    FIELDTRACK_<STATE>_STATE_DIR); the ports honour the usual environment variables."""
    variable = f"FIELDTRACK_{state.upper()}_STATE_DIR"
    root = Path(os.environ.get(variable, PROJECT_ROOT / ".state" / state))
    return LocalServices(
        root=root.resolve(),
        pg_port=int(os.environ.get("FIELDTRACK_LOCAL_PG_PORT", pg_port)),
        mqtt_port=int(os.environ.get("FIELDTRACK_LOCAL_MQTT_PORT", mqtt_port)),
    )


def start_services(services: LocalServices, say: Say) -> Settings:
    """Start the benchmark's services with an empty broker store (no sessions or identities
    left by an earlier run can take messages), and return settings that point at them."""
    # `infra up` writes its connection file into FIELDTRACK_STATE_DIR: make that ours.
    os.environ["FIELDTRACK_STATE_DIR"] = str(services.root)
    # A few load accounts each publish for a fleet: the quota plugin runs (its cost is part of
    # what is measured) with limits no load account reaches.
    os.environ.setdefault(QUOTA_SWITCH, "load")
    services.mosquitto.stop()
    shutil.rmtree(services.mosquitto.data, ignore_errors=True)
    services.up(lambda message: say(f"[infra] {message}"))
    return settings_for(services)


def settings_for(services: LocalServices) -> Settings:
    """Settings for *services* from their generated secrets; explicit values win over any
    FIELDTRACK_* connection variable of the caller's environment."""
    values = services.load_secrets()
    return Settings(
        database_url=SecretStr(services.postgres.app_url(values["DB_PASSWORD"])),
        mqtt_host="127.0.0.1",
        mqtt_port=services.mqtt_port,
        mqtt_admin_username=ADMIN_USER,
        mqtt_admin_password=SecretStr(values["MQTT_ADMIN_PASSWORD"]),
        mqtt_ingest_username=INGEST_USER,
        mqtt_ingest_password=SecretStr(values["MQTT_INGEST_PASSWORD"]),
        ingest_metrics_port=0,
        session_secret=SecretStr(values["SESSION_SECRET"]),  # the API that bench/queries.py serves
    )


@dataclass(frozen=True)
class BenchData:
    """A migrated scratch database with the load fleet and the probe device."""

    url: str
    settings: Settings  # pointing at this database
    services: LocalServices
    token: str
    project_id: int
    devices: list[DeviceCredential]
    probe: DeviceCredential
    ceiling: list[DeviceCredential]  # for mosquitto_pub (a client id the swarm does not use)
    # load devices driven by mosquitto_pub instead of the swarm: a load generator that costs
    # the machine a fraction of the Python publisher's CPU
    c_publishers: list[DeviceCredential]


def bench_project(conn: psycopg.Connection, name: str) -> int:
    """A customer, project and delivered feature for the bench's devices; the project's id."""
    customer = registry.upsert_customer(conn, f"Bench {name}", "head", "testing", "adoption")
    project = registry.upsert_project(
        conn,
        customer,
        f"Bench {name}",
        contract_value=1,
        currency="EUR",
        go_live_date=None,
        status="live",
    )
    feature = registry.upsert_feature(conn, FEATURE, "Remote unlock", "bench", None)
    registry.upsert_delivery(
        conn,
        project,
        feature,
        status="delivered",
        delivered_on=None,
        cost_person_days=1,
        contract_line_value=1,
        business_score=3,
        strategic=False,
    )
    return project


@contextmanager
def bench_data(
    services: LocalServices, settings: Settings, devices: int, say: Say
) -> Iterator[BenchData]:
    """A scratch database with *devices* load devices and a probe device, all provisioned in
    the broker; the database and the broker identities are removed on exit."""
    token = uuid.uuid4().hex[:6]
    app_url = settings.database_url.get_secret_value()
    with services.postgres.scratch_database(app_url, "fieldtrack_bench") as url:
        migrate(url)
        serials = [f"bench-{token}-{i:04d}" for i in range(devices)]
        probe_serial = f"bench-{token}-probe"
        ceiling_serials = [f"bench-{token}-c{i}" for i in range(CEILING_PUBLISHERS)]
        c_serials = [f"bench-{token}-p{i}" for i in range(CEILING_PUBLISHERS)]
        admin = open_identities(settings)
        with admin, psycopg.connect(url, autocommit=True) as conn:
            project_id = bench_project(conn, "load")
            probe_project = bench_project(conn, "probe")
            provisioned = registry.provision_devices(
                conn, admin, project_id, [(s, "BENCH", "1.0") for s in [*serials, *c_serials]]
            )
            creds, c_publishers = provisioned[:devices], provisioned[devices:]
            [probe, *ceiling] = registry.provision_devices(
                conn,
                admin,
                probe_project,
                [(s, "BENCH", "1.0") for s in [probe_serial, *ceiling_serials]],
            )
            say(f"provisioned {devices} load devices, a probe and {len(ceiling)} ceiling devices")
            try:
                yield BenchData(
                    url=url,
                    settings=settings.model_copy(update={"database_url": SecretStr(url)}),
                    services=services,
                    token=token,
                    project_id=project_id,
                    devices=creds,
                    probe=probe,
                    ceiling=ceiling,
                    c_publishers=c_publishers,
                )
            finally:
                with suppress(Exception):
                    admin.delete_devices([*serials, probe_serial, *ceiling_serials, *c_serials])
