"""Plain SQL migrations, applied in file-name order and recorded in `schema_migrations`.

Safe under concurrent starts: every runner takes the same advisory lock first, so one
applies the pending files while the others wait and then find nothing left to do.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources

import psycopg

log = logging.getLogger(__name__)

# Any constant shared by every fieldtrack process; the value spells "fieldtrk".
MIGRATION_LOCK_KEY = 0x6669656C647472


@dataclass(frozen=True)
class Migration:
    version: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
APPLIED = "SELECT version, checksum FROM schema_migrations"
RECORD = "INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)"


class MigrationError(Exception):
    """An applied migration file was edited afterwards."""


def available() -> list[Migration]:
    folder = resources.files("services.core").joinpath("migrations")
    files = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".sql")),
        key=lambda entry: entry.name,
    )
    return [Migration(entry.name.removesuffix(".sql"), entry.read_text()) for entry in files]


def migrate(conninfo: str) -> list[str]:
    """Apply pending migrations; return the versions applied by this call."""
    applied_now: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # What a migration has to say about the data it changed (RAISE WARNING).
        conn.add_notice_handler(_log_notice)
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(CREATE_LEDGER)
            done: dict[str, str] = dict(conn.execute(APPLIED).fetchall())
            for migration in available():
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version} was changed after it was applied; "
                            "add a new migration instead of editing an applied one"
                        )
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(RECORD, (migration.version, migration.checksum))
                log.info("applied migration %s", migration.version)
                applied_now.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied_now


def _log_notice(diagnostic: psycopg.errors.Diagnostic) -> None:
    if diagnostic.severity_nonlocalized == "WARNING":
        log.warning("migration: %s", diagnostic.message_primary)
