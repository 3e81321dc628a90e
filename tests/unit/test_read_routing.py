"""Where the API reads (services/api/reads.py): the replica when it answers and has the
caller's own writes, else the primary, counted by reason; a replica found down is left alone
for a while."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import psycopg
import pytest
from prometheus_client import Counter
from psycopg_pool import ConnectionPool, PoolTimeout

from services.api.reads import (
    BEHIND_OWN_WRITE,
    COMMITTED_POSITION,
    REMEMBER_WRITE_S,
    REPLAYED,
    REPLICA_FALLBACKS,
    REPLICA_READS,
    UNAVAILABLE,
    ReadRouter,
    writer_key,
)


@dataclass
class Result:
    row: tuple[Any, ...] | None

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.row


@dataclass
class FakeConn:
    """Answers the router's two queries: the primary's position, the replica's replay."""

    position: str = "0/10"
    replayed: bool = True
    queries: list[str] = field(default_factory=list)
    rolled_back: int = 0

    def execute(self, query: str, params: Any = None) -> Result:
        self.queries.append(query)
        if query == COMMITTED_POSITION:
            return Result((self.position,))
        assert query == REPLAYED
        return Result((self.replayed,))

    def rollback(self) -> None:
        self.rolled_back += 1


@dataclass
class FakePool:
    conn: FakeConn = field(default_factory=FakeConn)
    down: bool = False
    asked: int = 0
    returned: int = 0

    def getconn(self, timeout: float | None = None) -> FakeConn:
        self.asked += 1
        if self.down:
            raise PoolTimeout("no connection")
        return self.conn

    def putconn(self, conn: FakeConn) -> None:
        self.returned += 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def router(pool: FakePool, clock: Clock) -> ReadRouter:
    return ReadRouter(
        cast("ConnectionPool[psycopg.Connection]", pool), retry_after_s=5.0, clock=clock
    )


def total(counter: Counter, reason: str | None = None) -> float:
    """A counter's `_total` sample (of one reason), as /metrics would show it."""
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("reason") == reason:
                return float(sample.value)
    return 0.0


def fallbacks(reason: str) -> float:
    return total(REPLICA_FALLBACKS, reason)


def replica_reads() -> float:
    return total(REPLICA_READS)


def served(reads: ReadRouter, writer: str | None = None) -> bool:
    """Whether the replica served this read (else the primary would)."""
    with reads.connection(writer) as conn:
        return conn is not None


def primary(position: str) -> psycopg.Connection:
    return cast("psycopg.Connection", FakeConn(position=position))


def test_a_healthy_replica_serves_and_gets_its_connection_back() -> None:
    pool, before = FakePool(), replica_reads()
    assert served(router(pool, Clock()))
    assert replica_reads() == before + 1
    assert pool.returned == 1 and pool.conn.rolled_back == 1


def test_a_connection_goes_back_when_the_read_fails() -> None:
    pool = FakePool()
    reads = router(pool, Clock())
    with pytest.raises(RuntimeError), reads.connection(None):
        raise RuntimeError("the route failed")
    assert pool.returned == 1


def test_a_replica_found_down_is_skipped_until_the_retry_time() -> None:
    pool, clock = FakePool(down=True), Clock()
    reads, before = router(pool, clock), fallbacks(UNAVAILABLE)
    assert not served(reads)
    assert not served(reads)
    assert pool.asked == 1, "within the retry time the primary serves without asking"
    assert fallbacks(UNAVAILABLE) == before + 2
    pool.down = False
    clock.now += 5.1
    assert served(reads)
    assert pool.asked == 2


def test_a_callers_write_is_read_from_the_primary_until_the_replica_has_it() -> None:
    pool, clock = FakePool(), Clock()
    reads, before = router(pool, clock), fallbacks(BEHIND_OWN_WRITE)
    reads.wrote("writer", primary("0/20"))
    pool.conn.replayed = False
    assert not served(reads, "writer")
    assert served(reads, "someone else"), "other callers still read the replica"
    assert fallbacks(BEHIND_OWN_WRITE) == before + 1
    pool.conn.replayed = True
    assert served(reads, "writer")
    pool.conn.queries.clear()
    assert served(reads, "writer")
    assert REPLAYED not in pool.conn.queries, "a replayed write is forgotten"


def test_a_write_is_remembered_for_a_bounded_time() -> None:
    pool, clock = FakePool(), Clock()
    reads = router(pool, clock)
    reads.wrote("writer", primary("0/20"))
    pool.conn.replayed = False
    clock.now += REMEMBER_WRITE_S + 1
    assert served(reads, "writer")


def test_anonymous_writes_are_not_remembered() -> None:
    pool = FakePool()
    reads = router(pool, Clock())
    reads.wrote(None, primary("0/20"))
    pool.conn.replayed = False
    assert served(reads, None)
    assert REPLAYED not in pool.conn.queries


def test_the_writer_key_is_a_hash_of_the_callers_credentials() -> None:
    assert writer_key(None, None) is None
    token = writer_key("Bearer secret", None)
    assert token == writer_key("Bearer secret", "a cookie"), "a token wins over a cookie"
    assert token is not None and "secret" not in token
    assert writer_key(None, "a cookie") != token
