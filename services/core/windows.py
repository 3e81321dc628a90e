"""The time windows every reader of usage shares: one default, one limit."""

from __future__ import annotations

# Usage, analytics and their exports (API, pages, CLI, CSV) look back this far by default:
# one window, so one project never gets two verdicts from two defaults.
DEFAULT_WINDOW_DAYS = 30
# The longest window any route accepts: the rollups answer it in bounded time.
MAX_WINDOW_DAYS = 400
# Operations lists (quarantine, a device's telemetry) look at the last week by default.
OPS_WINDOW_DAYS = 7
