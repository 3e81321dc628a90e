"""The read replica: a hot standby of the suite's PostgreSQL (`infra up --replica`) that the
API reads analytics and pages from, with read-your-writes on the primary and a fallback to it.

The proof that reads come from the replica: with its replay paused, the primary's app role
loses SELECT on every telemetry table; the pages still answer, from the replica's older
catalogue. The replica is made for this module and removed after it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from pydantic import SecretStr

from services.api.app import create_app
from services.core.paths import local_env_file
from services.core.settings import Settings
from services.infra.local import LocalServices
from services.infra.postgres import LocalPostgres
from tests.integration.conftest import Project, api_client, mint_token, wait_for
from tests.integration.ingest_support import free_port

# What devices measured: the analytics and pages read these, auth and the registry do not.
TELEMETRY_TABLES = (
    "usage_events",
    "metric_samples",
    "usage_hourly",
    "usage_daily",
    "usage_monthly",
    "feature_hourly",
    "feature_daily",
    "project_hourly",
    "project_daily",
    "enabled_daily",
    "enabled_monthly",
    "device_hourly",
    "device_daily",
    "device_monthly",
    "device_state",
    "device_status_history",
)
READ_PAGES = (
    "/projects/{id}/analytics",
    "/projects/{id}/analytics?format=csv",
    "/projects/{id}/usage",
    "/portfolio",
    "/fleet",
    "/ingest/health",
    "/dashboards/projects/{id}",
    "/dashboards/customers/{customer}",
    "/dashboards/customers/{customer}/report",
    "/dashboards/portfolio",
    "/dashboards/fleet",
    "/dashboards/ingest",
)


@dataclasses.dataclass(frozen=True)
class Replica:
    server: LocalPostgres
    settings: Settings  # the session's, reading from the replica


@pytest.fixture(scope="module")
def replica(local_services: LocalServices, settings: Settings) -> Iterator[Replica]:
    services = dataclasses.replace(local_services, pg_replica_port=free_port())
    services.remove_replica(print)  # one left by an earlier run is no copy of this session's
    services.up(print, replica=True)
    primary_url = settings.database_url.get_secret_value()
    read_url = primary_url.replace(f":{services.pg_port}/", f":{services.pg_replica_port}/")
    try:
        yield Replica(
            services.replica, settings.model_copy(update={"database_read_url": SecretStr(read_url)})
        )
    finally:
        services.remove_replica(print)


def _database(settings: Settings) -> str:
    return settings.database_url.get_secret_value().rsplit("/", 1)[1]


@contextmanager
def replay_paused(replica: Replica) -> Iterator[None]:
    """The replica keeps receiving WAL but applies none of it meanwhile."""
    with psycopg.connect(replica.server.superuser_conninfo(), autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
        try:
            yield
        finally:
            conn.execute("SELECT pg_wal_replay_resume()")


def replica_has(replica: Replica, query: str, params: tuple[object, ...]) -> bool:
    url = replica.settings.database_read_url
    assert url is not None
    with psycopg.connect(url.get_secret_value(), autocommit=True) as conn:
        return conn.execute(query, params).fetchone() is not None


def metric(client: TestClient, name: str, reason: str | None = None) -> float:
    """A sample of the API's /metrics (0 when absent)."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("reason") == reason:
                return sample.value
    return 0.0


def pages(project: Project) -> list[str]:
    return [p.format(id=project.id, customer=project.customer_id) for p in READ_PAGES]


def test_infra_up_replica_writes_the_read_url(replica: Replica) -> None:
    assert "FIELDTRACK_DATABASE_READ_URL=" in local_env_file().read_text()
    with psycopg.connect(replica.server.superuser_conninfo(), autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


def test_pages_answer_from_the_replica_when_the_primary_cannot_read_telemetry(
    replica: Replica, settings: Settings, project: Project, local_services: LocalServices
) -> None:
    wait_for(lambda: replica_has(replica, "SELECT 1 FROM projects WHERE id = %s", (project.id,)))
    token = mint_token(settings.database_url.get_secret_value(), name="replica-reader")
    revoke = sql.SQL("REVOKE SELECT ON {} FROM fieldtrack").format(
        sql.SQL(", ").join(map(sql.Identifier, TELEMETRY_TABLES))
    )
    grant = sql.SQL("GRANT SELECT ON {} TO fieldtrack").format(
        sql.SQL(", ").join(map(sql.Identifier, TELEMETRY_TABLES))
    )
    superuser = local_services.postgres.superuser_conninfo(_database(settings))
    with replay_paused(replica), psycopg.connect(superuser, autocommit=True) as admin:
        admin.execute(revoke)
        try:
            # the primary's read path is closed: the app role reads no telemetry there ...
            with (
                psycopg.connect(settings.database_url.get_secret_value()) as primary,
                pytest.raises(psycopg.errors.InsufficientPrivilege),
            ):
                primary.execute("SELECT count(*) FROM usage_daily")
            on_primary = TestClient(
                create_app(settings),
                base_url="https://testserver",
                headers={"Authorization": f"Bearer {token}"},
                raise_server_exceptions=False,
            )
            with on_primary:
                assert on_primary.get(f"/projects/{project.id}/analytics").status_code == 500
            # ... and every analytics route and page still answers, from the replica
            with api_client(replica.settings, token) as client:
                for page in pages(project):
                    response = client.get(page)
                    assert response.status_code == 200, (page, response.text[:500])
                assert metric(client, "fieldtrack_api_replica_reads_total") >= len(READ_PAGES)
                lag = client.get("/ingest/health").json()["replica"]
                assert lag["configured"] and lag["reachable"], lag
                # the revoke is waiting on the replica: it is behind, and says so
                assert lag["lag_bytes"] > 0, lag
                assert "Read replica" in client.get("/dashboards/ingest").text
                assert metric(client, "fieldtrack_api_replica_lag_bytes") > 0
        finally:
            admin.execute(grant)


def test_a_callers_own_write_is_read_back_from_the_primary(
    replica: Replica, settings: Settings, project: Project, unique: str
) -> None:
    database_url = settings.database_url.get_secret_value()
    writer, other = mint_token(database_url, name="writer"), mint_token(database_url, name="other")
    key = f"replica_{unique}"
    analytics = f"/projects/{project.id}/analytics"

    def features(client: TestClient) -> set[str]:
        response = client.get(analytics)
        assert response.status_code == 200, response.text
        return {f["feature_key"] for f in response.json()["features"]}

    with (
        api_client(replica.settings, writer) as mine,
        api_client(replica.settings, other) as theirs,
    ):
        wait_for(lambda: project.feature_key in features(theirs))
        behind = metric(mine, "fieldtrack_api_replica_fallbacks_total", "behind_own_write")
        with replay_paused(replica):
            feature = mine.post("/features", json={"key": key, "name": f"Replica {unique}"})
            assert feature.status_code == 201, feature.text
            delivery = mine.post(
                "/deliveries", json={"project_id": project.id, "feature_id": feature.json()["id"]}
            )
            assert delivery.status_code == 201, delivery.text
            assert mine.get(f"/deliveries/{delivery.json()['id']}").status_code == 200
            assert key in features(mine), "the writer reads its own delivery back"
            assert key not in features(theirs), "another caller reads the paused replica"
            assert (
                metric(mine, "fieldtrack_api_replica_fallbacks_total", "behind_own_write") > behind
            )
        wait_for(lambda: key in features(theirs))


def test_reads_fall_back_to_the_primary_when_the_replica_stops(
    replica: Replica, project: Project
) -> None:
    with api_client(replica.settings, None) as client:
        token = mint_token(replica.settings.database_url.get_secret_value(), name="fallback")
        client.headers["Authorization"] = f"Bearer {token}"
        before = metric(client, "fieldtrack_api_replica_fallbacks_total", "unavailable")
        assert replica.server.stop()
        for page in pages(project):
            response = client.get(page)
            assert response.status_code == 200, (page, response.text[:500])
        assert metric(client, "fieldtrack_api_replica_fallbacks_total", "unavailable") > before
        lag = client.get("/ingest/health").json()["replica"]
        assert lag["configured"] and not lag["reachable"], lag
        assert "not answering" in client.get("/dashboards/ingest").text
