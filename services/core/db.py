"""The database pool and its lifecycle."""

from __future__ import annotations

import psycopg
from psycopg_pool import ConnectionPool

from services.core.settings import Settings

POOL_OPEN_TIMEOUT_S = 30.0


def open_pool(settings: Settings) -> ConnectionPool[psycopg.Connection]:
    """Open a pool and wait until it holds its minimum connections (fail fast at start-up)."""
    pool: ConnectionPool[psycopg.Connection] = ConnectionPool(
        settings.database_url.get_secret_value(),
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        open=False,
        kwargs={"connect_timeout": 5},
        check=ConnectionPool.check_connection,
    )
    pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
    return pool
