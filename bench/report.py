"""Targets, the figures table (Markdown and terminal), report.json and report.md."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# The targets ingest and the analytics are held to.
BATCHED_SHARE_OF_COPY = 0.60
SINGLE_MSGS_PER_S = 10_000
TIMES_NAIVE = 10.0
P99_LIMIT_S = 1.0
QUERY_P95_MS = 300.0  # every analytics endpoint and window, server time, largest dataset

Row = tuple[str, str, str, str]  # measure, result, reference, ratio


def _phase(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = report.get("phases", {}).get(name)
    return found


def _best(report: dict[str, Any], names: Sequence[str], key: str) -> dict[str, Any] | None:
    phases = [p for n in names if (p := _phase(report, n))]
    return max(phases, key=lambda p: p[key]) if phases else None


def _n(value: float | None, unit: str = "") -> str:
    return "—" if value is None else f"{value:,.0f}{unit}"


def _ratio(a: float | None, b: float | None, fmt: str = "{:.2f}") -> str:
    return fmt.format(a / b) if a is not None and b else "—"


SWARM_LIVE = ("single_live_1", "single_live_2")
C_LIVE = ("single_live_c_1", "single_live_c_2")


def best_single(report: dict[str, Any]) -> dict[str, Any] | None:
    """The best end-to-end single-reading phase, with either load generator."""
    return _best(report, [*SWARM_LIVE, *C_LIVE], "msgs_per_s")


def times_naive(report: dict[str, Any]) -> list[tuple[str, float]]:
    """fieldtrack's best live rate ÷ the naive consumer's, each pair under the same load."""
    out = []
    for load, names, naive_name in (
        ("swarm", SWARM_LIVE, "naive"),
        ("mosquitto_pub", C_LIVE, "naive_c"),
    ):
        best, naive = _best(report, names, "msgs_per_s"), _phase(report, naive_name)
        if best and naive and naive["msgs_per_s"]:
            out.append((load, best["msgs_per_s"] / naive["msgs_per_s"]))
    return out


def cpu_us_per_message(phase: dict[str, Any]) -> float | None:
    """CPU time of the ingest processes per message: steadier than rates on a shared box."""
    rate = phase.get("msgs_per_s")
    return phase["cpu_percent"] * 10_000 / rate if rate else None


def best_batched(report: dict[str, Any]) -> dict[str, Any] | None:
    """The best batched phase, with either load generator."""
    return _best(
        report, [f"batched_{m}_{n}" for m in ("live", "live_c") for n in (1, 2)], "rows_per_s"
    )


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its figure, its threshold and pass / fail (None: not measured)."""
    ceilings = report.get("ceilings", {})
    copy = ceilings.get("postgres_copy", {}).get("rows_per_s")
    batched, single = best_batched(report), best_single(report)
    latency = _phase(report, "latency")
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float | None, ok: bool | None) -> None:
        out.append({"target": name, "value": value, "threshold": limit, "pass": ok})

    share = batched["rows_per_s"] / copy if batched and copy else None
    add(
        "batched ingest rows/s ≥ 60 % of raw COPY",
        share,
        BATCHED_SHARE_OF_COPY,
        None if share is None else share >= BATCHED_SHARE_OF_COPY,
    )
    rate = single["msgs_per_s"] if single else None
    add(
        "single-reading QoS 1 ≥ 10,000 msgs/s end to end",
        rate,
        SINGLE_MSGS_PER_S,
        None if rate is None else rate >= SINGLE_MSGS_PER_S,
    )
    times = max((t for _, t in times_naive(report)), default=None)
    add(
        "single-reading ≥ 10× the naive reference",
        times,
        TIMES_NAIVE,
        None if times is None else times >= TIMES_NAIVE,
    )
    p99 = latency["extra"]["p99_publish_to_commit_s"] if latency else None
    add(
        "p99 publish-to-commit < 1 s at 50 % of max rate",
        p99,
        P99_LIMIT_S,
        None if p99 is None else p99 < P99_LIMIT_S,
    )
    worst = worst_query_p95(report)
    add(
        "query p95 < 300 ms at the largest dataset, every endpoint and window",
        worst,
        QUERY_P95_MS,
        None if worst is None else worst < QUERY_P95_MS,
    )
    return out


def _query_sizes(report: dict[str, Any]) -> dict[str, Any]:
    sizes: dict[str, Any] = report.get("queries", {}).get("sizes", {})
    return sizes


def worst_query_p95(report: dict[str, Any]) -> float | None:
    """The slowest endpoint's p95 server time (ms) at the largest dataset measured."""
    sizes = _query_sizes(report)
    if not sizes:
        return None
    largest = sizes[max(sizes, key=int)]
    return max(
        (w["server_ms"]["p95"] for e in largest["endpoints"].values() for w in e.values()),
        default=None,
    )


def rows(report: dict[str, Any]) -> list[Row]:
    """The figures table: every result beside the reference it is judged against."""
    ceilings = report.get("ceilings", {})
    qos1 = ceilings.get("broker_qos1", {}).get("msgs_per_s")
    qos0 = ceilings.get("broker_qos0", {}).get("msgs_per_s")
    publisher = ceilings.get("publisher", {}).get("msgs_per_s")
    copy = ceilings.get("postgres_copy", {}).get("rows_per_s")
    naive = _phase(report, "naive")
    naive_rate = naive["msgs_per_s"] if naive else None
    out: list[Row] = []
    if qos1 or qos0:
        out.append(
            ("Broker, C clients (mosquitto_pub → mosquitto_sub), QoS 1", _n(qos1, " msg/s"), "", "")
        )
        out.append(("Broker, C clients, QoS 0", _n(qos0, " msg/s"), "", ""))
    if publisher:
        out.append(
            (
                "Simulator publisher (Python swarm) → broker → mosquitto_sub, QoS 1",
                _n(publisher, " msg/s"),
                "broker QoS 1",
                _ratio(publisher, qos1),
            )
        )
    if copy:
        out.append(("PostgreSQL COPY (psql) into usage_events", _n(copy, " rows/s"), "", ""))
    labels = {
        "single_live": "fieldtrack, 1 reading/msg, live (simulator swarm)",
        "single_live_c": "fieldtrack, 1 reading/msg, live (2 × mosquitto_pub)",
        "single_backlog": "fieldtrack, 1 reading/msg, draining a backlog",
        "batched_live": "fieldtrack, {r} readings/msg, live (simulator swarm)",
        "batched_live_c": "fieldtrack, {r} readings/msg, live (2 × mosquitto_pub)",
    }
    for key, label in labels.items():
        for procs in (1, 2):
            phase = _phase(report, f"{key}_{procs}")
            if not phase:
                continue
            text = f"{label.format(r=phase['readings'])}, {procs} ingest"
            if key.startswith("batched"):
                out.append(
                    (
                        text,
                        f"{_n(phase['rows_per_s'])} rows/s ({_n(phase['msgs_per_s'])} msg/s)",
                        "PostgreSQL COPY",
                        _ratio(phase["rows_per_s"], copy),
                    )
                )
            else:
                live = key == "single_live"
                reference = "simulator publisher" if live else "broker QoS 1"
                ref = publisher if live else qos1
                cpu = cpu_us_per_message(phase)
                out.append(
                    (
                        text,
                        f"{_n(phase['msgs_per_s'], ' msg/s')}; ingest CPU {_n(cpu)} µs/msg",
                        reference,
                        _ratio(phase["msgs_per_s"], ref),
                    )
                )
    if naive:
        out.append(
            (
                "Naive reference (INSERT + commit per message), live (swarm)",
                _n(naive_rate, " msg/s"),
                "",
                "",
            )
        )
    naive_c = _phase(report, "naive_c")
    if naive_c:
        out.append(
            (
                "Naive reference, live (2 × mosquitto_pub)",
                _n(naive_c["msgs_per_s"], " msg/s"),
                "",
                "",
            )
        )
    for load, times in times_naive(report):
        out.append(
            (
                f"fieldtrack ÷ naive (best single-reading live, {load} load)",
                f"{times:.1f}×",
                "naive, same load",
                "",
            )
        )
    latency = _phase(report, "latency")
    if latency:
        extra = latency["extra"]
        of = extra.get("of_phase", "max")
        if "max_rate_just_before" in extra:
            of = f"{extra['max_rate_just_before']:,} msg/s, {of} measured again just before"
        out.append(
            (
                f"Publish → commit at {extra['target_rate']:,} msg/s (50 % of {of}), "
                f"{latency['processes']} ingest, p50 / p99",
                f"{extra['p50_publish_to_commit_s'] * 1000:.0f} / "
                f"{extra['p99_publish_to_commit_s'] * 1000:.0f} ms",
                "1 s (p99)",
                f"{extra['within_1s']:.2%} ≤ 1 s",
            )
        )
        out.append(
            (
                "Publish → ingest receive (stored rows), p50 / p99",
                f"{extra['p50_publish_to_receive_s'] * 1000:.0f} / "
                f"{extra['p99_publish_to_receive_s'] * 1000:.0f} ms",
                "",
                "",
            )
        )
        out.append(
            (
                f"Ingest CPU / RSS at 50 % of {of}",
                f"{latency['cpu_percent']:.0f} % / {latency['rss_mib']:.0f} MiB",
                "",
                "",
            )
        )
    peak = _phase(report, "single_live_1")
    if peak:
        usage = f"{peak['cpu_percent']:.0f} % / {peak['rss_mib']:.0f} MiB"
        out.append(("Ingest CPU / RSS at max rate (1 reading/msg, 1 ingest)", usage, "", ""))
    return out


def _query_table(report: dict[str, Any]) -> list[str]:
    """Server time p50 / p95 per endpoint, dataset size and window."""
    sizes = _query_sizes(report)
    if not sizes:
        return []
    ordered = sorted(sizes, key=int)
    windows = report["queries"].get("windows_days", [])
    head = [f"{int(size) // 1_000_000} M events, {days} d" for size in ordered for days in windows]
    lines = [
        "| endpoint (server ms, p50 / p95) | " + " | ".join(head) + " |",
        "|---|" + "---:|" * len(head),
    ]
    endpoints = sizes[ordered[-1]]["endpoints"]
    for name in endpoints:
        cells = []
        for size in ordered:
            for days in windows:
                found = sizes[size]["endpoints"].get(name, {}).get(str(days))
                ms = found["server_ms"] if found else None
                cells.append(f"{ms['p50']:.0f} / {ms['p95']:.0f}" if ms else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def performance_doc(report: dict[str, Any]) -> str:
    """docs/performance.md: the figures of a full `make bench`, without dates or times (the
    history of runs belongs in the report folder and in commit notes, not in the docs)."""
    machine = report["meta"].get("machine", "").split(", Linux")[0]
    queries = report.get("queries", {})
    sizes = _query_sizes(report)
    datasets = ", ".join(
        f"{int(size):,} usage events ({sizes[size]['dataset'].get('days', '?')} days)"
        for size in sorted(sizes, key=int)
    )
    lines = [
        "# Performance",
        "",
        "What `make bench` measured on the reference machine of this project "
        f"({machine}), regenerated by every full run. Figures drift from run to run on a "
        "shared machine: read the ratios against the references measured in the same run.",
        "",
        "## Ingest",
        "",
        "| measure | result | reference (same run) | ratio |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(report)),
        "",
        "## Targets",
        "",
        "| target | measured | result |",
        "|---|---|---|",
        *(f"| {t['target']} | {_value(t)} | {_verdict(t['pass'])} |" for t in report["targets"]),
    ]
    if sizes:
        lines += [
            "",
            "## Analytics queries",
            "",
            f"Server time over {queries.get('requests')} requests after a warm-up, windows "
            f"ending {queries.get('window_end')} (so both partial edge days are read), on the "
            f"`portfolio` fleet with {datasets}; the busiest project's pages and the whole "
            "portfolio.",
            "",
            *_query_table(report),
        ]
    return "\n".join(lines) + "\n"


def _verdict(ok: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "not measured"}[ok]


def _value(target: dict[str, Any]) -> str:
    if "query" in target["target"] and target["value"] is not None:
        return f"{target['value']:.0f} ms"
    value = target["value"]
    if value is None:
        return "—"
    if "60 %" in target["target"]:
        return f"{value:.0%}"
    if "10×" in target["target"]:
        return f"{value:.1f}×"
    if "p99" in target["target"]:
        return f"{value * 1000:.0f} ms"
    return f"{value:,.0f} msg/s"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# fieldtrack ingest benchmark — {report['meta']['date']}",
        "",
        f"{report['meta']['machine']}; mode: {report['meta']['mode']}; "
        f"parts: {', '.join(report['meta']['parts'])}; took {report['meta']['seconds']:.0f} s; "
        f"1-min load average {report['meta'].get('load_average_at_start')} at the start, "
        f"{report['meta'].get('load_average_at_end')} at the end (shared machine: compare "
        "ratios, not absolute figures)",
        "",
        "| measure | result | reference (same run) | ratio |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(report)),
        "",
        "| target | measured | result |",
        "|---|---|---|",
        *(f"| {t['target']} | {_value(t)} | {_verdict(t['pass'])} |" for t in report["targets"]),
    ]
    checks = report.get("checks", [])
    if checks:
        lines += ["", "Stored = published: " + "; ".join(checks)]
    profile = report.get("profile")
    if profile:
        lines += [
            "",
            f"## Where ingest spends its time (py-spy: {profile.get('load', '')})",
            "",
            profile["summary"],
        ]
    queries = report.get("queries", {})
    lines += ["", f"Queries: {queries.get('status', 'see queries')}"]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


def write_performance_doc(report: dict[str, Any], path: Path) -> Path:
    path.write_text(performance_doc(report))
    return path


def print_table(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"fieldtrack ingest benchmark ({report['meta']['mode']})")
    for column in ("measure", "result", "reference (same run)", "ratio"):
        table.add_column(column)
    for row in rows(report):
        table.add_row(*row)
    console.print(table)
    verdicts = Table(title="targets")
    for column in ("target", "measured", "result"):
        verdicts.add_column(column)
    for target in report["targets"]:
        verdicts.add_row(target["target"], _value(target), _verdict(target["pass"]))
    console.print(verdicts)


if __name__ == "__main__":
    # Regenerate docs/performance.md from the last full run's report.json (the same figures
    # `make bench` writes there itself).
    import sys

    from bench import PROJECT_ROOT

    source = Path(sys.argv[1]) if len(sys.argv) > 1 else PROJECT_ROOT / ".state/bench/report"
    found = json.loads((source / "report.json").read_text())
    found["targets"] = targets(found)
    print(write_performance_doc(found, PROJECT_ROOT / "docs" / "performance.md"))
