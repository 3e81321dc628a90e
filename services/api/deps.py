"""Dependencies shared by the routes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated

import psycopg
from fastapi import Depends, Query, Request
from psycopg_pool import ConnectionPool

from services.api.reads import ReadRouter, writer_key
from services.core.errors import InvalidInputError
from services.core.identities import DeviceIdentities, open_identities
from services.core.settings import Settings
from services.core.thresholds import AnalyticsThresholds
from services.core.windows import DEFAULT_WINDOW_DAYS, OPS_WINDOW_DAYS, Window
from services.registry.repository import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

MAX_OFFSET = 1_000_000
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The dashboards' session cookie (set and read by services/api/auth.py).
SESSION_COOKIE = "fieldtrack_session"


def caller_key(request: Request) -> str | None:
    """The caller's credentials, as the read router remembers their writes by."""
    return writer_key(request.headers.get("Authorization"), request.cookies.get(SESSION_COOKIE))


def get_conn(request: Request) -> Iterator[psycopg.Connection]:
    """The primary: every write, and the reads that must see the caller's writes at once."""
    pool: ConnectionPool[psycopg.Connection] = request.app.state.pool
    reads: ReadRouter | None = request.app.state.reads
    with pool.connection() as conn:
        yield conn
        if reads is not None and request.method not in SAFE_METHODS:
            conn.commit()
            reads.wrote(caller_key(request), conn)


# scope="function": the transaction commits (and the connection goes back to the pool) when
# the route returns, before the response is sent. With the default ("request") it committed
# after, so a browser following a redirect at once (login → home page, decision form → the
# project page) could arrive before the session or the decision was visible, and be sent
# back to the login form — a race the real-browser tests hit about one login in ten.
ConnDep = Annotated[psycopg.Connection, Depends(get_conn, scope="function")]


def get_read_conn(request: Request, primary: ConnDep) -> Iterator[psycopg.Connection]:
    """The read replica for analytics, pages and exports when it is configured, up and has
    the caller's own writes; else the request's primary connection (services/api/reads.py)."""
    reads: ReadRouter | None = request.app.state.reads
    if reads is None:
        yield primary
        return
    with reads.connection(caller_key(request)) as replica:
        yield primary if replica is None else replica


ReadConnDep = Annotated[psycopg.Connection, Depends(get_read_conn, scope="function")]


def get_broker_admin(request: Request) -> Iterator[DeviceIdentities]:
    """The broker's device identities for this request (provisioning is rare; keep it
    simple)."""
    settings: Settings = request.app.state.settings
    with open_identities(settings) as admin:
        yield admin


BrokerDep = Annotated[DeviceIdentities, Depends(get_broker_admin)]


def get_thresholds(request: Request) -> AnalyticsThresholds:
    """The analytics' lines, as configured (FIELDTRACK_ANALYTICS__<NAME>)."""
    settings: Settings = request.app.state.settings
    return settings.analytics


ThresholdsDep = Annotated[AnalyticsThresholds, Depends(get_thresholds)]


PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="page size")]
Skip = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")]


class PageParams:
    """Paging alone, for a list whose orders are its own (no free-text search)."""

    def __init__(self, limit: PageSize = DEFAULT_PAGE_SIZE, offset: Skip = 0) -> None:
        self.limit, self.offset = limit, offset


class ListParams:
    """Paging, sorting and free-text search shared by every registry list route."""

    def __init__(
        self,
        limit: PageSize = DEFAULT_PAGE_SIZE,
        offset: Skip = 0,
        sort: Annotated[
            str | None,
            Query(max_length=64, description="field to sort by; prefix - for descending"),
        ] = None,
        q: Annotated[
            str | None, Query(min_length=1, max_length=200, description="case-insensitive search")
        ] = None,
    ) -> None:
        if q is not None and "\x00" in q:
            raise InvalidInputError("must not contain NUL characters", field="q", location="query")
        self.limit, self.offset, self.sort, self.q = limit, offset, sort, q


PageDep = Annotated[PageParams, Depends()]
ListDep = Annotated[ListParams, Depends()]


SinceQuery = Annotated[
    datetime | None,
    Query(
        description=f"start, ISO 8601 with zone; default until − {DEFAULT_WINDOW_DAYS} "
        f"days for usage and analytics, − {OPS_WINDOW_DAYS} days for operations lists"
    ),
]
UntilQuery = Annotated[
    datetime | None, Query(description="end (exclusive), ISO 8601 with zone; default now")
]


def ops_window(since: SinceQuery = None, until: UntilQuery = None) -> Window:
    """An operations list's window from `?since=…&until=…`: by default the last week."""
    return Window.asked(since, until, default_days=OPS_WINDOW_DAYS)


def usage_window(since: SinceQuery = None, until: UntilQuery = None) -> Window:
    """The window of usage, analytics and their exports: by default the last 30 days, the same
    as the pages and the CLI."""
    return Window.asked(since, until, default_days=DEFAULT_WINDOW_DAYS)


WindowDep = Annotated[Window, Depends(ops_window)]
UsageWindowDep = Annotated[Window, Depends(usage_window)]
