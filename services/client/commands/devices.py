"""`fieldtrack devices`: devices and their MQTT credentials, through the API.

Provisioning writes each device's password to a file the operator names (mode 0600), never
to the terminal: a password exists only there and on the broker.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from services.client.commands.common import ItemId, api, done, given, read_csv
from services.client.commands.crud import ResourceCommands
from services.core.console import Column, console, err_console, fail
from services.core.errors import FieldtrackError
from services.registry.resources import DEVICES

if TYPE_CHECKING:
    from services.client.http import FieldtrackClient

PROVISION_CHUNK = 100  # devices per POST /devices/batch
MAX_PROVISION = 100_000
SERIAL_RETRIES = 3  # fresh serials for a chunk whose random serials already exist
# A serial is `{prefix}-{10 hex}` and at most 64 characters (services/core/topics.py).
PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,52}$")
CREDENTIAL_COLUMNS = ("serial", "password", "project_id", "device_id")

COMMANDS = ResourceCommands(
    DEVICES,
    plural="devices",
    help="Devices and their MQTT credentials (through the API).",
    columns=(
        Column("id", "id", "right"),
        Column("serial", "serial"),
        Column("project", "project_id", "right"),
        Column("status", "status"),
        Column("online", "online"),
        Column("last seen", "last_seen"),
        Column("model", "model"),
        Column("firmware", "firmware"),
        Column("site", "site"),
    ),
    delete_help="Delete a device that never sent data (otherwise revoke it).",
)
app = COMMANDS.app()

Out = Annotated[
    Path, typer.Option(help="where the credentials CSV goes (mode 0600); must not exist yet")
]
Force = Annotated[bool, typer.Option(help="overwrite --out if it exists")]


def _open_credentials(path: Path, force: bool) -> IO[str]:
    """The credentials file, created owner-only. An existing file is kept unless forced: it
    may hold passwords that exist nowhere else."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o600)
    except FileExistsError as exc:
        raise fail(
            f"{path} exists already and may hold credentials shown nowhere else; "
            "choose another --out, or pass --force to overwrite it"
        ) from exc
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc.strerror or exc}") from exc
    os.fchmod(fd, 0o600)  # a forced, pre-existing file keeps its old mode otherwise
    return os.fdopen(fd, "w", newline="", encoding="utf-8")


def _csv_line(*values: object) -> str:
    # Serials and passwords never need quoting (serial pattern; token_urlsafe alphabet).
    return ",".join(str(v) for v in values) + "\n"


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(
            f"{speed:,.0f} devices/s" if speed else "- devices/s", style="progress.data.speed"
        )


def _new_serials(prefix: str, count: int, used: set[str]) -> list[str]:
    serials: list[str] = []
    while len(serials) < count:
        serial = f"{prefix}-{secrets.token_hex(5)}"
        if serial not in used:
            used.add(serial)
            serials.append(serial)
    return serials


def _provision_chunk(
    client: FieldtrackClient, template: Mapping[str, Any], prefix: str, count: int, used: set[str]
) -> list[dict[str, Any]]:
    """One all-or-none batch. Random serials that happen to exist already are replaced."""
    from services.client.http import Invalid  # noqa: PLC0415 - lazy: fast --help

    for attempt in range(1, SERIAL_RETRIES + 1):
        body = [{"serial": s, **template} for s in _new_serials(prefix, count, used)]
        try:
            provisioned: list[dict[str, Any]] = client.post("/devices/batch", body)
        except Invalid as exc:
            if attempt == SERIAL_RETRIES or not any(e.field == "serial" for e in exc.field_errors):
                raise
        else:
            return provisioned
    raise AssertionError("unreachable")  # pragma: no cover


@app.command("provision")
def devices_provision(
    *,
    project: Annotated[int, typer.Option(min=1, help="project id")],
    count: Annotated[int, typer.Option(min=1, max=MAX_PROVISION, help="how many devices")],
    out: Out,
    prefix: Annotated[str, typer.Option(help="serials are PREFIX-<10 hex digits>")] = "dev",
    model: Annotated[str | None, typer.Option()] = None,
    firmware: Annotated[str | None, typer.Option()] = None,
    site: Annotated[str | None, typer.Option()] = None,
    force: Force = False,
) -> None:
    """Provision COUNT devices with generated serials; their passwords go to --out only."""
    if not PREFIX_RE.match(prefix):
        raise fail(
            f"prefix {prefix!r} is not usable: 1-53 characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    template = given(project_id=project, model=model, firmware=firmware, site=site)
    with api() as client:
        client.get(f"/projects/{project}")  # a missing project fails here, before any file
        handle = _open_credentials(out, force)
        done = 0
        used: set[str] = set()
        started = time.perf_counter()
        progress = Progress(
            TextColumn("provisioning"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("devices"),
            _RateColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
        )
        try:
            with handle, progress:
                handle.write(_csv_line(*CREDENTIAL_COLUMNS))
                task = progress.add_task("provisioning", total=count)
                while done < count:
                    size = min(PROVISION_CHUNK, count - done)
                    for p in _provision_chunk(client, template, prefix, size, used):
                        device = p["device"]
                        handle.write(
                            _csv_line(
                                device["serial"], p["password"], device["project_id"], device["id"]
                            )
                        )
                    handle.flush()
                    os.fsync(handle.fileno())  # what is provisioned is on disk before more
                    done += size
                    progress.update(task, completed=done)
        except (FieldtrackError, OSError, KeyboardInterrupt) as exc:
            reason = str(exc) or "interrupted"
            if done == 0:
                out.unlink(missing_ok=True)
                raise fail(f"{reason}\nno device credentials were received") from exc
            raise fail(
                f"{reason}\n{done} of {count} devices were provisioned before this; "
                f"their credentials are in {out}"
            ) from exc
    elapsed = time.perf_counter() - started
    console.print(
        f"provisioned {count} devices in project {project} in {elapsed:.1f}s "
        f"({count / elapsed:,.0f}/s); credentials in {out} (mode 0600, shown nowhere else)",
        highlight=False,
    )


@app.command("import")
def devices_import(
    *,
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="CSV: serial,project_id[,model,firmware,site,tags]",
        ),
    ],
    out: Out,
    force: Force = False,
) -> None:
    """Provision the devices a CSV file lists, all or none; their passwords go to --out."""
    text = read_csv(file)
    # The file is opened before provisioning: passwords are shown once, they need a place.
    with api() as client, _open_credentials(out, force) as handle:
        try:
            credentials: str = client.post("/devices/import", csv=text)
        except FieldtrackError:
            out.unlink(missing_ok=True)
            raise
        handle.write(credentials)
    count = max(0, len(credentials.strip().splitlines()) - 1)
    console.print(f"provisioned {count} devices from {file}; credentials in {out} (mode 0600)")


@app.command("revoke")
def devices_revoke(item_id: ItemId) -> None:
    """Revoke a device: the broker disconnects and refuses it; its history stays."""
    with api() as client:
        item = client.post(f"/devices/{item_id}/revoke")
    done(f"revoked device {item_id} ({item['serial']})")


@app.command("rotate")
def devices_rotate(item_id: ItemId) -> None:
    """Give a device a new password; the old one stops working at once."""
    with api() as client:
        result = client.post(f"/devices/{item_id}/credentials")
    device = result["device"]
    console.print(Text(f"new password for device {item_id} ({device['serial']}):"))
    console.print(Text(result["password"]), soft_wrap=True)
    err_console.print(
        "it is shown only this once; the old password no longer works", highlight=False
    )


COMMANDS.add_standard_commands(app)
