"""Where the API reads: the read replica when one is configured and fit, else the primary.

The replica serves a read unless
- it cannot give a healthy connection within REPLICA_WAIT_S: it counts as down for
  RETRY_AFTER_S (later requests go straight to the primary), then is tried again;
- the caller wrote through this API process and the replica has not yet replayed that write
  (read-your-writes: a delivery created and then its project's analytics, a decision and
  then the project page).
Each read sent to the primary instead is counted in REPLICA_FALLBACKS, by reason.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import psycopg
from prometheus_client import Counter
from psycopg_pool import ConnectionPool, PoolTimeout

from services.fleet.replication import NOT_CONFIGURED, ReplicaLag, replica_lag

REPLICA_WAIT_S = 0.5
RETRY_AFTER_S = 5.0
# A write is remembered until the replica has replayed it, or this long at most.
REMEMBER_WRITE_S = 300.0
MAX_WRITERS = 10_000

# Not in prometheus_client's process-wide registry: the API's /metrics (routes/metrics.py)
# serves these and the replica's lag, not the counters of other modules the API imports.
REPLICA_READS = Counter(
    "fieldtrack_api_replica_reads", "reads served by the read replica", registry=None
)
REPLICA_FALLBACKS = Counter(
    "fieldtrack_api_replica_fallbacks",
    "reads served by the primary although a replica is configured: replica unavailable, or "
    "behind the caller's own write",
    ["reason"],
    registry=None,
)
UNAVAILABLE, BEHIND_OWN_WRITE = "unavailable", "behind_own_write"

COMMITTED_POSITION = "SELECT pg_current_wal_lsn()::text"
REPLAYED = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"


def writer_key(authorization: str | None, session_cookie: str | None) -> str | None:
    """Who the caller is, for remembering their writes: their bearer token or session cookie
    (hashed; the same for every request of theirs), or None for an anonymous caller."""
    secret = authorization or session_cookie
    return hashlib.sha256(secret.encode()).hexdigest() if secret else None


class ReadRouter:
    """The replica's pool, and when the primary must serve a read instead."""

    def __init__(
        self,
        pool: ConnectionPool[psycopg.Connection],
        *,
        wait_s: float = REPLICA_WAIT_S,
        retry_after_s: float = RETRY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.wait_s, self.retry_after_s, self.clock = wait_s, retry_after_s, clock
        self._down_until = 0.0
        self._writes: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def wrote(self, writer: str | None, primary: psycopg.Connection) -> None:
        """Remember *writer*'s write, just committed on *primary*, until the replica has it."""
        if writer is None:
            return
        row = primary.execute(COMMITTED_POSITION).fetchone()
        if row is None:
            return
        with self._lock:
            self._writes.pop(writer, None)
            self._writes[writer] = (row[0], self.clock())
            while len(self._writes) > MAX_WRITERS:
                self._writes.popitem(last=False)

    def _pending_write(self, writer: str | None) -> str | None:
        """The position of *writer*'s last write if it may still be missing on the replica."""
        if writer is None:
            return None
        with self._lock:
            found = self._writes.get(writer)
            if found and self.clock() - found[1] > REMEMBER_WRITE_S:
                del self._writes[writer]
                return None
        return found[0] if found else None

    def _replayed(self, writer: str, position: str) -> None:
        with self._lock:
            if self._writes.get(writer, ("", 0.0))[0] == position:
                del self._writes[writer]

    @contextmanager
    def replica(self) -> Iterator[psycopg.Connection | None]:
        """A healthy replica connection, or None when the replica is (recently found) down."""
        if self.clock() < self._down_until:
            yield None
            return
        try:
            conn = self.pool.getconn(timeout=self.wait_s)
        except (PoolTimeout, psycopg.OperationalError):
            self._down_until = self.clock() + self.retry_after_s
            yield None
            return
        try:
            yield conn
        finally:
            with suppress(psycopg.Error):  # a broken connection: the pool discards it
                conn.rollback()  # reads only: nothing to keep
            self.pool.putconn(conn)

    @contextmanager
    def connection(self, writer: str | None) -> Iterator[psycopg.Connection | None]:
        """The replica's connection for a read by *writer*, or None: read the primary."""
        with self.replica() as conn:
            if conn is None:
                REPLICA_FALLBACKS.labels(UNAVAILABLE).inc()
                yield None
                return
            position = self._pending_write(writer)
            if position is not None and writer is not None:
                row = conn.execute(REPLAYED, (position,)).fetchone()
                if not (row and row[0]):
                    REPLICA_FALLBACKS.labels(BEHIND_OWN_WRITE).inc()
                    yield None
                    return
                self._replayed(writer, position)
            REPLICA_READS.inc()
            yield conn

    def lag(self, primary: psycopg.Connection) -> ReplicaLag:
        """The replica's lag behind *primary*; unreachable when it is down."""
        with self.replica() as conn:
            if conn is None:
                return ReplicaLag(configured=True, reachable=False, error="replica unavailable")
            try:
                return replica_lag(primary, conn)
            except psycopg.Error as exc:
                return ReplicaLag(configured=True, reachable=False, error=str(exc))


def lag_of(reads: ReadRouter | None, primary: psycopg.Connection) -> ReplicaLag:
    """The read replica's lag, or that there is none."""
    return NOT_CONFIGURED if reads is None else reads.lag(primary)
