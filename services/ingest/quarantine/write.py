"""Writing rejected messages to the quarantine. The same message quarantined again adds no row:
its row counts it and says why it was refused this time (migration 0014).
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

import psycopg

from services.core.payloads import QUARANTINE_KEEP_BYTES, Rejected
from services.ingest.batch import RawMessage
from services.ingest.copying import copy_rows

# The same message quarantined again adds no row: its row counts it and says why it was refused
# this time (migration 0014). A batch's rejects are COPYed (binary: a payload goes over as it
# is) into a staging table compressed as the quarantine is, so each payload is compressed
# once and moved as it is, then upserted: 11 µs a row here, against 36 bound as arrays.
QUARANTINE_STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS incoming_quarantine (LIKE quarantine INCLUDING COMPRESSION)
ON COMMIT DELETE ROWS
"""


COPY_QUARANTINE = """
COPY incoming_quarantine (received_at, topic, device_serial, reason, detail, payload,
                          payload_size, digest, copies, last_received_at, id)
FROM STDIN (FORMAT BINARY)
"""


QUARANTINE_TYPES = (
    *("timestamptz", "text", "text", "text", "text", "bytea", "int4", "bytea"),
    *("int4", "timestamptz", "int8"),
)


MOVE_QUARANTINE = """
INSERT INTO quarantine AS q (received_at, topic, device_serial, reason, detail, payload,
                             payload_size, digest, copies, last_received_at)
SELECT received_at, topic, device_serial, reason, detail, payload, payload_size, digest, copies,
       last_received_at
FROM incoming_quarantine
ORDER BY id  -- the order received: the quarantine's ids say in which order it took them
ON CONFLICT (digest) DO UPDATE SET
    copies = q.copies + excluded.copies,
    last_received_at = greatest(q.last_received_at, excluded.last_received_at),
    reason = excluded.reason,
    detail = excluded.detail
"""


QUARANTINE_DIGEST_BYTES = 16  # BLAKE2b-128: no accidental collision among 2^40 rows


INT4_MAX = 2**31 - 1


def quarantine_messages(
    conn: psycopg.Connection,
    rejected: list[tuple[RawMessage, Rejected]],
    *,
    received_bytes: int | None = None,
) -> None:
    """Write messages straight to the quarantine (used when the database refuses a message,
    and by imports). *received_bytes*: the size received, where each payload is only its start."""
    rows = [quarantine_row(raw, why) for raw, why in rejected]
    if received_bytes is not None:
        # payload_size is an int4: a streamed line of 2 GiB or more says "at least that"
        rows = [(*row[:6], min(received_bytes, INT4_MAX), row[7]) for row in rows]
    with conn.cursor() as cur:
        write_quarantine(cur, rows)


def write_quarantine(cur: psycopg.Cursor[Any], rows: list[tuple[object, ...]]) -> None:
    """Quarantine *rows* (of `quarantine_row`): a message already there is counted on its row,
    as are the copies of one message within *rows*."""
    merged: dict[object, list[object]] = {}
    for row in rows:
        entry = merged.get(row[7])
        if entry is None:
            # copies, latest receipt, and the place received (the staging table's id)
            merged[row[7]] = [*row, 1, row[0], len(merged)]
        else:
            entry[3:5] = row[3:5]  # why it was refused the last time
            entry[8] = cast(int, entry[8]) + 1
            entry[9] = row[0]  # received in batch order
    cur.execute(QUARANTINE_STAGING_DDL)
    copy_rows(cur, COPY_QUARANTINE, QUARANTINE_TYPES, [tuple(row) for row in merged.values()])
    cur.execute(MOVE_QUARANTINE)


def quarantine_row(raw: RawMessage, rejected: Rejected) -> tuple[object, ...]:
    detail = rejected.detail if raw.origin is None else f"{raw.origin}: {rejected.detail}"
    serial = None if rejected.serial is None else _storable_text(rejected.serial)
    return (
        raw.received_at,
        _storable_text(raw.topic)[:1024],
        serial,
        str(rejected.reason),  # a StrEnum's value, without enum's Python-level `.value`
        _storable_text(detail)[:2000],
        raw.payload[:QUARANTINE_KEEP_BYTES],
        len(raw.payload),
        _digest(raw.topic, raw.payload),
    )


def _storable_text(text: str) -> str:
    """*text* as PostgreSQL can store it: NUL and lone surrogates (which a history import's
    JSON can carry) written out as escapes."""
    text = text.replace("\x00", "\\0")
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="backslashreplace").decode()
    return text


def _digest(topic: str, payload: bytes) -> bytes:
    """What makes two quarantined messages the same: the topic and the whole payload."""
    try:
        name = topic.encode(errors="surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate outside surrogateescape's range
        name = topic.encode(errors="backslashreplace")
    digest = hashlib.blake2b(len(name).to_bytes(4, "big"), digest_size=QUARANTINE_DIGEST_BYTES)
    digest.update(name)
    digest.update(payload)
    return digest.digest()
