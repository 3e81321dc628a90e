"""bench/dataset.py: a small dataset built the fast way (days loaded in parallel, hourly
rollups a day at a time) has the shape it promises and the rollups of one operator rebuild."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from bench.dataset import DAYS, RAW_TABLES, _drop_database, database_name, ensure_dataset
from services.infra.local import LocalServices
from services.ingest.rollups import ROLLUP_TABLES, rebuild_rollups

TARGET = 500_000


# every index, key and check the migrations define on the tables the build loads
SCHEMA = """
SELECT c.relname, i.relname, pg_get_indexdef(i.oid), con.conname, pg_get_constraintdef(con.oid)
FROM pg_class c
LEFT JOIN pg_index x ON x.indrelid = c.oid LEFT JOIN pg_class i ON i.oid = x.indexrelid
LEFT JOIN pg_constraint con ON con.conrelid = c.oid AND con.conindid = i.oid
WHERE c.relname = ANY(%(tables)s) AND c.relnamespace = 'public'::regnamespace
UNION
SELECT c.relname, NULL, NULL, con.conname, pg_get_constraintdef(con.oid)
FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
WHERE c.relname = ANY(%(tables)s) AND c.relnamespace = 'public'::regnamespace
ORDER BY 1, 2, 4
"""


@pytest.mark.slow
def test_a_dataset_built_by_days_equals_one_rebuild_and_is_reused(
    local_services: LocalServices, database: str
) -> None:
    _drop_database(local_services, database_name(TARGET))
    try:
        dataset = ensure_dataset(local_services, TARGET, print)
        assert not dataset.reused
        assert abs(dataset.usage_rows - TARGET) < TARGET * 0.05, dataset.usage_rows
        with psycopg.connect(dataset.url, autocommit=True) as conn:
            chunks = conn.execute("SELECT count(*) FROM show_chunks('usage_events')").fetchone()
            assert chunks == (DAYS,)
            # the rows that made the chunks ahead of the loaders are gone
            assert conn.execute(
                "SELECT (SELECT count(*) FROM usage_events WHERE device_id = 0)"
                " + (SELECT count(*) FROM metric_samples WHERE device_id = 0)"
            ).fetchone() == (0,)
            stored = conn.execute(
                "SELECT count(*), count(DISTINCT device_id) FROM usage_events"
            ).fetchone()
            assert stored is not None and stored[0] == dataset.usage_rows and stored[1] > 2000
            # the generator's lost messages are the gaps the device walk counts
            walked = conn.execute(
                "SELECT sum(messages), sum(missing) FROM device_hourly"
            ).fetchone()
            assert walked is not None and walked[1] > 0
            assert walked[0] == dataset.metric_rows // 2 + dataset.usage_rows
            # the indexes dropped for the load are all back, as the migrations made them
            tables = {"tables": [*RAW_TABLES, *ROLLUP_TABLES]}
            with psycopg.connect(database) as fresh:
                migrated = fresh.execute(SCHEMA, tables).fetchall()
            assert conn.execute(SCHEMA, tables).fetchall() == migrated
            assert len([row for row in migrated if row[1]]) > len(ROLLUP_TABLES)
            # compared in the database: millions of rows are slow to fetch twice
            for table in ROLLUP_TABLES:
                conn.execute(
                    sql.SQL("CREATE TEMP TABLE {} AS TABLE {}").format(
                        sql.Identifier(f"built_{table}"), sql.Identifier(table)
                    )
                )
            conn.execute("SET work_mem = '256MB'")  # the walk sorts every message
            assert rebuild_rollups(conn) is None
            for table in ROLLUP_TABLES:
                names = sql.Identifier(table), sql.Identifier(f"built_{table}")
                rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(names[0]))
                assert rows.fetchone() != (0,), f"{table} is empty"
                differ = conn.execute(
                    sql.SQL(
                        "SELECT count(*) FROM ((TABLE {0} EXCEPT ALL TABLE {1})"
                        " UNION ALL (TABLE {1} EXCEPT ALL TABLE {0})) d"
                    ).format(*names)
                )
                assert differ.fetchone() == (0,), f"{table} differs from one rebuild"
        again = ensure_dataset(local_services, TARGET, print)
        assert again.reused and again.usage_rows == dataset.usage_rows
    finally:
        _drop_database(local_services, database_name(TARGET))
