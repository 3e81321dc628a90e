"""Splitting an import's byte stream into lines (services/ingest/history.py)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from services.ingest.history import MAX_LINE_BYTES, LongLine, lines_of


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
