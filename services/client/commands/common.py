"""What the registry commands share: the API client, request bodies, pages, CSV files.

The HTTP client is imported inside the commands so that `fieldtrack --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from services.core.console import Column, console, fail, print_record, print_rows

if TYPE_CHECKING:
    from services.client.http import FieldtrackClient

DATE_FORMATS = ["%Y-%m-%d"]

ItemId = Annotated[int, typer.Argument(min=1, help="the id")]


@contextmanager
def api() -> Iterator[FieldtrackClient]:
    """A client for the configured API (its errors end the command at the command group)."""
    from services.client.http import FieldtrackClient  # noqa: PLC0415 - lazy: fast --help
    from services.client.settings import load_client_settings  # noqa: PLC0415

    with FieldtrackClient.from_settings(load_client_settings()) as client:
        yield client


def given(**fields: Any) -> dict[str, Any]:
    """The options that were given, as API fields (enums as their values, dates as ISO)."""
    body: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, StrEnum):
            body[key] = value.value
        elif isinstance(value, datetime):
            body[key] = value.date().isoformat()
        elif value is not None:
            body[key] = value
    return body


def changes(**fields: Any) -> dict[str, Any]:
    """The options of an update; at least one must be given."""
    body = given(**fields)
    if not body:
        raise fail("nothing to change: give at least one option (see --help)")
    return body


def done(message: str, item: Mapping[str, Any] | None = None) -> None:
    console.print(Text(message))
    if item is not None:
        print_record(item)


def print_page(page: Mapping[str, Any], plural: str, columns: Sequence[Column]) -> None:
    """A page of a list, and which part of the whole it is."""
    items: list[dict[str, Any]] = page["items"]
    if items:
        print_rows(items, columns)
    total, offset = int(page["total"]), int(page["offset"])
    summary = f"total: {total} {plural}"
    if items and len(items) < total:
        summary += f" (showing {offset + 1}–{offset + len(items)})"
    elif not items and total:
        summary += f" (none after offset {offset})"
    if offset + len(items) < total:
        summary += f"; --offset {offset + len(items)} for more"
    console.print(summary, highlight=False)


def read_csv(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: a spreadsheet's BOM is not a column
    except UnicodeDecodeError as exc:
        raise fail(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror or exc}") from exc
