"""`fieldtrack`: one command line for the local services, the processes and the demo."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from services.client import commands as client_commands
from services.core.errors import FieldtrackError
from services.core.paths import PROJECT_ROOT, state_dir

app = typer.Typer(help="fieldtrack: IoT solution deliveries beside real device usage.",
                  no_args_is_help=True)  # fmt: skip
infra_app = typer.Typer(
    help="Local TimescaleDB and Mosquitto, without Docker.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
sim_app = typer.Typer(help="Simulated device fleets.", no_args_is_help=True)
app.add_typer(infra_app, name="infra")
app.add_typer(db_app, name="db")
app.add_typer(sim_app, name="sim")
app.add_typer(client_commands.customers_app, name="customers")
app.add_typer(client_commands.projects_app, name="projects")
app.add_typer(client_commands.features_app, name="features")
app.add_typer(client_commands.deliveries_app, name="deliveries")
app.add_typer(client_commands.devices_app, name="devices")
app.add_typer(client_commands.import_app, name="import")

console = Console()
err_console = Console(stderr=True)
DEMO_SCENARIO = PROJECT_ROOT / "device_sim" / "scenarios" / "demo.yaml"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)


def _fail(exc: Exception) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
    return typer.Exit(code=1)


def _report(message: str) -> None:
    console.print(f"  • {message}")


# --- infra ------------------------------------------------------------------


@infra_app.command("up")
def infra_up() -> None:
    """Install, build and start the local services (idempotent)."""
    from services.infra.local import LocalServices

    services = LocalServices.from_env()
    console.print("[bold]fieldtrack infra up[/]")
    started = time.monotonic()
    try:
        services.up(_report)
    except FieldtrackError as exc:
        raise _fail(exc) from exc
    console.print(f"ready in {time.monotonic() - started:.1f}s")
    _print_status(services)


@infra_app.command("down")
def infra_down() -> None:
    """Stop the local services (data is kept)."""
    from services.infra.local import LocalServices

    try:
        LocalServices.from_env().down(_report)
    except FieldtrackError as exc:
        raise _fail(exc) from exc


@infra_app.command("status")
def infra_status() -> None:
    """What runs where."""
    from services.infra.local import LocalServices

    _print_status(LocalServices.from_env())


def _print_status(services: object) -> None:
    from services.infra.local import LocalServices

    assert isinstance(services, LocalServices)  # noqa: S101
    console.print(f"[bold]local services[/] (state in {services.root})")
    for row in services.status():
        colour = "green" if row["state"].startswith(("running", "written")) else "yellow"
        console.print(f"  [bold]{row['service']}[/]: [{colour}]{row['state']}[/]")
        if row["address"]:
            console.print(f"      address  {row['address']}")
        for part in row["detail"].split("; "):
            console.print(f"      {part}", soft_wrap=True)


@app.command("broker-setup")
def broker_setup() -> None:
    """Create fieldtrack's roles and ingest account on a broker (for your own Mosquitto)."""
    from services.core.broker_admin import setup_broker
    from services.core.settings import get_settings

    try:
        s = get_settings()
        setup_broker(
            host=s.mqtt_host, port=s.mqtt_port,
            admin_user=s.mqtt_admin_username,
            admin_password=s.mqtt_admin_password.get_secret_value(),
            ingest_user=s.mqtt_ingest_username,
            ingest_password=s.mqtt_ingest_password.get_secret_value(),
        )  # fmt: skip
    except FieldtrackError as exc:
        raise _fail(exc) from exc
    console.print(f"broker {s.mqtt_host}:{s.mqtt_port} is set up for fieldtrack")


# --- db -----------------------------------------------------------------------


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending schema migrations."""
    from services.core.migrate import migrate
    from services.core.settings import get_settings

    try:
        applied = migrate(get_settings().database_url.get_secret_value())
    except FieldtrackError as exc:
        raise _fail(exc) from exc
    console.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


# --- processes ------------------------------------------------------------------


@app.command()
def ingest(
    client_id: Annotated[
        str | None, typer.Option(help="overrides FIELDTRACK_INGEST_CLIENT_ID")
    ] = None,
    verbose: bool = False,
) -> None:
    """Run the ingest service until SIGTERM or Ctrl-C (flushes and acknowledges first)."""
    from services.core.migrate import migrate
    from services.core.settings import get_settings
    from services.ingest.service import IngestService

    _setup_logging(verbose)
    try:
        settings = get_settings()
        if client_id:
            settings = settings.model_copy(update={"ingest_client_id": client_id})
        migrate(settings.database_url.get_secret_value())
    except FieldtrackError as exc:
        raise _fail(exc) from exc
    service = IngestService(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service.start()
    logging.getLogger("fieldtrack.ingest").info(
        "ingest %s running against %s:%s", settings.ingest_client_id, settings.mqtt_host,
        settings.mqtt_port,
    )  # fmt: skip
    while not stop.wait(0.5):  # a bare wait() would not wake for the signal handler
        pass
    service.stop()
    totals = service.totals
    logging.getLogger("fieldtrack.ingest").info(
        "stopped: %d messages, %d usage rows, %d duplicates absorbed, quarantined %s",
        totals.messages, totals.usage_rows, totals.usage_duplicates, dict(totals.quarantined),
    )  # fmt: skip


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="overrides FIELDTRACK_API_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="overrides FIELDTRACK_API_PORT")] = None,
) -> None:
    """Serve the REST API and the dashboards."""
    import uvicorn

    from services.api.app import create_app
    from services.core.settings import get_settings

    try:
        settings = get_settings()
    except FieldtrackError as exc:
        raise _fail(exc) from exc
    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level="info",
    )


# --- simulator --------------------------------------------------------------------


@sim_app.command("seed")
def sim_seed(
    scenario: Annotated[Path, typer.Option(help="scenario YAML")] = DEMO_SCENARIO,
    out: Annotated[
        Path | None,
        typer.Option(
            help="where device credentials go (mode 0600); default .state/demo/devices.csv"
        ),
    ] = None,
) -> None:
    """Load a scenario into the registry and provision its devices."""
    out = out or _demo_credentials()
    count = _seed(scenario, out)
    console.print(f"provisioned {count} devices; credentials in {out}")


def _demo_credentials() -> Path:
    return state_dir() / "demo" / "devices.csv"


def _seed(scenario_path: Path, out: Path) -> int:
    import psycopg

    from device_sim import scenario as scenario_mod
    from device_sim.seed import seed, write_credentials
    from services.core.broker_admin import BrokerAdmin
    from services.core.migrate import migrate
    from services.core.settings import get_settings

    try:
        settings = get_settings()
        loaded = scenario_mod.load(scenario_path)
        migrate(settings.database_url.get_secret_value())
        with (
            psycopg.connect(settings.database_url.get_secret_value()) as conn,
            BrokerAdmin(settings.mqtt_host, settings.mqtt_port, settings.mqtt_admin_username,
                        settings.mqtt_admin_password.get_secret_value()) as admin,
        ):  # fmt: skip
            credentials = seed(conn, admin, loaded)
    except (FieldtrackError, psycopg.Error) as exc:
        raise _fail(exc) from exc
    write_credentials(out, credentials)
    return len(credentials)


@sim_app.command("run")
def sim_run(
    scenario: Annotated[Path, typer.Option(help="scenario YAML")] = DEMO_SCENARIO,
    credentials: Annotated[
        Path | None, typer.Option(help="CSV from `sim seed`; default .state/demo/devices.csv")
    ] = None,
    speed: Annotated[float, typer.Option(min=0.01, help="simulated seconds per real second")] = 60,
    tick: Annotated[float, typer.Option(min=0.05, help="seconds between rounds")] = 1.0,
) -> None:
    """Run a fleet live until Ctrl-C or SIGTERM."""
    from device_sim import scenario as scenario_mod
    from device_sim.fleet import Fleet
    from device_sim.seed import read_credentials
    from services.core.settings import get_settings

    _setup_logging()
    try:
        settings = get_settings()
        fleet = Fleet(
            scenario_mod.load(scenario), read_credentials(credentials or _demo_credentials()),
            settings.mqtt_host, settings.mqtt_port, speed=speed,
        )  # fmt: skip
    except (FieldtrackError, OSError) as exc:
        raise _fail(exc) from exc
    connected = fleet.start()
    console.print(f"{connected} of {len(fleet.plans)} devices connected; speed ×{speed:g}")
    if connected == 0:
        fleet.stop()
        raise _fail(FieldtrackError("no device could connect; re-run `fieldtrack sim seed`"))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    fleet.run(stop, tick)
    fleet.stop()
    console.print(f"simulator stopped after {fleet.sent} messages")


# --- demo -------------------------------------------------------------------------


@app.command()
def demo(
    speed: Annotated[float, typer.Option(min=0.01, help="simulated seconds per real second")] = 60,
) -> None:
    """Start ingest, API and a simulated fleet on the local services; Ctrl-C stops all."""
    from services.core.settings import get_settings

    try:
        settings = get_settings()
    except FieldtrackError as exc:
        raise _fail(exc) from exc
    creds = _demo_credentials()
    console.print("[bold]seeding the demo[/] (2 customers, 3 projects, 50 devices)")
    count = _seed(DEMO_SCENARIO, creds)
    console.print(f"  • {count} devices provisioned, credentials in {creds}")
    exe = [sys.executable, "-m", "services"]
    logs = state_dir() / "demo"
    children: dict[str, subprocess.Popen[bytes]] = {}
    for name, args in (
        ("ingest", ["ingest"]),
        ("api", ["api"]),
        ("simulator", ["sim", "run", "--credentials", str(creds), "--speed", str(speed)]),
    ):
        with (logs / f"{name}.log").open("ab") as log:
            children[name] = subprocess.Popen(
                [*exe, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
    url = f"http://{settings.api_host}:{settings.api_port}"
    console.print(
        f"\n[bold green]fieldtrack demo is running[/]\n"
        f"  dashboards  {url}/\n  API docs    {url}/docs\n"
        f"  logs        {logs}/{{ingest,api,simulator}}.log\n"
        "Ctrl-C stops the demo (the local services keep running; `make down` stops them)."
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    failed = None
    while not stop.wait(1.0):
        failed = next((n for n, p in children.items() if p.poll() is not None), None)
        if failed:
            err_console.print(f"[bold red]{failed} exited[/]; see {logs / (failed + '.log')}")
            break
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name, proc in children.items():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            err_console.print(f"{name} did not stop in 30s and was killed")
    console.print("demo stopped")
    if failed:
        raise typer.Exit(code=1)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
