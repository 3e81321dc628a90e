"""The retention job's plan: cutoffs per project, whole chunks dropped only past every cutoff,
and per-project deletes bounded to one chunk and to the project's cutoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.ingest.retention import Chunk, Delete, cutoffs, plan

NOW = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
MIDNIGHT = NOW.replace(hour=0)


def daily_chunks(table: str, days: int) -> list[Chunk]:
    """One chunk per UTC day, the newest holding NOW."""
    return [Chunk(table, MIDNIGHT - n * DAY, MIDNIGHT - (n - 1) * DAY) for n in range(days, -1, -1)]


def test_a_project_without_retention_days_takes_the_default() -> None:
    assert cutoffs({1: 7, 2: None}, 400, NOW) == {1: NOW - 7 * DAY, 2: NOW - 400 * DAY}


def test_chunks_past_every_cutoff_are_dropped_and_the_rest_deleted_per_project() -> None:
    cut = cutoffs({1: 7, 2: 20}, 20, NOW)
    chunks = daily_chunks("usage_events", 40)
    oldest = {("usage_events", 1): MIDNIGHT - 40 * DAY, ("usage_events", 2): MIDNIGHT - 40 * DAY}
    work = plan(chunks, cut, NOW - 20 * DAY, oldest)

    # the oldest cutoff (project 2 and the default) is 20 days: chunks ending by then go whole
    assert [c.end for c in work.drops] == [MIDNIGHT - n * DAY for n in range(39, 19, -1)]
    assert all(c.end <= NOW - 20 * DAY for c in work.drops)
    dropped = {c.start for c in work.drops}
    assert all(d.start not in dropped for d in work.deletes)
    # project 2: only the chunk its cutoff falls in (20 days ago at noon); project 1: every
    # chunk older than 7 days that was not dropped, the last one up to its cutoff
    by_project = {p: [d for d in work.deletes if d.project_id == p] for p in (1, 2)}
    assert by_project[2] == [Delete("usage_events", 2, MIDNIGHT - 20 * DAY, NOW - 20 * DAY)]
    assert [d.start for d in by_project[1]] == [MIDNIGHT - n * DAY for n in range(20, 6, -1)]
    assert by_project[1][-1].before == NOW - 7 * DAY
    assert all(d.before <= cut[d.project_id] and d.before - d.start <= DAY for d in work.deletes)
    assert work.recorded_cutoffs() == {1: NOW - 7 * DAY, 2: NOW - 20 * DAY}


def test_the_default_cutoff_bounds_what_is_dropped() -> None:
    """Rows of projects not listed (none can be, but the job must not guess) follow the
    default: nothing newer than it is dropped whole, however short every listed project's
    retention is."""
    work = plan(daily_chunks("metric_samples", 10), cutoffs({1: 1}, 5, NOW), NOW - 5 * DAY, {})
    assert max(c.end for c in work.drops) == MIDNIGHT - 5 * DAY
    assert work.deletes == []  # project 1 has no rows (no oldest): nothing to delete


def test_only_chunks_from_a_projects_oldest_row_on_are_visited() -> None:
    """A second pass finds no row older than the cutoff and plans nothing for it."""
    cut = cutoffs({1: 3}, 400, NOW)
    chunks = daily_chunks("usage_events", 30)
    oldest = {("usage_events", 1): MIDNIGHT - 5 * DAY + timedelta(hours=2)}
    work = plan(chunks, cut, NOW - 400 * DAY, oldest)
    assert work.drops == []
    assert [d.start for d in work.deletes] == [MIDNIGHT - n * DAY for n in (5, 4, 3)]
    assert plan(chunks, cut, NOW - 400 * DAY, {}).deletes == []


def test_status_history_is_never_dropped_whole() -> None:
    """Its chunks hold the devices' firmware changes, which are kept past retention."""
    chunks = [Chunk("device_status_history", NOW - 90 * DAY, NOW - 60 * DAY)]
    oldest = {("device_status_history", 1): NOW - 80 * DAY}
    work = plan(chunks, cutoffs({1: 7}, 30, NOW), NOW - 30 * DAY, oldest)
    assert work.drops == []
    assert work.deletes == [Delete("device_status_history", 1, NOW - 90 * DAY, NOW - 60 * DAY)]


def test_chunks_are_taken_oldest_first_across_tables() -> None:
    chunks = daily_chunks("metric_samples", 5) + daily_chunks("usage_events", 5)
    work = plan(chunks, cutoffs({1: 1}, 1, NOW), NOW - DAY, {})
    starts = [(c.start, c.table) for c in work.drops]
    assert starts == sorted(starts)
    assert len(work.drops) == 8  # 5 to 2 days ago, in each table
