"""`fieldtrack report`: one customer's delivered features beside their measured use.

A client of the REST API like the registry commands (FIELDTRACK_API_URL, optional
FIELDTRACK_API_TOKEN): it finds the customer by name (GET /customers?q=…), takes the analytics
of each of its projects over the window (GET /projects/{id}/analytics) and prints a table per
project, or writes CSV, JSON or a self-contained HTML page a PM can print or email. The JSON is
the API's answers as they came; the table and the page read them into the analytics' models
and word them with services/analytics/report.py, the renderer the dashboard page uses too.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from services.accounts.roles import Audience
from services.client.commands.common import api
from services.core.console import console as terminal, err_console, fail, file_console
from services.core.errors import FieldtrackError, InvalidInputError
from services.core.windows import DEFAULT_WINDOW_DAYS, MAX_WINDOW_DAYS, Window, parse_days

if TYPE_CHECKING:
    from rich.console import Console

    from services.analytics.report import CustomerReport
    from services.client.http import FieldtrackClient

MAX_NAME = 200  # customer names are 1-200 characters
PAGE_SIZE = 500  # the API's largest page
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
class Collected:
    """What the API answered about one customer, as it answered it."""

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

    def typed(self) -> CustomerReport:
        """The answers read into the analytics' models, for the table and the page."""
        from pydantic import ValidationError  # noqa: PLC0415 - lazy: fast --help

        from services.analytics.portfolio import (  # noqa: PLC0415
            CustomerProjectAnalytics,
            ProjectAnalytics,
        )
        from services.analytics.recommend import RuleText  # noqa: PLC0415
        from services.analytics.report import CustomerReport  # noqa: PLC0415
        from services.registry.models import Customer, CustomerView  # noqa: PLC0415

        internal = self.internal
        project_model = ProjectAnalytics if internal else CustomerProjectAnalytics
        try:
            return CustomerReport(
                customer=(Customer if internal else CustomerView).model_validate(self.customer),
                since=self.since,
                until=self.until,
                window_days=self.window_days,
                generated_at=self.generated_at,
                projects=[project_model.model_validate(p) for p in self.projects],
                internal=internal,
                rules=[RuleText.model_validate(r) for r in self.rules],
            )
        except ValidationError as exc:
            raise ReportError(
                f"the API's analytics are not what this client reads (another version?): {exc}"
            ) from exc


def parse_window(text: str) -> int:
    """`--window`'s `Nd` → N days, within the one limit."""
    try:
        return parse_days(text)
    except InvalidInputError as exc:
        raise ReportError(f"--window {exc}") from exc


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


def _last(days: int) -> Window:
    """The *days* days up to now, to the second."""
    return Window.last(days, datetime.now(UTC).replace(microsecond=0))


def _window_params(window: Window) -> dict[str, str]:
    return {"since": window.since.isoformat(), "until": window.until.isoformat()}


def collect(
    api: FieldtrackClient, name: str, days: int, audience: Audience = Audience.CUSTOMER
) -> Collected:
    customer = find_customer(api, name)
    projects = list(_pages(api, "/projects", {"customer_id": customer["id"], "sort": "name"}))
    window = _last(days)
    params = {**_window_params(window), "audience": audience.value}
    analytics = [api.get(f"/projects/{p['id']}/analytics", params) for p in projects]
    rules = api.get("/analytics/rules") if audience is Audience.INTERNAL else []
    if audience is Audience.CUSTOMER:
        customer = {k: v for k, v in customer.items() if k in CUSTOMER_FIELDS}
    return Collected(
        customer, window.since, window.until, days, datetime.now(UTC), analytics, audience, rules
    )


def collect_csv(
    api: FieldtrackClient, name: str, days: int, audience: Audience = Audience.CUSTOMER
) -> tuple[str, dict[str, Any], int]:
    """The API's own CSV export for each project, under one header."""
    customer = find_customer(api, name)
    projects = list(_pages(api, "/projects", {"customer_id": customer["id"], "sort": "name"}))
    params = {
        **_window_params(_last(days)),
        "format": "csv",
        "audience": audience.value,
    }
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


def render_tables(report: CustomerReport, console: Console) -> None:
    from services.analytics.report import (  # noqa: PLC0415 - lazy: fast --help
        coverage_line,
        customer_line,
        explanation,
        feature_rows,
        interval,
        pct,
        points,
        verdict,
        when,
    )

    c, internal = report.customer, report.internal
    console.print(Text.assemble((c.name, "bold"), customer_line(c, internal)))
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
            title=Text(p.project.project_name, style="bold"),
            title_justify="left",
            header_style="bold",
            show_lines=True,
            expand=False,
        )
        table.add_column("feature", no_wrap=True)
        table.add_column("delivery")
        table.add_column("adoption (95 % interval)", justify="right")
        table.add_column("stickiness", justify="right")
        table.add_column("trend", justify="right")
        if internal:
            table.add_column("recommendation")
            table.add_column("explanation", ratio=1, min_width=30, overflow="fold")
        rows = feature_rows(p)
        for f in rows:
            name = f.feature_name or f.feature_key
            feature = Text(name)
            if name != f.feature_key:
                feature.append(f"\n{f.feature_key}", style="dim")
            cells: list[Text | str] = [
                feature,
                Text(
                    f.delivery_status or "not delivered",
                    style="" if f.delivery_status else "yellow",
                ),
                f"{pct(f.adoption)} ({interval(f)})\n{f.devices_using}/"
                f"{f.devices_reporting} devices",
                pct(f.stickiness),
                points(f.trend),
            ]
            if internal:
                row = verdict(f)
                rec = row.recommendation if row is not None else None
                label = labels.get(rec, rec) if rec else "–"
                cells += [
                    Text(label, style=RECOMMENDATION_STYLES.get(rec or "", "")),
                    Text(explanation(f)),
                ]
            table.add_row(*cells)
        if not rows:
            table.add_row("–", "nothing delivered", *[""] * (len(table.columns) - 2))
        console.print(table)
        level = p.confidence
        console.print(
            Text.assemble(
                "confidence: ",
                (level.value, CONFIDENCE_STYLES.get(level, "")),
                f" ({p.confidence_reason})",
            )
        )
        console.print(Text(f"coverage: {coverage_line(p)}"))


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
        raise fail(f"cannot write {out}: {exc.strerror or exc}") from exc


def report(
    *,
    customer: Annotated[str, typer.Option(help="the customer's name (exact; case may differ)")],
    window: Annotated[
        str,
        typer.Option(
            help=f"how far back from now: 7d, 30d, 90d or any Nd (up to {MAX_WINDOW_DAYS}d)"
        ),
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
        raise fail(str(exc)) from exc
    name = customer.strip()
    if fmt is ReportFormat.CSV:
        with api() as client:
            text, found, count = collect_csv(client, name, days, audience)
        _write(out, text)
        _written(out, "CSV", found["name"], count)
        return
    with api() as client:
        data = collect(client, name, days, audience)
    if fmt is ReportFormat.TABLE:
        if out is None:
            render_tables(_typed(data), terminal)
        else:
            buffer = io.StringIO()
            render_tables(_typed(data), file_console(buffer, width=160))
            _write(out, buffer.getvalue())
    elif fmt is ReportFormat.JSON:
        _write(out, json.dumps(data.as_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        from services.analytics.report import render_html  # noqa: PLC0415 - lazy: fast --help

        _write(out, render_html(_typed(data)))
    _written(out, fmt.value.upper(), data.customer["name"], len(data.projects))


def _typed(data: Collected) -> CustomerReport:
    try:
        return data.typed()
    except ReportError as exc:
        raise fail(str(exc)) from exc


def _written(out: Path | None, kind: str, name: str, projects: int) -> None:
    if out is not None:
        err_console.print(
            Text(f"wrote the {kind} report for {name} ({projects} project(s)) to {out}")
        )
