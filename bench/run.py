"""`make bench`: fieldtrack's ingest measured against this machine's own limits, in one run.

    python -m bench.run [--quick] [--only ceilings|ingest|naive|queries ...] [--out DIR]

Starts its own TimescaleDB and Mosquitto in .state/bench (ports 54349 / 18850, or
FIELDTRACK_LOCAL_PG_PORT / FIELDTRACK_LOCAL_MQTT_PORT), measures the ceilings, fieldtrack end
to end and the naive reference, profiles ingest where a target is missed, runs the query
benchmark (bench/queries.py) when it is present, writes report.json and report.md to
.state/bench/report/ and prints the table. Stops the services it started.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import psutil
import typer

from bench import PROJECT_ROOT, ceilings, profile, report as report_mod
from bench.env import BenchData, bench_data, bench_services, start_services
from bench.load import Load
from bench.phases import IngestBench, Phase
from services.core.console import console
from services.core.settings import Settings
from services.infra.local import LocalServices

PARTS = ("ceilings", "ingest", "naive", "queries")


@dataclass(frozen=True)
class Sizes:
    devices: int
    broker_messages: int
    publisher_messages: int
    copy_rows: int
    single_messages: int
    batched_messages: int
    swarm_share: float  # of those, in the swarm's phases (it tops out at 5-7k msg/s here)
    readings: int  # per batched message
    latency_s: float
    naive_window_s: float
    profile_s: float
    query_sizes: tuple[int, ...]


FULL = Sizes(
    devices=100,
    broker_messages=100_000,
    publisher_messages=60_000,
    copy_rows=400_000,
    single_messages=100_000,
    batched_messages=10_000,
    swarm_share=0.5,
    readings=100,
    latency_s=20,
    naive_window_s=15,
    profile_s=8,
    query_sizes=(10_000_000, 50_000_000),
)
QUICK = Sizes(
    devices=10,
    broker_messages=4_000,
    publisher_messages=2_000,
    copy_rows=10_000,
    single_messages=2_000,
    batched_messages=100,
    swarm_share=1.0,
    readings=20,
    latency_s=1,
    naive_window_s=1,
    profile_s=1,
    query_sizes=(100_000,),
)


def _say(message: str) -> None:
    console.print(f"[dim]{datetime.now().strftime('%H:%M:%S')}[/] {message}")


def _meta(parts: list[str], quick: bool) -> dict[str, Any]:
    memory = psutil.virtual_memory().total / 2**30
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {memory:.0f} GiB RAM, {platform.platform(terse=True)}",
        "python": platform.python_version(),
        # the machine is shared: how busy it was says how far to trust absolute figures
        "load_average_at_start": round(os.getloadavg()[0], 1),
        "mode": "quick" if quick else "full",
        "parts": parts,
    }


def _ceilings(data: BenchData, load: Load, sizes: Sizes, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _say("ceiling: Mosquitto with its C clients, QoS 1 and QoS 0")
    out["broker_qos1"] = ceilings.broker_ceiling(data, sizes.broker_messages, 1, work)
    out["broker_qos0"] = ceilings.broker_ceiling(data, sizes.broker_messages, 0, work)
    _say("ceiling: the simulator's publisher into a C subscriber")
    out["publisher"] = ceilings.publisher_ceiling(data, load, sizes.publisher_messages)
    _say("ceiling: psql COPY into usage_events")
    out["postgres_copy"] = ceilings.copy_ceiling(data, sizes.copy_rows, sizes.readings, work)
    return out


def _messages(messages: int, sizes: Sizes, mode: str) -> int:
    """A phase's messages: fewer when the swarm publishes live, the slowest load, so its
    phases take about as long as the others."""
    return int(messages * sizes.swarm_share) if mode == "live" else messages


def _ingest(bench: IngestBench, sizes: Sizes) -> dict[str, Phase]:
    phases: dict[str, Phase] = {}
    for procs in (1, 2):
        for mode in ("live", "live_c", "backlog"):
            name = f"single_{mode}_{procs}"
            _say(f"fieldtrack: {name}")
            messages = _messages(sizes.single_messages, sizes, mode)
            phases[name] = bench.throughput(name, messages, 1, procs, mode=mode)
            _say(f"  {phases[name].msgs_per_s:,} msg/s, lost {phases[name].lost}")
        for mode in ("live", "live_c"):
            name = f"batched_{mode}_{procs}"
            _say(f"fieldtrack: {name}")
            messages = _messages(sizes.batched_messages, sizes, mode)
            phases[name] = bench.throughput(name, messages, sizes.readings, procs, mode=mode)
            _say(f"  {phases[name].rows_per_s:,} rows/s, lost {phases[name].lost}")
    # At half the maximum rate, with the load generator and processes of the best end-to-end
    # phase. That maximum is measured again just before: this machine's speed drifts by 2x
    # within minutes, and half of a rate it no longer has is a queue that only grows.
    best = max(
        (p for n, p in phases.items() if n.startswith("single_live")), key=lambda p: p.msgs_per_s
    )
    _say(f"fieldtrack: the maximum rate again, as {best.name}")
    again = bench.throughput(
        "latency_max", sizes.single_messages // 2, 1, best.processes, mode=best.mode
    )
    phases["latency_max"] = again
    rate = again.msgs_per_s / 2
    _say(f"  {again.msgs_per_s:,} msg/s (earlier {best.msgs_per_s:,})")
    _say(f"fieldtrack: publish-to-commit latency at {rate:,.0f} msg/s (half of that)")
    phases["latency"] = bench.latency(
        rate, sizes.latency_s, processes=best.processes, c_load=best.mode == "live_c"
    )
    phases["latency"].extra["of_phase"] = best.name
    phases["latency"].extra["max_rate_just_before"] = again.msgs_per_s
    return phases


def _profile(
    bench: IngestBench, sizes: Sizes, work: Path, rate: float, readings: int
) -> dict[str, Any]:
    """Profile one ingest process draining a backlog of *readings*-reading messages."""
    load = "single-reading" if readings == 1 else f"{readings}-reading"
    _say(f"profiling ingest (py-spy) on a {load} backlog")
    messages = max(200, int(rate * (sizes.profile_s + 4)))
    result: dict[str, Any] = {"load": f"one ingest process draining a {load} backlog"}

    def attach(pid: int) -> None:
        out = profile.record(pid, sizes.profile_s, work / "ingest-profile.txt")
        result.update(profile.summarise(out))

    bench.throughput("profile", messages, readings, 1, mode="backlog", on_drain=attach)
    return result


def _queries(out_dir: Path, sizes: Sizes) -> dict[str, Any]:
    if importlib.util.find_spec("bench.queries") is None:
        _say("query benchmark not present")
        return {"status": "query benchmark not present"}
    _say("running the query benchmark (bench/queries.py)")
    try:
        module = importlib.import_module("bench.queries")
        found: dict[str, Any] = module.run_query_bench(out_dir, sizes=sizes.query_sizes)
    except Exception as exc:  # the report still says what happened
        _say(f"[red]query benchmark failed:[/] {exc}")
        return {"status": f"failed: {exc!r}", "traceback": traceback.format_exc()}
    return {"status": "ran", **found}


def run_bench(
    services: LocalServices,
    settings: Settings,
    *,
    parts: list[str],
    quick: bool,
    out_dir: Path,
    say: Callable[[str], None] = _say,
) -> dict[str, Any]:
    """Run the chosen parts against running *services*; write and return the report."""
    sizes = QUICK if quick else FULL
    started = time.monotonic()
    report: dict[str, Any] = {"meta": _meta(parts, quick), "ceilings": {}, "phases": {}}
    work = out_dir / "work"  # scratch files and process logs of the last run
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if {"ceilings", "ingest", "naive"} & set(parts):
        with (
            bench_data(services, settings, sizes.devices, say) as data,
            Load(data.settings, data.devices, data.probe) as load,
        ):
            bench = IngestBench(data, load, work / "logs", say)
            if "ceilings" in parts:
                report["ceilings"] = _ceilings(data, load, sizes, work)
            if "ingest" in parts:
                phases = _ingest(bench, sizes)
                report["phases"].update({k: p.as_dict() for k, p in phases.items()})
            if "naive" in parts:
                say("naive reference under the same load")
                for c_load in (False, True):
                    naive = bench.naive(sizes.single_messages, sizes.naive_window_s, c_load=c_load)
                    report["phases"][naive.name] = naive.as_dict()
            report["targets"] = report_mod.targets(report)
            failed = [t["target"] for t in report["targets"] if t["pass"] is False]
            if "ingest" in parts and failed:
                # the batched load if its target failed, else the single-reading one
                batched = any("batched" in target for target in failed)
                name = "batched_live_1" if batched else "single_backlog_1"
                report["profile"] = _profile(
                    bench,
                    sizes,
                    work,
                    report["phases"][name]["msgs_per_s"],
                    sizes.readings if batched else 1,
                )
    report["checks"] = [
        f"{name}: {p['stored_messages']:,} of {p['acked']:,} stored, lost {p['lost']}"
        for name, p in report["phases"].items()
        if not name.startswith("naive")
    ]
    if "queries" in parts:
        os.environ["FIELDTRACK_LOCAL_PG_PORT"] = str(services.pg_port)
        os.environ["FIELDTRACK_LOCAL_MQTT_PORT"] = str(services.mqtt_port)
        report["queries"] = _queries(out_dir, sizes)
    report["targets"] = report_mod.targets(report)
    report["meta"]["seconds"] = round(time.monotonic() - started, 1)
    report["meta"]["load_average_at_end"] = round(os.getloadavg()[0], 1)
    report_mod.write(report, out_dir)
    if not quick and set(parts) == set(PARTS):
        # a full run is what docs/performance.md states
        report_mod.write_performance_doc(report, PROJECT_ROOT / "docs" / "performance.md")
    return report


def main(
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help=f"run only these parts (repeatable): {', '.join(PARTS)}"),
    ] = None,
    quick: Annotated[bool, typer.Option(help="a smoke run: tiny loads, about a minute")] = False,
    out: Annotated[
        Path | None, typer.Option(help="report folder; default .state/bench/report")
    ] = None,
    keep_services: Annotated[
        bool, typer.Option(help="leave the bench's TimescaleDB and Mosquitto running")
    ] = False,
) -> None:
    """Measure ingest against the broker's and PostgreSQL's own ceilings and a naive
    consumer, in one run on this machine; write report.json and report.md."""
    parts = list(only or PARTS)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise typer.BadParameter(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    services = bench_services()
    out_dir = out or services.root / "report"
    _say(
        f"bench services in {services.root} (PostgreSQL :{services.pg_port}, "
        f"Mosquitto :{services.mqtt_port})"
    )
    try:
        settings = start_services(services, _say)
        result = run_bench(services, settings, parts=parts, quick=quick, out_dir=out_dir)
    finally:
        if not keep_services:
            services.down(lambda message: _say(f"[infra] {message}"))
    report_mod.print_table(result, console)
    console.print(f"report: {out_dir / 'report.md'} and report.json")
    if result.get("queries", {}).get("status") == "query benchmark not present":
        console.print("query benchmark not present")


def cli() -> None:
    typer.run(main)


if __name__ == "__main__":
    cli()
