"""Offering quarantined messages to the store again, once the fix that makes them storable is
in (`fieldtrack quarantine replay`).

Each pending message quarantined before the replay started goes through `store_batch`, the
live path, on its own and judged as of when it was received: the late-data window and the
future-timestamp check compare with its `received_at`, not with the time of the replay. One
transaction per message, holding its quarantine row locked (`FOR UPDATE SKIP LOCKED`: two
replays, or a replay and the retention purge, never take the same row):

- stored: its readings are inserted (rollups and sequence accounting with them) and the row
  is marked `replayed_at`, `replay_outcome = 'stored'`;
- already stored (the device sent it again and it got through meanwhile): nothing is added,
  the row is marked `'duplicate'`;
- refused again: nothing is added, no quarantine row is written and no repeat counted (the
  store's quarantine write is rolled back); the row stays pending, its reason and detail
  updated to why it is refused now.

A data error is a refusal like any other (`rejected_by_database`); any other exception is a
bug and stops the replay, leaving that message as it was.

Not offered: status messages (the store makes a status its device's current state, and a
quarantined one is a past state), payloads the quarantine kept only the start of, and messages
whose serial belongs now to a device provisioned after they arrived (not their sender). History
import rejects are judged as live traffic would be; re-import the file instead (imports are
idempotent).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg

from services.core.payloads import QuarantineReason
from services.core.topics import MessageKind, parse_topic
from services.ingest.batch import RawMessage
from services.ingest.directory import DeviceDirectory
from services.ingest.store import NOT_TRANSIENT, store_batch

# Quarantine rows listed per query while walking it (each is replayed in its own transaction).
CHUNK = 500
LAST_ID = "SELECT coalesce(max(id), 0) FROM quarantine"
PENDING = """
SELECT id FROM quarantine
WHERE id > %(after)s AND id <= %(last)s AND replayed_at IS NULL
  AND (%(reasons)s::text[] IS NULL OR reason = ANY(%(reasons)s))
  AND (%(device)s::text IS NULL OR device_serial = %(device)s)
ORDER BY id LIMIT %(chunk)s
"""
TAKE = """
SELECT received_at, topic, payload, payload_size FROM quarantine
WHERE id = %s AND replayed_at IS NULL FOR UPDATE SKIP LOCKED
"""
# A device provisioned after the message arrived is not the one that sent it: its serial was
# free then (deleted and provisioned again, perhaps in another customer's project).
PROVISIONED_SINCE = "SELECT created_at > %s FROM devices WHERE serial = %s"
MARK = "UPDATE quarantine SET replayed_at = now(), replay_outcome = %s WHERE id = %s"
# Why the store refused a message again, as it wrote it to the quarantine (read, then rolled
# back): on a new row, or on the message's own row (a repeat counted there, migration 0014).
REFUSED_AGAIN = """
SELECT reason, detail FROM quarantine
WHERE id = %(id)s OR (id > %(before)s AND received_at = %(received_at)s AND topic = %(topic)s)
ORDER BY id DESC LIMIT 1
"""
STILL_REFUSED = """
UPDATE quarantine SET reason = %(reason)s, detail = %(detail)s
WHERE id = %(id)s AND (reason, detail) IS DISTINCT FROM (%(reason)s, %(detail)s)
"""


@dataclass
class ReplayReport:
    stored: int = 0
    duplicates: int = 0  # already stored: marked, nothing added
    refused: Counter[str] = field(default_factory=Counter)  # still quarantined, by reason now
    skipped: Counter[str] = field(default_factory=Counter)  # not offered, by why

    def line(self) -> str:
        offered = self.stored + self.duplicates + self.refused.total()
        refused = ", ".join(f"{reason} {n}" for reason, n in sorted(self.refused.items()))
        skipped = ", ".join(f"{why} {n}" for why, n in sorted(self.skipped.items()))
        return (
            f"replayed {offered} quarantined messages: {self.stored} stored, "
            f"{self.duplicates} already stored; still quarantined {self.refused.total()}"
            f"{f' ({refused})' if refused else ''}; not offered {self.skipped.total()}"
            f"{f' ({skipped})' if skipped else ''}"
        )


class _RefusedAgain(Exception):
    """Rolls back a store that quarantined the message again (what it wrote with it)."""

    def __init__(self, reason: str, detail: str | None) -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def replay_quarantine(
    conn: psycopg.Connection,
    *,
    max_future_skew: timedelta,
    late_data_days: int | None,
    reasons: list[str] | None = None,
    device: str | None = None,
    limit: int | None = None,
) -> ReplayReport:
    """Replay the pending messages quarantined so far (for these reasons, of this device, at
    most *limit*), oldest first. *conn* must be in autocommit mode: each message commits on
    its own, so an interrupted replay keeps what it did."""
    replay = _Replay(conn, max_future_skew, late_data_days)
    row = conn.execute(LAST_ID).fetchone()
    params = {"after": 0, "last": row[0] if row else 0, "reasons": reasons, "device": device}
    taken = 0
    while limit is None or taken < limit:
        chunk = CHUNK if limit is None else min(CHUNK, limit - taken)
        ids = [i for (i,) in conn.execute(PENDING, {**params, "chunk": chunk}).fetchall()]
        if not ids:
            break
        for qid in ids:
            replay.one(qid)
        taken += len(ids)
        params["after"] = ids[-1]
    return replay.report


@dataclass
class _Replay:
    conn: psycopg.Connection
    max_future_skew: timedelta
    late_data_days: int | None
    directory: DeviceDirectory = field(default_factory=DeviceDirectory)
    report: ReplayReport = field(default_factory=ReplayReport)

    def one(self, qid: int) -> None:
        """Replay quarantine row *qid* in a transaction of its own."""
        with self.conn.transaction():
            row = self.conn.execute(TAKE, (qid,)).fetchone()
            if row is None:
                return  # replayed or purged meanwhile, or another replay holds it
            received_at, topic, payload, size = row
            payload = bytes(payload)
            if size > len(payload):
                self.report.skipped["truncated"] += 1
                return
            where = parse_topic(topic)
            if where is not None and where.kind is MessageKind.STATUS:
                self.report.skipped["status"] += 1
                return
            if where is not None:
                since = self.conn.execute(PROVISIONED_SINCE, (received_at, where.serial))
                later = since.fetchone()
                if later is not None and later[0]:
                    self.report.skipped["device provisioned after it arrived"] += 1
                    return
            try:
                outcome = self._store(qid, RawMessage(topic, payload, received_at))
            except _RefusedAgain as again:
                reason, detail = again.reason, again.detail
            except NOT_TRANSIENT as exc:
                reason, detail = QuarantineReason.REJECTED_BY_DATABASE.value, str(exc)[:500]
            else:
                self.conn.execute(MARK, (outcome, qid))
                if outcome == "stored":
                    self.report.stored += 1
                else:
                    self.report.duplicates += 1
                return
            self.conn.execute(STILL_REFUSED, {"reason": reason, "detail": detail, "id": qid})
            self.report.refused[reason] += 1

    def _store(self, qid: int, raw: RawMessage) -> str:
        """'stored' or 'duplicate'; raises _RefusedAgain (or a data error), nothing written."""
        with self.conn.transaction():  # a savepoint, rolled back if the message is refused
            row = self.conn.execute(LAST_ID).fetchone()
            before = row[0] if row else 0
            result = store_batch(
                self.conn,
                [raw],
                self.directory,
                max_future_skew=self.max_future_skew,
                now=raw.received_at,  # judged as of its receipt, as live ingest judged it
                late_data_days=self.late_data_days,
            )
            if sum(result.quarantined.values()):
                found = {"id": qid, "before": before, "received_at": raw.received_at}
                again = self.conn.execute(REFUSED_AGAIN, {**found, "topic": raw.topic}).fetchone()
                reason, detail = again or (next(iter(result.quarantined)), None)
                raise _RefusedAgain(reason, detail)
        return "stored" if result.usage_rows + result.metric_rows else "duplicate"
