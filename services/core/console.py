"""What every `fieldtrack` command line prints with: the consoles, the `error: …` line and exit,
and the tables of records.

It sits in core because every command line imports it, down to `fieldtrack users` (accounts)
and `fieldtrack sim` (device_sim). fieldtrack's errors are translated once, at the command
group (`command_group`): a command raises, the group prints `error: …` and exits 1.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, Literal

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from services.core.errors import FieldtrackError

console = Console()
err_console = Console(stderr=True)

EXIT_FAILED = 1
TIMESTAMP_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d")


def error_text(problem: str | BaseException) -> str:
    """The words of an error; a pydantic refusal names each field it refused."""
    if isinstance(problem, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in problem.errors()
        )
    return str(problem)


def fail(problem: str | BaseException) -> typer.Exit:
    """Print `error: …` on standard error; the exit (status 1) for the caller to raise."""
    err_console.print(
        f"[bold red]error:[/] [red]{escape(error_text(problem))}[/]",
        highlight=False,
        soft_wrap=True,
    )
    return typer.Exit(code=EXIT_FAILED)


class FailingGroup(TyperGroup):
    """A command group that ends any command raising a fieldtrack error with `error: …` and
    exit 1: the one place the error tree meets the command line."""

    def invoke(self, ctx: Any) -> Any:  # click's Context, which typer vendors privately
        try:
            return super().invoke(ctx)
        except FieldtrackError as exc:
            raise fail(exc) from exc


def command_group(help: str) -> typer.Typer:
    """A `fieldtrack` command group: help without arguments, errors as `error: …`."""
    return typer.Typer(help=help, no_args_is_help=True, cls=FailingGroup)


def file_console(file: IO[str], width: int) -> Console:
    """A console that writes plain text (no colour, no highlighting) to *file*."""
    return Console(file=file, width=width, highlight=False, color_system=None)


# --- tables -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    header: str
    key: str
    justify: Literal["left", "right"] = "left"


def cell(value: Any, *, exact: bool = False) -> str:
    """A value for a terminal; timestamps in lists are local time, to the minute."""
    if value is None or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(cell(v, exact=exact) for v in value)
    if isinstance(value, dict):
        if {"metric", "op", "value"} <= value.keys():
            return f"{value['metric']} {value['op']} {value['value']}"
        return ", ".join(f"{k}={cell(v, exact=exact)}" for k, v in value.items())
    text = str(value)
    if not exact and TIMESTAMP_RE.match(text):
        try:
            return datetime.fromisoformat(text).astimezone().strftime("%Y-%m-%d %H:%M")
        except ValueError:
            return text
    return text


def print_rows(items: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> None:
    """A table of records. A column no record carries is left out (a customer viewer's rows
    lack the internal fields) rather than shown as "-", which would read as "none"."""
    shown = [c for c in columns if any(c.key in item for item in items)]
    table = Table(show_edge=False, header_style="bold")
    for column in shown:
        table.add_column(column.header, justify=column.justify)
    for item in items:
        table.add_row(*(Text(cell(item.get(c.key))) for c in shown))
    console.print(table)


def print_record(item: Mapping[str, Any]) -> None:
    """One record, a field a line, values as they are."""
    table = Table(show_header=False, show_edge=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold")
    table.add_column()
    for key, value in item.items():
        table.add_row(key, Text(cell(value, exact=True)))
    console.print(table)
