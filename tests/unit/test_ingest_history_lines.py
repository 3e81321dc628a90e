"""Splitting an import's byte stream into lines, and reporting what became of each
(services/ingest/history.py)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from services.ingest.history import (
    MAX_LINE_BYTES,
    MAX_REPORT_RANGES,
    LongLine,
    _LineLog,
    _origin,
    lines_of,
)


def _reference(chunks: list[bytes], max_line: int) -> list[bytes | LongLine]:
    lines = b"".join(chunks).split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # a final newline ends the last line; it does not start another
    return [
        line if len(line) <= max_line else LongLine(line[:max_line], len(line)) for line in lines
    ]


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"\n")), max_size=12),
    max_line=st.integers(0, 30),
)
def test_lines_whatever_the_chunk_boundaries(chunks: list[bytes], max_line: int) -> None:
    assert list(lines_of(chunks, max_line)) == _reference(chunks, max_line)


def test_a_body_without_newlines_keeps_only_the_start_of_its_line() -> None:
    """64 MiB in 64 KiB chunks and no newline: once quadratic and all kept in memory."""
    chunk = b"x" * 65536
    out = list(lines_of(chunk for _ in range(1024)))
    assert out == [LongLine(b"x" * MAX_LINE_BYTES, 64 * 2**20)]


def test_short_lines_around_a_long_one_are_whole() -> None:
    body = [b'{"a":1}\n', b"y" * 50, b"y" * 50 + b"\nlast"]
    assert list(lines_of(body, max_line=60)) == [b'{"a":1}', LongLine(b"y" * 60, 100), b"last"]


def test_the_report_lists_ranges_of_lines_alike_and_counts_what_it_leaves_out() -> None:
    log = _LineLog()
    log.note(((1, 1),), "header")
    log.note(((2, 4), (7, 7)), "stored")  # a CSV message of rows 2-4 and 7
    log.note(((5, 5),), "quarantined", "invalid_payload", "seq: not a number")
    log.note(((6, 6),), "quarantined", "invalid_payload", "ts: missing")
    listed, omitted = log.ranges(9)  # 8 and 9 were read, never committed
    assert [(r.first, r.last, r.outcome, r.reason, r.detail) for r in listed] == [
        (1, 1, "header", None, None),
        (2, 4, "stored", None, None),
        (5, 5, "quarantined", "invalid_payload", "seq: not a number"),
        (6, 6, "quarantined", "invalid_payload", "ts: missing"),
        (7, 7, "stored", None, None),
        (8, 9, "not_imported", None, None),
    ]
    assert omitted == 0


def test_a_report_of_many_ranges_lists_the_first_and_counts_the_rest() -> None:
    log = _LineLog()
    for line in range(1, 2 * MAX_REPORT_RANGES + 1):
        log.note(((line, line),), "stored" if line % 2 else "blank")
    listed, omitted = log.ranges(2 * MAX_REPORT_RANGES + 10)
    assert len(listed) == MAX_REPORT_RANGES
    assert listed[-1].last == MAX_REPORT_RANGES
    assert omitted == MAX_REPORT_RANGES + 10


def test_an_origin_names_the_lines_of_a_record() -> None:
    assert _origin(((7, 7),)) == "line 7"
    assert _origin(((3, 5),)) == "lines 3-5"
    spans = tuple((n, n) for n in range(2, 10))
    assert _origin(spans) == "lines 2, 3, 4, 5, 6 and 3 more"
