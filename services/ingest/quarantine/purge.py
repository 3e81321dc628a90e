"""The quarantine's retention: rows older than the retention setting are dropped."""

from __future__ import annotations

from datetime import datetime

import psycopg

# A bounded chunk: one delete never holds the quarantine long. Oldest first by id (the order
# they were quarantined), so each pass takes the oldest rows.
PURGE = """
DELETE FROM quarantine WHERE id IN (
    SELECT id FROM quarantine WHERE received_at < %(cutoff)s ORDER BY id LIMIT %(chunk)s
)
"""


def purge_quarantine(conn: psycopg.Connection, cutoff: datetime, chunk: int) -> int:
    """Drop up to *chunk* quarantine rows received before *cutoff*, in a transaction of their
    own; return how many were dropped (*chunk*: there may be more)."""
    with conn.transaction():
        done = conn.execute(PURGE, {"cutoff": cutoff, "chunk": chunk})
    return done.rowcount
