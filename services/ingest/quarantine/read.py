"""Reading the quarantine: the messages ingest could not store, their reasons and raw bytes
(the API's quarantine and ingest-health answers)."""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from pydantic import BaseModel, Field, field_validator

from services.core.db import fetch_one
from services.core.errors import NotFoundError
from services.core.payloads import QuarantineReason

PREVIEW_BYTES = 2048


class QuarantinedMessage(BaseModel):
    id: int
    received_at: datetime
    topic: str
    device_serial: str | None
    reason: QuarantineReason
    detail: str | None
    payload_size: int = Field(description="bytes received (the stored payload may be truncated)")
    copies: int = Field(
        description="times these same bytes on this topic were quarantined (a retained message "
        "replayed on every ingest reconnect, a redelivery, a re-import): one row for all"
    )
    last_received_at: datetime | None = Field(description="when the latest copy arrived")
    payload_preview: str = Field(
        description=f"first {PREVIEW_BYTES} bytes as text: invalid UTF-8 replaced, NUL shown as \\0"
    )

    @field_validator("payload_preview", mode="before")
    @classmethod
    def _as_text(cls, value: object) -> object:
        if isinstance(value, bytes | memoryview):
            return bytes(value).decode("utf-8", errors="replace").replace("\x00", "\\0")
        return value


class ReasonSummary(BaseModel):
    reason: QuarantineReason
    count: int = Field(description="messages quarantined for this reason, copies included")
    last_received_at: datetime
    sample: QuarantinedMessage = Field(description="the most recent message with this reason")


PREVIEW_COLUMNS = f"""
id, received_at, topic, device_serial, reason, detail, payload_size, copies,
coalesce(last_received_at, received_at) AS last_received_at,
substring(payload FROM 1 FOR {PREVIEW_BYTES}) AS payload_preview
"""
# In the order messages were quarantined (latest first by default): by id, which the primary
# key serves. The time window is a BRIN filter (migration 0011) that cannot give an order, so
# COUNT, which reads the window anyway for the page's total, also finds its id range, and the
# list walks only that range.
LIST = f"""
SELECT {PREVIEW_COLUMNS} FROM quarantine
WHERE id BETWEEN %(first)s AND %(last)s
  AND received_at >= %(since)s AND received_at < %(until)s
  AND (%(reason)s::text IS NULL OR reason = %(reason)s)
  AND (%(device)s::text IS NULL OR device_serial = %(device)s)
ORDER BY id {{direction}} LIMIT %(limit)s OFFSET %(offset)s
"""
COUNT = """
SELECT count(*), min(id), max(id) FROM quarantine
WHERE received_at >= %(since)s AND received_at < %(until)s
  AND (%(reason)s::text IS NULL OR reason = %(reason)s)
  AND (%(device)s::text IS NULL OR device_serial = %(device)s)
"""
# Messages, copies included (one row holds all copies of the same bytes on the same topic).
SUMMARY = """
SELECT reason, sum(copies)::bigint AS count,
       max(coalesce(last_received_at, received_at)) AS last_received_at, max(id) AS sample_id
FROM quarantine WHERE received_at >= %(since)s AND received_at < %(until)s
GROUP BY reason ORDER BY 2 DESC
"""
ONE = f"SELECT {PREVIEW_COLUMNS} FROM quarantine WHERE id = %s"
RAW = "SELECT payload FROM quarantine WHERE id = %s"


class _SummaryRow(BaseModel):
    reason: QuarantineReason
    count: int
    last_received_at: datetime
    sample_id: int


def quarantined_messages(
    conn: psycopg.Connection,
    *,
    since: datetime,
    until: datetime,
    reason: QuarantineReason | None,
    device: str | None,
    limit: int,
    offset: int,
    latest_first: bool,
) -> tuple[int, list[QuarantinedMessage]]:
    """How many messages were quarantined in [since, until) (for this reason, of this
    device), and the page of them from *offset* in the order quarantined."""
    params = {
        "since": since,
        "until": until,
        "reason": reason.value if reason else None,
        "device": device,
        "limit": limit,
        "offset": offset,
    }
    found = conn.execute(COUNT, params).fetchone()
    total, first, last = found if found else (0, None, None)
    if not total:
        return 0, []
    with conn.cursor(row_factory=class_row(QuarantinedMessage)) as cur:
        listed = sql.SQL(LIST).format(direction=sql.SQL("DESC" if latest_first else "ASC"))
        return int(total), cur.execute(listed, {**params, "first": first, "last": last}).fetchall()


def reason_summary(
    conn: psycopg.Connection, since: datetime, until: datetime
) -> list[ReasonSummary]:
    """The messages quarantined in [since, until) by reason, most first, each with a sample."""
    with conn.cursor(row_factory=class_row(_SummaryRow)) as cur:
        rows = cur.execute(SUMMARY, {"since": since, "until": until}).fetchall()
    return [
        ReasonSummary(
            reason=r.reason,
            count=r.count,
            last_received_at=r.last_received_at,
            sample=quarantined_message(conn, r.sample_id),
        )
        for r in rows
    ]


def quarantined_message(conn: psycopg.Connection, item_id: int) -> QuarantinedMessage:
    return fetch_one(conn, ONE, (item_id,), QuarantinedMessage, f"quarantined message {item_id}")


def quarantined_payload(conn: psycopg.Connection, item_id: int) -> bytes:
    """The stored raw bytes of quarantined message *item_id* (up to 64 KiB of the original)."""
    row = conn.execute(RAW, (item_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"quarantined message {item_id} not found")
    return bytes(row[0])
