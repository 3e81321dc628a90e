"""How ingest counts missing messages from sequence numbers, and recognises a message it
stored before by its boot and sequence number (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.ingest.batch import NO_BOOT
from services.ingest.identity import (
    IDENTITY_WINDOW_BOOTS,
    IDENTITY_WINDOW_SEQS,
    note,
    pack_window,
    read_window,
)
from services.ingest.rollup_sums import MAX_SEQ_GAP, sequence_gaps

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
MAX_SEQ = 2**63 - 1


def _at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _counts(
    seqs: list[tuple[int, int]] | list[tuple[int, int, int]],
    previous: tuple[int, int] | tuple[int, int, int] | None = None,
) -> tuple[int, int]:
    """(missing, jumps) of a device's messages (seq, minute[, boot]) after *previous*."""
    stored = [(1, 7, m[0], _at(m[1]), m[2] if len(m) > 2 else NO_BOOT) for m in seqs]
    prior = {}
    if previous:
        boot = previous[2] if len(previous) > 2 else NO_BOOT
        prior = {1: (previous[0], _at(previous[1]), boot)}
    counts, _ = sequence_gaps(stored, prior)
    return sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())


def _walk(
    seqs: list[tuple[int, int]] | list[tuple[int, int, int]],
    previous: tuple[int, int] | tuple[int, int, int] | None = None,
) -> int:
    return _counts(seqs, previous)[0]


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
    stored = [(1, 7, 900, _at(1), NO_BOOT), (1, 7, 1, _at(5), NO_BOOT)]  # rebooted between
    _, latest = sequence_gaps(stored, {})
    assert latest[1] == (1, _at(5), NO_BOOT)


def test_an_absurd_jump_is_a_restart_counted_apart_not_missing() -> None:
    """Issue 22, finding 4: 0 then 2^63-1 once counted 2^63-2 missing, which overflowed the
    project's bigint sums."""
    assert _counts([(0, 1), (MAX_SEQ, 2)]) == (0, 1)
    assert _counts([(MAX_SEQ, 2)], previous=(0, 1)) == (0, 1)
    assert _counts([(0, 3), (MAX_SEQ, 4), (0, 5), (MAX_SEQ, 6)]) == (0, 2)
    # the longest gap still counted, and one more is a jump
    assert _counts([(MAX_SEQ_GAP + 1, 2)], previous=(0, 1)) == (MAX_SEQ_GAP, 0)
    assert _counts([(MAX_SEQ_GAP + 2, 2)], previous=(0, 1)) == (0, 1)


def test_a_late_message_far_below_the_latest_fills_nothing() -> None:
    # after 0 → 2^63-1 (a jump, nothing counted), a late 1 belongs to the first numbering
    assert _counts([(1, 2)], previous=(MAX_SEQ, 3)) == (0, 0)


def test_another_boot_is_a_restart_even_when_its_numbers_are_higher() -> None:
    assert _walk([(10, 2, 8)], previous=(3, 1, 7)) == 0
    assert _walk([(4, 2, 7), (10, 3, 8), (12, 4, 8)], previous=(3, 1, 7)) == 1


def test_a_device_without_a_clock_restarting_at_the_same_time_fills_no_gap() -> None:
    """Its new boot's messages are older than the last one stored: not late fills (-1)."""
    assert _walk([(0, 1, 8), (1, 2, 8)], previous=(50, 60, 7)) == 0


# --- the identity window: which (boot, seq) a device has stored (issue 22, finding 5) --------


def test_the_window_recognises_a_message_of_a_boot_it_remembers() -> None:
    window: list[list[int]] = []
    assert [note(window, 3, seq) for seq in (10, 11, 13)] == [True, True, True]
    assert note(window, 3, 11) is False  # sent again (another ts does not matter)
    assert note(window, 3, 12) is True  # late, never stored: new
    assert note(window, 3, 12) is False
    assert note(window, 4, 11) is True  # the same seq in another boot is another message


def test_the_window_reaches_back_a_fixed_number_of_seqs() -> None:
    window: list[list[int]] = []
    note(window, 1, 0)
    assert note(window, 1, IDENTITY_WINDOW_SEQS - 1) is True
    assert note(window, 1, 0) is False  # still inside
    assert note(window, 1, IDENTITY_WINDOW_SEQS) is True
    assert note(window, 1, 0) is True  # out of reach: only an exact repeat is recognised
    assert note(window, 1, MAX_SEQ) is True  # a jump of 2^63 shifts nothing it should not
    assert note(window, 1, MAX_SEQ) is False


def test_the_window_remembers_the_latest_boots_used() -> None:
    window: list[list[int]] = []
    for boot in range(1, IDENTITY_WINDOW_BOOTS + 2):
        note(window, boot, 7)
    assert note(window, 1, 7) is True  # forgotten: the least recently used boot
    assert note(window, IDENTITY_WINDOW_BOOTS + 1, 7) is False
    assert read_window(pack_window(window)) == window


def test_a_window_of_another_layout_is_forgotten_not_a_crash() -> None:
    assert read_window(None) == []
    assert read_window(b"\x01\x02\x03") == []
