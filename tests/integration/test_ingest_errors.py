"""Which errors quarantine a message and which stop ingest (issue 22, finding 7), and what
ingest's health says about it.

A data error (the database refuses one message's values) quarantines that message and only
it, and ingest stays healthy. A code error (a bug: a Python exception, SQL that does not fit
the schema) stops the writer: nothing of its batch is acknowledged or quarantined, `/health`
turns 503 and the process exits non-zero (tests/integration/test_ingest_faults.py, 10).
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from services.core.broker_admin import BrokerAdmin
from services.core.settings import Settings
from services.core.topics import MessageKind
from services.fleet.ingest_metrics import scrape
from services.infra.local import LocalServices
from services.ingest import service as ingest_service
from services.ingest.batch import BatchResult
from services.ingest.service import discard_session
from tests.integration.conftest import wait_for
from tests.integration.ingest_support import (
    Ledger,
    account,
    fault_database,
    fleet,
    free_port,
    stored_count,
    usage_body,
    wait_until_stored,
)

PROBE_SEQ = 10**9
POISON = "ALTER TABLE usage_events ADD CONSTRAINT test_poison CHECK (feature_key <> 'poison_pill')"


def _health(port: int) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    return response.status_code, response.json()


def _quarantine(url: str, serial: str) -> list[tuple[str, str, bytes]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [
            (reason, detail, bytes(payload))
            for reason, detail, payload in conn.execute(
                "SELECT reason, detail, payload FROM quarantine WHERE device_serial = %s "
                "ORDER BY id",
                (serial,),
            )
        ]


@pytest.mark.chaos  # a bug planted in a running ingest service
@pytest.mark.parametrize(
    "bug",
    [
        TypeError("injected code fault (test)"),
        psycopg.errors.UndefinedColumn('column "injected" does not exist (test)'),
    ],
    ids=["python-error", "sql-that-does-not-fit-the-schema"],
)
def test_health_says_the_writer_died_of_a_code_error_and_nothing_was_quarantined(
    local_services: LocalServices,
    settings: Settings,
    broker_admin: BrokerAdmin,
    monkeypatch: pytest.MonkeyPatch,
    bug: Exception,
) -> None:
    """An ingest service in this process, its store made to fail once `broken` is set: its
    /health is 200 while the writer runs, 503 once it died; the metrics say so too."""
    broken = threading.Event()
    with fault_database(local_services, settings) as env:
        serial = f"health-{env.token}-device"
        with fleet(
            env.url, broker_admin, settings, env.project_id, env.feature_key, [serial]
        ) as devices:
            device = devices.by_serial(serial)
            port = free_port()
            own = settings.model_copy(
                update={
                    "database_url": SecretStr(env.url),
                    "ingest_client_id": f"fieldtrack-ingest-health-{env.token}",
                    "ingest_share_group": f"health-{env.token}",
                    "ingest_metrics_port": port,
                }
            )
            service = ingest_service.IngestService(own)
            real_store = service._store

            def store(*args: Any, **kwargs: Any) -> BatchResult:
                # before the store's own transaction: raised after it, the message would
                # be committed already
                if broken.is_set():
                    raise bug
                return real_store(*args, **kwargs)

            # this service only: the suite's own ingest runs in this process too
            monkeypatch.setattr(service, "_store", store)
            service.start()
            try:
                assert service.wait_connected(15)
                wait_until_stored(env.url, device, env.feature_key, PROBE_SEQ)
                before = _health(port)
                metrics_before = scrape(own)
                broken.set()
                message = usage_body(1, datetime.now(UTC), env.feature_key)
                device.publish(MessageKind.USAGE, message).wait_for_publish(5)
                wait_for(service.failed.is_set, timeout=15)
                after = _health(port)
                metrics_after = scrape(own)
            finally:
                service.stop()
                discard_session(own, own.ingest_client_id)
            stored = stored_count(env.url, [serial])
            quarantined = _quarantine(env.url, serial)
    print(
        f"\n[health, {type(bug).__name__}] before: {before}; after: {after}; writer_alive in "
        f"metrics: {metrics_before.writer_alive} → {metrics_after.writer_alive}"
    )
    assert before == (200, {**before[1], "status": "ok", "writer": "alive"})
    assert before[1]["registry_listener"] == "alive" and before[1]["broker"] == "connected"
    assert after == (503, {**after[1], "status": "failed", "writer": "dead"})
    assert (metrics_before.writer_alive, metrics_after.writer_alive) == (True, False)
    assert stored == 1, "only the probe, stored before the bug"
    assert quarantined == [], "a code error quarantined a message"


def test_a_data_error_quarantines_only_that_message_and_ingest_stays_healthy(
    local_services: LocalServices, settings: Settings, broker_admin: BrokerAdmin
) -> None:
    """A real ingest process; the database refuses one message of 101 (a CHECK constraint
    added for the test): that one is quarantined as rejected_by_database, the other 100 are
    stored, and the writer lives on."""
    with fault_database(local_services, settings) as env:
        serial, probe = f"data-{env.token}-device", f"data-{env.token}-probe"
        with psycopg.connect(env.url, autocommit=True) as conn:
            conn.execute(POISON)  # a scratch database: dropped with it
        with fleet(
            env.url, broker_admin, settings, env.project_id, env.feature_key, [serial, probe]
        ) as devices:
            port = free_port()
            ingest = env.ingest("data", f"data-{env.token}", metrics_port=port)
            try:
                ingest.start()
                wait_until_stored(env.url, devices.by_serial(probe), env.feature_key, PROBE_SEQ)
                device = devices.by_serial(serial)
                now = datetime.now(UTC)
                ledger = Ledger()
                for seq in range(101):  # fast enough that the poison shares a batch
                    feature = "poison_pill" if seq == 50 else env.feature_key
                    info = device.publish(MessageKind.USAGE, usage_body(seq, now, feature))
                    ledger.record(serial, seq, info)
                assert ledger.wait_acks(20) == 0
                wait_for(lambda: stored_count(env.url, [serial]) >= 100, timeout=20)
                wait_for(lambda: _quarantine(env.url, serial), timeout=10)
                health = _health(port)
                alive = ingest.alive()
                code, _, stopped = ingest.terminate(30)
            finally:
                ingest.ensure_dead()
                discard_session(settings, ingest.client_id)
        result = account(env.url, ledger, [serial])
        quarantined = _quarantine(env.url, serial)
    isolated = ingest.log().count("could not be stored")
    print(
        f"\n[data error] quarantined: {[(r, d[:60]) for r, d, _ in quarantined]}; batches "
        f"split: {isolated}; health: {health}; {result.line()}"
    )
    [(reason, detail, payload)] = quarantined
    assert reason == "rejected_by_database" and "test_poison" in detail
    assert json.loads(payload)["seq"] == 50
    assert isolated, "the poison was alone in its batch: nothing was isolated"
    assert result.lost == 1 and result.lost_sample == [(serial, 50)]  # the quarantined one
    assert result.duplicated == 0 and result.stored_messages == 100
    assert result.rollup_events == result.stored_events == 100
    assert alive and health == (200, {**health[1], "status": "ok", "writer": "alive"})
    assert code == 0 and stopped is not None
