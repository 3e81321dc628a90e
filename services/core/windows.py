"""The time window every reader of usage shares: one value type, one default, one limit."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.core.errors import InvalidInputError

# Usage, analytics and their exports (API, pages, CLI, CSV) look back this far by default:
# one window, so one project never gets two verdicts from two defaults.
DEFAULT_WINDOW_DAYS = 30
# The longest window anyone may ask for: the rollups answer it in bounded time.
MAX_WINDOW_DAYS = 400
MAX_WINDOW = timedelta(days=MAX_WINDOW_DAYS)
# Operations lists (quarantine, a device's telemetry) look at the last week by default.
OPS_WINDOW_DAYS = 7
DAYS_RE = re.compile(r"^(\d{1,4})d$")


@dataclass(frozen=True)
class Window:
    """A time window [since, until).

    Built directly from times already checked (a previous window, a measured part); a window
    someone asks for is built with `asked` or `last`, which apply the limit."""

    since: datetime
    until: datetime

    @property
    def days(self) -> float:
        return (self.until - self.since) / timedelta(days=1)

    @property
    def previous(self) -> datetime:
        """The start of the window of the same length just before this one."""
        return self.since - (self.until - self.since)

    @classmethod
    def asked(
        cls,
        since: datetime | None,
        until: datetime | None,
        *,
        default_days: int = DEFAULT_WINDOW_DAYS,
        location: str = "query",
    ) -> Window:
        """The window a caller asked for: *until* defaults to now, *since* to *default_days*
        before it; both need a time zone, *since* comes first and the span is within the
        limit (an InvalidInputError naming the field otherwise)."""
        for name, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                raise InvalidInputError(
                    "needs a time zone, e.g. 2026-01-31T00:00:00Z", field=name, location=location
                )
        end = (until or datetime.now(UTC)).astimezone(UTC)
        start = (since or end - timedelta(days=default_days)).astimezone(UTC)
        if start >= end:
            raise InvalidInputError("since must be before until", field="since", location=location)
        if end - start > MAX_WINDOW:
            raise InvalidInputError(
                f"the window may span at most {MAX_WINDOW_DAYS} days",
                field="since",
                location=location,
            )
        return cls(start, end)

    @classmethod
    def last(cls, days: int, until: datetime | None = None) -> Window:
        """The *days* days that end at *until* (default now), within the limit."""
        end = until or datetime.now(UTC)
        return cls.asked(end - timedelta(days=days), end)


def parse_days(text: str) -> int:
    """`30d`, `7d`, `90d` or any `Nd` → N days, from 1 to the limit."""
    match = DAYS_RE.match(text.strip().lower())
    days = int(match[1]) if match else 0
    if not 1 <= days <= MAX_WINDOW_DAYS:
        raise InvalidInputError(
            f"{text!r} is not a window: use a number of days like 7d, 30d or 90d "
            f"(1d to {MAX_WINDOW_DAYS}d)",
            field="window",
        )
    return days
