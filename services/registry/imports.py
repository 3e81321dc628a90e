"""Bulk import from CSV: every row is checked, and either all rows land or none do.

Errors are reported per row (the CSV line number, the header being line 1) and field, so
a person can fix the file and send it again. Lists (tags) are separated by
`;`. Empty cells mean "not given". Rows may name their parent by natural key instead of
id: `customer` (name) for projects, `feature_key` for deliveries.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from pydantic import BaseModel, Field, ValidationError

from services.core.errors import ConflictError, FieldtrackError, InvalidInputError
from services.core.identities import DeviceIdentities
from services.registry import models, provisioning
from services.registry.repository import Resource, create_item
from services.registry.resources import CUSTOMERS, DELIVERIES, DEVICES, FEATURES, PROJECTS

MAX_IMPORT_ROWS = 10_000
LIST_COLUMNS = frozenset({"tags"})


class RowError(BaseModel):
    row: int = Field(description="CSV line number (the header is line 1)")
    field: str | None
    message: str


class ImportReport(BaseModel):
    created: int
    ids: list[int]


class ImportRejected(FieldtrackError):
    """The file was refused; nothing was imported."""

    def __init__(self, errors: list[RowError]) -> None:
        super().__init__(f"{len(errors)} row error(s); nothing was imported")
        self.errors = errors


Resolver = Callable[[psycopg.Connection, dict[str, Any]], None]


def _by_name(column: str, target: str, query: str, what: str) -> Resolver:
    def resolve(conn: psycopg.Connection, row: dict[str, Any]) -> None:
        name = row.pop(column, None)
        if name is None:
            return
        found = conn.execute(query, (name,)).fetchone()
        if found is None:
            raise InvalidInputError(f"{what} {name!r} does not exist", field=column)
        given = row.get(target)
        if given is not None and str(given) != str(found[0]):
            raise InvalidInputError(
                f"{column} {name!r} is {what} {found[0]}, but {target} says {given}", field=column
            )
        row[target] = found[0]

    return resolve


@dataclass(frozen=True)
class ImportKind:
    resource: Resource[Any]
    model: type[BaseModel]
    resolvers: tuple[Resolver, ...] = ()
    natural_keys: frozenset[str] = frozenset()  # columns a resolver turns into ids


KINDS: Mapping[str, ImportKind] = {
    "customers": ImportKind(CUSTOMERS, models.CustomerCreate),
    "projects": ImportKind(
        PROJECTS,
        models.ProjectCreate,
        (
            _by_name(
                "customer", "customer_id", "SELECT id FROM customers WHERE name = %s", "customer"
            ),
        ),
        frozenset({"customer"}),
    ),
    "features": ImportKind(FEATURES, models.FeatureCreate),
    "deliveries": ImportKind(
        DELIVERIES,
        models.DeliveryCreate,
        (
            _by_name(
                "feature_key", "feature_id", "SELECT id FROM features WHERE key = %s", "feature"
            ),
        ),
        frozenset({"feature_key"}),
    ),
}


def read_rows(
    text: str, model: type[BaseModel], extra: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """Rows as dicts, header checked against the model's fields."""
    # Spreadsheets often save UTF-8 with a byte-order mark; it is not part of the header.
    # newline="": the csv module reads line endings itself (a lone CR included).
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    try:
        return _read_records(reader, model, extra)
    except csv.Error as exc:  # a file the csv module cannot read at all (e.g. a huge cell)
        raise ImportRejected(
            [
                RowError(
                    row=max(reader.line_num, 1), field=None, message=f"not readable as CSV: {exc}"
                )
            ]
        ) from exc


def _read_records(
    reader: csv.DictReader[str], model: type[BaseModel], extra: frozenset[str]
) -> list[dict[str, Any]]:
    header = reader.fieldnames or []
    allowed = set(model.model_fields) | extra
    unknown = [h for h in header if h not in allowed]
    if not header or unknown:
        raise ImportRejected(
            [
                RowError(
                    row=1,
                    field=None,
                    message=(
                        f"unknown column(s) {', '.join(map(repr, unknown))}; "
                        if unknown
                        else "no header; "
                    )
                    + f"expected some of: {', '.join(sorted(allowed))}",
                )
            ]
        )
    rows: list[dict[str, Any]] = []
    for record in reader:
        if len(rows) >= MAX_IMPORT_ROWS:
            raise ImportRejected(
                [
                    RowError(
                        row=1,
                        field=None,
                        message=f"more than {MAX_IMPORT_ROWS} rows; split the file",
                    )
                ]
            )
        if None in record:
            rows.append({"__error__": "more cells than header columns"})
            continue
        row: dict[str, Any] = {}
        for key, value in record.items():
            if value not in ("", None):
                row[key] = value.split(";") if key in LIST_COLUMNS else value
        rows.append(row)
    if not rows:
        raise ImportRejected([RowError(row=1, field=None, message="the file has no data rows")])
    return rows


def validate_rows(
    conn: psycopg.Connection, rows: list[dict[str, Any]], kind: ImportKind
) -> tuple[list[tuple[int, BaseModel]], list[RowError]]:
    items: list[tuple[int, BaseModel]] = []
    errors: list[RowError] = []
    for line, row in enumerate(rows, start=2):
        if "__error__" in row:
            errors.append(RowError(row=line, field=None, message=row["__error__"]))
            continue
        try:
            for resolve in kind.resolvers:
                resolve(conn, row)
            items.append((line, kind.model.model_validate(row)))
        except InvalidInputError as exc:
            errors.append(RowError(row=line, field=exc.field, message=str(exc)))
        except ValidationError as exc:
            errors += [
                RowError(
                    row=line, field=".".join(str(p) for p in err["loc"]) or None, message=err["msg"]
                )
                for err in exc.errors(include_url=False)
            ]
    return items, errors


def import_csv(conn: psycopg.Connection, kind_name: str, text: str) -> ImportReport:
    kind = KINDS[kind_name]
    items, errors = validate_rows(conn, read_rows(text, kind.model, kind.natural_keys), kind)
    if errors:
        raise ImportRejected(errors)
    ids: list[int] = []
    with conn.transaction():
        for line, item in items:
            try:
                ids.append(create_item(conn, kind.resource, item).id)
            except (ConflictError, InvalidInputError) as exc:
                errors.append(
                    RowError(row=line, field=getattr(exc, "field", None), message=str(exc))
                )
        if errors:
            raise ImportRejected(errors)  # leaving the transaction rolls every row back
    return ImportReport(created=len(ids), ids=ids)


def import_devices(
    conn: psycopg.Connection, admin: DeviceIdentities, text: str
) -> list[models.ProvisionedDevice]:
    """Provision every device in the file, or none; returns each password once."""
    kind = ImportKind(DEVICES, models.DeviceCreate)
    items, errors = validate_rows(conn, read_rows(text, models.DeviceCreate), kind)
    devices = [item for _, item in items if isinstance(item, models.DeviceCreate)]
    errors += check_devices(conn, [(line, d) for (line, _), d in zip(items, devices, strict=True)])
    if errors:
        raise ImportRejected(sorted(errors, key=lambda e: e.row))
    return provisioning.provision(conn, admin, devices)


def check_devices(
    conn: psycopg.Connection, devices: list[tuple[int, models.DeviceCreate]]
) -> list[RowError]:
    """Duplicates (in the file or the registry) and unknown projects, attributed to rows."""
    errors: list[RowError] = []
    serials = [d.serial for _, d in devices]
    existing = {
        r[0] for r in conn.execute("SELECT serial FROM devices WHERE serial = ANY(%s)", (serials,))
    }
    projects = {
        r[0]
        for r in conn.execute(
            "SELECT id FROM projects WHERE id = ANY(%s)",
            (list({d.project_id for _, d in devices}),),
        )
    }
    seen: dict[str, int] = {}
    for line, device in devices:
        if device.serial in existing:
            errors.append(
                RowError(
                    row=line, field="serial", message=f"device {device.serial!r} exists already"
                )
            )
        elif device.serial in seen:
            first = seen[device.serial]
            errors.append(
                RowError(
                    row=line,
                    field="serial",
                    message=f"serial {device.serial!r} repeats line {first}",
                )
            )
        seen.setdefault(device.serial, line)
        if device.project_id not in projects:
            errors.append(
                RowError(
                    row=line,
                    field="project_id",
                    message=f"project {device.project_id} does not exist",
                )
            )
    return errors


def credentials_csv(provisioned: list[models.ProvisionedDevice]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(("serial", "password", "project_id", "device_id"))
    for p in provisioned:
        writer.writerow((p.device.serial, p.password, p.device.project_id, p.device.id))
    return out.getvalue()
