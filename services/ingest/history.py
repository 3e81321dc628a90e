"""Bulk import of historical device data (NDJSON or CSV), through the same checks as live.

Each record becomes the message its device would have published and goes through the
ingest store: the same validation, idempotency (re-importing a file adds nothing), hourly
rollups and quarantine. Two things differ from live ingest: the late-data window does not
apply (history is old by definition), and a device's "last seen" is its device time.

NDJSON: one message per line, as a device would publish it plus `device` (serial) and
`kind` (usage or telemetry):
    {"device": "acme-lck-001", "kind": "usage", "seq": 7, "ts": "2026-08-01T09:30:00Z",
     "events": [{"feature": "remote_unlock", "count": 1}]}
CSV: one reading per row, columns device,kind,seq,ts,feature,count,duration_ms,metric,value,unit;
consecutive rows with the same device, kind, seq and ts form one message.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, NamedTuple

import psycopg
from pydantic import BaseModel

from services.core.payloads import MAX_PAYLOAD_BYTES, QuarantineReason, Rejected
from services.core.topics import MessageKind, device_topic
from services.ingest.directory import DeviceDirectory
from services.ingest.store import (
    BatchResult,
    RawMessage,
    quarantine_messages,
    store_batch,
    store_isolating,
)

# Messages per transaction: large enough for COPY to pay off, small enough to bound memory.
HISTORY_BATCH = 5_000
# A longer line is not read, only its start kept and its size counted: a payload is at most
# MAX_PAYLOAD_BYTES, so a line of twice that is a broken or hostile file (or one padded with
# that much whitespace, which is refused too).
MAX_LINE_BYTES = 2 * MAX_PAYLOAD_BYTES
CSV_COLUMNS = ("device", "kind", "seq", "ts", "feature", "count", "duration_ms", "metric",
               "value", "unit")  # fmt: skip


class HistoryReport(BaseModel):
    messages: int
    usage_rows: int
    metric_rows: int
    duplicates: int
    quarantined: dict[str, int]


@dataclass
class HistoryImporter:
    """Feed it (serial, kind, payload) items or raw lines; call `finish` for the report."""

    conn: psycopg.Connection
    max_future_skew: timedelta = timedelta(minutes=10)
    directory: DeviceDirectory = field(default_factory=DeviceDirectory)
    total: BatchResult = field(default_factory=BatchResult)
    _batch: list[RawMessage] = field(default_factory=list)
    _line: int = 0

    def add(self, serial: str, kind: MessageKind, payload: bytes) -> None:
        self._batch.append(
            RawMessage(device_topic(serial, kind), payload, datetime.now(UTC), historical=True)
        )
        if len(self._batch) >= HISTORY_BATCH:
            self.flush()

    def add_ndjson(self, lines: Iterable[bytes | LongLine]) -> None:
        for line in lines:
            self._line += 1
            if isinstance(line, LongLine):
                self._reject_long(line)
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                serial, kind = record.pop("device"), MessageKind(record.pop("kind"))
            except (ValueError, TypeError, KeyError, AttributeError):
                serial, kind = None, MessageKind.STATUS
            if not isinstance(serial, str) or kind is MessageKind.STATUS:
                self._reject(
                    line, "needs a JSON object with string `device` and `kind` usage|telemetry"
                )
                continue
            record["device"] = serial  # kept: the payload model checks it against the topic
            self.add(serial, kind, json.dumps(record, separators=(",", ":")).encode())

    def add_csv(self, text: Iterable[str | LongLine]) -> None:
        consumed: list[str] = []  # the raw lines of the record being read
        physical = 0

        def lines() -> Iterator[str]:
            nonlocal physical
            for line in text:
                physical += 1
                if isinstance(line, LongLine):
                    # Refused whole, never handed to the csv module: cut, it could open a
                    # quoted cell that would swallow the lines after it.
                    self._line = physical
                    self._reject_long(line)
                    continue
                consumed.append(line)
                yield line

        reader = csv.DictReader(lines())
        try:
            header = reader.fieldnames or ()
        except csv.Error as exc:  # e.g. a stray carriage return in the header
            raise ValueError(f"the CSV header cannot be read: {exc}") from exc
        missing = {"device", "kind", "seq", "ts"} - set(header)
        if missing:
            raise ValueError(
                f"CSV header lacks {', '.join(sorted(missing))}; columns: {', '.join(CSV_COLUMNS)}"
            )
        consumed.clear()
        for key, rows in _grouped(self._readable(reader, consumed)):
            serial, kind_text, seq, ts = key
            try:
                kind = MessageKind(kind_text)
            except ValueError:
                self._reject(
                    json.dumps(rows).encode(), f"kind {kind_text!r} is not usage or telemetry"
                )
                continue
            body: dict[str, Any] = {"v": 1, "device": serial, "seq": _number(seq, int), "ts": ts}
            if kind is MessageKind.USAGE:
                body["events"] = [
                    _compact({"feature": r.get("feature"),
                              "count": _number(r.get("count") or "1", int),
                              "duration_ms": _number(r.get("duration_ms"), int)})
                    for r in rows
                ]  # fmt: skip
            else:
                body["metrics"] = [
                    _compact({"name": r.get("metric"), "value": _number(r.get("value"), float),
                              "unit": r.get("unit") or None})
                    for r in rows
                ]  # fmt: skip
            self.add(serial, kind, json.dumps(body, separators=(",", ":")).encode())

    def _readable(
        self, reader: csv.DictReader[str], consumed: list[str]
    ) -> Iterator[dict[str, str]]:
        """The rows the csv module can read. A record it cannot (a stray carriage return, a
        cell over its size limit) is quarantined with its raw lines, and reading goes on."""
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                self._line = reader.line_num
                self._reject("".join(consumed).encode(), f"unreadable CSV: {exc}")
                consumed.clear()
                continue
            consumed.clear()
            yield row

    def _reject(
        self, raw: bytes, why: str,
        reason: QuarantineReason = QuarantineReason.INVALID_PAYLOAD, size: int | None = None,
    ) -> None:  # fmt: skip
        """A record that cannot become a device message (it names no device and kind, or
        its line is too long): quarantined, never dropped. *size*: the bytes received, when
        *raw* is only their start."""
        # the quarantine keeps the first 64 KiB and the whole size
        message = RawMessage(f"history/line-{self._line}", raw, datetime.now(UTC))
        with self.conn.transaction():
            quarantine_messages(
                self.conn, [(message, Rejected(reason, f"line {self._line}: {why}", None))],
                received_bytes=size,
            )  # fmt: skip
        self.total.messages += 1
        self.total.quarantined[reason.value] += 1

    def _reject_long(self, line: LongLine) -> None:
        self._reject(
            line.head, f"{line.size} bytes, over the {MAX_LINE_BYTES}-byte limit of a line",
            QuarantineReason.PAYLOAD_TOO_LARGE, line.size,
        )  # fmt: skip

    def flush(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        self.total.merge(store_isolating(self.conn, batch, partial(self._store)))
        self.total.device_times.clear()

    def _store(self, batch: list[RawMessage]) -> BatchResult:
        with self.conn.transaction():
            return store_batch(
                self.conn, batch, self.directory, max_future_skew=self.max_future_skew,
                now=datetime.now(UTC), late_data_days=None,
            )  # fmt: skip

    def finish(self) -> HistoryReport:
        self.flush()
        t = self.total
        return HistoryReport(
            messages=t.messages, usage_rows=t.usage_rows, metric_rows=t.metric_rows,
            duplicates=t.usage_duplicates + t.metric_duplicates, quarantined=dict(t.quarantined),
        )  # fmt: skip


def _grouped(
    reader: Iterable[dict[str, str]],
) -> Iterator[tuple[tuple[str, str, str, str], list[dict[str, str]]]]:
    key: tuple[str, str, str, str] | None = None
    rows: list[dict[str, str]] = []
    for row in reader:
        this = (
            row.get("device") or "",
            row.get("kind") or "",
            row.get("seq") or "",
            row.get("ts") or "",
        )
        if key is not None and this != key:
            yield key, rows
            rows = []
        key = this
        rows.append(row)
    if key is not None:
        yield key, rows


def _number(text: str | None, kind: type[int] | type[float]) -> object:
    """The number a CSV cell holds, or the text itself so validation names what is wrong."""
    if text is None or text == "":
        return None
    try:
        return kind(text)
    except ValueError:
        return text


def _compact(values: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in values.items() if v is not None}


class LongLine(NamedTuple):
    """A line longer than the limit: its first bytes, and how many it had."""

    head: bytes
    size: int


def lines_of(chunks: Iterable[bytes], max_line: int = MAX_LINE_BYTES) -> Iterator[bytes | LongLine]:
    """Split a byte stream into lines, whatever the chunk boundaries. A line over *max_line*
    bytes comes as a LongLine: a body without newlines must not fill memory (nor, joined
    chunk by chunk, take time quadratic in its length)."""
    pending = bytearray()  # the current line's first max_line bytes
    size = 0  # the current line's length so far
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if not size and end - start <= max_line:
                yield chunk[start:end]  # the usual case: a whole line within the chunk
            else:
                size += end - start
                pending += chunk[start : min(end, start + max_line - len(pending))]
                yield bytes(pending) if size <= max_line else LongLine(bytes(pending), size)
                pending.clear()
                size = 0
            start = end + 1
        size += len(chunk) - start
        pending += chunk[start : start + max_line - len(pending)]
    if size:
        yield bytes(pending) if size <= max_line else LongLine(bytes(pending), size)


def csv_text(chunks: Iterable[bytes]) -> Iterator[str | LongLine]:
    """The lines as text; a line over MAX_LINE_BYTES stays a LongLine (add_csv refuses it)."""
    for line in lines_of(chunks):
        if isinstance(line, LongLine):
            yield line
        else:
            yield line.decode("utf-8", errors="replace").removeprefix("\ufeff") + "\n"


__all__ = ["HistoryImporter", "HistoryReport", "LongLine", "csv_text", "io", "lines_of"]
