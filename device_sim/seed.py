"""Loading a scenario into the registry and provisioning its fleets."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from datetime import UTC, date, datetime
from pathlib import Path

import psycopg

from device_sim.generator import firmware_of
from device_sim.scenario import Scenario, delivered_on, go_live, serials
from services.core.identities import DeviceIdentities
from services.registry import upserts as registry
from services.registry.upserts import DeviceCredential

CREDENTIAL_FIELDS = ("serial", "password", "project_id")


def seed(
    conn: psycopg.Connection,
    admin: DeviceIdentities | None,
    scenario: Scenario,
    end: date | None = None,
) -> list[DeviceCredential]:
    """Upsert everything the scenario describes; (re)provision its devices; return credentials.

    Go-live dates count back from *end* (default today), as the generator's do."""
    end = end or datetime.now(UTC).date()
    with conn.transaction():
        feature_ids = {
            f.key: registry.upsert_feature(
                conn, f.key, f.name, f.product_line, f.description, kind=f.kind
            )
            for f in scenario.features
        }
    credentials: list[DeviceCredential] = []
    for customer in scenario.customers:
        with conn.transaction():
            customer_id = registry.upsert_customer(
                conn, customer.name, customer.tier, customer.industry, customer.lifecycle_stage
            )
        for project in customer.projects:
            live_on = go_live(project, end)
            with conn.transaction():
                project_id = registry.upsert_project(
                    conn,
                    customer_id,
                    project.name,
                    contract_value=project.contract_value,
                    currency=project.currency,
                    go_live_date=live_on,
                    status=project.status,
                )
                for delivery in project.deliveries:
                    registry.upsert_delivery(
                        conn,
                        project_id,
                        feature_ids[delivery.feature],
                        status=delivery.status,
                        delivered_on=delivered_on(project, delivery, end),
                        cost_person_days=delivery.cost_person_days,
                        contract_line_value=delivery.contract_line_value,
                        business_score=delivery.business_score,
                        strategic=delivery.strategic,
                    )
            devices = [
                (serial, project.fleet.model, firmware_of(scenario, project, serial))
                for serial in serials(project)
            ]
            credentials += registry.provision_devices(conn, admin, project_id, devices)
    return credentials


def write_credentials(path: Path, credentials: Iterable[DeviceCredential]) -> None:
    """Device passwords, readable by the owner only: they are shown nowhere else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CREDENTIAL_FIELDS)
        for c in credentials:
            writer.writerow((c.serial, c.password, c.project_id))


def read_credentials(path: Path) -> list[DeviceCredential]:
    with path.open(newline="") as handle:
        return [
            DeviceCredential(row["serial"], row["password"], int(row["project_id"]))
            for row in csv.DictReader(handle)
        ]
