"""Which device a serial names, and to which project it belongs (cached)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg.rows import class_row

# A revoked or newly provisioned device is noticed within this many seconds.
CACHE_TTL_S = 10.0


@dataclass(frozen=True)
class DeviceRef:
    id: int
    serial: str
    project_id: int
    active: bool


LOOKUP = """
SELECT id, serial, project_id, status = 'active' AS active
FROM devices WHERE serial = ANY(%s)
"""


class DeviceDirectory:
    """Serial → device, read from the registry and kept for CACHE_TTL_S (misses too)."""

    def __init__(self, ttl_s: float = CACHE_TTL_S) -> None:
        self._ttl = ttl_s
        self._entries: dict[str, tuple[float, DeviceRef | None]] = {}

    def lookup(self, conn: psycopg.Connection, serials: Iterable[str]) -> dict[str, DeviceRef]:
        now = time.monotonic()
        found: dict[str, DeviceRef] = {}
        stale = []
        for serial in serials:
            entry = self._entries.get(serial)
            if entry is None or now - entry[0] > self._ttl:
                stale.append(serial)
            elif entry[1] is not None:
                found[serial] = entry[1]
        if stale:
            with conn.cursor(row_factory=class_row(DeviceRef)) as cur:
                fresh = {d.serial: d for d in cur.execute(LOOKUP, (stale,)).fetchall()}
            for serial in stale:
                self._entries[serial] = (now, fresh.get(serial))
            found.update(fresh)
        return found

    def forget(self) -> None:
        self._entries.clear()
