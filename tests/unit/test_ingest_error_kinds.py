"""Which errors quarantine a message (data errors) and which stop ingest (code errors), and
how ingest's metrics say whether its writer is alive (issue 22, finding 7)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from services.fleet.ingest_metrics import parse
from services.ingest.batch import BatchResult, RawMessage
from services.ingest.service import CODE_ERRORS_FROM_DATABASE
from services.ingest.store import NOT_TRANSIENT, store_isolating

DATA_ERRORS = [
    psycopg.errors.CheckViolation,
    psycopg.errors.NumericValueOutOfRange,
    psycopg.errors.InvalidTextRepresentation,
    psycopg.errors.StringDataRightTruncation,
    psycopg.errors.ForeignKeyViolation,
    psycopg.errors.UniqueViolation,
]
CODE_ERRORS = [
    TypeError,
    ValueError,
    KeyError,
    AttributeError,
    ArithmeticError,
    OverflowError,
    UnicodeError,
    AssertionError,
    RecursionError,
    psycopg.errors.UndefinedColumn,
    psycopg.errors.UndefinedTable,
    psycopg.errors.CardinalityViolation,
    psycopg.errors.NotNullViolation,
]
RETRIED = [
    psycopg.OperationalError,
    psycopg.errors.AdminShutdown,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.InterfaceError,
]


@pytest.mark.parametrize("error", DATA_ERRORS, ids=lambda e: e.__name__)
def test_the_database_refusing_a_value_is_a_data_error(error: type[Exception]) -> None:
    assert issubclass(error, NOT_TRANSIENT)


@pytest.mark.parametrize("error", CODE_ERRORS, ids=lambda e: e.__name__)
def test_a_bug_is_never_a_data_error(error: type[Exception]) -> None:
    assert not issubclass(error, NOT_TRANSIENT)
    if issubclass(error, psycopg.Error):
        assert issubclass(error, CODE_ERRORS_FROM_DATABASE), "it would be retried forever"


@pytest.mark.parametrize("error", RETRIED, ids=lambda e: e.__name__)
def test_the_database_failing_is_retried(error: type[Exception]) -> None:
    assert not issubclass(error, NOT_TRANSIENT + CODE_ERRORS_FROM_DATABASE)


class NoQuarantine:
    """A connection on which any write (a quarantine) fails the test."""

    def transaction(self) -> Any:
        raise AssertionError("a code error quarantined a message")

    def cursor(self) -> Any:
        raise AssertionError("a code error quarantined a message")


@pytest.mark.parametrize("bug", [TypeError, ValueError, ArithmeticError, UnicodeError])
def test_store_isolating_lets_a_code_error_through_without_quarantining(
    bug: type[Exception],
) -> None:
    batch = [RawMessage(f"fieldtrack/v1/dev-{i}/usage", b"{}", datetime.now(UTC)) for i in range(4)]
    calls: list[int] = []

    def store(part: list[RawMessage]) -> BatchResult:
        calls.append(len(part))
        raise bug("a bug in the store")

    with pytest.raises(bug):
        store_isolating(NoQuarantine(), batch, store)  # type: ignore[arg-type]
    assert calls == [4], "a code error was retried message by message"


def exposition(alive: float | None) -> str:
    registry = CollectorRegistry()
    if alive is not None:
        Gauge("fieldtrack_ingest_writer_alive", "", registry=registry).set(alive)
    Gauge("fieldtrack_ingest_queue_depth", "", registry=registry).set(3)
    return generate_latest(registry).decode()


@pytest.mark.parametrize(("gauge", "said"), [(1, True), (0, False), (None, None)])
def test_metrics_say_whether_the_writer_is_alive(gauge: float | None, said: bool | None) -> None:
    assert parse(exposition(gauge)).writer_alive is said
