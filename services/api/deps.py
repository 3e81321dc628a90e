"""Dependencies shared by the routes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated

import psycopg
from fastapi import Depends, HTTPException, Query, Request, status
from psycopg_pool import ConnectionPool

DEFAULT_WINDOW = timedelta(days=7)
MAX_WINDOW = timedelta(days=400)


def get_conn(request: Request) -> Iterator[psycopg.Connection]:
    pool: ConnectionPool[psycopg.Connection] = request.app.state.pool
    with pool.connection() as conn:
        yield conn


ConnDep = Annotated[psycopg.Connection, Depends(get_conn)]


class Window:
    """A time window [since, until) from query parameters, validated."""

    def __init__(
        self,
        since: Annotated[
            datetime | None, Query(description="start, ISO 8601 with zone; default until − 7 days")
        ] = None,
        until: Annotated[
            datetime | None, Query(description="end (exclusive), ISO 8601 with zone; default now")
        ] = None,
    ) -> None:
        for name, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    f"{name} needs a time zone, e.g. 2026-01-31T00:00:00Z",
                )
        self.until = (until or datetime.now(UTC)).astimezone(UTC)
        self.since = (since or self.until - DEFAULT_WINDOW).astimezone(UTC)
        if self.since >= self.until:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "since must be before until")
        if self.until - self.since > MAX_WINDOW:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"the window may span at most {MAX_WINDOW.days} days",
            )


WindowDep = Annotated[Window, Depends()]
