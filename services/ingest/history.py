"""Bulk import of historical device data (NDJSON or CSV), through the same checks as live.

Each record becomes the message its device would have published and goes through the
ingest store: the same validation, identity (re-importing a file adds nothing), hourly
rollups and quarantine. Two things differ from live ingest: the late-data window does not
apply (history is old by definition), and a device's "last seen" is its device time.

NDJSON: one message per line, as a device would publish it plus `device` (serial) and
`kind` (usage or telemetry):
    {"device": "acme-lck-001", "kind": "usage", "seq": 7, "ts": "2026-08-01T09:30:00Z",
     "events": [{"feature": "remote_unlock", "count": 1}]}
CSV: one reading per row, columns device,kind,seq,ts,feature,count,duration_ms,metric,value,unit
and optionally boot; the rows with the same device, kind, boot, seq and ts form one message
wherever they are in the file, its readings in the order of their lines. The rows wait in a
temporary table until the whole file is read, so a file in any order takes no more memory
than a sorted one.

What became of every line is reported (HistoryReport.lines, in ranges of lines alike): stored,
duplicate (stored before: nothing added), quarantined (with the reason; the quarantine row's
detail starts with the lines), blank, header, or not_imported. Messages are committed in
batches as the file is read; if the database fails the import stops, and its report says line
by line what was committed (`complete` false): nothing is committed silently, and importing
the file again adds nothing twice.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import groupby
from typing import Any, Literal, NamedTuple

import psycopg
from pydantic import BaseModel, Field

from services.core.payloads import MAX_PAYLOAD_BYTES, MAX_READINGS, QuarantineReason, Rejected
from services.core.topics import MessageKind, device_topic
from services.ingest.batch import BatchResult, Outcome, RawMessage
from services.ingest.directory import DeviceDirectory
from services.ingest.quarantine.write import quarantine_messages
from services.ingest.store import NOT_TRANSIENT, store_batch, store_isolating

# Messages per transaction: large enough for COPY to pay off, small enough to bound memory.
HISTORY_BATCH = 5_000
# A longer line is not read, only its start kept and its size counted: a payload is at most
# MAX_PAYLOAD_BYTES, so a line of twice that is a broken or hostile file (or one padded with
# that much whitespace, which is refused too).
MAX_LINE_BYTES = 2 * MAX_PAYLOAD_BYTES
CSV_COLUMNS = (
    "device",
    "kind",
    "seq",
    "ts",
    "feature",
    "count",
    "duration_ms",
    "metric",
    "value",
    "unit",
)
CSV_KEY = ("device", "kind", "boot", "seq", "ts")  # the columns that make a message
CSV_READING = ("feature", "count", "duration_ms", "metric", "value", "unit")
DEVICE_KINDS = (MessageKind.USAGE.value, MessageKind.TELEMETRY.value)
NEEDS_DEVICE_AND_KIND = "needs a JSON object with string `device` and `kind` usage|telemetry"
# Ranges of lines the report lists; lines beyond are only counted (HistoryReport.lines_omitted):
# a file of alternating good and bad lines must not make a response as large as itself.
MAX_REPORT_RANGES = 1_000
# Quarantined lines whose detail the report keeps (held until the end); the others are
# reported with their reason, and their detail is in their quarantine row.
MAX_DETAILED_LINES = 10_000
# How a line of a message the database refused is reported (store_isolating quarantines it).
REFUSED = QuarantineReason.REJECTED_BY_DATABASE.value
# Line spans an origin ("lines 2, 57, 113 and 4 more") names in a quarantine detail.
ORIGIN_SPANS = 5

# The CSV rows of an import, held until the file is read (a temporary table: this session's).
DROP_CSV_ROWS = "DROP TABLE IF EXISTS history_csv"
CREATE_CSV_ROWS = """
CREATE TEMP TABLE history_csv (
    first_line bigint NOT NULL, last_line bigint NOT NULL, device text NOT NULL,
    kind text NOT NULL, boot text NOT NULL, seq text NOT NULL, ts text NOT NULL,
    reading text[] NOT NULL
)
"""
COPY_CSV_ROWS = """
COPY history_csv (first_line, last_line, device, kind, boot, seq, ts, reading) FROM STDIN
"""
# The messages the rows form, in the order of their first lines; a message's readings only up
# to one more than a message may hold (enough to refuse it), its lines all.
CSV_MESSAGES = """
SELECT device, kind, boot, seq, ts, count(*),
       array_agg(first_line ORDER BY first_line), array_agg(last_line ORDER BY first_line),
       array_agg(reading ORDER BY first_line) FILTER (WHERE n <= %(readings)s + 1)
FROM (SELECT *, row_number() OVER (PARTITION BY device, kind, boot, seq, ts
                                   ORDER BY first_line) AS n
      FROM history_csv) numbered
GROUP BY device, kind, boot, seq, ts
ORDER BY min(first_line)
"""
CSV_CURSOR = "history_csv_messages"

LineOutcome = Literal[
    "stored", "duplicate", "quarantined", "blank", "header", "not_imported", "cleared"
]
Spans = tuple[tuple[int, int], ...]  # the lines (first, last) a record was read from


class LineRange(BaseModel):
    """Lines first to last (1 is the file's first line), all with one outcome."""

    first: int
    last: int
    outcome: LineOutcome = Field(
        description="stored; duplicate (stored before, nothing added); quarantined; blank; "
        "header; not_imported (the import stopped before committing it)"
    )
    reason: str | None = Field(default=None, description="why quarantined")
    detail: str | None = None


class HistoryReport(BaseModel):
    messages: int
    usage_rows: int
    metric_rows: int
    duplicates: int
    quarantined: dict[str, int]
    complete: bool = Field(
        default=True,
        description="false: the import stopped (error); what was committed is in `lines`",
    )
    error: str | None = None
    lines_read: int = Field(default=0, description="lines read from the file")
    lines: list[LineRange] = Field(default_factory=list, description="what became of each line")
    lines_omitted: int = Field(
        default=0, description=f"lines in ranges after the first {MAX_REPORT_RANGES:,}"
    )


class CsvHeaderError(ValueError):
    """A CSV header the importer cannot use (the API answers 422)."""


class UnreadableRecord(ValueError):
    """An NDJSON line that names no device and kind (it is quarantined)."""


@dataclass
class _LineLog:
    """What became of each line: a byte a line, and the detail of some quarantined ones."""

    codes: bytearray = field(default_factory=lambda: bytearray(1))  # [0] is no line
    # by code; 0, a line never noted, is one whose record was not committed
    kinds: list[tuple[LineOutcome, str | None]] = field(
        default_factory=lambda: [("not_imported", None)]
    )
    details: dict[int, str] = field(default_factory=dict)

    def note(
        self,
        spans: Spans,
        outcome: LineOutcome,
        reason: str | None = None,
        detail: str | None = None,
    ) -> None:
        kind = (outcome, reason)
        if kind not in self.kinds:
            self.kinds.append(kind)
        code = self.kinds.index(kind)
        for first, last in spans:
            if len(self.codes) <= last:
                self.codes += bytes(last + 1 - len(self.codes))
            self.codes[first : last + 1] = bytes((code,)) * (last + 1 - first)
            if detail is not None:
                for line in range(first, min(last + 1, first + MAX_DETAILED_LINES)):
                    if len(self.details) >= MAX_DETAILED_LINES:
                        break
                    self.details[line] = detail

    def ranges(self, lines: int) -> tuple[list[LineRange], int]:
        """Ranges of lines 1..*lines* alike, the first MAX_REPORT_RANGES; and how many lines
        the rest hold."""
        if len(self.codes) <= lines:
            self.codes += bytes(lines + 1 - len(self.codes))
        listed: list[LineRange] = []
        omitted = 0
        line = 1
        for code, run in groupby(self.codes[1 : lines + 1]):
            first = line
            line += sum(1 for _ in run)
            outcome, reason = self.kinds[code]
            for detail, part in groupby(range(first, line), self.details.get):
                span = list(part)
                if len(listed) < MAX_REPORT_RANGES:
                    listed.append(
                        LineRange(
                            first=span[0],
                            last=span[-1],
                            outcome=outcome,
                            reason=reason,
                            detail=detail,
                        )
                    )
                else:
                    omitted += len(span)
        return listed, omitted


@dataclass
class HistoryImporter:
    """Feed it (serial, kind, payload) items or raw lines; call `finish` for the report (or,
    if feeding it raised, `stopped`)."""

    conn: psycopg.Connection
    max_future_skew: timedelta = timedelta(minutes=10)
    directory: DeviceDirectory = field(default_factory=DeviceDirectory)
    total: BatchResult = field(default_factory=BatchResult)
    _batch: list[RawMessage] = field(default_factory=list)
    _spans: dict[int, Spans] = field(default_factory=dict)  # by id() of a message in _batch
    _refused: dict[int, Exception] = field(default_factory=dict)  # why the database did
    _line: int = 0  # the last line read
    _log: _LineLog = field(default_factory=_LineLog)
    _csv_rows: list[tuple[object, ...]] = field(default_factory=list)

    def add(self, serial: str, kind: MessageKind, payload: bytes) -> None:
        self._add(serial, kind, payload, ())

    def _add(self, serial: str, kind: MessageKind, payload: bytes, spans: Spans) -> None:
        topic = device_topic(serial, kind)
        raw = RawMessage(topic, payload, datetime.now(UTC), historical=True, origin=_origin(spans))
        self._batch.append(raw)
        if spans:
            self._spans[id(raw)] = spans
        if len(self._batch) >= HISTORY_BATCH:
            self.flush()

    def add_ndjson(self, lines: Iterable[bytes | LongLine]) -> None:
        for line in lines:
            self._line += 1
            here = ((self._line, self._line),)
            if isinstance(line, LongLine):
                self._reject_long(line, here)
            elif not line.strip():
                self._log.note(here, "blank")
            else:
                try:
                    serial, kind, payload = _ndjson_message(line)
                except UnreadableRecord as exc:
                    self._reject(line, str(exc), here)
                else:
                    self._add(serial, kind, payload, here)

    def add_csv(self, text: Iterable[str | LongLine]) -> None:
        """Read the rows into a temporary table, then import the messages they form."""
        consumed: list[tuple[int, str]] = []  # (line, text) of the record being read

        def lines() -> Iterator[str]:
            for line in text:
                self._line += 1
                if isinstance(line, LongLine):
                    # Refused whole, never handed to the csv module: cut, it could open a
                    # quoted cell that would swallow the lines after it.
                    self._reject_long(line, ((self._line, self._line),))
                    continue
                consumed.append((self._line, line))
                yield line

        reader = csv.DictReader(lines())
        try:
            header = reader.fieldnames or ()
        except csv.Error as exc:  # e.g. a stray carriage return in the header
            raise CsvHeaderError(f"the CSV header cannot be read: {exc}") from exc
        missing = {"device", "kind", "seq", "ts"} - set(header)
        if missing:
            raise CsvHeaderError(
                f"CSV header lacks {', '.join(sorted(missing))}; columns: {', '.join(CSV_COLUMNS)}"
                " (and boot, optional)"
            )
        self._log.note((self._span(consumed),), "header")
        consumed.clear()
        with self._csv_table():
            for row, span in self._records(reader, consumed):
                cells = {name: row.get(name) or "" for name in (*CSV_KEY, *CSV_READING)}
                cells.update(_canonical_key(cells))
                bad = next((name for name, cell in cells.items() if "\x00" in cell), None)
                if bad is not None:
                    why = f"{bad}: must not contain NUL characters"
                    self._reject(json.dumps(cells).encode(), why, (span,))
                    continue
                self._csv_rows.append(
                    (*span, *(cells[name] for name in CSV_KEY), [cells[n] for n in CSV_READING])
                )
                if len(self._csv_rows) >= HISTORY_BATCH:
                    self._copy_csv_rows()
            self._copy_csv_rows()
            self._import_csv_messages()

    @contextmanager
    def _csv_table(self) -> Iterator[None]:
        with self.conn.transaction():
            self.conn.execute(DROP_CSV_ROWS)  # left by an import this session did not finish
            self.conn.execute(CREATE_CSV_ROWS)
        try:
            yield
        finally:
            self._csv_rows.clear()
            with suppress(psycopg.Error), self.conn.transaction():
                self.conn.execute(DROP_CSV_ROWS)

    def _copy_csv_rows(self) -> None:
        if not self._csv_rows:
            return
        with self.conn.transaction(), self.conn.cursor() as cur, cur.copy(COPY_CSV_ROWS) as copy:
            for row in self._csv_rows:
                copy.write_row(row)
        self._csv_rows.clear()

    def _import_csv_messages(self) -> None:
        """Import the messages the CSV rows form, in the order of their first lines."""
        with self.conn.transaction():
            cursor = self.conn.cursor(CSV_CURSOR, withhold=True)  # kept across commits
            cursor.execute(CSV_MESSAGES, {"readings": MAX_READINGS})
        try:
            while True:
                with self.conn.transaction():
                    groups = cursor.fetchmany(HISTORY_BATCH)
                if not groups:
                    break
                for group in groups:
                    self._add_csv_message(group)
        finally:
            with suppress(psycopg.Error), self.conn.transaction():
                cursor.close()

    def _add_csv_message(self, group: tuple[Any, ...]) -> None:
        """One message of CSV_MESSAGES: added, or refused with all its lines."""
        serial, kind, boot, seq, ts, rows, firsts, lasts, readings = group
        spans = tuple(zip(firsts, lasts, strict=True))
        if kind not in DEVICE_KINDS or rows > MAX_READINGS:
            record = {"device": serial, "kind": kind, "boot": boot, "seq": seq, "ts": ts}
            readings_of = [dict(zip(CSV_READING, r, strict=True)) for r in readings]
            why = (
                f"kind {kind!r} is not usage or telemetry"
                if kind not in DEVICE_KINDS
                else f"{rows} rows share device, kind, boot, seq and ts; a message holds at most "
                f"{MAX_READINGS} readings"
            )
            self._reject(json.dumps({**record, "readings": readings_of}).encode(), why, spans)
            return
        body: dict[str, Any] = {"v": 1, "device": serial, "seq": _number(seq, int), "ts": ts}
        if boot:
            body["boot"] = _number(boot, int)
        if kind == MessageKind.USAGE.value:
            body["events"] = [
                _compact(
                    {
                        "feature": feature or None,
                        "count": _number(count or "1", int),
                        "duration_ms": _number(duration, int),
                    }
                )
                for feature, count, duration, *_ in readings
            ]
        else:
            body["metrics"] = [
                _compact(
                    {"name": metric or None, "value": _number(value, float), "unit": unit or None}
                )
                for *_, metric, value, unit in readings
            ]
        self._add(
            serial, MessageKind(kind), json.dumps(body, separators=(",", ":")).encode(), spans
        )

    def _records(
        self, reader: csv.DictReader[str], consumed: list[tuple[int, str]]
    ) -> Iterator[tuple[dict[str, str], tuple[int, int]]]:
        """The rows the csv module can read, with the lines each was read from. A record it
        cannot (a stray carriage return, a cell over its size limit) is quarantined with its
        raw lines, and reading goes on."""
        while True:
            try:
                row = next(reader)
            except StopIteration:
                self._span(consumed)  # blank lines at the end
                return
            except csv.Error as exc:
                span = self._span(consumed)
                raw = "".join(text for _, text in consumed).encode()
                consumed.clear()
                self._reject(raw, f"unreadable CSV: {exc}", (span,))
                continue
            span = self._span(consumed)
            consumed.clear()
            yield row, span

    def _span(self, consumed: list[tuple[int, str]]) -> tuple[int, int]:
        """The lines of the record just read; the empty lines the csv module skipped before
        it are noted as blank."""
        lines = list(consumed)
        while lines and not lines[0][1].strip("\r\n"):
            self._log.note(((lines[0][0], lines[0][0]),), "blank")
            lines.pop(0)
        if not lines:
            return (self._line, self._line)
        return (lines[0][0], lines[-1][0])

    def _reject(
        self,
        raw: bytes,
        why: str,
        spans: Spans,
        reason: QuarantineReason = QuarantineReason.INVALID_PAYLOAD,
        size: int | None = None,
    ) -> None:
        """A record that cannot become a device message (it names no device and kind, or
        its line is too long): quarantined, never dropped. *size*: the bytes received, when
        *raw* is only their start."""
        # the quarantine keeps the first 64 KiB and the whole size
        message = RawMessage(
            f"history/line-{spans[0][0]}", raw, datetime.now(UTC), origin=_origin(spans)
        )
        with self.conn.transaction():
            quarantine_messages(
                self.conn, [(message, Rejected(reason, why, None))], received_bytes=size
            )
        self.total.messages += 1
        self.total.quarantined[reason.value] += 1
        self._log.note(spans, "quarantined", reason.value, why)

    def _reject_long(self, line: LongLine, spans: Spans) -> None:
        why = f"{line.size} bytes, over the {MAX_LINE_BYTES}-byte limit of a line"
        self._reject(line.head, why, spans, QuarantineReason.PAYLOAD_TOO_LARGE, line.size)

    def flush(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        self._refused.clear()
        result = store_isolating(self.conn, batch, self._store)
        # what _store did not report was refused by the database and quarantined on its own
        for raw in batch:
            spans = self._spans.pop(id(raw), None)
            if spans is not None:
                refused = self._refused.get(id(raw))
                detail = str(refused)[:500] if refused else None
                self._log.note(spans, "quarantined", REFUSED, detail)
        self.total.merge(result)
        self.total.device_times.clear()

    def _store(self, batch: list[RawMessage]) -> BatchResult:
        outcomes: list[Outcome] | None = [] if self._spans else None
        try:
            with self.conn.transaction():
                result = store_batch(
                    self.conn,
                    batch,
                    self.directory,
                    max_future_skew=self.max_future_skew,
                    now=datetime.now(UTC),
                    late_data_days=None,
                    outcomes=outcomes,
                )
        except NOT_TRANSIENT as exc:
            if len(batch) == 1:  # store_isolating quarantines it
                self._refused[id(batch[0])] = exc
            raise
        for raw, outcome in zip(batch, outcomes or (), strict=False):
            spans = self._spans.pop(id(raw), None)
            if spans is not None:
                self._log.note(spans, outcome.fate.value, outcome.reason, outcome.detail)
        return result

    def finish(self) -> HistoryReport:
        self.flush()
        return self._report(None)

    def stopped(self, error: BaseException) -> HistoryReport:
        """The report of an import that *error* stopped: what was committed, line by line
        (the lines read but not committed are not_imported). Touches no database."""
        return self._report(error)

    def _report(self, error: BaseException | None) -> HistoryReport:
        t = self.total
        lines, omitted = self._log.ranges(self._line)
        stopped = None
        if error is not None:
            first = str(error).splitlines()[0] if str(error) else ""
            stopped = (
                f"the import stopped after line {self._line} ({type(error).__name__}: "
                f"{first[:300]}); the lines are as reported, and importing the file again "
                "adds nothing twice"
            )
        return HistoryReport(
            messages=t.messages,
            usage_rows=t.usage_rows,
            metric_rows=t.metric_rows,
            duplicates=t.usage_duplicates + t.metric_duplicates,
            quarantined=dict(t.quarantined),
            complete=error is None,
            error=stopped,
            lines_read=self._line,
            lines=lines,
            lines_omitted=omitted,
        )


def _ndjson_message(line: bytes) -> tuple[str, MessageKind, bytes]:
    """The device, kind and payload of an NDJSON record; a ValueError says why it has none."""
    try:
        record = json.loads(line)
    except RecursionError:  # e.g. 100,000 `[`: Python's parser gives up, and so do we
        raise UnreadableRecord(f"{NEEDS_DEVICE_AND_KIND}: nested too deeply to read") from None
    except ValueError:  # not JSON (or not UTF-8)
        record = None
    if not isinstance(record, dict):
        raise UnreadableRecord(NEEDS_DEVICE_AND_KIND)
    serial, kind = record.get("device"), record.pop("kind", None)
    if not isinstance(serial, str) or kind not in DEVICE_KINDS:
        raise UnreadableRecord(NEEDS_DEVICE_AND_KIND)
    if not _unicode_text(serial):  # json.loads lets a lone surrogate (`"\ud800"`) through
        raise UnreadableRecord(f"{NEEDS_DEVICE_AND_KIND}: `device` is not valid Unicode text")
    try:
        # `device` is kept: the payload model checks it against the topic
        payload = json.dumps(record, separators=(",", ":")).encode()
    except (RecursionError, ValueError):
        raise UnreadableRecord(f"{NEEDS_DEVICE_AND_KIND}: nested too deeply to read") from None
    return serial, MessageKind(kind), payload


def _canonical_key(cells: dict[str, str]) -> dict[str, str]:
    """The message key cells as one spelling each, so rows group by value (seq `7` and
    `07`, ts `...Z` and `...+00:00`); a cell that does not parse stays as it is, for the
    payload's validation to name."""
    key: dict[str, str] = {}
    for name in ("seq", "boot"):
        with suppress(ValueError):
            key[name] = str(int(cells[name]))
    with suppress(ValueError):
        at = datetime.fromisoformat(cells["ts"])
        if at.tzinfo is not None:
            key["ts"] = at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return key


def _unicode_text(text: str) -> bool:
    """Whether *text* can be written as UTF-8 (no lone surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _origin(spans: Spans) -> str | None:
    """Where a record came from, as a quarantine detail starts: "line 7", "lines 2-4, 9"."""
    if not spans:
        return None
    named = [f"{a}" if a == b else f"{a}-{b}" for a, b in spans[:ORIGIN_SPANS]]
    more = f" and {len(spans) - ORIGIN_SPANS} more" if len(spans) > ORIGIN_SPANS else ""
    one = len(spans) == 1 and spans[0][0] == spans[0][1]
    return f"{'line' if one else 'lines'} {', '.join(named)}{more}"


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


__all__ = ["CsvHeaderError", "HistoryImporter", "HistoryReport", "LongLine", "csv_text", "lines_of"]
