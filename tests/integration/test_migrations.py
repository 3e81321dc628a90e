from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from services.core.migrate import available, migrate
from services.infra.local import LocalServices
from tests.integration.conftest import scratch_database


@pytest.fixture
def empty_database(local_services: LocalServices, database: str) -> Iterator[str]:
    with scratch_database(local_services, database, "fieldtrack_migrate") as url:
        yield url


def test_migrations_apply_once_then_are_a_no_op(empty_database: str) -> None:
    versions = [m.version for m in available()]
    assert migrate(empty_database) == versions
    assert migrate(empty_database) == []
    with psycopg.connect(empty_database) as conn:
        recorded = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        hypertables = {
            r[0]
            for r in conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables")
        }
    assert recorded == versions
    assert {"usage_events", "metric_samples"} <= hypertables


def test_concurrent_starts_apply_each_migration_exactly_once(empty_database: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(empty_database))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    applied = [version for result in results for version in result]
    assert sorted(applied) == sorted(m.version for m in available())


def test_an_edited_applied_migration_is_refused(empty_database: str) -> None:
    migrate(empty_database)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute(
            "UPDATE schema_migrations SET checksum = 'edited' WHERE version = '0001_registry'"
        )
    with pytest.raises(Exception, match="changed after it was applied"):
        migrate(empty_database)


def test_quarantined_payloads_are_compressed_with_lz4(empty_database: str) -> None:
    """Garbage should be cheap to turn away: pglz made a 5 KB payload cost the database
    about 65 µs, lz4 about 27 (migration 0010). Debian's PostgreSQL 15 has lz4."""
    migrate(empty_database)
    with psycopg.connect(empty_database) as conn:
        row = conn.execute(
            "SELECT attcompression FROM pg_attribute "
            "WHERE attrelid = 'quarantine'::regclass AND attname = 'payload'"
        ).fetchone()
    assert row == ("l",)
