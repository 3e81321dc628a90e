"""`fieldtrack customers|projects|features|deliveries|devices|import`: the registry, via the API.

These commands are a client of the REST API (FIELDTRACK_API_URL, optional
FIELDTRACK_API_TOKEN), never of the database: they work from any machine that can reach the
API, and the API's checks apply to them as to every other client. The HTTP client is
imported inside the commands so that `fieldtrack --help` stays fast.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
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

from services.core.console import (
    Column,
    command_group,
    console,
    err_console,
    fail,
    print_record,
    print_rows,
)
from services.core.errors import FieldtrackError

if TYPE_CHECKING:
    from services.client.http import FieldtrackClient

PROVISION_CHUNK = 100  # devices per POST /devices/batch
MAX_PROVISION = 100_000
SERIAL_RETRIES = 3  # fresh serials for a chunk whose random serials already exist
# A serial is `{prefix}-{10 hex}` and at most 64 characters (services/core/topics.py).
PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,52}$")
CREDENTIAL_COLUMNS = ("serial", "password", "project_id", "device_id")
DATE_FORMATS = ["%Y-%m-%d"]


from services.registry.enums import (  # noqa: E402 - stdlib-only, cheap at --help
    DeliveryStatus,
    DeviceStatus,
    FeatureKind,
    LifecycleStage as Stage,
    ProjectStatus,
    Tier,
)

customers_app = command_group("Customers (through the API).")
projects_app = command_group("Customer projects (through the API).")
features_app = command_group("Features that can be delivered (through the API).")
deliveries_app = command_group("Features delivered to projects (through the API).")
devices_app = command_group("Devices and their MQTT credentials (through the API).")
import_app = command_group("Bulk import from CSV (through the API); all rows or none.")


# --- plumbing -------------------------------------------------------------------------


@contextmanager
def _api() -> Iterator[FieldtrackClient]:
    """A client for the configured API (its errors end the command at the command group)."""
    from services.client.http import FieldtrackClient  # noqa: PLC0415 - lazy: fast --help
    from services.client.settings import load_client_settings  # noqa: PLC0415

    with FieldtrackClient.from_settings(load_client_settings()) as client:
        yield client


def _given(**fields: Any) -> dict[str, Any]:
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


def _changes(**fields: Any) -> dict[str, Any]:
    body = _given(**fields)
    if not body:
        raise fail("nothing to change: give at least one option (see --help)")
    return body


def _print_page(page: Mapping[str, Any], plural: str, columns: Sequence[Column]) -> None:
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


def _done(message: str, item: Mapping[str, Any] | None = None) -> None:
    console.print(Text(message))
    if item is not None:
        print_record(item)


# Options shared by every list command.
Sort = Annotated[
    str | None, typer.Option(help="field to sort by; prefix - for descending, e.g. -created_at")
]
Limit = Annotated[int, typer.Option(min=1, max=500, help="how many to show")]
Offset = Annotated[int, typer.Option(min=0, help="how many to skip")]
Search = Annotated[str | None, typer.Option("--q", help="case-insensitive search")]
ItemId = Annotated[int, typer.Argument(min=1, help="the id")]


def _list(
    path: str,
    plural: str,
    columns: Sequence[Column],
    filters: Mapping[str, Any],
    *,
    q: str | None,
    sort: str | None,
    limit: int,
    offset: int,
) -> None:
    params = {**_given(**filters), "q": q, "sort": sort, "limit": limit, "offset": offset}
    with _api() as api:
        page = api.get(path, params)
    _print_page(page, plural, columns)


def _show(path: str, item_id: int) -> None:
    with _api() as api:
        item = api.get(f"{path}/{item_id}")
    print_record(item)


def _delete(path: str, label: str, item_id: int) -> None:
    with _api() as api:
        api.delete(f"{path}/{item_id}")
    console.print(f"deleted {label} {item_id}")


# --- customers ---------------------------------------------------------------------------

CUSTOMER_COLUMNS = (
    Column("id", "id", "right"),
    Column("name", "name"),
    Column("tier", "tier"),
    Column("industry", "industry"),
    Column("stage", "lifecycle_stage"),
    Column("created", "created_at"),
)


@customers_app.command("add")
def customers_add(
    *,
    name: Annotated[str, typer.Option(help="unique customer name")],
    tier: Annotated[Tier, typer.Option(help="head (large), waist (mid) or tail (small)")],
    industry: Annotated[str, typer.Option(help="e.g. logistics")],
    stage: Annotated[Stage | None, typer.Option(help="default: onboarding")] = None,
) -> None:
    """Create a customer."""
    body = _given(name=name, tier=tier, industry=industry, lifecycle_stage=stage)
    with _api() as api:
        item = api.post("/customers", body)
    _done(f"created customer {item['id']}: {item['name']}", item)


@customers_app.command("list")
def customers_list(
    *,
    tier: Annotated[Tier | None, typer.Option()] = None,
    industry: Annotated[str | None, typer.Option()] = None,
    stage: Annotated[Stage | None, typer.Option(help="lifecycle stage")] = None,
    q: Search = None,
    sort: Sort = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> None:
    """List customers (filters combine)."""
    filters = {"tier": tier, "industry": industry, "lifecycle_stage": stage}
    _list(
        "/customers",
        "customers",
        CUSTOMER_COLUMNS,
        filters,
        q=q,
        sort=sort,
        limit=limit,
        offset=offset,
    )


@customers_app.command("show")
def customers_show(item_id: ItemId) -> None:
    """One customer."""
    _show("/customers", item_id)


@customers_app.command("update")
def customers_update(
    item_id: ItemId,
    *,
    name: Annotated[str | None, typer.Option()] = None,
    tier: Annotated[Tier | None, typer.Option()] = None,
    industry: Annotated[str | None, typer.Option()] = None,
    stage: Annotated[Stage | None, typer.Option(help="lifecycle stage")] = None,
) -> None:
    """Change some fields of a customer."""
    body = _changes(name=name, tier=tier, industry=industry, lifecycle_stage=stage)
    with _api() as api:
        item = api.patch(f"/customers/{item_id}", body)
    _done(f"updated customer {item_id}", item)


@customers_app.command("delete")
def customers_delete(item_id: ItemId) -> None:
    """Delete a customer that has no projects."""
    _delete("/customers", "customer", item_id)


# --- projects ----------------------------------------------------------------------------

PROJECT_COLUMNS = (
    Column("id", "id", "right"),
    Column("name", "name"),
    Column("customer", "customer_name"),
    Column("status", "status"),
    Column("value", "contract_value", "right"),
    Column("cur", "currency"),
    Column("go-live", "go_live_date"),
    Column("devices", "devices", "right"),
)
Money = Annotated[str | None, typer.Option(help="amount, e.g. 480000.00")]
GoLive = Annotated[datetime | None, typer.Option(formats=DATE_FORMATS, help="YYYY-MM-DD")]
Currency = Annotated[str | None, typer.Option(help="ISO 4217 code (default: EUR)")]
Retention = Annotated[
    int | None, typer.Option(min=1, max=36500, help="days raw device data is kept")
]


@projects_app.command("add")
def projects_add(
    *,
    customer: Annotated[int, typer.Option(min=1, help="customer id")],
    name: Annotated[str, typer.Option(help="project name (unique per customer)")],
    value: Money = None,
    currency: Currency = None,
    go_live: GoLive = None,
    status: Annotated[ProjectStatus | None, typer.Option(help="default: delivering")] = None,
    retention_days: Retention = None,
) -> None:
    """Create a project for a customer."""
    body = _given(
        customer_id=customer,
        name=name,
        contract_value=value,
        currency=currency,
        go_live_date=go_live,
        status=status,
        retention_days=retention_days,
    )
    with _api() as api:
        item = api.post("/projects", body)
    _done(f"created project {item['id']}: {item['name']}", item)


@projects_app.command("list")
def projects_list(
    *,
    customer: Annotated[int | None, typer.Option(min=1, help="customer id")] = None,
    status: Annotated[ProjectStatus | None, typer.Option()] = None,
    q: Search = None,
    sort: Sort = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> None:
    """List projects."""
    filters = {"customer_id": customer, "status": status}
    _list(
        "/projects",
        "projects",
        PROJECT_COLUMNS,
        filters,
        q=q,
        sort=sort,
        limit=limit,
        offset=offset,
    )


@projects_app.command("show")
def projects_show(item_id: ItemId) -> None:
    """One project."""
    _show("/projects", item_id)


@projects_app.command("update")
def projects_update(
    item_id: ItemId,
    *,
    name: Annotated[str | None, typer.Option()] = None,
    value: Money = None,
    currency: Currency = None,
    go_live: GoLive = None,
    status: Annotated[ProjectStatus | None, typer.Option()] = None,
    retention_days: Retention = None,
) -> None:
    """Change some fields of a project."""
    body = _changes(
        name=name,
        contract_value=value,
        currency=currency,
        go_live_date=go_live,
        status=status,
        retention_days=retention_days,
    )
    with _api() as api:
        item = api.patch(f"/projects/{item_id}", body)
    _done(f"updated project {item_id}", item)


@projects_app.command("delete")
def projects_delete(item_id: ItemId) -> None:
    """Delete a project without devices or deliveries."""
    _delete("/projects", "project", item_id)


# --- features ----------------------------------------------------------------------------

FEATURE_COLUMNS = (
    Column("id", "id", "right"),
    Column("key", "key"),
    Column("name", "name"),
    Column("product line", "product_line"),
    Column("kind", "kind"),
)
Kind = Annotated[
    FeatureKind | None,
    typer.Option(
        help="interactive: judged by use; standing (alarms, safeguards, schedules): judged by "
        "being enabled on devices"
    ),
]


@features_app.command("add")
def features_add(
    *,
    key: Annotated[str, typer.Option(help="stable key devices report, e.g. remote_unlock")],
    name: Annotated[str, typer.Option(help="display name")],
    product_line: Annotated[str | None, typer.Option()] = None,
    description: Annotated[str | None, typer.Option()] = None,
    kind: Kind = None,
) -> None:
    """Create a feature."""
    body = _given(key=key, name=name, product_line=product_line, description=description, kind=kind)
    with _api() as api:
        item = api.post("/features", body)
    _done(f"created feature {item['id']}: {item['key']}", item)


@features_app.command("list")
def features_list(
    *,
    product_line: Annotated[str | None, typer.Option()] = None,
    kind: Kind = None,
    q: Search = None,
    sort: Sort = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> None:
    """List features."""
    _list(
        "/features",
        "features",
        FEATURE_COLUMNS,
        {"product_line": product_line, "kind": kind},
        q=q,
        sort=sort,
        limit=limit,
        offset=offset,
    )


@features_app.command("show")
def features_show(item_id: ItemId) -> None:
    """One feature."""
    _show("/features", item_id)


@features_app.command("update")
def features_update(
    item_id: ItemId,
    *,
    name: Annotated[str | None, typer.Option()] = None,
    product_line: Annotated[str | None, typer.Option()] = None,
    description: Annotated[str | None, typer.Option()] = None,
    kind: Kind = None,
) -> None:
    """Change some fields of a feature."""
    body = _changes(name=name, product_line=product_line, description=description, kind=kind)
    with _api() as api:
        item = api.patch(f"/features/{item_id}", body)
    _done(f"updated feature {item_id}", item)


@features_app.command("delete")
def features_delete(item_id: ItemId) -> None:
    """Delete a feature that was never delivered."""
    _delete("/features", "feature", item_id)


# --- deliveries --------------------------------------------------------------------------

DELIVERY_COLUMNS = (
    Column("id", "id", "right"),
    Column("project", "project_id", "right"),
    Column("feature", "feature_key"),
    Column("status", "status"),
    Column("delivered", "delivered_on"),
    Column("days", "cost_person_days", "right"),
    Column("line value", "contract_line_value", "right"),
    Column("score", "business_score", "right"),
    Column("strategic", "strategic"),
)
DeliveredOn = Annotated[datetime | None, typer.Option(formats=DATE_FORMATS, help="YYYY-MM-DD")]
CostDays = Annotated[str | None, typer.Option(help="cost in person-days, e.g. 12.5")]
LineValue = Annotated[str | None, typer.Option(help="contract line value, e.g. 25000.00")]
Score = Annotated[int | None, typer.Option(min=1, max=5, help="business score 1-5")]
Notes = Annotated[str | None, typer.Option()]


@deliveries_app.command("add")
def deliveries_add(
    *,
    project: Annotated[int, typer.Option(min=1, help="project id")],
    feature: Annotated[int, typer.Option(min=1, help="feature id")],
    status: Annotated[DeliveryStatus | None, typer.Option(help="default: delivered")] = None,
    delivered_on: DeliveredOn = None,
    cost_days: CostDays = None,
    line_value: LineValue = None,
    score: Score = None,
    strategic: Annotated[bool, typer.Option("--strategic/--no-strategic")] = False,
    notes: Notes = None,
) -> None:
    """Record a feature delivered (or planned, or cut) for a project."""
    body = _given(
        project_id=project,
        feature_id=feature,
        status=status,
        delivered_on=delivered_on,
        cost_person_days=cost_days,
        contract_line_value=line_value,
        business_score=score,
        strategic=strategic,
        notes=notes,
    )
    with _api() as api:
        item = api.post("/deliveries", body)
    _done(f"created delivery {item['id']}: {item['feature_key']} for project {project}", item)


@deliveries_app.command("list")
def deliveries_list(
    *,
    project: Annotated[int | None, typer.Option(min=1, help="project id")] = None,
    feature: Annotated[int | None, typer.Option(min=1, help="feature id")] = None,
    status: Annotated[DeliveryStatus | None, typer.Option()] = None,
    strategic: Annotated[bool | None, typer.Option("--strategic/--no-strategic")] = None,
    q: Search = None,
    sort: Sort = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> None:
    """List deliveries."""
    filters = {
        "project_id": project,
        "feature_id": feature,
        "status": status,
        "strategic": strategic,
    }
    _list(
        "/deliveries",
        "deliveries",
        DELIVERY_COLUMNS,
        filters,
        q=q,
        sort=sort,
        limit=limit,
        offset=offset,
    )


@deliveries_app.command("show")
def deliveries_show(item_id: ItemId) -> None:
    """One delivery."""
    _show("/deliveries", item_id)


@deliveries_app.command("update")
def deliveries_update(
    item_id: ItemId,
    *,
    status: Annotated[DeliveryStatus | None, typer.Option()] = None,
    delivered_on: DeliveredOn = None,
    cost_days: CostDays = None,
    line_value: LineValue = None,
    score: Score = None,
    strategic: Annotated[bool | None, typer.Option("--strategic/--no-strategic")] = None,
    notes: Notes = None,
) -> None:
    """Change some fields of a delivery."""
    body = _changes(
        status=status,
        delivered_on=delivered_on,
        cost_person_days=cost_days,
        contract_line_value=line_value,
        business_score=score,
        strategic=strategic,
        notes=notes,
    )
    with _api() as api:
        item = api.patch(f"/deliveries/{item_id}", body)
    _done(f"updated delivery {item_id}", item)


@deliveries_app.command("delete")
def deliveries_delete(item_id: ItemId) -> None:
    """Delete a delivery."""
    _delete("/deliveries", "delivery", item_id)


# --- devices -------------------------------------------------------------------------------

DEVICE_COLUMNS = (
    Column("id", "id", "right"),
    Column("serial", "serial"),
    Column("project", "project_id", "right"),
    Column("status", "status"),
    Column("online", "online"),
    Column("last seen", "last_seen"),
    Column("model", "model"),
    Column("firmware", "firmware"),
    Column("site", "site"),
)
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
    api: FieldtrackClient, template: Mapping[str, Any], prefix: str, count: int, used: set[str]
) -> list[dict[str, Any]]:
    """One all-or-none batch. Random serials that happen to exist already are replaced."""
    from services.client.http import Invalid  # noqa: PLC0415 - lazy: fast --help

    for attempt in range(1, SERIAL_RETRIES + 1):
        body = [{"serial": s, **template} for s in _new_serials(prefix, count, used)]
        try:
            provisioned: list[dict[str, Any]] = api.post("/devices/batch", body)
        except Invalid as exc:
            if attempt == SERIAL_RETRIES or not any(e.field == "serial" for e in exc.field_errors):
                raise
        else:
            return provisioned
    raise AssertionError("unreachable")  # pragma: no cover


@devices_app.command("provision")
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
    template = _given(project_id=project, model=model, firmware=firmware, site=site)
    with _api() as api:
        api.get(f"/projects/{project}")  # a missing project fails here, before any file
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
                    for p in _provision_chunk(api, template, prefix, size, used):
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


@devices_app.command("import")
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
    text = _read_csv(file)
    # The file is opened before provisioning: passwords are shown once, they need a place.
    with _api() as api, _open_credentials(out, force) as handle:
        try:
            credentials: str = api.post("/devices/import", csv=text)
        except FieldtrackError:
            out.unlink(missing_ok=True)
            raise
        handle.write(credentials)
    count = max(0, len(credentials.strip().splitlines()) - 1)
    console.print(f"provisioned {count} devices from {file}; credentials in {out} (mode 0600)")


@devices_app.command("list")
def devices_list(
    *,
    project: Annotated[int | None, typer.Option(min=1, help="project id")] = None,
    status: Annotated[DeviceStatus | None, typer.Option()] = None,
    tag: Annotated[str | None, typer.Option(help="devices carrying this tag")] = None,
    q: Search = None,
    sort: Sort = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> None:
    """List devices."""
    filters = {"project_id": project, "status": status, "tag": tag}
    _list(
        "/devices", "devices", DEVICE_COLUMNS, filters, q=q, sort=sort, limit=limit, offset=offset
    )


@devices_app.command("show")
def devices_show(item_id: ItemId) -> None:
    """One device."""
    _show("/devices", item_id)


@devices_app.command("revoke")
def devices_revoke(item_id: ItemId) -> None:
    """Revoke a device: the broker disconnects and refuses it; its history stays."""
    with _api() as api:
        item = api.post(f"/devices/{item_id}/revoke")
    _done(f"revoked device {item_id} ({item['serial']})")


@devices_app.command("rotate")
def devices_rotate(item_id: ItemId) -> None:
    """Give a device a new password; the old one stops working at once."""
    with _api() as api:
        result = api.post(f"/devices/{item_id}/credentials")
    device = result["device"]
    console.print(Text(f"new password for device {item_id} ({device['serial']}):"))
    console.print(Text(result["password"]), soft_wrap=True)
    err_console.print(
        "it is shown only this once; the old password no longer works", highlight=False
    )


@devices_app.command("delete")
def devices_delete(item_id: ItemId) -> None:
    """Delete a device that never sent data (otherwise revoke it)."""
    _delete("/devices", "device", item_id)


# --- import --------------------------------------------------------------------------------

IMPORT_HEADERS = {
    "customers": "name,tier,industry[,lifecycle_stage]",
    "projects": "customer_id or customer (name),name[,contract_value,currency,go_live_date,"
    "status,retention_days]",
    "features": "key,name[,product_line,description,kind (interactive|standing)]",
    "deliveries": "project_id,feature_id or feature_key[,status,delivered_on,cost_person_days,"
    "contract_line_value,business_score,strategic,notes]",
}


def _read_csv(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: a spreadsheet's BOM is not a column
    except UnicodeDecodeError as exc:
        raise fail(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror or exc}") from exc


def _import_command(kind: str) -> Callable[[Path], None]:
    def run(
        file: Annotated[
            Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="the CSV file")
        ],
    ) -> None:
        text = _read_csv(file)
        with _api() as api:
            report = api.post(f"/imports/{kind}", csv=text)
        console.print(f"created {report['created']} {kind} from {file}", highlight=False)

    run.__doc__ = (
        f"Create {kind} from a CSV file: every row or none. "
        f"Header: {IMPORT_HEADERS[kind]}. Errors name the line (the header is line 1)."
    )
    return run


for _kind in IMPORT_HEADERS:
    import_app.command(_kind)(_import_command(_kind))


HISTORY_TYPES = {
    ".ndjson": "application/x-ndjson",
    ".jsonl": "application/x-ndjson",
    ".csv": "text/csv",
}
HISTORY_CHUNK = 1 << 20  # upload in 1 MiB pieces
HISTORY_TIMEOUT_S = 3600.0  # history files can be large; the server streams them


@import_app.command("history")
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

    with _api() as api:
        report = api.upload("/imports/history", chunks(), content_type, HISTORY_TIMEOUT_S)
    quarantined = report.get("quarantined") or {}
    console.print(
        f"imported {report['messages']:,} messages: {report['usage_rows']:,} usage rows, "
        f"{report['metric_rows']:,} metric rows, {report['duplicates']:,} duplicates absorbed"
        + (f"; quarantined {quarantined}" if quarantined else "")
    )
