"""`fieldtrack sim …`: seed a scenario, run its fleet (live, accelerated, load), export history
files. Every mode writes the ground truth of what it generated, in the state folder
(.state/sim/<scenario>.truth.json unless --truth says otherwise), never beside the scenario.
`--resume` continues the timeline a truth file records (`sim backfill`, then `sim run`): the
devices pick up their boot counters and sequence numbers where the earlier run left them.

`sim backfill` is added to this app by services/cli.py: it loads the history through ingest's
history importer, a layer the simulator does not import (docs/architecture.md)."""

from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.core.console import command_group, err_console, fail
from services.core.errors import FieldtrackError
from services.core.paths import state_dir

if TYPE_CHECKING:
    from device_sim.generator import Generator, Timeline
    from device_sim.scenario import Scenario

sim_app = command_group("Simulated device fleets.")
# The shipped scenarios are package data (device_sim/scenarios), found in any install.
SHIPPED_SCENARIOS = resources.files("device_sim") / "scenarios"
TRUTH_EVERY_S = 10.0  # how often a running fleet rewrites its ground truth

ScenarioOpt = Annotated[
    str,
    typer.Option("--scenario", help="a shipped scenario (demo, portfolio, load) or a YAML path"),
]
CredentialsOpt = Annotated[
    Path | None, typer.Option(help="CSV from `sim seed`; default .state/sim/<scenario>.devices.csv")
]
TruthOpt = Annotated[
    Path | None, typer.Option(help="ground-truth JSON; default .state/sim/<scenario>.truth.json")
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="continue the timeline in the truth file (after `sim backfill` or an earlier "
        "run): every device continues its boot counter and sequence numbers",
    ),
]


def scenario_path(name: str) -> Traversable:
    """A shipped scenario by name (demo, portfolio, load), else *name* as a YAML path."""
    shipped = SHIPPED_SCENARIOS / f"{name}.yaml"
    return shipped if shipped.is_file() else Path(name)


def default_credentials(scenario_name: str) -> Path:
    return state_dir() / "sim" / f"{scenario_name}.devices.csv"


def truth_path(scenario_name: str, given: Path | None) -> Path:
    """The ground-truth file: *given*, or the scenario's in the state folder (never in the
    source tree, where the shipped scenarios live)."""
    return given or state_dir() / "sim" / f"{scenario_name}.truth.json"


def resume_timeline(loaded: Scenario, truth: Path) -> Timeline:
    """The timeline an earlier run of *loaded* recorded in *truth*, to continue it."""
    import json

    from device_sim.generator import Timeline

    try:
        body = json.loads(truth.read_text())
        return Timeline.from_truth(body, loaded)
    except OSError as exc:
        raise FieldtrackError(f"nothing to resume: cannot read {truth} ({exc.strerror})") from exc
    except ValueError as exc:
        raise FieldtrackError(f"cannot resume from {truth}: {exc}") from exc


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>9,.0f} msg/s"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )


def seed_scenario(
    name: str, out: Path | None = None, *, with_broker: bool = True, end: datetime | None = None
) -> tuple[Path, int]:
    """Load a scenario into the registry (and broker); write credentials; return (csv, count)."""
    import psycopg

    from device_sim import scenario as scenario_mod
    from device_sim.seed import seed, write_credentials
    from services.core.identities import open_identities
    from services.core.migrate import migrate
    from services.core.settings import get_settings

    settings = get_settings()
    loaded = scenario_mod.load(scenario_path(name))
    out = out or default_credentials(loaded.name)
    migrate(settings.database_url.get_secret_value())
    day = (end or datetime.now(UTC)).date()
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        if with_broker:
            with open_identities(settings) as admin:
                credentials = seed(conn, admin, loaded, day)
        else:
            credentials = seed(conn, None, loaded, day)
    if with_broker:  # without broker identities the passwords mean nothing
        write_credentials(out, credentials)
    return out, len(credentials)


@sim_app.command("seed")
def sim_seed(
    scenario: ScenarioOpt = "demo",
    out: Annotated[Path | None, typer.Option(help="credentials CSV (mode 0600)")] = None,
    broker: Annotated[
        bool, typer.Option(help="also create the devices' MQTT identities (not needed to backfill)")
    ] = True,
) -> None:
    """Load a scenario into the registry and provision its devices."""
    try:
        path, count = seed_scenario(scenario, out, with_broker=broker)
    except OSError as exc:
        raise fail(exc) from exc
    err_console.print(f"provisioned {count} devices; credentials in {path}")


def _fleet_generator(
    loaded: Scenario,
    timeline: Timeline | None,
    truth_file: Path,
    *,
    mode: str,
    catch_up_hours: float,
    duration_s: float | None,
    days: float | None,
    only: set[str],
) -> Generator:
    """The span a fleet run walks: a load run the last --days; a paced run from where the
    resumed timeline ends (or --catch-up-hours ago) until --duration from now or a year."""
    from device_sim.generator import Generator

    now = datetime.now(UTC)
    if mode == "load":
        start, end = now - timedelta(days=days or loaded.days), now
    else:
        start = timeline.end if timeline else now - timedelta(hours=catch_up_hours)
        end = now + timedelta(seconds=duration_s) if duration_s else now + timedelta(days=365)
    if timeline:
        if start > now:
            raise fail(f"{truth_file} ends in the future ({start})")
        err_console.print(
            f"resuming the timeline of {truth_file} from {start:%Y-%m-%d %H:%M:%S} UTC"
        )
    return Generator(
        loaded,
        start,
        end,
        origin=timeline.origin if timeline else None,
        anchor=timeline.anchor if timeline else now.date(),
        only=only,
    )


def _fleet_run(
    scenario: str,
    credentials: Path | None,
    truth: Path | None,
    *,
    mode: str,
    speed: float,
    catch_up_hours: float,
    duration_s: float | None,
    rate: float | None,
    days: float | None,
    resume: bool = False,
) -> None:
    from device_sim import runner, scenario as scenario_mod
    from device_sim.generator import firmware_of
    from device_sim.seed import read_credentials
    from device_sim.swarm import Swarm, SwarmError
    from services.core.settings import get_settings

    try:
        settings = get_settings()
        path = scenario_path(scenario)
        loaded = scenario_mod.load(path)
        creds = read_credentials(credentials or default_credentials(loaded.name))
        truth_file = truth_path(loaded.name, truth)
        timeline = resume_timeline(loaded, truth_file) if resume else None
    except OSError as exc:
        raise fail(exc) from exc
    generator = _fleet_generator(
        loaded,
        timeline,
        truth_file,
        mode=mode,
        catch_up_hours=catch_up_hours,
        duration_s=duration_s,
        days=days,
        only={c.serial for c in creds},
    )
    firmware = {d.serial: firmware_of(loaded, d.project, d.serial) for d in generator.devices}
    swarm = Swarm(
        settings.broker_nodes(),
        [(c.serial, c.password) for c in creds],
        firmware=firmware,
        client_id_of=settings.device_client_id,
    )
    stop = _stop_on_signals()
    if duration_s:
        threading.Timer(duration_s, stop.set).start()
    try:
        connected = swarm.start()
    except SwarmError as exc:
        raise fail(exc) from exc
    nodes = swarm.stats.nodes
    spread = ", ".join(f"{n} on {node}" for node, n in nodes.items())
    where = f" ({spread})" if len(nodes) > 1 else ""
    err_console.print(f"{connected} of {len(creds)} devices connected{where}")
    if connected == 0:
        swarm.stop()
        raise fail("no device could connect; re-run `fieldtrack sim seed`")
    with progress_bar() as bar:
        task = bar.add_task(mode, total=None, rate=0.0)

        written = [time.monotonic()]

        def progress(sent: int) -> None:
            elapsed = bar.tasks[task].elapsed or 0.0
            bar.update(task, completed=sent, rate=sent / elapsed if elapsed else 0.0)
            # Kept current while the fleet runs: a run that is killed leaves its truth (and
            # the point a --resume continues from) at most this far behind.
            if time.monotonic() - written[0] >= TRUTH_EVERY_S:
                generator.write_truth(truth_file)
                written[0] = time.monotonic()

        if mode == "load":
            counts = runner.run_load(generator, swarm, rate=rate, stop=stop, progress=progress)
        else:
            counts = runner.run_paced(generator, swarm, speed=speed, stop=stop, progress=progress)
    swarm.wait_acked(60)
    stats = swarm.stats
    swarm.stop()
    generator.write_truth(truth_file)
    err_console.print(
        f"done in {counts.elapsed_s:.1f}s: sent {stats.sent}, acknowledged {stats.acked}, "
        f"failed {stats.failed_total} {dict(stats.failed) or ''}, refused logins "
        f"{sum(stats.refused.values())} {dict(stats.refused) or ''}, outstanding "
        f"{stats.outstanding}; {counts.rate:,.0f} msg/s; truth in {truth_file}"
    )


@sim_app.command("run")
def sim_run(
    scenario: ScenarioOpt = "demo",
    credentials: CredentialsOpt = None,
    speed: Annotated[float, typer.Option(min=1, help="simulated seconds per real second")] = 1.0,
    catch_up_hours: Annotated[
        float, typer.Option(min=0, help="start this far in the past and catch up at --speed")
    ] = 0.0,
    duration: Annotated[
        float | None, typer.Option(min=1, help="stop after this many seconds")
    ] = None,
    truth: TruthOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Run the fleet live (or accelerated, catching up to now) until Ctrl-C or --duration.
    With --resume it starts where the truth file's timeline ends (instead of
    --catch-up-hours ago) and catches up from there."""
    _fleet_run(
        scenario,
        credentials,
        truth,
        mode="paced",
        speed=speed,
        catch_up_hours=catch_up_hours,
        duration_s=duration,
        rate=None,
        days=None,
        resume=resume,
    )


@sim_app.command("load")
def sim_load(
    scenario: ScenarioOpt = "load",
    credentials: CredentialsOpt = None,
    rate: Annotated[
        float | None, typer.Option(min=1, help="target msgs/s; default: as fast as possible")
    ] = None,
    days: Annotated[
        float | None, typer.Option(min=0.001, help="history to send; default the scenario's")
    ] = None,
    truth: TruthOpt = None,
) -> None:
    """Send the scenario's last --days as fast as the broker takes it (benchmarks)."""
    _fleet_run(
        scenario,
        credentials,
        truth,
        mode="load",
        speed=1.0,
        catch_up_hours=0.0,
        duration_s=None,
        rate=rate,
        days=days,
    )


@sim_app.command("export")
def sim_export(
    out: Annotated[Path, typer.Option(help="NDJSON file for `fieldtrack import history`")],
    scenario: ScenarioOpt = "demo",
    days: Annotated[float | None, typer.Option(min=0.001, help="history length")] = None,
    truth: TruthOpt = None,
) -> None:
    """Write generated history as NDJSON, the format `fieldtrack import history` loads."""
    from device_sim import runner, scenario as scenario_mod
    from device_sim.generator import Generator

    loaded = scenario_mod.load(scenario_path(scenario))
    now = datetime.now(UTC)
    generator = Generator(loaded, now - timedelta(days=days or loaded.days), now, inject_late=False)
    written = runner.export_ndjson(generator, out)
    generator.write_truth(truth_path(loaded.name, truth))
    err_console.print(f"wrote {written:,} messages to {out}")


@sim_app.command("verify")
def sim_verify(scenario: ScenarioOpt = "demo", truth: TruthOpt = None) -> None:
    """Check that the database holds exactly what the last run of the scenario generated."""
    import json

    import psycopg

    from device_sim import scenario as scenario_mod
    from device_sim.verify import mismatches
    from services.core.settings import get_settings

    try:
        path = truth_path(scenario_mod.load(scenario_path(scenario)).name, truth)
        expected = json.loads(path.read_text())
        with psycopg.connect(get_settings().database_url.get_secret_value()) as conn:
            problems = mismatches(expected, conn)
    except (OSError, ValueError, psycopg.Error) as exc:
        raise fail(exc) from exc
    if problems:
        for problem in problems:
            err_console.print(f"[red]✗[/] {escape(problem)}")
        raise typer.Exit(code=1)
    projects = expected["projects"]
    err_console.print(f"[green]✓[/] {len(projects)} projects match the ground truth in {path}")
