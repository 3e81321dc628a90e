"""What every dashboard page shares: the caller's navigation, the time window, rendering."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

import psycopg
from fastapi import Depends, Query, Request
from fastapi.responses import HTMLResponse

from services.accounts.roles import Permission, Principal
from services.alerts.notify import ALERTS_PAGE
from services.alerts.store import open_counts
from services.api.templates import templates
from services.core.errors import InvalidInputError
from services.core.windows import DEFAULT_WINDOW_DAYS, MAX_WINDOW_DAYS, Window

WINDOW_DAYS = (7, DEFAULT_WINDOW_DAYS, 90)


def _moment(text: str | None, field: str, *, end: bool) -> datetime | None:
    """A date from the picker (whole UTC days; an end date is included) or an ISO time."""
    if not text:
        return None
    try:
        if len(text) == len("2026-01-31"):
            day = datetime.combine(date.fromisoformat(text), time(), tzinfo=UTC)
            return day + timedelta(days=1) if end else day
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidInputError(
            "must be a date (2026-01-31) or an ISO time", field=field, location="query"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class PageWindow:
    """A page's window: the last *days* days, or custom (*days* None) from the picker."""

    window: Window
    days: int | None = None

    @property
    def since(self) -> datetime:
        return self.window.since

    @property
    def until(self) -> datetime:
        return self.window.until

    @property
    def custom(self) -> bool:
        return self.days is None

    @property
    def query(self) -> str:
        """The window as query parameters, for links and API calls from the page."""
        if self.custom:
            return urlencode({"since": self.since.isoformat(), "until": self.until.isoformat()})
        return urlencode({"days": self.days})

    @property
    def api_query(self) -> str:
        return urlencode({"since": self.since.isoformat(), "until": self.until.isoformat()})

    @property
    def last_day(self) -> date:
        """The last day the window touches (its end is exclusive), for the date picker."""
        return (self.until - timedelta(microseconds=1)).date()

    @property
    def label(self) -> str:
        if not self.custom:
            return f"last {self.days} day{'' if self.days == 1 else 's'}"
        return f"{self.since:%Y-%m-%d %H:%M} – {self.until:%Y-%m-%d %H:%M} UTC"


DaysQuery = Annotated[int | None, Query(ge=1, le=MAX_WINDOW_DAYS, description="window length")]
MomentQuery = Annotated[str | None, Query(max_length=40)]


def window_from(
    days: int | None, since: str | None, until: str | None, default_days: int
) -> PageWindow:
    """`?days=N` (ending now) or a custom `?since=…&until=…` (dates from the picker, or ISO
    times); neither: the last *default_days* days."""
    start, end = _moment(since, "since", end=False), _moment(until, "until", end=True)
    if start is None and end is None:
        # ending now to the microsecond: a status from this second counts
        return PageWindow(Window.last(days or default_days), days or default_days)
    return PageWindow(Window.asked(start, end, default_days=default_days))


def page_window(
    days: DaysQuery = None, since: MomentQuery = None, until: MomentQuery = None
) -> PageWindow:
    """A usage page's window: by default the last 30 days, as the API and the CLI."""
    return window_from(days, since, until, DEFAULT_WINDOW_DAYS)


PageWindowDep = Annotated[PageWindow, Depends(page_window)]


NAV: tuple[tuple[str, str, Permission], ...] = (
    ("Customers", "/dashboards/customers", Permission.READ_REGISTRY),
    ("Portfolio", "/dashboards/portfolio", Permission.READ_PORTFOLIO),
    ("Fleet", "/dashboards/fleet", Permission.READ_FLEET),
    ("Ingest", "/dashboards/ingest", Permission.READ_INGEST),
    ("Alerts", ALERTS_PAGE, Permission.READ_ALERTS),
)


def navigation(caller: Principal) -> list[tuple[str, str]]:
    return [(label, href) for label, href, needs in NAV if caller.can(needs)]


def home_of(caller: Principal) -> str:
    """Where a role starts: its customer for a viewer, the fleet for ops, customers else."""
    if caller.customer_scope is not None:
        return f"/dashboards/customers/{caller.customer_scope}"
    if not caller.can(Permission.READ_USAGE) and caller.can(Permission.READ_INGEST):
        return "/dashboards/fleet"
    return "/dashboards/customers"


def render(
    request: Request,
    conn: psycopg.Connection,
    template: str,
    caller: Principal,
    window: PageWindow | None = None,
    **context: Any,
) -> HTMLResponse:
    """A page with the top bar: the caller's navigation and the badge of firing alerts they
    may see (one COUNT on the page's own connection)."""
    firing = open_counts(conn, caller)[0] if caller.can(Permission.READ_ALERTS) else 0
    return templates.TemplateResponse(
        request,
        template,
        {
            "caller": caller,
            "nav": navigation(caller),
            "alerts_page": ALERTS_PAGE,
            "alerts_firing": firing,
            "window": window,
            "window_days": WINDOW_DAYS,
            "default_window_days": DEFAULT_WINDOW_DAYS,
            "max_window_days": MAX_WINDOW_DAYS,
            "can": caller.can,
            "P": Permission,
            **context,
        },
    )
