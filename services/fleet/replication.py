"""How far the read replica trails the primary: WAL still to replay, and for how long.

Read with the application's own role (no monitoring privileges): the primary's WAL position,
then the replica's replay position and the time of the last transaction it replayed.
"""

from __future__ import annotations

import psycopg
from pydantic import BaseModel, Field

PRIMARY_POSITION = "SELECT pg_current_wal_lsn()::text"
# Behind by time: since the last replayed transaction, while WAL the primary had written is
# still to replay (a replica that has replayed everything is 0 s behind, however long the
# primary has been idle).
REPLICA_LAG = """
SELECT pg_is_in_recovery() AS standby,
       greatest(pg_wal_lsn_diff(%(primary)s::pg_lsn, pg_last_wal_replay_lsn()), 0)::bigint
           AS behind_bytes,
       CASE WHEN pg_last_wal_replay_lsn() >= %(primary)s::pg_lsn THEN 0
            ELSE greatest(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)
       END::float8 AS behind_seconds
"""


class ReplicaLag(BaseModel):
    configured: bool = Field(description="whether a read replica is configured")
    reachable: bool = False
    error: str | None = Field(default=None, description="why the replica could not be read")
    lag_seconds: float | None = Field(
        default=None,
        description="since the last transaction the replica replayed, while it has WAL of the "
        "primary's still to replay; 0 when it has replayed everything",
    )
    lag_bytes: int | None = Field(
        default=None, description="WAL the primary has written that the replica has not replayed"
    )


NOT_CONFIGURED = ReplicaLag(configured=False)


def replica_lag(primary: psycopg.Connection, replica: psycopg.Connection) -> ReplicaLag:
    """The replica's lag behind *primary* now; a server that is no standby is an error."""
    position = primary.execute(PRIMARY_POSITION).fetchone()
    row = replica.execute(REPLICA_LAG, {"primary": position[0] if position else None}).fetchone()
    if row is None or not row[0]:
        return ReplicaLag(configured=True, reachable=True, error="not a standby")
    return ReplicaLag(configured=True, reachable=True, lag_bytes=row[1], lag_seconds=row[2])
