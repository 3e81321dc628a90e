"""The database: the pool and its lifecycle, and what every store shares about it (the
largest id a column holds, one row or "not found", and the database's refusals a client can
cause, in fieldtrack's own errors)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

import psycopg
from psycopg import errors as pg_errors, sql
from psycopg.abc import Params
from psycopg.rows import class_row
from psycopg_pool import ConnectionPool
from pydantic import SecretStr

from services.core.errors import ConflictError, InvalidInputError, NotFoundError
from services.core.settings import Settings

POOL_OPEN_TIMEOUT_S = 30.0
MAX_BIGINT = 2**63 - 1  # the largest bigint: ids above it cannot exist

RowT = TypeVar("RowT")
_KEY_DETAIL = re.compile(r"Key \((?P<cols>[^)]*)\)=\((?P<vals>.*)\)")


def _pool(url: SecretStr, settings: Settings) -> ConnectionPool[psycopg.Connection]:
    return ConnectionPool(
        url.get_secret_value(),
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        open=False,
        kwargs={"connect_timeout": 5},
        check=ConnectionPool.check_connection,
    )


def open_pool(settings: Settings) -> ConnectionPool[psycopg.Connection]:
    """Open a pool and wait until it holds its minimum connections (fail fast at start-up)."""
    pool = _pool(settings.database_url, settings)
    pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
    return pool


def open_read_pool(settings: Settings) -> ConnectionPool[psycopg.Connection] | None:
    """The read replica's pool, if one is configured. Not waited for: a replica that is down
    at start-up is read from once it is back, and the primary serves meanwhile."""
    if settings.database_read_url is None:
        return None
    pool = _pool(settings.database_read_url, settings)
    pool.open(wait=False)
    return pool


def fetch_one(
    conn: psycopg.Connection,
    query: str | sql.Composed,
    params: Params,
    row_type: type[RowT],
    what: str,
) -> RowT:
    """The row *query* finds, as a *row_type*; none is a NotFoundError: "{what} not found"."""
    with conn.cursor(row_factory=class_row(row_type)) as cur:
        row = cur.execute(query, params).fetchone()
    if row is None:
        raise NotFoundError(f"{what} not found")
    return row


class Labelled(Protocol):
    """Anything that says what it stores, as people say it ("customer"): a registry resource."""

    @property
    def label(self) -> str: ...


@contextmanager
def translate_errors(
    resource: Labelled | str | None = None, *, deleting: bool = False
) -> Iterator[None]:
    """Turn database refusals a client can cause into fieldtrack errors."""
    label = resource if isinstance(resource, str) else resource.label if resource else "item"
    try:
        yield
    except pg_errors.UniqueViolation as exc:
        match = _KEY_DETAIL.search(exc.diag.message_detail or "")
        what = f" with {match['cols']} = {match['vals']}" if match else ""
        field = match["cols"] if match else None
        raise ConflictError(f"a {label}{what} exists already", field=field) from exc
    except pg_errors.ForeignKeyViolation as exc:
        if deleting:
            raise ConflictError(f"{label} is still referenced by other data") from exc
        match = _KEY_DETAIL.search(exc.diag.message_detail or "")
        column = match["cols"] if match else None
        value = match["vals"] if match else "?"
        raise InvalidInputError(
            f"{column or 'reference'} {value} does not exist", field=column
        ) from exc
    except (pg_errors.CheckViolation, pg_errors.NotNullViolation) as exc:
        raise InvalidInputError(
            f"{label} refused by the database: {exc.diag.message_primary}",
            field=exc.diag.column_name,
        ) from exc
    except pg_errors.DataError as exc:
        raise InvalidInputError(f"value out of range: {exc.diag.message_primary}") from exc
