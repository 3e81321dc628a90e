"""How ingest counts missing messages from sequence numbers (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.ingest.store import _sequence_gaps

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def _at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _walk(seqs: list[tuple[int, int]], previous: tuple[int, int] | None = None) -> int:
    stored = [(1, 7, seq, _at(minute)) for seq, minute in seqs]
    prior = {1: (previous[0], _at(previous[1]))} if previous else {}
    missing, _ = _sequence_gaps(stored, prior)
    return sum(missing.values())


def test_consecutive_numbers_have_no_gap() -> None:
    assert _walk([(5, 1), (6, 2), (7, 3)], previous=(4, 0)) == 0


def test_skipped_numbers_are_missing_even_across_hours_and_batches() -> None:
    assert _walk([(5, 1), (9, 2)], previous=(4, 0)) == 3
    assert _walk([(20, 130)], previous=(10, 5)) == 9  # two hours later, another batch


def test_a_reboot_restarting_the_numbering_is_not_a_gap() -> None:
    assert _walk([(1, 10), (2, 11), (3, 12)], previous=(500, 5)) == 0


def test_a_late_message_fills_the_gap_it_left() -> None:
    # 6 arrives after 7 was stored (the gap of 1 was counted then): net nothing missing
    assert _walk([(7, 3)], previous=(5, 1)) == 1
    assert _walk([(6, 2)], previous=(7, 3)) == -1


def test_the_first_message_of_a_device_has_nothing_to_compare_with() -> None:
    assert _walk([(1000, 1), (1001, 2)]) == 0


def test_latest_is_by_device_time_not_largest_number() -> None:
    stored = [(1, 7, 900, _at(1)), (1, 7, 1, _at(5))]  # rebooted between the two
    _, latest = _sequence_gaps(stored, {})
    assert latest[1] == (1, _at(5))
