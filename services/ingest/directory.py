"""Which device a serial is, its project, and how late its data may arrive (cached).

Entries live for CACHE_TTL_S; a registry change (a LISTEN/NOTIFY event from the `devices`
trigger) drops the entry at once, so a revoked device is refused without waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg.rows import class_row

# Upper bound on staleness if a change notification is ever missed (e.g. during a reconnect).
CACHE_TTL_S = 30.0


@dataclass(frozen=True)
class DeviceRef:
    id: int
    serial: str
    project_id: int
    active: bool
    late_data_days: int | None
    retention_days: int | None


LOOKUP = """
SELECT d.id, d.serial, d.project_id, d.status = 'active' AS active, p.late_data_days,
       p.retention_days
FROM devices d JOIN projects p ON p.id = d.project_id
WHERE d.serial = ANY(%s)
"""


class DeviceDirectory:
    """Serial → device, read from the registry and kept for CACHE_TTL_S (misses too)."""

    def __init__(self, ttl_s: float = CACHE_TTL_S) -> None:
        self._ttl = ttl_s
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, DeviceRef | None]] = {}

    def lookup(self, conn: psycopg.Connection, serials: Iterable[str]) -> dict[str, DeviceRef]:
        now = time.monotonic()
        found: dict[str, DeviceRef] = {}
        stale = []
        with self._lock:
            for serial in serials:
                entry = self._entries.get(serial)
                if entry is None or now - entry[0] > self._ttl:
                    stale.append(serial)
                elif entry[1] is not None:
                    found[serial] = entry[1]
        if stale:
            with conn.cursor(row_factory=class_row(DeviceRef)) as cur:
                fresh = {d.serial: d for d in cur.execute(LOOKUP, (stale,)).fetchall()}
            with self._lock:
                for serial in stale:
                    self._entries[serial] = (now, fresh.get(serial))
            found.update(fresh)
        return found

    def forget(self, serial: str | None = None) -> None:
        """Drop one serial (a registry change) or everything (lost track of changes)."""
        with self._lock:
            if serial is None:
                self._entries.clear()
            else:
                self._entries.pop(serial, None)
