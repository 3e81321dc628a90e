"""Writing a batch of raw messages in one transaction.

Each message is classified (`classify`); valid readings are COPYed into the hypertables, or
after a redelivery into a staging table and moved with ``ON CONFLICT DO NOTHING``, so a
redelivered message adds nothing; the rollups (hourly, daily, monthly; migrations 0002, 0004,
0007) are summed (`rollup_sums`) from the rows that were really inserted and upserted in the
same transaction. A message its device's identity window shows stored before (`identity`) is
left out before anything is written. Rejected messages go to the quarantine
(`quarantine.write`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import psycopg

from services.core.payloads import Accepted, QuarantineReason, Rejected, StatusMessage, decode
from services.core.topics import parse_topic
from services.ingest.batch import NO_BOOT, BatchResult, Fate, Outcome, RawMessage, Stored
from services.ingest.classify import DeviceSeen, Rows, check_device, is_status
from services.ingest.copying import copy_rows, copying
from services.ingest.directory import DeviceDirectory, DeviceRef
from services.ingest.identity import Identified, identity_check
from services.ingest.quarantine.write import quarantine_messages, quarantine_row, write_quarantine
from services.ingest.rollup_sums import device_hours, enabled_rollups, sequence_gaps, usage_rollups
from services.ingest.statements import (
    COPY_DEVICE_HOURLY,
    COPY_DEVICE_STATE,
    COPY_METRICS,
    COPY_USAGE,
    COPY_USAGE_DIRECT,
    DEVICE_SEQUENCES,
    INSERT_STATUS_HISTORY,
    MOVE_METRICS,
    MOVE_USAGE,
    STAGING_DDL,
    UPSERT_DEVICE_HOURLY,
    UPSERT_DEVICE_STATE,
    UPSERT_ENABLED,
    UPSERT_USAGE_ROLLUPS,
    USAGE_TYPES,
)

# Data errors: PostgreSQL refused a message's values (SQLSTATE class 22, and the constraints of
# class 23 a value can break). Retrying cannot cure them and they belong to one message, so it
# is isolated and quarantined. Nothing else is: a Python exception (TypeError, ValueError, ...)
# on a message that passed validation, or a NOT NULL violation (validated messages fill every
# required column: a NULL is our code, or a schema newer than the code mid-deploy), is a bug,
# and quarantining on it would drain all traffic into the quarantine; ingest stops instead.
NOT_TRANSIENT = (
    psycopg.DataError,
    psycopg.errors.CheckViolation,
    psycopg.errors.UniqueViolation,
    psycopg.errors.ForeignKeyViolation,
    psycopg.errors.ExclusionViolation,
)


def store_isolating(
    conn: psycopg.Connection,
    batch: list[RawMessage],
    store: Callable[[list[RawMessage]], BatchResult],
) -> BatchResult:
    """Store a batch, and if the database refuses some of it (a data error), halve it until
    the messages it refuses are isolated; those are quarantined and everything else is
    stored. Any other error propagates: it is never a reason to quarantine a message."""
    try:
        return store(batch)
    except NOT_TRANSIENT as exc:
        if len(batch) == 1:
            [raw] = batch
            reason = QuarantineReason.REJECTED_BY_DATABASE
            where = parse_topic(raw.topic)
            with conn.transaction():
                quarantine_messages(
                    conn, [(raw, Rejected(reason, str(exc)[:500], where.serial if where else None))]
                )
            result = BatchResult(messages=1)
            result.quarantined[reason.value] += 1
            return result
        middle = len(batch) // 2
        first = store_isolating(conn, batch[:middle], store)
        return first.merge(store_isolating(conn, batch[middle:], store))


def store_batch(
    conn: psycopg.Connection,
    batch: list[RawMessage],
    directory: DeviceDirectory,
    *,
    max_future_skew: timedelta,
    now: datetime,
    late_data_days: int | None,
    outcomes: list[Outcome] | None = None,
) -> BatchResult:
    """Write one batch in one transaction; the caller commits (by leaving `transaction()`).

    *late_data_days* None accepts any age (history imports). *outcomes*, if given, receives
    what became of each message of *batch*, in its order."""
    result = BatchResult(messages=len(batch))
    cleared = [raw for raw in batch if not raw.payload and is_status(raw.topic)]
    result.status_cleared = len(cleared)
    decoded = [
        (
            raw,
            raw.decoded
            if raw.decoded is not None
            else decode(raw.topic, raw.payload, now=now, max_future_skew=max_future_skew),
        )
        for raw in batch
        if raw.payload or not is_status(raw.topic)
    ]
    serials = {d.topic.serial for _, d in decoded if isinstance(d, Accepted)}
    devices = directory.lookup(conn, serials)

    rows = Rows()
    verdicts: list[Accepted | Rejected] | None = None if outcomes is None else []
    for index, (raw, outcome) in enumerate(decoded):
        rejected = (
            outcome
            if isinstance(outcome, Rejected)
            else check_device(outcome, devices, now=now, late_data_days=late_data_days)
        )
        if rejected is None:
            assert isinstance(outcome, Accepted)  # noqa: S101
            rows.add(index, raw, outcome, devices[outcome.topic.serial], result)
        else:
            rows.quarantine.append(quarantine_row(raw, rejected))
            result.quarantined[str(rejected.reason)] += 1
        if verdicts is not None:
            verdicts.append(outcome if rejected is None else rejected)

    with conn.cursor() as cur:
        stored, repeats = _write(cur, rows, result)
    if outcomes is not None and verdicts is not None:
        outcomes += _outcomes(
            batch, decoded, verdicts, devices=devices, stored=stored, repeats=repeats
        )
    return result


def _write(
    cur: psycopg.Cursor[Any], rows: Rows, result: BatchResult
) -> tuple[Stored, list[Identified]]:
    """Write a batch's rows; count in *result*. Returns the messages newly stored and those
    their identity shows stored before."""
    offered_usage, offered_metrics = len(rows.usage), len(rows.metrics)
    stored: Stored = []
    repeats: list[Identified] = []
    if rows.usage or rows.metrics or rows.seen:
        cur.execute(STAGING_DDL)
    previous: dict[int, tuple[int, datetime, int]] = {}
    windows: dict[int, bytes] = {}
    if rows.seen:
        previous, found = _lock_devices(cur, rows.seen)
        if rows.identified:
            repeats, windows = identity_check(rows.identified, found)
            if repeats:
                rows.drop(repeats)
    if rows.usage:
        result.usage_rows = _insert_usage(cur, rows.usage, stored)
    if rows.metrics:
        with cur.copy(COPY_METRICS) as copy:
            for row in rows.metrics:
                copy.write_row(row)
        result.metric_rows = _stored_messages(cur.execute(MOVE_METRICS).fetchall(), stored)
    result.usage_duplicates = offered_usage - result.usage_rows
    result.metric_duplicates = offered_metrics - result.metric_rows
    latest: dict[int, tuple[int, datetime, int]] = {}
    if stored:
        gaps, latest = sequence_gaps(stored, previous)
        result.seq_jumps = sum(jumps for _, jumps in gaps.values())
        with cur.copy(COPY_DEVICE_HOURLY) as copy:
            for row in device_hours(stored, gaps):
                copy.write_row(row)
        cur.execute(UPSERT_DEVICE_HOURLY)
    if rows.enabled:
        cur.execute(UPSERT_ENABLED, enabled_rollups(rows.enabled))
    if rows.quarantine:
        write_quarantine(cur, rows.quarantine)
    if rows.seen:
        _write_device_state(cur, rows.seen, latest, windows, rows.statuses)
    return stored, repeats


def _lock_devices(
    cur: psycopg.Cursor[Any], devices: Iterable[int]
) -> tuple[dict[int, tuple[int, datetime, int]], dict[int, bytes | None]]:
    """Lock the devices' state rows (DEVICE_SEQUENCES); return each one's latest (seq, time,
    boot) by device time, and its identity window as stored."""
    previous: dict[int, tuple[int, datetime, int]] = {}
    windows: dict[int, bytes | None] = {}
    for device, seq, at, boot, window in cur.execute(DEVICE_SEQUENCES, (sorted(devices),)):
        # state written before sequence tracking has no time: start afresh from here
        if seq is not None and at is not None:
            previous[device] = (seq, at, boot)
        windows[device] = window
    return previous, windows


def _outcomes(
    batch: list[RawMessage],
    decoded: list[tuple[RawMessage, Accepted | Rejected]],
    verdicts: list[Accepted | Rejected],
    *,
    devices: dict[str, DeviceRef],
    stored: Stored,
    repeats: list[Identified],
) -> list[Outcome]:
    """What became of each message of *batch*, from what store_batch found and inserted."""
    # a message was stored if its reading 0 was; two copies of one message in the batch
    # share that row: the first is the stored one
    fresh = Counter((device, seq, at, boot) for device, _, seq, at, boot in stored)
    repeated = {repeat.position for repeat in repeats}
    fates: dict[int, Outcome] = {}  # by id() of the raw message: tuples may be equal
    for index, ((raw, _), verdict) in enumerate(zip(decoded, verdicts, strict=True)):
        if isinstance(verdict, Rejected):
            fate = Outcome(Fate.QUARANTINED, str(verdict.reason), verdict.detail)
        elif isinstance(verdict.message, StatusMessage):
            fate = Outcome(Fate.STORED)
        elif index in repeated:
            fate = Outcome(Fate.DUPLICATE)
        else:
            message = verdict.message
            boot = NO_BOOT if message.boot is None else message.boot
            key = (devices[verdict.topic.serial].id, message.seq, verdict.reading_times[0], boot)
            fate = Outcome(Fate.STORED if fresh[key] > 0 else Fate.DUPLICATE)
            fresh[key] -= 1
        fates[id(raw)] = fate
    return [fates.get(id(raw), Outcome(Fate.CLEARED)) for raw in batch]


def _insert_usage(cur: psycopg.Cursor[Any], usage: list[tuple[Any, ...]], stored: Stored) -> int:
    """Store usage readings and their rollups; note each newly stored message in *stored*;
    return the readings inserted. Straight into the hypertable when none is stored yet (the
    usual case); through the staging table, skipping what is, after a redelivery."""
    try:
        with cur.connection.transaction():  # a savepoint: a unique violation undoes only this
            with copying(cur, COPY_USAGE_DIRECT, USAGE_TYPES, usage):
                rollups = usage_rollups(usage)
            cur.execute(UPSERT_USAGE_ROLLUPS, rollups)
    except psycopg.errors.UniqueViolation:
        copy_rows(cur, COPY_USAGE, USAGE_TYPES, usage)
        usage = cur.execute(MOVE_USAGE).fetchall()  # the readings not stored before
        if usage:
            cur.execute(UPSERT_USAGE_ROLLUPS, usage_rollups(usage))
    # reading 0 of each message marks the message (as STORED_MESSAGES does)
    stored.extend((row[0], row[1], row[5], row[3], row[9]) for row in usage if row[6] == 0)
    return len(usage)


def _stored_messages(rows: list[tuple[Any, ...]], stored: Stored) -> int:
    """Note each newly stored message (its reading 0); return the readings inserted (the
    count row of STORED_MESSAGES)."""
    inserted = 0
    for device, project, seq, at, boot in rows:
        if device is None:
            inserted = int(seq)
        else:
            stored.append((device, project, seq, at, boot))
    return inserted


def _write_device_state(
    cur: psycopg.Cursor[Any],
    seen: dict[int, DeviceSeen],
    latest: dict[int, tuple[int, datetime, int]],
    windows: dict[int, bytes],
    statuses: list[tuple[object, ...]],
) -> None:
    with cur.copy(COPY_DEVICE_STATE) as copy:
        for i in sorted(seen):
            state = seen[i]
            last_seq, last_seq_at, last_boot = latest.get(i, (None, None, NO_BOOT))
            copy.write_row(
                (
                    i,
                    state.online,
                    state.online_since,
                    state.last_seen,
                    last_seq,
                    last_seq_at,
                    last_boot,
                    windows.get(i),
                    state.firmware,
                )
            )
    cur.execute(UPSERT_DEVICE_STATE)
    if statuses:  # a few per device and day: no staging table needed
        cur.executemany(INSERT_STATUS_HISTORY, statuses)
