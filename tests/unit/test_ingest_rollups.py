"""services/ingest/rollups.py: the pieces of a rollup build must start and end on whole
hours, or two rows would share an hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.ingest.rollups import hourly_rollups


@pytest.mark.parametrize(
    ("since", "until"),
    [
        (datetime(2026, 1, 1, 0, 30, tzinfo=UTC), None),
        (None, datetime(2026, 1, 1, 1, 0, 1, tzinfo=UTC)),
        (datetime(2026, 1, 1, tzinfo=timezone(timedelta(minutes=30))), None),
    ],
)
def test_a_piece_off_the_hour_is_refused_before_any_statement(
    since: datetime | None, until: datetime | None
) -> None:
    with pytest.raises(ValueError, match="whole UTC hours"):
        hourly_rollups(None, since, until)  # type: ignore[arg-type]  # never reached
