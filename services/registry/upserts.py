"""Idempotent registry writes for scenario seeding: upserts by natural key, and devices
re-provisioned with fresh credentials.

Provisioning is one unit across two systems: the device row is inserted inside a
transaction, its broker identity is created, and only then is the transaction committed;
if the broker refuses, nothing is left behind in the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import psycopg

from services.core.errors import FieldtrackError
from services.core.identities import DeviceIdentities
from services.registry import credentials as device_credentials
from services.registry.provisioning import new_password, settle


class ProvisioningError(FieldtrackError):
    """A device cannot be provisioned as asked."""


@dataclass(frozen=True)
class DeviceCredential:
    serial: str
    password: str
    project_id: int


UPSERT_CUSTOMER = """
INSERT INTO customers (name, tier, industry, lifecycle_stage) VALUES (%s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE SET tier = excluded.tier, industry = excluded.industry,
    lifecycle_stage = excluded.lifecycle_stage
RETURNING id
"""
UPSERT_PROJECT = """
INSERT INTO projects (customer_id, name, contract_value, currency, go_live_date, status)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (customer_id, name) DO UPDATE SET contract_value = excluded.contract_value,
    currency = excluded.currency, go_live_date = excluded.go_live_date, status = excluded.status
RETURNING id
"""
UPSERT_FEATURE = """
INSERT INTO features (key, name, product_line, description, kind) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (key) DO UPDATE SET name = excluded.name, product_line = excluded.product_line,
    description = excluded.description, kind = excluded.kind
RETURNING id
"""
UPSERT_DELIVERY = """
INSERT INTO deliveries (project_id, feature_id, status, delivered_on, cost_person_days,
                        contract_line_value, business_score, strategic)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (project_id, feature_id) DO UPDATE SET status = excluded.status,
    delivered_on = excluded.delivered_on, cost_person_days = excluded.cost_person_days,
    contract_line_value = excluded.contract_line_value,
    business_score = excluded.business_score, strategic = excluded.strategic
"""
EXISTING_DEVICES = "SELECT serial, project_id FROM devices WHERE serial = ANY(%s)"
INSERT_DEVICE = """
INSERT INTO devices (serial, project_id, model, firmware) VALUES (%s, %s, %s, %s)
"""
REACTIVATE_DEVICE = """
UPDATE devices SET status = 'active', revoked_at = NULL, model = %s, firmware = %s
WHERE serial = %s
"""


def upsert_customer(
    conn: psycopg.Connection, name: str, tier: str, industry: str, lifecycle_stage: str
) -> int:
    return _returning_id(conn, UPSERT_CUSTOMER, (name, tier, industry, lifecycle_stage))


def upsert_project(
    conn: psycopg.Connection,
    customer_id: int,
    name: str,
    *,
    contract_value: float | None,
    currency: str,
    go_live_date: date | None,
    status: str,
) -> int:
    return _returning_id(
        conn, UPSERT_PROJECT, (customer_id, name, contract_value, currency, go_live_date, status)
    )


def upsert_feature(
    conn: psycopg.Connection,
    key: str,
    name: str,
    product_line: str | None,
    description: str | None,
    *,
    kind: str = "interactive",
) -> int:
    return _returning_id(conn, UPSERT_FEATURE, (key, name, product_line, description, kind))


def upsert_delivery(
    conn: psycopg.Connection,
    project_id: int,
    feature_id: int,
    *,
    status: str,
    delivered_on: date | None,
    cost_person_days: float | None,
    contract_line_value: float | None,
    business_score: int | None,
    strategic: bool,
) -> None:
    conn.execute(
        UPSERT_DELIVERY,
        (
            project_id,
            feature_id,
            status,
            delivered_on,
            cost_person_days,
            contract_line_value,
            business_score,
            strategic,
        ),
    )


def provision_devices(
    conn: psycopg.Connection,
    admin: DeviceIdentities | None,
    project_id: int,
    devices: Sequence[tuple[str, str | None, str | None]],
) -> list[DeviceCredential]:
    """Provision (serial, model, firmware) devices; existing ones of this project get new
    credentials. Returns each password once; the broker and the registry keep a hash.
    Without a broker admin, only the registry rows are written (enough for history imports)."""
    serials = [serial for serial, _, _ in devices]
    with conn.transaction():
        existing: dict[str, int] = dict(conn.execute(EXISTING_DEVICES, (serials,)).fetchall())
        foreign = sorted(s for s, p in existing.items() if p != project_id)
        if foreign:
            raise ProvisioningError(
                f"{len(foreign)} serial(s) belong to another project already, "
                f"e.g. {', '.join(foreign[:3])}"
            )
        with conn.cursor() as cur:
            cur.executemany(
                INSERT_DEVICE,
                [(s, project_id, m, f) for s, m, f in devices if s not in existing],
            )
            cur.executemany(REACTIVATE_DEVICE, [(m, f, s) for s, m, f in devices if s in existing])
        credentials = [DeviceCredential(serial, new_password(), project_id) for serial in serials]
        pairs = [(c.serial, c.password) for c in credentials]
        if admin is not None:  # without a broker the passwords are thrown away: keep the old
            device_credentials.store(conn, pairs)
            admin.create_devices(pairs)
    if admin is not None:
        settle(conn, admin)
    return credentials


def _returning_id(conn: psycopg.Connection, query: str, params: tuple[object, ...]) -> int:
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise FieldtrackError("upsert returned no id")
    return int(row[0])
