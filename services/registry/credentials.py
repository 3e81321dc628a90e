"""Device credentials as fieldtrack keeps them: a hash per device, checked by the NATS auth
callout. Written by every path that provisions a device or rotates its password."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

STORE_BY_SERIAL = """
INSERT INTO device_credentials (device_id, secret_hash)
SELECT id, %s FROM devices WHERE serial = %s
ON CONFLICT (device_id) DO UPDATE SET secret_hash = EXCLUDED.secret_hash, rotated_at = now()
"""
LOOKUP = """
SELECT d.id, d.status, c.secret_hash
FROM devices d JOIN device_credentials c ON c.device_id = d.id
WHERE d.serial = %s
"""


def secret_hash(password: str) -> bytes:
    return hashlib.sha256(password.encode()).digest()


def store(conn: psycopg.Connection, credentials: Sequence[tuple[str, str]]) -> None:
    """Record (serial, password) pairs for devices already in the registry."""
    with conn.cursor() as cur:
        cur.executemany(STORE_BY_SERIAL, [(secret_hash(p), s) for s, p in credentials])


@dataclass(frozen=True)
class Verdict:
    device_id: int | None
    refused: str | None  # why the login is refused; None: accepted


def check(conn: psycopg.Connection, serial: str, password: str) -> Verdict:
    """Whether *serial* may log in with *password*: an active device whose hash matches."""
    row = conn.execute(LOOKUP, (serial,)).fetchone()
    if row is None:
        return Verdict(None, "unknown device or no credentials")
    device_id, status, stored = row
    if not hmac.compare_digest(bytes(stored), secret_hash(password)):
        return Verdict(device_id, "wrong password")
    if status != "active":
        return Verdict(device_id, f"device is {status}")
    return Verdict(device_id, None)
