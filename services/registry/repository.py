"""One CRUD engine for every registry resource, driven by a declarative `Resource`.

Identifiers come only from the resource declarations (psycopg.sql), every value is bound,
and database errors a client can cause are translated into fieldtrack's own errors:
duplicates and still-referenced rows are conflicts, unknown references and values the
database refuses are invalid input (services/core/db.py, shared with the other stores).
Nothing a client sends becomes a 500.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Generic, Literal, TypeVar, Union, get_args, get_origin

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from services.core.db import translate_errors
from services.core.errors import ConflictError, InvalidInputError, NotFoundError
from services.registry.models import Page

OutT = TypeVar("OutT", bound=BaseModel)

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50


@dataclass(frozen=True)
class Filter:
    """A query parameter that narrows a list: equality, or array containment. Its value has
    the type of `column` in the resource's `out` model (an array's element, for contains)."""

    column: str
    op: Literal["eq", "contains"] = "eq"
    description: str | None = None  # for the help of the API and the command line


def value_annotation(annotation: Any, op: str) -> Any:
    """What one value of a filter on a field annotated so is: `X | None` is X; a contains
    filter compares one element of a `list[X]`."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    if op == "contains":
        (annotation,) = get_args(annotation)
    return annotation


@dataclass(frozen=True)
class Dependent:
    """Rows elsewhere that keep an item from being deleted."""

    table: str
    column: str
    label: str


@dataclass(frozen=True)
class Resource(Generic[OutT]):
    label: str  # singular, as people say it: "customer"
    table: str  # where writes go
    view: str  # where reads come from (may join for display fields)
    out: type[OutT]
    sortable: frozenset[str]
    default_sort: str
    filters: Mapping[str, Filter] = field(default_factory=dict)
    search_columns: tuple[str, ...] = ()
    dependents: tuple[Dependent, ...] = ()
    json_columns: frozenset[str] = frozenset()
    # the column (of `view`) naming the customer an item belongs to; None for shared data
    customer_column: str | None = None
    # Fields for the solution company's staff only (segmentation, money, our judgement).
    # A customer viewer reads `viewer_out`, which lacks them, and may not sort, filter or
    # search by them either: the order or the presence of rows would give them away.
    internal: frozenset[str] = frozenset()
    viewer_out: type[BaseModel] | None = None
    # set only on the form `for_viewers` makes: refused with a reason, not as unknown
    withheld: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # The two models and `internal` must agree, so a field added to the staff model
        # alone is a decision someone makes here, not a silent leak to viewers.
        shown = set((self.viewer_out or self.out).model_fields)
        hidden = set(self.out.model_fields) - shown
        if not shown <= set(self.out.model_fields) or hidden != self.internal:
            raise ValueError(
                f"{self.label}: internal fields {sorted(self.internal)} must be exactly "
                f"those of the staff model missing from the viewer model {sorted(hidden)}"
            )
        if self.default_sort.removeprefix("-") in self.internal:
            raise ValueError(f"{self.label}: the default sort cannot be an internal field")

    def filter_type(self, key: str) -> type:
        """The type of a filter's value: that of the field it narrows in `out`."""
        flt = self.filters[key]
        annotation = value_annotation(self.out.model_fields[flt.column].annotation, flt.op)
        if not isinstance(annotation, type):
            raise TypeError(f"{self.label}: filter {key} narrows a field of no plain type")
        return annotation

    def for_viewers(self) -> Resource[Any]:
        """The resource as a customer viewer reads it: the viewer model, nothing internal
        to sort, filter or search by."""
        if self.viewer_out is None:
            return self
        staff: Resource[Any] = self  # typed loosely: its `out` becomes another model
        hidden = self.internal
        return replace(
            staff,
            out=self.viewer_out,
            viewer_out=None,
            internal=frozenset(),
            sortable=self.sortable - hidden,
            filters={n: f for n, f in self.filters.items() if f.column not in hidden},
            search_columns=tuple(c for c in self.search_columns if c not in hidden),
            withheld=hidden | {n for n, f in self.filters.items() if f.column in hidden},
        )


def _bindable(resource: Resource[Any], data: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in resource.json_columns:
            values[key] = Jsonb(value)
        elif isinstance(value, Enum):
            values[key] = value.value
        else:
            values[key] = value
    return values


def parse_sort(resource: Resource[Any], sort: str | None) -> tuple[str, bool]:
    """`name` or `-name` → (column, descending); unknown columns are a 422 listing choices."""
    text = sort or resource.default_sort
    descending = text.startswith("-")
    column = text.removeprefix("-")
    if column in resource.withheld:
        raise InvalidInputError(
            f"sorting by {column} is not available to customer viewers",
            field="sort",
            location="query",
        )
    if column not in resource.sortable:
        raise InvalidInputError(
            f"cannot sort {resource.label}s by {column!r}; choose one of "
            f"{', '.join(sorted(resource.sortable))} (prefix - for descending)",
            field="sort",
            location="query",
        )
    return column, descending


def list_items(
    conn: psycopg.Connection,
    resource: Resource[OutT],
    *,
    filters: Mapping[str, Any],
    search: str | None,
    sort: str | None,
    limit: int,
    offset: int,
    customer_id: int | None = None,
) -> Page[OutT]:
    """One page of items; with customer_id, only that customer's."""
    column, descending = parse_sort(resource, sort)
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    if customer_id is not None and resource.customer_column is not None:
        clauses.append(_scope_clause(resource))
        params.append(customer_id)
    for name, value in filters.items():
        if value is None:
            continue
        if name in resource.withheld:
            raise InvalidInputError(
                f"filtering by {name} is not available to customer viewers",
                field=name,
                location="query",
            )
        spec = resource.filters[name]
        if spec.op == "contains":
            clauses.append(sql.SQL("{} @> %s").format(sql.Identifier(spec.column)))
            params.append([value])
        else:
            clauses.append(sql.SQL("{} = %s").format(sql.Identifier(spec.column)))
            params.append(value.value if isinstance(value, Enum) else value)
    if search:
        pattern = "%" + re.sub(r"([\\%_])", r"\\\1", search) + "%"
        clauses.append(
            sql.SQL("({})").format(
                sql.SQL(" OR ").join(
                    sql.SQL("{}::text ILIKE %s").format(sql.Identifier(c))
                    for c in resource.search_columns
                )
            )
        )
        params += [pattern] * len(resource.search_columns)
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")
    order = sql.SQL(" ORDER BY {} {} NULLS LAST, id").format(
        sql.Identifier(column), sql.SQL("DESC" if descending else "ASC")
    )
    view = sql.Identifier(resource.view)
    total_row = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(view) + where, params
    ).fetchone()
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            sql.SQL("SELECT {} FROM {}").format(_columns(resource), view)
            + where
            + order
            + sql.SQL(" LIMIT %s OFFSET %s"),
            [*params, limit, offset],
        ).fetchall()
    return Page[resource.out](  # type: ignore[name-defined]
        items=[resource.out.model_validate(row) for row in rows],
        total=int(total_row[0]) if total_row else 0,
        limit=limit,
        offset=offset,
    )


def _scope_clause(resource: Resource[Any]) -> sql.Composable:
    return sql.SQL("{} = %s").format(sql.Identifier(resource.customer_column or "id"))


def _columns(resource: Resource[Any]) -> sql.Composable:
    """Every column for staff; for a viewer's form only its model's fields, so internal
    values never leave the database on a viewer's behalf."""
    if not resource.withheld:
        return sql.SQL("*")
    return sql.SQL(", ").join(map(sql.Identifier, resource.out.model_fields))


def get_item(
    conn: psycopg.Connection, resource: Resource[OutT], item_id: int, customer_id: int | None = None
) -> OutT:
    """One item; with customer_id, another customer's item is "not found" (ids stay secret)."""
    query = sql.SQL("SELECT {} FROM {} WHERE id = %s").format(
        _columns(resource), sql.Identifier(resource.view)
    )
    params: list[Any] = [item_id]
    if customer_id is not None and resource.customer_column is not None:
        query += sql.SQL(" AND ") + _scope_clause(resource)
        params.append(customer_id)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query, params).fetchone()
    if row is None:
        raise NotFoundError(f"{resource.label} {item_id} not found")
    return resource.out.model_validate(row)


def create_item(conn: psycopg.Connection, resource: Resource[OutT], data: BaseModel) -> OutT:
    values = _bindable(resource, data.model_dump())
    query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
        sql.Identifier(resource.table),
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(sql.Placeholder(k) for k in values),
    )
    with translate_errors(resource), conn.transaction():
        row = conn.execute(query, values).fetchone()
    assert row is not None  # noqa: S101 - INSERT … RETURNING always returns the row
    return get_item(conn, resource, int(row[0]))


def update_item(
    conn: psycopg.Connection, resource: Resource[OutT], item_id: int, data: BaseModel
) -> OutT:
    changes = data.model_dump(exclude_unset=True)
    if not changes:
        return get_item(conn, resource, item_id)
    values = _bindable(resource, changes)
    query = sql.SQL("UPDATE {} SET {} WHERE id = {} RETURNING id").format(
        sql.Identifier(resource.table),
        sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in values
        ),
        sql.Placeholder("__id"),
    )
    with translate_errors(resource), conn.transaction():
        row = conn.execute(query, {**values, "__id": item_id}).fetchone()
    if row is None:
        raise NotFoundError(f"{resource.label} {item_id} not found")
    return get_item(conn, resource, item_id)


def delete_item(conn: psycopg.Connection, resource: Resource[Any], item_id: int) -> None:
    with conn.transaction():
        get_item(conn, resource, item_id)
        blockers = []
        for dep in resource.dependents:
            row = conn.execute(
                sql.SQL(
                    "SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} = %s LIMIT 1000) x"
                ).format(sql.Identifier(dep.table), sql.Identifier(dep.column)),
                (item_id,),
            ).fetchone()
            if row and row[0]:
                blockers.append(f"{row[0]}{'+' if row[0] == 1000 else ''} {dep.label}")
        if blockers:
            raise ConflictError(
                f"{resource.label} {item_id} still has {' and '.join(blockers)}; "
                "remove those first (history is never deleted implicitly)"
            )
        with translate_errors(resource, deleting=True):
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(resource.table)),
                (item_id,),
            )
