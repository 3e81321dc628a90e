"""`fieldtrack quarantine replay` end to end (issue 22, finding 7): messages quarantined for a
reason a fix removes are stored once after the fix, through the same store path; one already
stored meanwhile is a duplicate, not stored twice; one that still cannot be stored stays
quarantined with its reason; a second replay changes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from services.core.broker_admin import BrokerAdmin
from services.core.payloads import QuarantineReason, Rejected
from services.core.settings import Settings
from services.core.topics import MessageKind, device_topic
from services.infra.local import LocalServices
from services.ingest.batch import RawMessage
from services.ingest.quarantine.write import quarantine_messages
from services.ingest.service import discard_session
from tests import PROJECT_ROOT
from tests.integration.conftest import wait_for
from tests.integration.ingest_support import (
    Ledger,
    account,
    fault_database,
    fleet,
    stored_count,
    usage_body,
    wait_until_stored,
)

PROBE_SEQ = 10**9
POISON = "ALTER TABLE usage_events ADD CONSTRAINT test_poison CHECK (feature_key <> 'poison_pill')"
QUARANTINED = """
SELECT id, received_at, reason, detail, payload, replayed_at, replay_outcome FROM quarantine
WHERE device_serial = %s ORDER BY id
"""
STORED = """
SELECT u.seq, u.item, u.feature_key, u.count, u.received_at FROM usage_events u
JOIN devices d ON d.id = u.device_id WHERE d.serial = %s ORDER BY 1, 2
"""
ROLLUPS = """
SELECT (SELECT coalesce(sum(events), 0) FROM usage_hourly WHERE device_id = d.id),
       (SELECT coalesce(sum(messages), 0) FROM device_hourly WHERE device_id = d.id),
       (SELECT coalesce(sum(missing), 0) FROM device_hourly WHERE device_id = d.id),
       (SELECT last_seq FROM device_state WHERE device_id = d.id)
FROM devices d WHERE d.serial = %s
"""
FIRST = (
    "replayed 4 quarantined messages: 2 stored, 1 already stored; still quarantined 1 "
    "(not_json 1); not offered 0"
)
SECOND = (
    "replayed 1 quarantined messages: 0 stored, 0 already stored; still quarantined 1 "
    "(not_json 1); not offered 0"
)


def _replay(url: str, serial: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "services", "quarantine", "replay", "--device", serial],
        cwd=PROJECT_ROOT,
        env={**os.environ, "FIELDTRACK_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return " ".join(done.stdout.split())


def _state(url: str, serial: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {
            "quarantine": conn.execute(QUARANTINED, (serial,)).fetchall(),
            "stored": conn.execute(STORED, (serial,)).fetchall(),
            "rollups": conn.execute(ROLLUPS, (serial,)).fetchone(),
        }


def test_replay_after_the_fix_stores_each_message_once_and_a_second_replay_changes_nothing(
    local_services: LocalServices, settings: Settings, broker_admin: BrokerAdmin
) -> None:
    with fault_database(local_services, settings) as env:
        serial, probe = f"replay-{env.token}-device", f"replay-{env.token}-probe"
        with psycopg.connect(env.url, autocommit=True) as conn:
            conn.execute(POISON)  # the database refuses feature 'poison_pill' (a bug there)
            conn.execute(  # and the project takes nothing older than a day (too strict)
                "UPDATE projects SET late_data_days = 1 WHERE id = %s", (env.project_id,)
            )
        with fleet(
            env.url, broker_admin, settings, env.project_id, env.feature_key, [serial, probe]
        ) as devices:
            ingest = env.ingest("replay", f"replay-{env.token}")
            try:
                ingest.start()
                wait_until_stored(env.url, devices.by_serial(probe), env.feature_key, PROBE_SEQ)
                device = devices.by_serial(serial)
                now = datetime.now(UTC)
                bodies = {
                    seq: usage_body(
                        seq,
                        now + timedelta(milliseconds=seq),
                        "poison_pill" if seq in {5, 7} else env.feature_key,
                    )
                    for seq in range(10)
                }
                bodies[10] = usage_body(10, now - timedelta(days=3), env.feature_key)
                ledger = Ledger()
                for seq, body in bodies.items():
                    ledger.record(serial, seq, device.publish(MessageKind.USAGE, body))
                device.publish(MessageKind.USAGE, b"not json").wait_for_publish(5)
                assert ledger.wait_acks(20) == 0
                wait_for(lambda: len(_state(env.url, serial)["quarantine"]) >= 4, timeout=20)
                quarantined = _state(env.url, serial)

                # The fixes; then the device sends seq 5 again, and it is stored live.
                with psycopg.connect(env.url, autocommit=True) as conn:
                    conn.execute("ALTER TABLE usage_events DROP CONSTRAINT test_poison")
                    conn.execute(
                        "UPDATE projects SET late_data_days = 30 WHERE id = %s", (env.project_id,)
                    )
                    # the registry's change notice, so the running ingest reads the project again
                    conn.execute("UPDATE devices SET serial = serial WHERE serial = %s", (serial,))
                device.publish(MessageKind.USAGE, bodies[5]).wait_for_publish(5)
                wait_for(lambda: stored_count(env.url, [serial]) >= 9, timeout=20)

                first = _replay(env.url, serial)
                replayed = _state(env.url, serial)
                second = _replay(env.url, serial)
                again = _state(env.url, serial)
                code, _, _ = ingest.terminate(30)
            finally:
                ingest.ensure_dead()
                discard_session(settings, ingest.client_id)
        result = account(env.url, ledger, [serial])

    def by_message(rows: list[tuple[Any, ...]]) -> dict[object, tuple[Any, ...]]:
        """Quarantine rows by the seq of their payload ('garbage' for the one that has none)."""
        found = {}
        for row in rows:
            payload = bytes(row[4])
            found[json.loads(payload)["seq"] if payload.startswith(b"{") else "garbage"] = row
        return found

    before, after = by_message(quarantined["quarantine"]), by_message(replayed["quarantine"])
    print(
        f"\n[replay] quarantined: { {k: r[2] for k, r in before.items()} }; first replay: "
        f"{first}; outcomes: { {k: r[6] for k, r in after.items()} }; second replay: {second}; "
        f"{result.line()}"
    )
    assert {k: r[2] for k, r in before.items()} == {
        5: "rejected_by_database",
        7: "rejected_by_database",
        10: "too_old",
        "garbage": "not_json",
    }
    assert FIRST in first
    # Marked, not removed; what could not be stored is still pending, with its reason.
    assert {k: (r[2], r[6], r[5] is not None) for k, r in after.items()} == {
        5: ("rejected_by_database", "duplicate", True),
        7: ("rejected_by_database", "stored", True),
        10: ("too_old", "stored", True),
        "garbage": ("not_json", None, False),
    }
    assert after["garbage"][:5] == before["garbage"][:5]
    # Stored once each, judged and stamped as of when they were received.
    result.assert_exact()
    assert result.stored_messages == 11 and result.indeterminate == 0
    received = {seq: at for seq, item, _, _, at in replayed["stored"] if item == 0}
    assert received[7] == before[7][1] and received[10] == before[10][1]
    assert [seq for seq, *_ in replayed["stored"]] == list(range(11))
    # A second replay finds only the message it still cannot store, and changes nothing.
    assert SECOND in second
    assert again == replayed
    assert code == 0


def test_replay_never_files_a_message_under_a_device_provisioned_after_it_arrived(
    local_services: LocalServices, settings: Settings
) -> None:
    """A serial freed (its device deleted) and provisioned again, perhaps for another
    customer, is not the sender of what was quarantined under it before: not offered."""
    with fault_database(local_services, settings) as env:
        serial = f"replay-{env.token}-reused"
        arrived = datetime.now(UTC) - timedelta(hours=1)
        body = usage_body(1, arrived, env.feature_key)
        raw = RawMessage(device_topic(serial, MessageKind.USAGE), body, arrived)
        why = Rejected(QuarantineReason.REJECTED_BY_DATABASE, "a bug, fixed since", serial)
        with psycopg.connect(env.url, autocommit=True) as conn:
            with conn.transaction():
                quarantine_messages(conn, [(raw, why)])
            conn.execute(  # provisioned now, after the message arrived
                "INSERT INTO devices (serial, project_id) VALUES (%s, %s)",
                (serial, env.project_id),
            )
        assert _replay(env.url, serial) == (
            "replayed 0 quarantined messages: 0 stored, 0 already stored; still quarantined 0; "
            "not offered 1 (device provisioned after it arrived 1)"
        )
        state = _state(env.url, serial)
        assert state["stored"] == []
        [(_, _, reason, _, _, replayed_at, _)] = state["quarantine"]
        assert (reason, replayed_at) == ("rejected_by_database", None)  # still pending
