"""`make capacity`: the cost of each component of fieldtrack on this machine, per unit, and
what a fleet of 10k, 100k and 1M devices would need.

    python -m bench.capacity [--quick] [--broker mosquitto] [--out DIR] [--usage-every S]
                             [--telemetry-every S]

Starts its own TimescaleDB and Mosquitto in .state/capacity (ports 54369 / 18870, or
FIELDTRACK_LOCAL_PG_PORT / FIELDTRACK_LOCAL_MQTT_PORT) and measures, each figure with its
unit and how it was measured:

- CPU per message of the broker and of `fieldtrack ingest`, and PostgreSQL's per stored row:
  QoS 1 single-reading usage messages from mosquitto_pub through one real ingest process;
- the rollups per reading: ingest's in-memory sums and PostgreSQL's rebuild;
- memory per connected device: the broker's and the simulator swarm's;
- the time to provision 100 more devices with 500 to 10,000 identities already in the
  broker, and the growth fitted through those;
- the dashboard and analytics queries at a stated number of usage events (bench/queries.py).

Writes capacity.json (its `components` keyed by component: another broker adds its own) and
capacity.md (the figures and the projection, bench/projection.py) to .state/capacity/.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import psutil
import psycopg
import typer
from pydantic import SecretStr

from bench import projection, queries
from bench.brokers import BROKERS, FORGET_PRELOADED, PRELOADED_PREFIX, Broker, preloaded
from bench.dataset import Dataset, ensure_dataset
from bench.env import BenchData, bench_data, bench_project, bench_services, start_services
from bench.load import Load
from bench.phases import IngestBench
from bench.procs import Sampler
from device_sim.device import SimDevice
from device_sim.swarm import Swarm
from services.core.console import console
from services.core.identities import open_identities
from services.core.migrate import migrate
from services.core.settings import Settings, child_environment, get_settings
from services.infra.local import LocalServices
from services.ingest.rollup_sums import usage_rollups
from services.ingest.rollups import rebuild_rollups
from services.registry import provisioning as provisioning_module

CAPACITY_PG_PORT = 54369
CAPACITY_MQTT_PORT = 18870
PROVISION_BATCH = 100
# The fleet sizes of the projection are measured against a machine of this size as well.
BIG_MACHINE = projection.Machine("a 16-core machine", 16, 64)
# The usage rows of the message phase, as ingest's in-memory rollup takes them.
PHASE_EVENTS = "SELECT count(*) FROM usage_events WHERE project_id = %s"
PHASE_READINGS = """
SELECT device_id, project_id, feature_key, device_time, received_at, seq, item, count,
       duration_ms, boot
FROM usage_events WHERE project_id = %s
"""
ROLLUP_REPEATS = 5
DEVICE_ID = "SELECT id FROM devices WHERE serial = %s"
REVOCATION_WAIT_S = 30.0
FLEET_BATCH = 1000  # devices per provisioning request when a whole fleet is provisioned
CALLOUT_START_S = 2.0  # the auth callout connects to the cluster before logins are asked

Say = Callable[[str], None]
Figure = dict[str, Any]


@dataclass(frozen=True)
class Sizes:
    devices: int  # load devices of the message phase
    messages: int
    connections: int
    identities: tuple[int, ...]  # present in the broker before each provisioning batch
    cluster_identities: tuple[int, ...]  # the same for the NATS cluster
    query_events: int  # the bench dataset's; 0: the message phase's rows


FULL = Sizes(
    devices=20,
    messages=50_000,
    connections=5_000,
    identities=(1_000, 5_000, 10_000),
    cluster_identities=(1_000, 10_000, 100_000),
    query_events=1_000_000,
)
QUICK = Sizes(
    devices=4,
    messages=4_000,
    connections=1_000,
    identities=(500, 2_000),
    cluster_identities=(1_000, 10_000),
    query_events=0,
)


def _say(message: str) -> None:
    console.print(f"[dim]{datetime.now().strftime('%H:%M:%S')}[/] {message}")


def figure(value: float, unit: str, how: str) -> Figure:
    return {"value": value, "unit": unit, "how": how}


def capacity_services() -> LocalServices:
    return bench_services("capacity", CAPACITY_PG_PORT, CAPACITY_MQTT_PORT)


# --- the measurements ---------------------------------------------------------------------


def messages(
    bench: IngestBench, broker: Broker, sizes: Sizes, say: Say
) -> dict[str, dict[str, Figure]]:
    """CPU of the broker, of one ingest process and of PostgreSQL (every backend) while
    mosquitto_pub publishes single-reading QoS 1 usage messages through them."""
    data = bench.data
    postmaster = data.services.postgres.pid()
    if postmaster is None:
        raise RuntimeError("PostgreSQL is not running")
    others = {
        "broker": Sampler(broker.pids()),
        "postgres": Sampler([postmaster], children=True),
    }
    say(f"messages: {sizes.messages:,} through {broker.name} and one ingest process")
    phase = bench.throughput("capacity", sizes.messages, 1, 1, mode="live_c", others=others)
    if phase.lost or phase.failed or phase.stored_rows != phase.messages:
        raise RuntimeError(f"the message phase lost messages: {phase.as_dict()}")
    how = (
        f"{phase.messages:,} QoS 1 single-reading usage messages from {len(data.c_publishers)} "
        f"mosquitto_pub into one `fieldtrack ingest` at {phase.msgs_per_s:,.0f} msg/s"
    )
    per_message = 1e6 / phase.messages
    return {
        broker.name: {
            "cpu_per_message": figure(
                round(phase.extra["broker"]["cpu_s"] * per_message, 2),
                "µs CPU / message",
                f"{broker.name} process CPU over {how}",
            ),
        },
        "ingest": {
            "cpu_per_message": figure(
                round(phase.cpu_s * per_message, 2),
                "µs CPU / message",
                f"ingest process CPU over {how}",
            ),
            "memory": figure(phase.rss_mib, "MiB RSS", f"peak of the ingest process, {how}"),
            "msgs_per_s": figure(
                phase.msgs_per_s,
                "messages / s",
                f"first publish to last commit, {how}: what one process carried, not its most",
            ),
        },
        "postgresql": {
            "cpu_per_row": figure(
                round(phase.extra["postgres"]["cpu_s"] * 1e6 / phase.stored_rows, 2),
                "µs CPU / stored row",
                f"all PostgreSQL processes' CPU over {how}, one row per message, rollups included",
            ),
        },
    }


def rollups(data: BenchData, say: Say) -> dict[str, Figure]:
    """The usage rollups of the message phase's readings: ingest's in-memory sums
    (`usage_rollups`) and PostgreSQL's set-based rebuild (`rebuild_rollups`)."""
    say("rollups: in memory and rebuilt in PostgreSQL")
    with psycopg.connect(data.url) as conn:
        readings = conn.execute(PHASE_READINGS, (data.project_id,)).fetchall()
        started = time.process_time()
        for _ in range(ROLLUP_REPEATS):
            usage_rollups(readings)
        inline = (time.process_time() - started) / ROLLUP_REPEATS
        postmaster = data.services.postgres.pid()
        sampler = Sampler([postmaster] if postmaster else [], children=True).start()
        rebuild_rollups(conn)
        rebuilt = sampler.stop()
    count = len(readings)
    return {
        "inline_cpu_per_reading": figure(
            round(inline * 1e6 / count, 2),
            "µs CPU / reading",
            f"`usage_rollups` (ingest's rollup sums) over {count:,} stored readings, "
            f"mean of {ROLLUP_REPEATS}",
        ),
        "rebuild_cpu_per_reading": figure(
            round(rebuilt.cpu_s * 1e6 / count, 2),
            "µs CPU / reading",
            f"PostgreSQL CPU of `rebuild_rollups` (every rollup) over {count:,} readings",
        ),
    }


def connections(
    broker: Broker, settings: Settings, count: int, say: Say
) -> dict[str, dict[str, Figure]]:
    """Memory of *count* idle devices connected through the simulator's swarm: the broker's
    before and after, and the Python memory the swarm allocated; and how fast they logged in."""
    credentials = preloaded(count)
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        migrate(settings.database_url.get_secret_value())
        broker.preload(conn, credentials)
        before = broker.memory()
        say(f"connections: {count:,} idle devices through the swarm")
        tracemalloc.start()
        swarm = Swarm(broker.nodes, credentials, client_id_of=broker.client_id_of)
        try:
            started = time.monotonic()
            _connect(swarm, count)
            logins_s = time.monotonic() - started
            mine, _ = tracemalloc.get_traced_memory()
            after = broker.memory()
        finally:
            tracemalloc.stop()
            swarm.stop(clear_status=True)
        broker.preload(conn, [])
    how = f"{count:,} devices connected with their own identities, idle (keepalive 60 s)"
    return {
        broker.name: {
            "memory_per_1k_connections": figure(
                round((after - before) / 2**20 * 1000 / count, 2),
                "MiB / 1,000 connections",
                f"{broker.name}'s own count of memory in use, after minus before: {how}, "
                "a retained birth status each",
            ),
            "logins_per_s": figure(
                round(count / logins_s),
                "logins / s",
                f"{count:,} devices logging in at once through the swarm (its handshake window), "
                "each checked by the broker",
            ),
        },
        "swarm": {
            "memory_per_device": figure(
                round(mine / 1024 / count, 1),
                "KiB / device",
                "Python memory the swarm allocated (tracemalloc; sockets' kernel buffers "
                f"not included): {how}",
            ),
        },
    }


def _connect(swarm: Swarm, count: int) -> None:
    connected = swarm.start(timeout=180)
    if connected != count:
        raise RuntimeError(f"only {connected:,} of {count:,} devices connected")


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line through (x, y) points: (intercept, slope)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
    return mean_y - slope * mean_x, slope


def provisioning(
    services: LocalServices, settings: Settings, broker: Broker, sizes: Sizes, say: Say
) -> dict[str, Figure]:
    """A batch of PROVISION_BATCH devices provisioned as the API does (registry rows and
    broker identities, all or nothing) into a scratch database, with each number of
    identities already present; the growth of the cost per device fitted through those, and
    projected to 100,000."""
    out: dict[str, Figure] = {}
    points: list[tuple[float, float]] = []
    # the registry the broker's logins are checked against (NATS): its own database
    url = settings.database_url.get_secret_value()
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FORGET_PRELOADED, (f"{PRELOADED_PREFIX}%",))
        project = bench_project(conn, "provisioning")
        for present in identity_sizes(broker, sizes):
            broker.preload(conn, preloaded(present))
            # named so that the next preload removes them with the preloaded ones
            serials = [f"{PRELOADED_PREFIX}new-{present}-{i:03d}" for i in range(PROVISION_BATCH)]
            say(f"provisioning: {PROVISION_BATCH} devices with {present:,} identities present")
            started = time.monotonic()
            broker.provision(conn, project, serials)
            seconds = time.monotonic() - started
            per_device = seconds / PROVISION_BATCH
            points.append((present, per_device))
            out[f"provision_at_{present}"] = figure(
                round(per_device * 1000, 1),
                "ms / device",
                f"{PROVISION_BATCH} devices in one request through the registry's provisioning "
                f"(database and {broker.name} identities) with {present:,} identities present",
            )
            out[f"revocation_at_{present}"] = figure(
                round(revocation_s(broker, settings, conn, serials[0]) * 1000),
                "ms",
                "a connected device revoked through the registry: from the call to its "
                f"connection closed, with {present:,} identities present",
            )
        broker.preload(conn, [])
        conn.execute(FORGET_PRELOADED, (f"{PRELOADED_PREFIX}%",))
    base, growth = fit(points)
    fitted = f"least squares through the {len(points)} sizes above"
    out["provision_base"] = figure(
        round(base * 1000, 2), "ms / device", f"with no identity present: {fitted}"
    )
    out["provision_growth"] = figure(
        round(growth * 1e6, 3), "µs / device per identity present", f"slope: {fitted}"
    )
    out["provision_at_100000_projected"] = figure(
        round((base + growth * 100_000) * 1000, 1),
        "ms / device",
        "projected (not measured): the fitted line at 100,000 identities",
    )
    return out


def provision_fleet(settings: Settings, broker: Broker, total: int, say: Say) -> dict[str, Figure]:
    """A whole fleet provisioned through the API's path, batch after batch, from none to
    *total*: the cost per device of the first and of the last batch (flat: the same).
    Only for a broker whose identities are rows (NATS): Mosquitto would take days."""
    url = settings.database_url.get_secret_value()
    batches: list[float] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FORGET_PRELOADED, (f"{PRELOADED_PREFIX}%",))
        project = bench_project(conn, "fleet")
        started = time.monotonic()
        for first in range(0, total, FLEET_BATCH):
            serials = [
                f"{PRELOADED_PREFIX}fleet-{i:07d}" for i in range(first, first + FLEET_BATCH)
            ]
            batch_started = time.monotonic()
            broker.provision(conn, project, serials)
            batches.append((time.monotonic() - batch_started) / FLEET_BATCH)
            if (first + FLEET_BATCH) % (total // 10) == 0:
                say(f"provisioning the fleet: {first + FLEET_BATCH:,} of {total:,}")
        seconds = time.monotonic() - started
        conn.execute(FORGET_PRELOADED, (f"{PRELOADED_PREFIX}%",))
    how = f"{total:,} devices through the registry's provisioning, {FLEET_BATCH:,} a request"
    tenth = max(1, len(batches) // 10)
    return {
        f"fleet_{total}_first_batches": figure(
            round(statistics.median(batches[:tenth]) * 1000, 3),
            "ms / device",
            f"{how}: median of the first tenth of the batches",
        ),
        f"fleet_{total}_last_batches": figure(
            round(statistics.median(batches[-tenth:]) * 1000, 3),
            "ms / device",
            f"{how}: median of the last tenth of the batches",
        ),
        f"fleet_{total}_seconds": figure(round(seconds, 1), "s", f"{how}, in all"),
    }


def identity_sizes(broker: Broker, sizes: Sizes) -> tuple[int, ...]:
    """Mosquitto's dynamic security cannot reach 100,000 identities in a run (see the growth);
    the cluster's identities are rows, so it is measured there."""
    return sizes.cluster_identities if broker.name == "nats" else sizes.identities


def revocation_s(
    broker: Broker, settings: Settings, conn: psycopg.Connection, serial: str
) -> float:
    """Seconds from revoking a connected device to its connection closed (a fresh password:
    provisioning returned none here); the revoked device's next login must be refused."""
    with open_identities(settings) as identities:
        device_id = conn.execute(DEVICE_ID, (serial,)).fetchone()
        if device_id is None:
            raise RuntimeError(f"{serial} is not registered")
        password = provisioning_module.rotate_credentials(conn, identities, device_id[0]).password
    device = SimDevice(serial, password, broker.nodes, client_id_of=broker.client_id_of)
    device.start()
    try:
        if not device.connected.wait(30):
            raise RuntimeError(f"{serial} could not log in: {device.refused}")
        started = time.monotonic()
        with open_identities(settings) as identities:
            provisioning_module.revoke(conn, identities, device_id[0])
        while device.connected.is_set() and time.monotonic() - started < REVOCATION_WAIT_S:
            time.sleep(0.005)
        closed = time.monotonic() - started
    finally:
        device.stop()
    if closed >= REVOCATION_WAIT_S:
        raise RuntimeError(f"{serial} was still connected {REVOCATION_WAIT_S:g} s after revocation")
    return closed


def phase_dataset(data: BenchData) -> Dataset:
    """The message phase's database as bench/queries.py reads a dataset: its 30-day window
    ends after today, so it holds every row of the phase."""
    with psycopg.connect(data.url) as conn:
        row = conn.execute(PHASE_EVENTS, (data.project_id,)).fetchone()
    events = int(row[0]) if row else 0
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    end = today + timedelta(days=2)
    database = data.url.rsplit("/", 1)[-1]
    return Dataset(
        data.url, database, events, end - timedelta(days=30), end, events, 0, 0, 0, True, 0
    )


def query_costs(dataset: Dataset, settings: Settings, say: Say) -> dict[str, Figure]:
    """The dashboard and project analytics over 30 days of *dataset* (bench/queries.py)."""
    say(f"queries: {dataset.usage_rows:,} usage events")
    on_dataset = settings.model_copy(update={"database_url": SecretStr(dataset.url)})
    found = queries.bench_size(
        dataset,
        on_dataset,
        say,
        reference=False,
        windows=(30,),
        only=("dashboard", "project_analytics"),
    )
    out: dict[str, Figure] = {}
    for name, measured in found["endpoints"].items():
        server = measured["30"]["server_ms"]
        out[f"{name}_30d"] = figure(
            server["p50"],
            "ms server time (p50)",
            f"GET of the {name} over 30 days, {measured['30']['requests']} requests, "
            f"{dataset.usage_rows:,} usage events, {found['project']['devices']:,} devices "
            "in the project",
        )
    return out


# --- the run --------------------------------------------------------------------------------


def costs_of(components: dict[str, dict[str, Figure]], broker: Broker) -> projection.Costs:
    """The projection's per-unit costs from the measured components."""

    def value(component: str, name: str) -> float:
        return float(components[component][name]["value"])

    return projection.Costs(
        broker_cpu_s_per_message=value(broker.name, "cpu_per_message") / 1e6,
        ingest_cpu_s_per_message=value("ingest", "cpu_per_message") / 1e6,
        postgres_cpu_s_per_row=value("postgresql", "cpu_per_row") / 1e6,
        broker_mib_per_device=value(broker.name, "memory_per_1k_connections") / 1000,
        provision_s_per_device=max(0.0, value(broker.name, "provision_base") / 1000),
        provision_s_per_identity=max(0.0, value(broker.name, "provision_growth") / 1e6),
        ingest_msgs_per_s=value("ingest", "msgs_per_s"),
        broker_thread_cores=projection.BROKER_THREAD_CORES if broker.single_threaded else math.inf,
    )


def this_machine() -> projection.Machine:
    memory = psutil.virtual_memory().total / 2**30
    return projection.Machine("this machine", os.cpu_count() or 1, round(memory))


def markdown(report: dict[str, Any]) -> str:
    """capacity.md: the measured figures, then the projection."""
    meta = report["meta"]
    lines = [
        "| component | figure | value | unit | how |",
        "|---|---|---:|---|---|",
    ]
    for component, figures in report["components"].items():
        for name, found in figures.items():
            lines.append(
                f"| {component} | {name} | {found['value']:,} | {found['unit']} | {found['how']} |"
            )
    return "\n".join(
        [
            "# Capacity",
            "",
            f"Measured by `make capacity` ({meta['mode']} run, broker {meta['broker']}) on "
            f"{meta['machine']}; load average {meta['load_average_at_start']} at the start.",
            "",
            "## Measured",
            "",
            *lines,
            "",
            "## Projection",
            "",
            *report["projection"],
            "",
        ]
    )


def run_capacity(
    services: LocalServices,
    settings: Settings,
    *,
    broker_name: str = "mosquitto",
    quick: bool,
    out_dir: Path,
    rates: projection.Rates | None = None,
    say: Say = _say,
) -> dict[str, Any]:
    """Measure every component against running *services*; write and return the report."""
    sizes = QUICK if quick else FULL
    rates = rates or projection.Rates()
    started = time.monotonic()
    broker = BROKERS[broker_name](services, settings)
    memory = psutil.virtual_memory().total / 2**30
    report: dict[str, Any] = {
        "meta": {
            "machine": f"{os.cpu_count()} cores, {memory:.0f} GiB RAM, "
            f"{platform.platform(terse=True)}",
            "mode": "quick" if quick else "full",
            "broker": broker.name,
            "load_average_at_start": round(os.getloadavg()[0], 1),
            "rates": {
                "usage_every_s": rates.usage_every_s,
                "telemetry_every_s": rates.telemetry_every_s,
            },
        },
        "components": {},
    }
    components: dict[str, dict[str, Figure]] = report["components"]

    def add(found: dict[str, dict[str, Figure]]) -> None:
        for component, figures in found.items():
            components.setdefault(component, {}).update(figures)

    work = out_dir / "work"
    with bench_data(services, settings, sizes.devices, say) as data:
        serve_logins_from(services, broker, data.settings)
        with Load(data.settings, data.devices, data.probe) as load:
            add(messages(IngestBench(data, load, work, say), broker, sizes, say))
        add({"rollups": rollups(data, say)})
        if not sizes.query_events:
            add({"queries": query_costs(phase_dataset(data), settings, say)})
    # these restart the broker: after the load's connections are gone
    serve_logins_from(services, broker, settings)
    add(connections(broker, settings, sizes.connections, say))
    add({broker.name: provisioning(services, settings, broker, sizes, say)})
    if broker.name == "nats":
        add({broker.name: provision_fleet(settings, broker, sizes.cluster_identities[-1], say)})
    if sizes.query_events:
        say(f"queries: the bench dataset of {sizes.query_events:,} usage events")
        dataset = ensure_dataset(services, sizes.query_events, say)
        add({"queries": query_costs(dataset, settings, say)})
    costs = costs_of(components, broker)
    report["projection"] = projection.table(costs, rates, this_machine(), BIG_MACHINE)
    report["meta"]["seconds"] = round(time.monotonic() - started, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "capacity.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "capacity.md").write_text(markdown(report))
    return report


def main(
    quick: Annotated[bool, typer.Option(help="a smoke run: small sizes, about a minute")] = False,
    *,
    broker: Annotated[
        str, typer.Option(help=f"the broker measured: {', '.join(BROKERS)}")
    ] = "mosquitto",
    out: Annotated[Path | None, typer.Option(help="report folder; default .state/capacity")] = None,
    usage_every: Annotated[
        float, typer.Option(help="seconds between a device's usage messages")
    ] = 60.0,
    telemetry_every: Annotated[
        float, typer.Option(help="seconds between a device's telemetry messages")
    ] = 300.0,
    keep_services: Annotated[
        bool, typer.Option(help="leave the capacity run's TimescaleDB and Mosquitto running")
    ] = False,
) -> None:
    """Measure the cost of each component on this machine and project it to 10k, 100k and
    1M devices; write capacity.json and capacity.md."""
    if broker not in BROKERS:
        raise typer.BadParameter(f"unknown broker {broker!r}; choose from {', '.join(BROKERS)}")
    services = capacity_services()
    out_dir = out or services.root
    _say(
        f"capacity services in {services.root} (PostgreSQL :{services.pg_port}, "
        f"Mosquitto :{services.mqtt_port})"
    )
    try:
        settings = start_services(services, _say)
        if broker == "nats":
            settings = start_cluster(services)
        # bench/queries.py and the dataset find the services through the environment
        os.environ["FIELDTRACK_LOCAL_PG_PORT"] = str(services.pg_port)
        os.environ["FIELDTRACK_LOCAL_MQTT_PORT"] = str(services.mqtt_port)
        run_capacity(
            services,
            settings,
            broker_name=broker,
            quick=quick,
            out_dir=out_dir,
            rates=projection.Rates(usage_every, telemetry_every),
        )
    finally:
        if not keep_services:
            if broker == "nats":
                services.remove_cluster(lambda message: _say(f"[infra] {message}"))
            services.down(lambda message: _say(f"[infra] {message}"))
    console.print((out_dir / "capacity.md").read_text())
    console.print(f"report: {out_dir / 'capacity.md'} and capacity.json")


def start_cluster(services: LocalServices) -> Settings:
    """The NATS cluster as the capacity run's broker (`infra up --cluster`), and settings that
    name it."""
    services.up(lambda message: _say(f"[infra] {message}"), cluster=True)
    get_settings.cache_clear()
    return get_settings()


def serve_logins_from(services: LocalServices, broker: Broker, settings: Settings) -> None:
    """Point the cluster's auth callout at *settings*' database (the phase's own), where the
    devices it must admit are registered."""
    if broker.name != "nats":
        return
    services.callout.stop()
    services.callout.start(env={**os.environ, **child_environment(settings)})
    time.sleep(CALLOUT_START_S)


def cli() -> None:
    typer.run(main)


if __name__ == "__main__":
    cli()
