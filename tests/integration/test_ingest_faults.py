"""Ingest under faults, Jepsen style: a real ingest process killed mid-stream, PostgreSQL
stopped under load, two processes sharing the load. Every message the broker acknowledged
to a device must end up stored exactly once, with rollups that match the raw rows.

Each test has its own scratch database and ingest subprocesses; the session's in-process
ingest (if any) sees these devices as unknown and quarantines them in its own database.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from services.core.broker_admin import BrokerAdmin
from services.core.settings import Settings
from services.core.topics import MessageKind
from services.fleet.ingest_metrics import scrape
from services.infra.local import LocalServices
from services.ingest.service import WORKER_DIED_EXIT, discard_session
from tests.integration.conftest import wait_for
from tests.integration.ingest_support import (
    Background,
    IngestProcess,
    Ledger,
    account,
    ensure_postgres,
    fault_database,
    fleet,
    free_port,
    publish_streams,
    stop_postgres_now,
    stored_count,
    try_metric_samples,
    usage_body,
    wait_all_stored,
    wait_until_stored,
)

PROBE_SEQ = 10**9  # probes come from a device of their own, left out of the accounting


def _finish(ingest: IngestProcess, settings: Settings) -> None:
    ingest.ensure_dead()
    discard_session(settings, ingest.client_id)


# --- 7. SIGKILL mid-stream ------------------------------------------------------------------


def test_sigkill_mid_stream_then_restart_loses_and_duplicates_nothing(
    local_services: LocalServices, settings: Settings, broker_admin: BrokerAdmin
) -> None:
    with fault_database(local_services, settings) as env:
        serials = [f"kill-{env.token}-{i:02d}" for i in range(20)]
        probe = f"kill-{env.token}-probe"
        with fleet(
            env.url, broker_admin, settings, env.project_id, env.feature_key, [*serials, probe]
        ) as devices:
            ingest = env.ingest("kill", f"kill-{env.token}")
            try:
                ingest.start()
                wait_until_stored(env.url, devices.by_serial(probe), env.feature_key, PROBE_SEQ)
                streamed = [d for d in devices.devices if d.serial != probe]
                base = datetime.now(UTC) - timedelta(minutes=10)
                started = time.monotonic()
                stream = Background(
                    lambda: publish_streams(
                        streamed, env.feature_key, range(300), base, threads=4, rate=1500
                    )
                )
                wait_for(lambda: stored_count(env.url, serials) >= 1500, timeout=30, interval=0.02)
                ingest.kill()
                killed_at = time.monotonic() - started
                stored_at_kill = stored_count(env.url, serials)
                time.sleep(1.0)  # the stream goes on; the broker queues for the session
                ingest.start()
                ledger: Ledger = stream.join(120)
                indeterminate = ledger.wait_acks(60)
                _, waited = wait_all_stored(env.url, ledger, serials, 60)
                code, _, stopped = ingest.terminate(30)
            finally:
                _finish(ingest, settings)
        result = account(env.url, ledger, serials)
    print(
        f"\n[sigkill] killed at {killed_at:.1f}s with {stored_at_kill} of 6000 stored; "
        f"restarted with the same client id; all stored {waited:.1f}s after the stream; "
        f"after restart: {stopped}; {result.line()}"
    )
    assert ledger.errors == []
    assert len(ledger.handed) == 6000
    assert indeterminate == 0
    assert stored_at_kill < 6000, "the kill came after the stream: nothing was tested"
    result.assert_exact()
    assert result.stored_messages == 6000
    assert code == 0
    assert stopped is not None
    assert "session present: True" in ingest.log(), "the restart did not resume the session"


# --- 8. PostgreSQL down under load ----------------------------------------------------------


@pytest.mark.slow
def test_postgres_down_for_twenty_seconds_ingest_resumes_by_itself(
    local_services: LocalServices, settings: Settings, broker_admin: BrokerAdmin
) -> None:
    outage_s = 20.0
    with fault_database(local_services, settings) as env:
        serials = [f"pgdown-{env.token}-{i:02d}" for i in range(20)]
        probe = f"pgdown-{env.token}-probe"
        with fleet(
            env.url, broker_admin, settings, env.project_id, env.feature_key, [*serials, probe]
        ) as devices:
            ingest = env.ingest("pgdown", f"pgdown-{env.token}")
            try:
                ingest.start()
                wait_until_stored(env.url, devices.by_serial(probe), env.feature_key, PROBE_SEQ)
                streamed = [d for d in devices.devices if d.serial != probe]
                base = datetime.now(UTC) - timedelta(minutes=10)
                # 3,000 messages over ~25 s: before, during and after the outage.
                stream = Background(
                    lambda: publish_streams(
                        streamed, env.feature_key, range(150), base, threads=4, rate=120
                    )
                )
                wait_for(lambda: stored_count(env.url, serials) >= 200, timeout=30)
                try:
                    stop_postgres_now(local_services)
                    stopped_at = time.monotonic()
                    time.sleep(outage_s)
                    assert ingest.alive(), "ingest died while the database was down"
                finally:
                    ensure_postgres(local_services)
                restarted_at = time.monotonic()
                ledger: Ledger = stream.join(120)
                indeterminate = ledger.wait_acks(60)
                wait_all_stored(env.url, ledger, serials, 60)
                caught_up = time.monotonic() - restarted_at
                assert ingest.alive() and ingest.runs == 1, "ingest had to be restarted"
                code, _, stopped = ingest.terminate(30)
            finally:
                ensure_postgres(local_services)
                _finish(ingest, settings)
        result = account(env.url, ledger, serials)
    retries = ingest.log().count("retrying in")
    print(
        f"\n[postgres down] outage {restarted_at - stopped_at:.1f}s; {retries} failed batch "
        f"attempts logged; caught up {caught_up:.1f}s after PostgreSQL was back; "
        f"{stopped}; {result.line()}"
    )
    assert ledger.errors == []
    assert len(ledger.handed) == 3000
    assert indeterminate == 0
    assert retries > 0, "ingest never noticed the outage"
    result.assert_exact()
    assert result.stored_messages == 3000
    assert code == 0


# --- 9. two processes, one share group --------------------------------------------------------


def test_two_ingest_processes_share_the_load_and_store_everything_once(
    local_services: LocalServices, settings: Settings, broker_admin: BrokerAdmin
) -> None:
    with fault_database(local_services, settings) as env:
        serials = [f"share-{env.token}-{i:02d}" for i in range(20)]
        probe = f"share-{env.token}-probe"
        group = f"share-{env.token}"
        with fleet(
            env.url, broker_admin, settings, env.project_id, env.feature_key, [*serials, probe]
        ) as devices:
            ports = free_port(), free_port()
            ingests = [
                env.ingest(name, group, metrics_port=port)
                for name, port in zip(("share-a", "share-b"), ports, strict=True)
            ]
            try:
                for ingest in ingests:
                    ingest.start()
                # Both are subscribed once each has taken a probe (the group alternates).
                probe_device = devices.by_serial(probe)
                for attempt in range(40):
                    payload = usage_body(PROBE_SEQ + attempt, datetime.now(UTC), env.feature_key)
                    probe_device.publish(MessageKind.USAGE, payload).wait_for_publish(5)
                    time.sleep(0.05)
                    taken = [_messages(port) for port in ports]
                    if all(taken):
                        break
                assert all(_messages(port) for port in ports), "one ingest never got a probe"
                streamed = [d for d in devices.devices if d.serial != probe]
                base = datetime.now(UTC) - timedelta(minutes=10)
                ledger = publish_streams(streamed, env.feature_key, range(200), base, threads=4)
                indeterminate = ledger.wait_acks(60)
                _, waited = wait_all_stored(env.url, ledger, serials, 60)
                stops = [ingest.terminate(30) for ingest in ingests]
            finally:
                for ingest in ingests:
                    _finish(ingest, settings)
        result = account(env.url, ledger, serials)
        all_rows = stored_count(env.url, [*serials, probe])
    totals = [stopped for _, _, stopped in stops]
    split = ", ".join(f"{t.messages} messages / {t.usage_rows} rows" if t else "?" for t in totals)
    print(
        f"\n[share group] split: {split}; all stored {waited:.1f}s after publishing; "
        f"{result.line()}"
    )
    assert ledger.errors == []
    assert len(ledger.handed) == 4000
    assert indeterminate == 0
    result.assert_exact()
    assert result.stored_messages == 4000
    assert [code for code, _, _ in stops] == [0, 0]
    assert all(t is not None and t.messages > 0 and t.usage_rows > 0 for t in totals), totals
    # Together the two stored every reading once (probes included), neither twice.
    assert sum(t.usage_rows for t in totals if t) == all_rows


def _messages(port: int) -> float:
    samples = try_metric_samples(port)
    return samples.get("fieldtrack_ingest_messages_total", 0.0) if samples else 0.0


# --- 10. a bug in the writer --------------------------------------------------------------------

# Put on an ingest subprocess's PYTHONPATH, its sitecustomize.py plants a TypeError in the store
# while the file named by FIELDTRACK_TEST_CODE_FAULT exists.
CODE_FAULT = Path(__file__).parent / "code_fault"


def test_a_code_error_stops_ingest_with_nothing_acknowledged_or_quarantined(
    local_services: LocalServices, settings: Settings, broker_admin: BrokerAdmin, tmp_path: Path
) -> None:
    """A bug in the writer (here a TypeError planted in a real ingest process) must neither
    leave a live process that acknowledges nothing, nor drain traffic into the quarantine: the
    process exits non-zero, and once restarted without the bug it stores every message the
    broker acknowledged, exactly once."""
    with fault_database(local_services, settings) as env:
        serials = [f"bug-{env.token}-{i:02d}" for i in range(10)]
        probe = f"bug-{env.token}-probe"
        with fleet(
            env.url, broker_admin, settings, env.project_id, env.feature_key, [*serials, probe]
        ) as devices:
            port = free_port()
            observed = settings.model_copy(update={"ingest_metrics_port": port})
            ingest = env.ingest("bug", f"bug-{env.token}", metrics_port=port)
            trigger = tmp_path / "code-fault"
            ingest.env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(CODE_FAULT), os.environ.get("PYTHONPATH")])
            )
            ingest.env["FIELDTRACK_TEST_CODE_FAULT"] = str(trigger)
            try:
                ingest.start()
                wait_until_stored(env.url, devices.by_serial(probe), env.feature_key, PROBE_SEQ)
                before = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                streamed = [d for d in devices.devices if d.serial != probe]
                base = datetime.now(UTC) - timedelta(minutes=10)
                stream = Background(
                    lambda: publish_streams(
                        streamed, env.feature_key, range(200), base, threads=2, rate=400
                    )
                )
                wait_for(lambda: stored_count(env.url, serials) >= 300, timeout=30, interval=0.02)
                trigger.touch()  # the bug strikes
                assert ingest.proc is not None
                code = ingest.proc.wait(20)
                stored_at_exit = stored_count(env.url, serials)
                after = scrape(observed)
                ledger: Ledger = stream.join(120)
                indeterminate = ledger.wait_acks(60)
                quarantined_by_bug = _quarantined(env.url, serials)
                died_log = ingest.log()
                # The fix: the same ingest without the bug, on the same persistent session.
                for planted in ("PYTHONPATH", "FIELDTRACK_TEST_CODE_FAULT"):
                    ingest.env.pop(planted)
                ingest.start()
                _, waited = wait_all_stored(env.url, ledger, serials, 60)
                code_after, _, _ = ingest.terminate(30)
            finally:
                _finish(ingest, settings)
        result = account(env.url, ledger, serials)
        quarantined = _quarantined(env.url, serials)
    print(
        f"\n[code error] exit {code} with {stored_at_exit} of 2000 stored; quarantined by the "
        f"bug: {quarantined_by_bug}; health before: {before.status_code} {before.text}, after: "
        f"{after.error}; all stored {waited:.1f}s after the restart; {result.line()}"
    )
    assert code == WORKER_DIED_EXIT
    assert "ingest-writer died" in died_log and "TypeError: injected code fault" in died_log
    assert before.status_code == 200 and before.json()["writer"] == "alive"
    assert not after.reachable  # the process is gone: its supervisor restarts it
    assert quarantined_by_bug == quarantined == 0
    assert ledger.errors == []
    assert len(ledger.handed) == 2000
    assert indeterminate == 0
    assert stored_at_exit < 2000, "the bug struck after the stream: nothing was tested"
    result.assert_exact()
    assert result.stored_messages == 2000
    assert code_after == 0
    assert "session present: True" in ingest.log(), "the restart did not resume the session"


def _quarantined(url: str, serials: list[str]) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM quarantine WHERE device_serial = ANY(%s)", (serials,)
        ).fetchone()
    return int(row[0]) if row else 0
