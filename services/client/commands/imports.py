"""`fieldtrack import`: bulk imports from files, through the API; all rows or none."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from services.client.commands.common import api, read_csv
from services.core.console import command_group, console, fail

app = command_group("Bulk import from CSV (through the API); all rows or none.")

IMPORT_HEADERS = {
    "customers": "name,tier,industry[,lifecycle_stage]",
    "projects": "customer_id or customer (name),name[,contract_value,currency,go_live_date,"
    "status,retention_days]",
    "features": "key,name[,product_line,description,kind (interactive|standing)]",
    "deliveries": "project_id,feature_id or feature_key[,status,delivered_on,cost_person_days,"
    "contract_line_value,business_score,strategic,notes]",
}


def _import_command(kind: str) -> Callable[[Path], None]:
    def run(
        file: Annotated[
            Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="the CSV file")
        ],
    ) -> None:
        text = read_csv(file)
        with api() as client:
            report = client.post(f"/imports/{kind}", csv=text)
        console.print(f"created {report['created']} {kind} from {file}", highlight=False)

    run.__doc__ = (
        f"Create {kind} from a CSV file: every row or none. "
        f"Header: {IMPORT_HEADERS[kind]}. Errors name the line (the header is line 1)."
    )
    return run


for _kind in IMPORT_HEADERS:
    app.command(_kind)(_import_command(_kind))


HISTORY_TYPES = {
    ".ndjson": "application/x-ndjson",
    ".jsonl": "application/x-ndjson",
    ".csv": "text/csv",
}
HISTORY_CHUNK = 1 << 20  # upload in 1 MiB pieces
HISTORY_TIMEOUT_S = 3600.0  # history files can be large; the server streams them


@app.command("history")
def import_history(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
) -> None:
    """Import historical device data (NDJSON or CSV) through the same checks as live ingest.

    Re-importing a file adds nothing; records that fail validation are quarantined with a
    reason (see `GET /quarantine/summary`). Formats: docs/api.md, "Device history imports"."""
    content_type = HISTORY_TYPES.get(file.suffix.lower())
    if content_type is None:
        raise fail(f"{file.name}: use a .ndjson, .jsonl or .csv file")

    def chunks() -> Iterator[bytes]:
        with file.open("rb") as handle:
            while chunk := handle.read(HISTORY_CHUNK):
                yield chunk

    with api() as client:
        report = client.upload("/imports/history", chunks(), content_type, HISTORY_TIMEOUT_S)
    quarantined = report.get("quarantined") or {}
    console.print(
        f"imported {report['messages']:,} messages: {report['usage_rows']:,} usage rows, "
        f"{report['metric_rows']:,} metric rows, {report['duplicates']:,} duplicates absorbed"
        + (f"; quarantined {quarantined}" if quarantined else "")
    )
