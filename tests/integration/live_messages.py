"""Device messages as live ingest receives them (receive time given, not historical), and
storing them through the real ingest store: for tests that need data relative to now."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from services.core.topics import MessageKind, device_topic
from services.ingest.batch import BatchResult, RawMessage
from services.ingest.directory import DeviceDirectory
from services.ingest.store import store_batch


def ago(now: datetime, **delta: float) -> datetime:
    return now - timedelta(**delta)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def message(serial: str, kind: MessageKind, body: dict[str, Any], received: datetime) -> RawMessage:
    return RawMessage(device_topic(serial, kind), json.dumps(body).encode(), received)


def telemetry(
    serial: str, seq: int, received: datetime, lag_s: float = 0, **metrics: float
) -> RawMessage:
    body: dict[str, Any] = {
        "v": 1,
        "seq": seq,
        "ts": iso(received - timedelta(seconds=lag_s)),
        "metrics": [
            {"name": k, "value": v, "unit": "%" if k == "battery" else None}
            for k, v in metrics.items()
        ],
    }
    body["metrics"] = [{k: v for k, v in m.items() if v is not None} for m in body["metrics"]]
    return message(serial, MessageKind.TELEMETRY, body, received)


def usage(serial: str, seq: int, received: datetime, lag_s: float = 0) -> RawMessage:
    body = {
        "v": 1,
        "seq": seq,
        "ts": iso(received - timedelta(seconds=lag_s)),
        "events": [{"feature": "remote_unlock", "count": 1}],
    }
    return message(serial, MessageKind.USAGE, body, received)


def status(serial: str, state: str, received: datetime, firmware: str | None = None) -> RawMessage:
    body: dict[str, Any] = {"v": 1, "state": state, "ts": iso(received)}
    if firmware:
        body["firmware"] = firmware
    return message(serial, MessageKind.STATUS, body, received)


def raw(serial: str, payload: bytes, received: datetime) -> RawMessage:
    return RawMessage(device_topic(serial, MessageKind.USAGE), payload, received)


def store_live(database_url: str, messages: list[RawMessage]) -> BatchResult:
    """Store messages in one transaction, as ingest would at this moment."""
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        return store_batch(
            conn,
            messages,
            DeviceDirectory(),
            max_future_skew=timedelta(minutes=10),
            now=datetime.now(UTC),
            late_data_days=None,
        )
