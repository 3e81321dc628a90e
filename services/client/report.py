"""`fieldtrack report`: one customer's delivered features beside their measured use.

A client of the REST API like the registry commands (FIELDTRACK_API_URL, optional
FIELDTRACK_API_TOKEN): it finds the customer by name (GET /customers?q=…), takes the analytics
of each of its projects over the window (GET /projects/{id}/analytics) and prints a table per
project, or writes CSV, JSON or a self-contained HTML page a PM can print or email (rendered
from dashboards/templates/report.html: inline CSS, nothing fetched from elsewhere).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from services.accounts.roles import Audience
from services.client.commands import _api, _fail
from services.core.errors import FieldtrackError
from services.core.windows import DEFAULT_WINDOW_DAYS, MAX_WINDOW_DAYS

if TYPE_CHECKING:
    from services.client.http import FieldtrackClient

MAX_NAME = 200  # customer names are 1-200 characters
PAGE_SIZE = 500  # the API's largest page
WINDOW_RE = re.compile(r"^(\d{1,4})d$")
SUGGESTIONS = 5
# What a customer version says about the customer (the API's customer view of a customer):
# tier and lifecycle stage are the solution company's view of them.
CUSTOMER_FIELDS = ("id", "name", "industry", "created_at")

RECOMMENDATION_STYLES = {
    "iterate_invest": "bold green",
    "keep_prudently": "cyan",
    "cut_candidate": "bold red",
    "insufficient_data": "yellow",
    "too_early": "yellow",
}
CONFIDENCE_STYLES = {"high": "green", "medium": "yellow", "low": "red"}


class ReportFormat(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    HTML = "html"


class ReportError(FieldtrackError):
    """The report cannot be made as asked (e.g. no such customer)."""


@dataclass(frozen=True)
class CustomerReport:
    customer: dict[str, Any]
    since: datetime
    until: datetime
    window_days: int
    generated_at: datetime
    projects: list[dict[str, Any]]  # GET /projects/{id}/analytics, one per project
    audience: Audience = Audience.CUSTOMER
    rules: list[dict[str, Any]] = field(default_factory=list)  # GET /analytics/rules (internal)

    @property
    def internal(self) -> bool:
        return self.audience is Audience.INTERNAL

    @property
    def labels(self) -> dict[str, str]:
        """Each verdict's label, as the rule table words it."""
        return {r["recommendation"]: r["label"] for r in self.rules}

    def as_json(self) -> dict[str, Any]:
        return {
            "customer": self.customer,
            "audience": self.audience.value,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "window_days": self.window_days,
            "generated_at": self.generated_at.isoformat(),
            "projects": self.projects,
            **({"rules": self.rules} if self.internal else {}),
        }


def parse_window(text: str) -> int:
    """`30d`, `7d`, `90d` or any `Nd` → N days (1 … 400)."""
    match = WINDOW_RE.match(text.strip().lower())
    days = int(match[1]) if match else 0
    if not 1 <= days <= MAX_WINDOW_DAYS:
        raise ReportError(
            f"--window {text!r} is not a window: use a number of days like 7d, 30d or 90d "
            f"(1d to {MAX_WINDOW_DAYS}d)"
        )
    return days


# --- through the API ----------------------------------------------------------------------


def _pages(api: FieldtrackClient, path: str, params: Mapping[str, Any]) -> Iterator[Any]:
    """Every item of a paged list."""
    offset = 0
    while True:
        page = api.get(path, {**params, "limit": PAGE_SIZE, "offset": offset})
        items = page["items"]
        yield from items
        offset += len(items)
        if not items or offset >= int(page["total"]):
            return


def find_customer(api: FieldtrackClient, name: str) -> dict[str, Any]:
    """The customer called exactly `name`; if none, the one whose name differs only in case.
    None or several: a ReportError naming what there is."""
    if not name or len(name) > MAX_NAME or "\x00" in name:
        raise ReportError(f"no customer is named {name!r}")
    found = list(_pages(api, "/customers", {"q": name, "sort": "name"}))
    exact: list[dict[str, Any]] = [c for c in found if c["name"] == name]
    if len(exact) == 1:
        return exact[0]
    folded: list[dict[str, Any]] = [c for c in found if c["name"].casefold() == name.casefold()]
    if len(folded) == 1:
        return folded[0]
    if len(folded) > 1:
        listed = ", ".join(f"{c['name']!r} (id {c['id']})" for c in folded)
        raise ReportError(f"several customers are named {name!r}: {listed}; give the exact name")
    similar = [c["name"] for c in found if name.casefold() in c["name"].casefold()]
    hint = ""
    if similar:
        hint = "; did you mean " + ", ".join(repr(n) for n in similar[:SUGGESTIONS])
        hint += " …?" if len(similar) > SUGGESTIONS else "?"
    raise ReportError(f"no customer is named {name!r}{hint} (see `fieldtrack customers list`)")


def _window_params(since: datetime, until: datetime) -> dict[str, str]:
    return {"since": since.isoformat(), "until": until.isoformat()}


def collect(
    api: FieldtrackClient, name: str, days: int, audience: Audience = Audience.CUSTOMER
) -> CustomerReport:
    customer = find_customer(api, name)
    projects = list(_pages(api, "/projects", {"customer_id": customer["id"], "sort": "name"}))
    until = datetime.now(UTC).replace(microsecond=0)
    since = until - timedelta(days=days)
    params = {**_window_params(since, until), "audience": audience.value}
    analytics = [api.get(f"/projects/{p['id']}/analytics", params) for p in projects]
    rules = api.get("/analytics/rules") if audience is Audience.INTERNAL else []
    if audience is Audience.CUSTOMER:
        customer = {k: v for k, v in customer.items() if k in CUSTOMER_FIELDS}
    return CustomerReport(
        customer, since, until, days, datetime.now(UTC), analytics, audience, rules
    )


def collect_csv(
    api: FieldtrackClient, name: str, days: int, audience: Audience = Audience.CUSTOMER
) -> tuple[str, dict[str, Any], int]:
    """The API's own CSV export for each project, under one header."""
    customer = find_customer(api, name)
    projects = list(_pages(api, "/projects", {"customer_id": customer["id"], "sort": "name"}))
    until = datetime.now(UTC).replace(microsecond=0)
    params = {
        **_window_params(until - timedelta(days=days), until), "format": "csv",
        "audience": audience.value,
    }  # fmt: skip
    out = io.StringIO()
    writer = csv.writer(out)
    header_written = False
    for p in projects:
        text: str = api.get(f"/projects/{p['id']}/analytics", params)
        rows = csv.reader(io.StringIO(text))
        header = next(rows, None)
        if header is not None and not header_written:
            writer.writerow(header)
            header_written = True
        writer.writerows(rows)
    return out.getvalue(), customer, len(projects)


# --- rendering --------------------------------------------------------------------------------


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def points(value: float | None) -> str:
    """A change of a share, in percentage points."""
    return "–" if value is None else f"{value * 100:+.0f} pts"


def interval(f: Mapping[str, Any]) -> str:
    """Adoption's 95 % interval, as the page and the report print it."""
    return f"{pct(f['adoption_low'])}–{pct(f['adoption_high'])}"


def when(value: str | datetime) -> str:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _coverage_line(p: Mapping[str, Any]) -> str:
    c = p["coverage"]
    total = p["project"]["devices_total"]
    complete = "–" if c["completeness"] is None else f"{c['completeness']:.0%}"
    measured = f"measured over {c['measured_days']:.0f} days"
    if p["live_since"] and c["measured_since"] > p["since"]:
        measured += f" (live since {p['live_since']})"
    return (
        f"{c['devices_reporting']} of {total} devices reporting ({pct(c['reporting_share'])}), "
        f"{c['devices_silent']} silent; {complete} of expected messages received; {measured}"
    )


def explanation(f: Mapping[str, Any]) -> str:
    if f.get("explanation"):
        return str(f["explanation"])
    if f["delivery_status"] is None:
        return "used here but never delivered here: demand, or a misconfiguration"
    return f"{f['delivery_status']}, not delivered: only delivered features are assessed"


def _feature_rows(p: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*p["features"], *p.get("undelivered_usage", [])]


def _customer_line(c: Mapping[str, Any], internal: bool) -> str:
    """Tier and lifecycle stage are the solution company's view of a customer: internal."""
    if internal:
        return f"  {c['tier']} tier · {c['industry']} · {c['lifecycle_stage']}"
    return f"  {c['industry']}" if "industry" in c else ""


def render_tables(report: CustomerReport, console: Console) -> None:
    c, internal = report.customer, report.internal
    console.print(Text.assemble((c["name"], "bold"), _customer_line(c, internal)))
    console.print(
        f"usage {when(report.since)} – {when(report.until)} UTC ({report.window_days} days)"
        + ("" if internal else " · customer version, without internal verdicts"),
        highlight=False,
    )
    if not report.projects:
        console.print("this customer has no projects yet", highlight=False)
        return
    labels = report.labels
    for p in report.projects:
        console.print()
        table = Table(
            title=Text(p["project"]["project_name"], style="bold"), title_justify="left",
            header_style="bold", show_lines=True, expand=False,
        )  # fmt: skip
        table.add_column("feature", no_wrap=True)
        table.add_column("delivery")
        table.add_column("adoption (95 % interval)", justify="right")
        table.add_column("stickiness", justify="right")
        table.add_column("trend", justify="right")
        if internal:
            table.add_column("recommendation")
            table.add_column("explanation", ratio=1, min_width=30, overflow="fold")
        rows = _feature_rows(p)
        for f in rows:
            name = f["feature_name"] or f["feature_key"]
            feature = Text(name)
            if name != f["feature_key"]:
                feature.append(f"\n{f['feature_key']}", style="dim")
            cells: list[Text | str] = [
                feature,
                Text(f["delivery_status"] or "not delivered",
                     style="" if f["delivery_status"] else "yellow"),
                f"{pct(f['adoption'])} ({interval(f)})\n{f['devices_using']}/"
                f"{f['devices_reporting']} devices",
                pct(f["stickiness"]),
                points(f["trend"]),
            ]  # fmt: skip
            if internal:
                rec = f.get("recommendation")
                label = labels.get(rec, rec) if rec else "–"
                cells += [
                    Text(label, style=RECOMMENDATION_STYLES.get(rec or "", "")),
                    Text(explanation(f)),
                ]
            table.add_row(*cells)
        if not rows:
            table.add_row("–", "nothing delivered", *[""] * (len(table.columns) - 2))
        console.print(table)
        level = p["confidence"]
        console.print(
            Text.assemble(
                "confidence: ", (level, CONFIDENCE_STYLES.get(level, "")),
                f" ({p['confidence_reason']})",
            )
        )  # fmt: skip
        console.print(Text(f"coverage: {_coverage_line(p)}"))


def render_html(report: CustomerReport) -> str:
    from jinja2 import (  # noqa: PLC0415 - lazy: fast --help
        Environment,
        FileSystemLoader,
        StrictUndefined,
    )

    from services.core.paths import DASHBOARDS_DIR  # noqa: PLC0415

    env = Environment(
        loader=FileSystemLoader(DASHBOARDS_DIR / "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    labels = report.labels
    env.filters.update(pct=pct, points=points, when=when, interval=interval)
    summary: dict[str, int] = dict.fromkeys(labels, 0)
    for p in report.projects:
        for f in p["features"]:
            if f.get("recommendation") in summary:
                summary[f["recommendation"]] += 1
    return env.get_template("report.html").render(
        report=report, customer=report.customer, projects=report.projects,
        internal=report.internal, summary=summary, labels=labels, rules=report.rules,
        coverage_line=_coverage_line, feature_rows=_feature_rows, explanation=explanation,
    )  # fmt: skip


# --- the command --------------------------------------------------------------------------------


def _write(out: Path | None, text: str) -> None:
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8", newline="")
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc.strerror or exc}") from exc


def report(
    *,
    customer: Annotated[str, typer.Option(help="the customer's name (exact; case may differ)")],
    window: Annotated[
        str, typer.Option(help="how far back from now: 7d, 30d, 90d or any Nd (up to 400d)")
    ] = f"{DEFAULT_WINDOW_DAYS}d",
    fmt: Annotated[
        ReportFormat, typer.Option("--format", help="table on the terminal, or csv, json, html")
    ] = ReportFormat.TABLE,
    out: Annotated[
        Path | None, typer.Option(dir_okay=False, help="file to write (default: standard output)")
    ] = None,
    audience: Annotated[
        Audience,
        typer.Option(
            help="customer: usage and adoption only, safe to send to the customer; internal: "
            "with business value, verdicts and why (staff only)"
        ),
    ] = Audience.CUSTOMER,
) -> None:
    """One customer's delivered features beside their measured use.

    A section per project: adoption with its 95 % interval, stickiness, trend, and how far
    the numbers can be trusted; with --audience internal, also each verdict and why.

    html: one self-contained page to print or mail. csv: a row per project and feature.
    json: the API's analytics of each project."""
    try:
        days = parse_window(window)
    except ReportError as exc:
        raise _fail(str(exc)) from exc
    name = customer.strip()
    if fmt is ReportFormat.CSV:
        with _api() as api:
            text, found, count = collect_csv(api, name, days, audience)
        _write(out, text)
        _written(out, "CSV", found["name"], count)
        return
    with _api() as api:
        data = collect(api, name, days, audience)
    if fmt is ReportFormat.TABLE:
        if out is None:
            render_tables(data, Console(highlight=False))
        else:
            buffer = io.StringIO()
            render_tables(data, Console(file=buffer, width=160, highlight=False, color_system=None))
            _write(out, buffer.getvalue())
    elif fmt is ReportFormat.JSON:
        _write(out, json.dumps(data.as_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        _write(out, render_html(data))
    _written(out, fmt.value.upper(), data.customer["name"], len(data.projects))


def _written(out: Path | None, kind: str, name: str, projects: int) -> None:
    if out is not None:
        Console(stderr=True, highlight=False).print(
            Text(f"wrote the {kind} report for {name} ({projects} project(s)) to {out}")
        )
