"""Devices as two systems see them: a row in the registry and an identity in the broker.

Each operation keeps the two in step: the database change is made inside a transaction,
the broker is changed, and only then is the transaction committed. If the broker refuses
or is unreachable, the database change is rolled back and nothing was provisioned.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import psycopg
from psycopg import sql

from services.core.db import translate_errors
from services.core.errors import ConflictError, NotFoundError
from services.core.identities import DeviceIdentities
from services.registry import credentials as device_credentials, models
from services.registry.repository import get_item
from services.registry.resources import DEVICES

# 24 random bytes: far beyond guessing, short enough to paste.
PASSWORD_BYTES = 24

INSERT_DEVICE = """
INSERT INTO devices (serial, project_id, model, firmware, site, tags)
VALUES (%s, %s, %s, %s, %s, %s) RETURNING id
"""
REVOKE = """
UPDATE devices SET status = 'revoked', revoked_at = now()
WHERE id = %s AND status = 'active' RETURNING serial
"""
# The broker kicks a disabled client without publishing its last will: say so ourselves.
MARK_OFFLINE = """
UPDATE device_state SET online = false, online_since = now()
WHERE device_id = %s AND online IS DISTINCT FROM false
"""
HAS_DATA = """
SELECT EXISTS (SELECT 1 FROM usage_events WHERE device_id = %(id)s)
    OR EXISTS (SELECT 1 FROM metric_samples WHERE device_id = %(id)s)
    OR EXISTS (SELECT 1 FROM device_state WHERE device_id = %(id)s)
"""


def new_password() -> str:
    """A device's MQTT password, for every path that provisions one."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def provision(
    conn: psycopg.Connection, admin: DeviceIdentities, devices: Sequence[models.DeviceCreate]
) -> list[models.ProvisionedDevice]:
    """Register devices and create their broker identities; all or nothing. The password's
    hash is kept in the registry too (the NATS auth callout checks it there)."""
    ids: list[int] = []
    passwords = [new_password() for _ in devices]
    with translate_errors(DEVICES), conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            INSERT_DEVICE,
            [(d.serial, d.project_id, d.model, d.firmware, d.site, d.tags) for d in devices],
            returning=True,
        )
        while True:
            row = cur.fetchone()
            if row is not None:
                ids.append(int(row[0]))
            if not cur.nextset():
                break
        pairs = [(d.serial, p) for d, p in zip(devices, passwords, strict=True)]
        device_credentials.store(conn, pairs)
        admin.create_devices(pairs)
    settle(conn, admin)
    return [
        models.ProvisionedDevice(device=get_item(conn, DEVICES, device_id), password=password)
        for device_id, password in zip(ids, passwords, strict=True)
    ]


def revoke(conn: psycopg.Connection, admin: DeviceIdentities, device_id: int) -> models.Device:
    """Disable the device in the broker (it is disconnected at once) and mark it revoked.
    Its history stays. Revoking a revoked device changes nothing in the registry, but tells the
    broker again (a disconnect that failed the first time is retried)."""
    with conn.transaction():
        device = get_item(conn, DEVICES, device_id)
        if conn.execute(REVOKE, (device_id,)).fetchone() is not None:
            conn.execute(MARK_OFFLINE, (device_id,))
        admin.disable_device(device.serial)
    settle(conn, admin)
    return get_item(conn, DEVICES, device_id)


def rotate_credentials(
    conn: psycopg.Connection, admin: DeviceIdentities, device_id: int
) -> models.ProvisionedDevice:
    """A new password; the old one stops working at once."""
    device = get_item(conn, DEVICES, device_id)
    if device.status is models.DeviceStatus.REVOKED:
        raise ConflictError(f"device {device_id} is revoked; its credentials cannot be rotated")
    password = new_password()
    with conn.transaction():
        device_credentials.store(conn, [(device.serial, password)])
        admin.set_device_password(device.serial, password)
    settle(conn, admin)
    return models.ProvisionedDevice(device=device, password=password)


def delete(conn: psycopg.Connection, admin: DeviceIdentities, device_id: int) -> None:
    """Remove a device that never reported; one with history must be revoked instead."""
    with conn.transaction():
        device = get_item(conn, DEVICES, device_id)
        row = conn.execute(HAS_DATA, {"id": device_id}).fetchone()
        if row and row[0]:
            raise ConflictError(
                f"device {device_id} has sent data; revoke it instead (its history stays)"
            )
        conn.execute(sql.SQL("DELETE FROM devices WHERE id = %s"), (device_id,))
        admin.delete_device(device.serial)
    settle(conn, admin)


def settle(conn: psycopg.Connection, admin: DeviceIdentities) -> None:
    """Commit the registry change (a connection that is not in autocommit mode, as the API's,
    holds it in an outer transaction until now), then let the broker act on it: a device
    disconnected before the commit could log in again with what it is losing."""
    if not conn.autocommit:
        conn.commit()
    admin.committed()


def require_project(conn: psycopg.Connection, project_id: int) -> None:
    if conn.execute("SELECT 1 FROM projects WHERE id = %s", (project_id,)).fetchone() is None:
        raise NotFoundError(f"project {project_id} not found")
