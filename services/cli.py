"""`fieldtrack`: one command line for the local services, the processes and the demo."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from device_sim.cli import (
    ResumeOpt,
    ScenarioOpt,
    TruthOpt,
    progress_bar,
    resume_timeline,
    scenario_path,
    seed_scenario,
    sim_app,
    truth_path,
)
from services.accounts.cli import tokens_app, users_app
from services.client import login as client_login, report as client_report
from services.client.commands import (
    alerts,
    customers,
    deliveries,
    devices,
    features,
    imports,
    projects,
)
from services.core.console import command_group, console, err_console, fail
from services.core.paths import state_dir

if TYPE_CHECKING:
    from services.core.settings import Settings

app = command_group("fieldtrack: IoT solution deliveries beside real device usage.")
infra_app = command_group("Local TimescaleDB and Mosquitto, without Docker.")
db_app = command_group("Database schema.")
rollups_app = command_group("The rollups the analytics read.")
quarantine_app = command_group("Messages ingest could not store.")
alerts_app = alerts.app  # list, ack, rules … through the API; run and evaluate below
retention_app = command_group("Deleting raw rows and quarantined messages past retention.")
broker_app = command_group("The NATS cluster's fieldtrack services (FIELDTRACK_BROKER=nats).")
app.add_typer(infra_app, name="infra")
app.add_typer(db_app, name="db")
app.add_typer(rollups_app, name="rollups")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(alerts_app, name="alerts")
app.add_typer(retention_app, name="retention")
app.add_typer(broker_app, name="broker")
app.add_typer(sim_app, name="sim")  # device_sim/cli.py
for _registry in (customers, projects, features, deliveries, devices):
    app.add_typer(_registry.app, name=_registry.COMMANDS.plural)
app.add_typer(imports.app, name="import")
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")
app.command("report")(client_report.report)
app.command("login")(client_login.login)
app.command("logout")(client_login.logout)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEMO_INGEST_WAIT_S = 30.0  # how long the demo waits for ingest before starting the fleet
DEMO_DRAIN_S = 3.0  # after the fleet stops, time for ingest to store what it sent
DEMO_ALERTS_GRACE_S = 60.0  # after the fleet's catch-up, before the first alert evaluation


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)


def _report(message: str) -> None:
    console.print(f"  • {message}")


# --- infra ------------------------------------------------------------------


@infra_app.command("up")
def infra_up(
    replica: Annotated[
        bool,
        typer.Option(
            "--replica",
            help="also a read replica: a hot standby of the local PostgreSQL on "
            "FIELDTRACK_LOCAL_PG_REPLICA_PORT, whose URL becomes FIELDTRACK_DATABASE_READ_URL",
        ),
    ] = False,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster",
            help="devices on a local NATS cluster instead of Mosquitto: three nodes with "
            "JetStream and MQTT (ports FIELDTRACK_LOCAL_NATS_PORT and _NATS_MQTT_PORT, +0..2) "
            "and fieldtrack's auth callout; kept until `infra down --cluster`",
        ),
    ] = False,
) -> None:
    """Install, build and start the local services (idempotent)."""
    from services.infra.local import LocalServices

    services = LocalServices.from_env()
    console.print("[bold]fieldtrack infra up[/]")
    started = time.monotonic()
    services.up(_report, replica=replica, cluster=cluster)
    console.print(f"ready in {time.monotonic() - started:.1f}s")
    _print_status(services)


@infra_app.command("down")
def infra_down(
    replica: Annotated[
        bool,
        typer.Option(
            "--replica",
            help="only the read replica: stop it and remove its data and replication slot "
            "(reads go back to the primary, which keeps running)",
        ),
    ] = False,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster",
            help="only the NATS cluster: stop it and its auth callout and remove their data "
            "(devices go back to Mosquitto)",
        ),
    ] = False,
) -> None:
    """Stop the local services (data is kept)."""
    from services.infra.local import LocalServices

    services = LocalServices.from_env()
    if cluster:
        services.remove_cluster(_report)
    if replica:
        services.remove_replica(_report)
    if not (cluster or replica):
        services.down(_report)


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
    """Create fieldtrack's roles and ingest account on a broker (for your own Mosquitto); on a
    NATS cluster, the MQTT stream and ingest's consumer (before any device publishes)."""
    from services.core.broker_admin import setup_broker
    from services.core.nats_stream import prepare_ingest_stream
    from services.core.settings import get_settings

    s = get_settings()
    if s.broker == "nats":
        prepare_ingest_stream(s)
        console.print(f"NATS cluster {s.nats.urls}: stream and consumer {s.nats.consumer} ready")
        return
    removed = setup_broker(
        host=s.mqtt_host,
        port=s.mqtt_port,
        admin_user=s.mqtt_admin_username,
        admin_password=s.mqtt_admin_password.get_secret_value(),
        ingest_user=s.mqtt_ingest_username,
        ingest_password=s.mqtt_ingest_password.get_secret_value(),
    )
    for line in removed:
        console.print(f"[yellow]{escape(line)}[/]")
    console.print(f"broker {s.mqtt_host}:{s.mqtt_port} is set up for fieldtrack")


@broker_app.command("auth")
def broker_auth() -> None:
    """Serve the cluster's auth callout: every device login is checked against the registry
    (`infra up --cluster` runs one; run several for redundancy, they share the work)."""
    from services.broker.callout import run
    from services.core.settings import get_settings

    _setup_logging()
    run(get_settings())


@broker_app.command("issuer")
def broker_issuer(
    out: Annotated[
        Path | None, typer.Option(help="write the key to this file instead of printing it")
    ] = None,
) -> None:
    """The public key of FIELDTRACK_NATS__ISSUER_SEED: the `issuer` every node's auth callout
    trusts (docker-compose's nodes read it from here)."""
    from services.core.errors import ConfigError
    from services.core.nats_jwt import public_key
    from services.core.settings import get_settings

    seed = get_settings().nats.issuer_seed
    if seed is None:
        raise ConfigError(
            "FIELDTRACK_NATS__ISSUER_SEED is not set; `fieldtrack broker new-seed` makes one"
        )
    key = public_key(seed.get_secret_value())
    if out is None:
        print(key)
    else:
        out.write_text(f"{key}\n")


@broker_app.command("new-seed")
def broker_new_seed() -> None:
    """Print a new account seed for FIELDTRACK_NATS__ISSUER_SEED (keep it secret)."""
    from services.core.nats_jwt import new_account_seed

    print(new_account_seed())


# --- db -----------------------------------------------------------------------


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending schema migrations."""
    from services.core.migrate import migrate
    from services.core.settings import get_settings

    applied = migrate(get_settings().database_url.get_secret_value())
    console.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


@rollups_app.command("rebuild")
def rollups_rebuild(
    since: Annotated[
        datetime | None,
        typer.Option(help="rebuild from the month holding this date on (default: everything)"),
    ] = None,
) -> None:
    """Recompute every rollup from the raw rows (ingest waits while it runs)."""
    import psycopg

    from services.core.settings import get_settings
    from services.ingest.rollups import rebuild_rollups

    started = time.monotonic()
    try:
        url = get_settings().database_url.get_secret_value()
        with psycopg.connect(url) as conn:
            start = rebuild_rollups(conn, since.replace(tzinfo=UTC) if since else None)
    except psycopg.Error as exc:
        raise fail(exc) from exc
    where = f"from {start:%Y-%m-%d} on" if start else "all of them"
    console.print(f"rollups rebuilt ({where}) in {time.monotonic() - started:.1f}s")


@retention_app.command("run")
def retention_run() -> None:
    """One retention pass now (ingest runs one every FIELDTRACK_RETENTION_EVERY_S): raw rows
    past each project's retention and quarantined messages past theirs are deleted."""
    import psycopg

    from services.core.settings import get_settings
    from services.ingest.retention import run_retention

    try:
        settings = get_settings()
        with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
            report = run_retention(conn, settings, datetime.now(UTC))
    except psycopg.Error as exc:
        raise fail(exc) from exc
    if not report.ran:
        console.print("another process is running a retention pass; nothing done")
        return
    deleted = ", ".join(f"{t} {n}" for t, n in sorted(report.rows_deleted.items()) if n)
    dropped = ", ".join(f"{t} {n}" for t, n in sorted(report.chunks_dropped.items()))
    console.print(
        f"retention pass in {report.seconds:.1f}s: rows deleted: {deleted or 'none'}; "
        f"chunks dropped: {dropped or 'none'}"
        + (
            f"; {report.lock_timeouts} left for the next pass (locks busy)"
            if report.lock_timeouts
            else ""
        )
    )


@quarantine_app.command("replay")
def quarantine_replay(
    reason: Annotated[
        list[str] | None, typer.Option(help="only messages quarantined for this reason (repeat)")
    ] = None,
    device: Annotated[str | None, typer.Option(help="only this device's messages")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="at most this many messages")] = None,
) -> None:
    """Offer quarantined messages to the store again, after a fix. Each is stored once (or
    found already stored) and marked replayed, or stays quarantined with its reason now."""
    from datetime import timedelta

    import psycopg

    from services.core.migrate import migrate
    from services.core.payloads import QuarantineReason
    from services.core.settings import get_settings
    from services.ingest.quarantine.replay import replay_quarantine

    unknown = sorted(set(reason or ()) - set(QuarantineReason))
    if unknown:
        known = ", ".join(QuarantineReason)
        raise fail(f"unknown reason {', '.join(unknown)}; reasons: {known}")
    try:
        settings = get_settings()
        url = settings.database_url.get_secret_value()
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            report = replay_quarantine(
                conn,
                max_future_skew=timedelta(seconds=settings.ingest_max_future_skew_s),
                late_data_days=settings.ingest_late_data_days,
                reasons=reason,
                device=device,
                limit=limit,
            )
    except psycopg.Error as exc:
        raise fail(exc) from exc
    console.print(escape(report.line()))


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
    from services.ingest.service import WORKER_DIED_EXIT, IngestService, tune_collector

    _setup_logging(verbose)
    settings = get_settings()
    if client_id is not None:
        settings = settings.with_ingest_client_id(client_id)  # validated as the setting
    migrate(settings.database_url.get_secret_value())
    service = IngestService(settings)
    tune_collector()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service.start()
    source = (
        f"the NATS cluster {settings.nats.urls}"
        if settings.broker == "nats"
        else f"{settings.mqtt_host}:{settings.mqtt_port}"
    )
    logging.getLogger("fieldtrack.ingest").info(
        "ingest %s running against %s", settings.ingest_client_id, source
    )
    # A bare wait() would not wake for the signal handler; a dead worker thread stops it too.
    while not stop.wait(0.5) and not service.failed.is_set():
        pass
    service.stop()
    totals = service.totals
    logging.getLogger("fieldtrack.ingest").info(
        "stopped: %d messages, %d usage rows, %d duplicates absorbed, quarantined %s",
        totals.messages,
        totals.usage_rows,
        totals.usage_duplicates,
        dict(totals.quarantined),
    )
    if service.failed.is_set():
        # Non-zero, for the supervisor to restart ingest; the broker redelivers what it held.
        logging.getLogger("fieldtrack.ingest").error("exiting with status %d", WORKER_DIED_EXIT)
        raise typer.Exit(code=WORKER_DIED_EXIT)


@alerts_app.command("run")
def alerts_run(
    verbose: bool = False,
    delay: Annotated[
        float,
        typer.Option(min=0, max=3600, help="seconds to wait before the first evaluation"),
    ] = 0,
) -> None:
    """Evaluate every alert rule and deliver notifications, every
    FIELDTRACK_ALERTS__EVAL_INTERVAL_S, until SIGTERM or Ctrl-C."""
    from prometheus_client import start_http_server

    from services.alerts.runner import run
    from services.core.migrate import migrate
    from services.core.settings import get_settings

    _setup_logging(verbose)
    if not verbose:  # a line per scrape of ingest's metrics, every evaluation, says nothing
        logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = get_settings()
    migrate(settings.database_url.get_secret_value())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    alerts = settings.alerts
    if alerts.metrics_port:
        try:
            start_http_server(alerts.metrics_port, alerts.metrics_host)
        except OSError as exc:
            logging.getLogger("fieldtrack.alerts").error(  # noqa: TRY400 - the cause is exc
                "metrics endpoint not started on %s:%s: %s",
                alerts.metrics_host,
                alerts.metrics_port,
                exc,
            )
    logging.getLogger("fieldtrack.alerts").info(
        "alerts running, every %s s", alerts.eval_interval_s
    )
    if stop.wait(delay):
        return
    run(settings, stop)


@alerts_app.command("evaluate")
def alerts_evaluate() -> None:
    """One evaluation and one delivery pass, now; prints what changed."""
    from datetime import UTC, datetime

    import psycopg

    from services.alerts.engine import evaluate
    from services.alerts.notify import deliver_due
    from services.core.settings import get_settings

    settings = get_settings()
    try:
        with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
            now = datetime.now(UTC)
            result = evaluate(conn, settings, now)
            sent = deliver_due(conn, settings.alerts)
    except psycopg.Error as exc:
        raise fail(exc) from exc
    if result.skipped:
        console.print("another `alerts run` is evaluating now; nothing decided here")
    console.print(
        f"{result.fired} fired, {result.resolved} resolved, {result.open} open; notifications: "
        f"{sent.sent} sent, {sent.failed} to retry, {sent.dead} dead"
    )


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="overrides FIELDTRACK_API_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="overrides FIELDTRACK_API_PORT")] = None,
) -> None:
    """Serve the REST API and the dashboards."""
    import uvicorn

    from services.api.app import create_app
    from services.core.settings import get_settings

    settings = get_settings()
    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level="info",
    )


# --- sim backfill ---------------------------------------------------------------
# The simulator's other commands are in device_sim/cli.py. This one loads the generated
# history through ingest's history importer, which the simulator does not import: the
# command line, above both, hands the importer to the simulator as its sink.


@sim_app.command("backfill")
def sim_backfill(
    scenario: ScenarioOpt = "demo",
    days: Annotated[
        float | None, typer.Option(min=0.001, help="history length; default the scenario's")
    ] = None,
    gap_hours: Annotated[float, typer.Option(min=0, help="end this many hours before now")] = 0.0,
    seed: Annotated[
        bool, typer.Option(help="load the scenario's registry first (no broker identities)")
    ] = True,
    truth: TruthOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Generate history and load it through the bulk history importer (no MQTT): fast.
    With --resume it fills the time from where the truth file's timeline ends (an earlier
    backfill or live run) to --gap-hours before now, continuing every device's numbering."""
    import psycopg

    from device_sim import runner, scenario as scenario_mod
    from device_sim.generator import Generator
    from services.core.settings import get_settings
    from services.ingest.history import HistoryImporter

    try:
        settings = get_settings()
        path = scenario_path(scenario)
        loaded = scenario_mod.load(path)
        now = datetime.now(UTC)
        truth_file = truth_path(loaded.name, truth)
        timeline = resume_timeline(loaded, truth_file) if resume else None
        if seed:
            seed_scenario(scenario, with_broker=False, end=now)
    except (OSError, psycopg.Error) as exc:
        raise fail(exc) from exc
    end = now - timedelta(hours=gap_hours)
    if timeline:
        if timeline.end >= end:
            err_console.print(f"nothing to backfill: {truth_file} reaches {timeline.end}")
            return
        generator = Generator(
            loaded,
            timeline.end,
            end,
            origin=timeline.origin,
            anchor=timeline.anchor,
            inject_late=False,
        )
    else:
        # The scenario's dates count back from today, as `sim seed` does: a live run that
        # resumes this history later keeps the same anchor.
        generator = Generator(
            loaded,
            end - timedelta(days=days or loaded.days),
            end,
            anchor=now.date(),
            inject_late=False,
        )
    try:
        with (
            progress_bar() as bar,
            psycopg.connect(settings.database_url.get_secret_value()) as conn,
        ):
            task = bar.add_task("backfill", total=None, rate=0.0)

            def progress(sent: int) -> None:
                elapsed = bar.tasks[task].elapsed or 0.0
                bar.update(task, completed=sent, rate=sent / elapsed if elapsed else 0.0)

            importer = HistoryImporter(conn)
            runner.backfill(generator, importer, progress)
            report = importer.finish()
    except psycopg.Error as exc:
        raise fail(exc) from exc
    generator.write_truth(truth_file)
    err_console.print(
        f"backfilled {report.messages:,} messages: {report.usage_rows:,} usage rows, "
        f"{report.metric_rows:,} metric rows, {report.duplicates:,} duplicates absorbed, "
        f"quarantined {report.quarantined}; truth in {truth_file}"
    )


# --- demo -------------------------------------------------------------------------


@app.command()
def demo(
    speed: Annotated[float, typer.Option(min=1, help="catch-up speed of the live fleet")] = 60,
    history_days: Annotated[float, typer.Option(min=0, help="days of history to backfill")] = 14,
) -> None:
    """Seed the demo, backfill its history, then run ingest, API and the live fleet.
    Ctrl-C stops them all; the local services keep running."""
    from services.core.settings import get_settings

    settings = get_settings()
    console.print("[bold]seeding the demo[/] (2 customers, 3 projects, 50 devices)")
    creds, count = seed_scenario("demo")
    console.print(f"  • {count} devices provisioned, credentials in {creds}")
    first_admin = _first_admin(settings)
    exe = [sys.executable, "-m", "services"]
    logs = state_dir() / "demo"
    logs.mkdir(parents=True, exist_ok=True)
    # History up to two hours ago; the live fleet replays those two hours at --speed and
    # then keeps real time, so the dashboards have both a past and a pulse. The live fleet
    # resumes the backfill's timeline (the truth file in .state/sim): every device continues
    # its boot counter and sequence numbers, so ingest counts nothing missing.
    catch_up = 2.0
    live = ["sim", "run", "--scenario", "demo", "--credentials", str(creds), "--speed", str(speed)]
    live += _demo_history(settings, exe, history_days, catch_up)
    # Each in its own session: Ctrl-C reaches only this process, which stops them in order.
    children: dict[str, subprocess.Popen[bytes]] = {}
    # The evaluator starts once the live fleet has caught up with real time: judged during the
    # catch-up, every project would look silent (its history ends two hours ago).
    evaluate_from = f"{catch_up * 3600 / speed + DEMO_ALERTS_GRACE_S:.0f}"
    processes = (
        ("ingest", ["ingest"]),
        ("api", ["api"]),
        ("alerts", ["alerts", "run", "--delay", evaluate_from]),
    )
    for name, args in (*processes, ("simulator", live)):
        if name == "simulator":
            # Ingest subscribed first: it receives the devices' births live, not as the
            # broker's retained copies later.
            _wait_for_ingest(settings, children["ingest"])
        with (logs / f"{name}.log").open("ab") as log:
            children[name] = subprocess.Popen(
                [*exe, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
    url = f"http://{settings.api_host}:{settings.api_port}"
    console.print(
        f"\n[bold green]fieldtrack demo is running[/]\n"
        f"  dashboards  {url}/\n  API docs    {url}/docs\n"
        f"  metrics     http://{settings.ingest_metrics_host}:{settings.ingest_metrics_port}/metrics\n"
        f"  alerts      {url}/dashboards/alerts (the depot's site goes quiet a few minutes in)\n"
        f"  logs        {logs}/{{ingest,api,alerts,simulator}}.log\n"
        "Ctrl-C stops the demo (the local services keep running; `make down` stops them)."
    )
    if first_admin:
        console.print(
            f"\n[bold]first admin created[/] — log in at {url}/login as "
            f"[bold]{first_admin[0]}[/] with password [bold]{escape(first_admin[1])}[/]\n"
            "  shown once: only a hash is stored (`fieldtrack users passwd admin` sets a new one)\n"
            f"  CLI: `fieldtrack login --url {url}`; "
            "more users: `fieldtrack users add NAME --role pm`"
        )
    else:
        console.print(
            "\nlog in with your account (`fieldtrack users add NAME --role admin` adds one; "
            "`fieldtrack users passwd admin` resets the first admin's password)"
        )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    failed = None
    while not stop.wait(1.0):
        failed = next((n for n, p in children.items() if p.poll() is not None), None)
        if failed:
            err_console.print(f"[bold red]{failed} exited[/]; see {logs / (failed + '.log')}")
            break
    # The fleet first (it waits for the broker's acknowledgements and writes its truth), then,
    # once ingest has had time to store what the broker holds for it, ingest and the API:
    # `fieldtrack sim verify` right after finds everything the fleet sent.
    _stop_children({"simulator": children.pop("simulator")}, timeout=90)
    if not failed:
        time.sleep(DEMO_DRAIN_S)
    _stop_children(children, timeout=30)
    console.print(
        "demo stopped; `fieldtrack sim verify --scenario demo` checks the database against "
        "what the fleet generated"
    )
    if failed:
        raise typer.Exit(code=1)


def _demo_history(
    settings: Settings, exe: list[str], history_days: float, catch_up: float
) -> list[str]:
    """Backfill the demo's history (or, if loaded before, the time since the last run) and
    return how the live fleet starts: resuming that timeline, or afresh."""
    backfill = [*exe, "sim", "backfill", "--scenario", "demo", "--no-seed"]
    backfill += ["--gap-hours", str(catch_up)]
    if not history_days:
        return ["--catch-up-hours", str(catch_up)]
    if not _has_history(settings, "Smart Lockers EU"):
        console.print(f"[bold]backfilling {history_days:g} days of history[/]")
        _run_or_fail([*backfill, "--days", str(history_days)], "backfill")
        return ["--resume"]
    if truth_path("demo", None).exists():
        console.print("  • history already loaded; filling the time since the last run")
        _run_or_fail([*backfill, "--resume"], "backfill")
        return ["--resume"]
    console.print(
        "  • history already loaded, but its timeline (.state/sim/demo.truth.json) is gone: "
        "the live fleet starts afresh (delete .state to start afresh)"
    )
    return ["--catch-up-hours", str(catch_up)]


def _stop_children(children: dict[str, subprocess.Popen[bytes]], timeout: float) -> None:
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name, proc in children.items():
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            err_console.print(f"{name} did not stop in {timeout:g}s and was killed")


def _wait_for_ingest(settings: Settings, ingest: subprocess.Popen[bytes]) -> None:
    """Until ingest's /health says it is connected to the broker (it subscribes as it
    connects), at most DEMO_INGEST_WAIT_S; without a metrics port, go on at once."""
    import httpx

    if not settings.ingest_metrics_port:
        return
    host = settings.ingest_metrics_host
    host = "127.0.0.1" if host in {"", "0.0.0.0"} else host  # noqa: S104 - listening on all
    deadline = time.monotonic() + DEMO_INGEST_WAIT_S
    while time.monotonic() < deadline and ingest.poll() is None:
        try:
            url = f"http://{host}:{settings.ingest_metrics_port}/health"
            if httpx.get(url, timeout=1).json().get("broker") == "connected":
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)


def _run_or_fail(command: list[str], what: str) -> None:
    if subprocess.run(command, check=False).returncode != 0:
        raise fail(f"{what} failed; see the output above")


def _first_admin(settings: Settings) -> tuple[str, str] | None:
    import psycopg

    from services.accounts.cli import ensure_first_admin

    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        return ensure_first_admin(conn)


def _has_history(settings: Settings, project: str) -> bool:
    """Whether the demo's history was loaded by an earlier run (then a rerun starts at once)."""
    import psycopg

    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        row = conn.execute(
            """SELECT EXISTS (SELECT 1 FROM device_hourly h JOIN projects p ON p.id = h.project_id
                              WHERE p.name = %s AND h.hour < now() - interval '1 day')""",
            (project,),
        ).fetchone()
    return bool(row and row[0])


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
