"""What ingest promises, measured: every acknowledged message stored exactly once, rollups
that never double-count, every bad message quarantined with the right reason while good ones
keep flowing, one poisonous message isolated, and the quarantine and metrics visible."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from device_sim.device import SimDevice
from services.core.broker_admin import BrokerAdmin
from services.core.settings import Settings
from services.core.topics import MessageKind
from services.infra.local import LocalServices
from services.ingest.service import EARLY_DECODE_BYTES, IngestService, discard_session
from tests.integration.conftest import Project, wait_for
from tests.integration.ingest_support import (
    Ledger,
    account,
    fault_database,
    fleet,
    free_port,
    iso,
    metric_samples,
    publish_streams,
    stored_count,
    try_metric_samples,
    usage_body,
    wait_all_stored,
    wait_until_stored,
)


def _url(settings: Settings) -> str:
    return settings.database_url.get_secret_value()


def _quarantine(conn: psycopg.Connection, serial: str) -> list[tuple[int, str, bytes, int]]:
    return [
        (qid, reason, bytes(payload), size)
        for qid, reason, payload, size in conn.execute(
            "SELECT id, reason, payload, payload_size FROM quarantine WHERE device_serial = %s "
            "ORDER BY id",
            (serial,),
        )
    ]


def _stored_seqs(conn: psycopg.Connection, serial: str) -> dict[int, str]:
    return dict(
        conn.execute(
            """SELECT u.seq, u.feature_key FROM usage_events u JOIN devices d ON d.id = u.device_id
               WHERE d.serial = %s""",
            (serial,),
        ).fetchall()
    )


# --- 1. volume ----------------------------------------------------------------------------


def test_ten_thousand_qos1_messages_are_stored_exactly_once(
    ingest: IngestService,
    settings: Settings,
    broker_admin: BrokerAdmin,
    project: Project,
    unique: str,
) -> None:
    serials = [f"load-{unique}-{i:03d}" for i in range(100)]
    base = datetime.now(UTC) - timedelta(minutes=5)
    with fleet(
        _url(settings), broker_admin, settings, project.id, project.feature_key, serials
    ) as devices:
        started = time.monotonic()
        ledger = publish_streams(devices.devices, project.feature_key, range(100), base, threads=4)
        handed_s = time.monotonic() - started
        indeterminate = ledger.wait_acks(60)
        acked_s = time.monotonic() - started
        stored, _ = wait_all_stored(_url(settings), ledger, serials, 60)
        elapsed = time.monotonic() - started
    result = account(_url(settings), ledger, serials)
    print(
        f"\n[volume] 10,000 messages from 100 devices: handed to paho in {handed_s:.2f}s, "
        f"all PUBACKs in {acked_s:.2f}s, all stored in {elapsed:.2f}s "
        f"({stored / elapsed:,.0f} msg/s end to end); {result.line()}"
    )
    assert ledger.errors == []
    assert len(ledger.handed) == 10_000
    assert indeterminate == 0
    result.assert_exact()
    assert result.stored_messages == 10_000
    assert result.stored_readings == 10_000


# --- 2. redelivery -------------------------------------------------------------------------


def test_resending_the_same_batch_adds_nothing(
    ingest: IngestService,
    settings: Settings,
    broker_admin: BrokerAdmin,
    project: Project,
    unique: str,
) -> None:
    serials = [f"resend-{unique}-{i:02d}" for i in range(20)]
    base = datetime.now(UTC) - timedelta(minutes=3)
    seqs = range(50)
    readings = 2  # two readings per message: redelivery must map onto the same (seq, item)
    with fleet(
        _url(settings), broker_admin, settings, project.id, project.feature_key, serials
    ) as devices:
        first = publish_streams(devices.devices, project.feature_key, seqs, base, readings=readings)
        assert first.wait_acks(30) == 0
        wait_all_stored(_url(settings), first, serials, 30)
        before = account(_url(settings), first, serials)
        duplicates_before = ingest.totals.usage_duplicates
        rows_before = ingest.totals.usage_rows

        second = publish_streams(
            devices.devices, project.feature_key, seqs, base, readings=readings
        )
        assert second.wait_acks(30) == 0
        resent = len(second.acked) * readings
        wait_for(lambda: ingest.totals.usage_duplicates >= duplicates_before + resent, 30)
        time.sleep(0.5)  # anything still in flight would show now
    after = account(_url(settings), first, serials)
    absorbed = ingest.totals.usage_duplicates - duplicates_before
    print(
        f"\n[resend] re-sent {len(second.acked)} messages ({resent} readings): "
        f"ingest absorbed {absorbed} duplicate readings, stored "
        f"{ingest.totals.usage_rows - rows_before} new; before: {before.line()}; "
        f"after: {after.line()}"
    )
    before.assert_exact()
    assert before.stored_messages == 1000
    assert before.stored_readings == 2000
    assert after == before
    assert absorbed == resent
    assert ingest.totals.usage_rows == rows_before


# --- 3. bad input among good ---------------------------------------------------------------


def test_bad_input_is_quarantined_with_the_right_reason_while_good_flows(
    ingest: IngestService,
    api: TestClient,
    conn: psycopg.Connection,
    settings: Settings,
    project: Project,
    provision: Callable[[int, str], SimDevice],
    unique: str,
) -> None:
    assert settings.ingest_max_future_skew_s == 600  # the tolerance these cases are built on
    assert settings.ingest_late_data_days == 30
    device = provision(project.id, f"mixed-{unique}")
    feature = project.feature_key
    now = datetime.now(UTC)
    seq = iter(range(1, 10_000))

    def body(**fields: object) -> dict[str, object]:
        return {"v": 1, "seq": next(seq), "ts": iso(now), "events": [{"feature": feature}]} | fields

    def raw(value: dict[str, object]) -> bytes:
        return json.dumps(value).encode()

    # readings with their own time, an hour ago, in a zone two hours ahead of UTC
    local = (now - timedelta(hours=1)).astimezone(timezone(timedelta(hours=2)))
    many = [{"feature": feature, "ts": local.isoformat()} for _ in range(40)]
    truncated = raw(body())
    truncated = truncated[: len(truncated) // 2]
    old_ts = iso(now - timedelta(days=40))
    # (case, topic kind, payload, reasons that are acceptable)
    bad: list[tuple[str, MessageKind, bytes, set[str]]] = [
        ("empty payload", MessageKind.USAGE, b"", {"not_json"}),
        ("truncated JSON", MessageKind.USAGE, truncated, {"not_json"}),
        ("seq as a string", MessageKind.USAGE, raw(body(seq="5")), {"invalid_payload"}),
        (
            "count as a string",
            MessageKind.USAGE,
            raw(body(events=[{"feature": feature, "count": "3"}])),
            {"invalid_payload"},
        ),
        (
            "missing ts",
            MessageKind.USAGE,
            raw({k: v for k, v in body().items() if k != "ts"}),
            {"invalid_payload"},
        ),
        (
            "NaN count",
            MessageKind.USAGE,
            f'{{"v":1,"seq":{next(seq)},"ts":"{iso(now)}","events":[{{"feature":"{feature}",'
            f'"count":NaN}}]}}'.encode(),
            {"invalid_payload", "not_json"},
        ),
        (
            "Infinity metric",
            MessageKind.TELEMETRY,
            f'{{"v":1,"seq":{next(seq)},"ts":"{iso(now)}","metrics":[{{"name":"battery",'
            f'"value":Infinity}}]}}'.encode(),
            {"invalid_payload", "not_json"},
        ),
        (
            "NUL in feature",
            MessageKind.USAGE,
            raw(body(events=[{"feature": "a\u0000b"}])),
            {"invalid_payload"},
        ),
        (
            "NUL in unit",
            MessageKind.TELEMETRY,
            raw(
                {
                    "v": 1,
                    "seq": next(seq),
                    "ts": iso(now),
                    "metrics": [{"name": "battery", "value": 1.5, "unit": "%\u0000"}],
                }
            ),
            {"invalid_payload"},
        ),
        (
            "oversized",
            MessageKind.USAGE,
            raw(body(pad="x" * (256 * 1024 + 10))),
            {"payload_too_large"},
        ),
        (
            "11 minutes ahead",
            MessageKind.USAGE,
            raw(body(ts=iso(now + timedelta(minutes=11)))),
            {"future_timestamp"},
        ),
        ("40 days old", MessageKind.USAGE, raw(body(ts=old_ts)), {"too_old"}),
        (
            "payload names another device",
            MessageKind.USAGE,
            raw(body(device=f"someone-else-{unique}")),
            {"device_mismatch"},
        ),
        # payloads over EARLY_DECODE_BYTES are decoded on the network thread
        (
            "40 readings, the last 11 minutes ahead",
            MessageKind.USAGE,
            raw(
                body(
                    events=[
                        *many[:-1],
                        {"feature": feature, "ts": iso(now + timedelta(minutes=11))},
                    ]
                )
            ),
            {"future_timestamp"},
        ),
        (
            "40 readings, one count a string",
            MessageKind.USAGE,
            raw(body(events=[*many[:-1], {"feature": feature, "count": "2"}])),
            {"invalid_payload"},
        ),
    ]
    ahead_5_min = next(seq)
    unknown_feature = f"never_delivered_{unique}"
    unknown_seq = next(seq)
    many_seq = next(seq)
    stored_cases = [
        (ahead_5_min, raw(body(seq=ahead_5_min, ts=iso(now + timedelta(minutes=5)))), feature),
        (many_seq, raw(body(seq=many_seq, events=many)), feature),
        (
            unknown_seq,
            raw(body(seq=unknown_seq, events=[{"feature": unknown_feature, "count": 4}])),
            unknown_feature,
        ),
    ]

    # the 40-reading payloads take the network thread's path, not the writer's
    assert all(len(p) > EARLY_DECODE_BYTES for c, _, p, _ in bad if c.startswith("40 readings"))
    assert len(stored_cases[1][1]) > EARLY_DECODE_BYTES

    good: list[int] = []

    def send_good() -> None:
        good_seq = 5000 + len(good)
        device.publish(MessageKind.USAGE, usage_body(good_seq, now, feature)).wait_for_publish(5)
        good.append(good_seq)

    for _, kind, payload, _ in bad:
        send_good()
        device.publish(kind, payload).wait_for_publish(5)
    for _, payload, _ in stored_cases:
        send_good()
        device.publish(MessageKind.USAGE, payload).wait_for_publish(5)
    send_good()

    rows = wait_for(lambda: (r := _quarantine(conn, device.serial)) and len(r) >= len(bad) and r)
    stored = wait_for(
        lambda: (
            (s := _stored_seqs(conn, device.serial))
            and len(s) >= len(good) + len(stored_cases)
            and s
        )
    )
    by_payload = {(payload, size): reason for _, reason, payload, size in rows}
    outcome = {}
    for case, _, payload, _ in bad:
        outcome[case] = by_payload.get((payload[: 64 * 1024], len(payload)), "NOT QUARANTINED")
    print("\n[bad input] " + "; ".join(f"{case} → {reason}" for case, reason in outcome.items()))
    for case, _, _, accepted in bad:
        assert outcome[case] in accepted, f"{case}: {outcome[case]}, expected one of {accepted}"
    # What NaN/Infinity actually give (Pydantic's parser reads them, the model refuses them).
    assert outcome["NaN count"] == "invalid_payload"
    assert outcome["Infinity metric"] == "invalid_payload"
    assert len(rows) == len(bad), "a message was quarantined twice or something extra was"
    assert all(seq_ in stored for seq_ in good), "a good message next to a bad one was lost"
    assert stored[ahead_5_min] == feature  # 5 minutes ahead is within the 10-minute tolerance
    assert stored[unknown_seq] == unknown_feature  # kept as undelivered usage
    times = conn.execute(
        """SELECT count(*), min(device_time), max(device_time) FROM usage_events u
           JOIN devices d ON d.id = u.device_id WHERE d.serial = %s AND u.seq = %s""",
        (device.serial, many_seq),
    ).fetchone()
    assert times == (40, local, local)  # each reading at its own time, whatever its zone
    assert len(stored) == len(good) + len(stored_cases)

    usage = api.get(f"/projects/{project.id}/usage").json()
    [undelivered] = [f for f in usage["features"] if f["feature_key"] == unknown_feature]
    assert undelivered["delivery_status"] is None
    assert undelivered["events"] == 4
    assert undelivered["devices_using"] == 1

    # The same 40-day-old message is stored once the project allows 60 days. The directory
    # caches a device's project settings (projects have no change trigger), so the check uses
    # a device provisioned after the change.
    conn.execute("UPDATE projects SET late_data_days = 60 WHERE id = %s", (project.id,))
    late = provision(project.id, f"late-{unique}")
    late.publish(MessageKind.USAGE, usage_body(1, now - timedelta(days=40), feature))
    assert wait_for(lambda: _stored_seqs(conn, late.serial)) == {1: feature}
    assert _quarantine(conn, late.serial) == []


def test_revoked_device_is_refused_within_two_seconds(
    ingest: IngestService,
    conn: psycopg.Connection,
    project: Project,
    provision: Callable[[int, str], SimDevice],
    unique: str,
) -> None:
    device = provision(project.id, f"revoke-{unique}")
    now = datetime.now(UTC)
    device.publish(MessageKind.USAGE, usage_body(1, now, project.feature_key)).wait_for_publish(5)
    wait_for(lambda: _stored_seqs(conn, device.serial))  # ingest now caches it as active
    # Revoked in the registry only: the broker still lets the open connection publish.
    conn.execute(
        "UPDATE devices SET status = 'revoked', revoked_at = now() WHERE serial = %s",
        (device.serial,),
    )
    time.sleep(0.2)  # the NOTIFY reaches ingest's listener (a real cache TTL would be 30 s)
    sent = time.monotonic()
    device.publish(MessageKind.USAGE, usage_body(2, now, project.feature_key)).wait_for_publish(5)
    rows = wait_for(lambda: _quarantine(conn, device.serial), timeout=2.0, interval=0.02)
    took = time.monotonic() - sent
    print(f"\n[revoked] quarantined {took:.2f}s after publishing")
    assert [reason for _, reason, _, _ in rows] == ["revoked_device"]
    assert set(_stored_seqs(conn, device.serial)) == {1}


# --- 4. poison isolation -------------------------------------------------------------------


def test_a_message_the_database_refuses_is_isolated_and_the_rest_stored(
    ingest: IngestService,
    conn: psycopg.Connection,
    settings: Settings,
    project: Project,
    provision: Callable[[int, str], SimDevice],
    unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    device = provision(project.id, f"poison-{unique}")
    now = datetime.now(UTC)
    conn.execute(
        "ALTER TABLE usage_events ADD CONSTRAINT test_poison CHECK (feature_key <> 'poison_pill')"
    )
    try:
        with caplog.at_level(logging.WARNING, logger="services.ingest.service"):
            ledger = Ledger()
            for seq in range(101):
                feature = "poison_pill" if seq == 50 else project.feature_key
                ledger.record(
                    device.serial,
                    seq,
                    device.publish(MessageKind.USAGE, usage_body(seq, now, feature)),
                )
            assert ledger.wait_acks(10) == 0
            rows = wait_for(lambda: _quarantine(conn, device.serial))
            stored = wait_for(
                lambda: (s := _stored_seqs(conn, device.serial)) and len(s) >= 100 and s
            )
    finally:
        conn.execute("ALTER TABLE usage_events DROP CONSTRAINT IF EXISTS test_poison")
    [(qid, reason, payload, _)] = rows
    detail = conn.execute("SELECT detail FROM quarantine WHERE id = %s", (qid,)).fetchone()
    refused = [r.getMessage() for r in caplog.records if "could not be stored" in r.message]
    print(
        f"\n[poison] quarantined: {reason} ({detail[0] if detail else None!r}); "
        f"batches refused and split: {len(refused)}"
    )
    assert reason == "rejected_by_database"
    assert json.loads(payload)["events"][0]["feature"] == "poison_pill"
    assert detail is not None and "test_poison" in detail[0]
    assert sorted(stored) == [s for s in range(101) if s != 50]
    assert refused, "the poison message was not in a batch with good ones; nothing was isolated"
    result = account(_url(settings), ledger, [device.serial])
    assert result.lost == 1 and result.lost_sample == [(device.serial, 50)]  # the quarantined
    assert result.duplicated == 0
    assert result.rollup_events == result.stored_events == 100


# --- 5. the quarantine API -------------------------------------------------------------------


def test_quarantine_api_matches_the_database(
    ingest: IngestService,
    api: TestClient,
    conn: psycopg.Connection,
    project: Project,
    provision: Callable[[int, str], SimDevice],
    unique: str,
) -> None:
    device = provision(project.id, f"qapi-{unique}")
    hello = b"hello, not json"
    broken = b'{"v": 1, "seq": 3, "ts'
    wrong = json.dumps({"v": 1, "seq": "x", "ts": iso(datetime.now(UTC)), "events": []}).encode()
    for payload in (hello, broken, wrong):
        device.publish(MessageKind.USAGE, payload).wait_for_publish(5)
    rows = wait_for(lambda: (r := _quarantine(conn, device.serial)) and len(r) >= 3 and r)
    ids = {payload: qid for qid, _, payload, _ in rows}

    db_counts: dict[str, int] = {}
    summary: list[dict[str, Any]] = []
    for _ in range(10):  # compare at a quiet moment: other devices may still be sending
        before = _reason_counts(conn)
        response = api.get("/quarantine/summary")
        assert response.status_code == 200
        summary = response.json()
        db_counts = _reason_counts(conn)
        if before == db_counts:
            break
        time.sleep(0.2)
    print(f"\n[quarantine] summary: { {s['reason']: s['count'] for s in summary} }")
    assert {s["reason"]: s["count"] for s in summary} == db_counts
    assert db_counts["not_json"] >= 2 and db_counts["invalid_payload"] >= 1
    latest: dict[str, int] = dict(
        conn.execute(
            "SELECT reason, max(id) FROM quarantine "
            "WHERE received_at >= now() - interval '7 days' GROUP BY reason"
        ).fetchall()
    )
    for entry in summary:
        sample = entry["sample"]
        assert isinstance(sample, dict)
        assert sample["reason"] == entry["reason"]
        assert sample["id"] == latest[entry["reason"]]  # the most recent one

    listed = api.get("/quarantine", params={"reason": "not_json", "device": device.serial})
    assert listed.status_code == 200
    page = listed.json()
    assert page["total"] == 2
    assert {item["id"] for item in page["items"]} == {ids[hello], ids[broken]}
    assert {item["payload_preview"] for item in page["items"]} == {hello.decode(), broken.decode()}
    not_json_before = _not_json_rows(conn)
    everyone = api.get("/quarantine", params={"reason": "not_json", "limit": 200}).json()
    not_json_after = _not_json_rows(conn)
    assert {ids[hello], ids[broken]} <= {item["id"] for item in everyone["items"]}
    assert all(item["reason"] == "not_json" for item in everyone["items"])
    # the list counts rows; a message quarantined again (a redelivery) is one row, its copies
    # counted on it, which the summary adds up
    assert not_json_before <= everyone["total"] <= not_json_after

    for payload, qid in ids.items():
        raw = api.get(f"/quarantine/{qid}/payload")
        assert raw.status_code == 200
        assert raw.headers["content-type"] == "application/octet-stream"
        assert raw.content == payload
    assert api.get("/quarantine/999999999/payload").status_code == 404

    schemas = api.get("/schemas/payloads").json()
    assert set(schemas) >= {"usage", "telemetry", "status"}
    assert "events" in schemas["usage"]["schema"]["properties"]
    assert "metrics" in schemas["telemetry"]["schema"]["properties"]
    assert "state" in schemas["status"]["schema"]["properties"]
    assert schemas["usage"]["topic"] == "fieldtrack/v1/{serial}/usage"


def _not_json_rows(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT count(*)::int FROM quarantine WHERE reason = 'not_json' "
        "AND received_at >= now() - interval '7 days'"
    ).fetchone()
    return row[0] if row else 0


def _reason_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Messages quarantined per reason, copies of the same bytes included (one row each)."""
    return dict(
        conn.execute(
            "SELECT reason, sum(copies)::bigint FROM quarantine "
            "WHERE received_at >= now() - interval '7 days' GROUP BY reason"
        ).fetchall()
    )


def _status(api: TestClient, path: str, **params: object) -> tuple[int, Any]:
    """Status and body; a server-side exception (TestClient re-raises it) counts as a 500."""
    try:
        response = api.get(path, params=params)
    except psycopg.Error as exc:
        return 500, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    body = response.json() if "json" in response.headers.get("content-type", "") else None
    return response.status_code, body


# --- 6. metrics and a clean stop ---------------------------------------------------------------


def test_ingest_process_exposes_metrics_and_stops_cleanly(
    local_services: LocalServices, settings: Settings, broker_admin: BrokerAdmin
) -> None:
    with fault_database(local_services, settings) as env:
        serials = [f"metrics-{env.token}-{i}" for i in range(5)]
        probe = f"metrics-{env.token}-probe"
        with fleet(
            env.url, broker_admin, settings, env.project_id, env.feature_key, [*serials, probe]
        ) as devices:
            port = free_port()
            ingest = env.ingest("metrics", f"metrics-{env.token}", metrics_port=port)
            try:
                ingest.start()
                wait_for(lambda: try_metric_samples(port), timeout=10)
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                assert "fieldtrack_ingest_messages_total" in text
                wait_until_stored(env.url, devices.by_serial(probe), env.feature_key, 10**6)
                streamed = [d for d in devices.devices if d.serial != probe]
                ledger = publish_streams(
                    streamed, env.feature_key, range(40), datetime.now(UTC), threads=2
                )
                assert ledger.wait_acks(20) == 0
                wait_all_stored(env.url, ledger, serials, 20)
                assert stored_count(env.url, serials) == 200
                samples = wait_for(
                    lambda: (
                        (s := metric_samples(port))
                        and s.get("fieldtrack_ingest_publish_to_commit_seconds_count", 0) >= 200
                        and s
                    ),
                    timeout=5,
                )
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                code, took, stopped = ingest.terminate(30)
            finally:
                ingest.ensure_dead()
                discard_session(settings, ingest.client_id)
    print(
        f"\n[metrics] messages_total={samples['fieldtrack_ingest_messages_total']:.0f} "
        f"commit lag count={samples['fieldtrack_ingest_publish_to_commit_seconds_count']:.0f} "
        f"sum={samples['fieldtrack_ingest_publish_to_commit_seconds_sum']:.2f}s; "
        f"SIGTERM → exit {code} in {took:.2f}s; {stopped}"
    )
    assert "fieldtrack_ingest_publish_to_commit_seconds_bucket" in text
    assert samples["fieldtrack_ingest_messages_total"] >= 201
    assert samples["fieldtrack_ingest_publish_to_commit_seconds_bucket{le=+Inf}"] >= 200
    assert code == 0
    assert took < 30
    assert stopped is not None and stopped.messages >= 201 and stopped.usage_rows >= 201


# --- 5b. binary payloads in the quarantine API (last: it fails while the API is broken) --


def test_quarantine_api_shows_binary_payloads(
    ingest: IngestService,
    api: TestClient,
    conn: psycopg.Connection,
    project: Project,
    provision: Callable[[int, str], SimDevice],
    unique: str,
) -> None:
    """A device can send any bytes: NUL, invalid UTF-8, a multi-byte character cut by the
    2 KiB preview. The raw bytes come back exactly and the listings still work."""
    device = provision(project.id, f"qbin-{unique}")
    binary = b"\xff\x00\xfe\x01 binary \x00 with NUL and invalid UTF-8 \xc3("
    cut = b"x" * 2047 + "é".encode() + b" tail"  # the preview ends inside 'é'
    try:
        for payload in (binary, cut):
            device.publish(MessageKind.USAGE, payload).wait_for_publish(5)
        rows = wait_for(lambda: (r := _quarantine(conn, device.serial)) and len(r) >= 2 and r)
        ids = {payload: qid for qid, _, payload, _ in rows}
        assert set(ids) == {binary, cut}
        for payload, qid in ids.items():
            raw = api.get(f"/quarantine/{qid}/payload")
            assert (raw.status_code, raw.content) == (200, payload)

        outcomes = {
            "list": _status(api, "/quarantine", device=device.serial),
            "one": _status(api, f"/quarantine/{ids[binary]}"),
            "summary": _status(api, "/quarantine/summary"),
        }
        print(
            "\n[quarantine binary] "
            + "; ".join(
                f"{name}: {code}" + (f" ({body})" if code != 200 else "")
                for name, (code, body) in outcomes.items()
            )
        )
        assert {name: code for name, (code, _) in outcomes.items()} == dict.fromkeys(outcomes, 200)
        items = {item["id"]: item for item in outcomes["list"][1]["items"]}
        assert items[ids[binary]]["payload_preview"].startswith("\ufffd\\0\ufffd\x01 binary \\0")
        assert items[ids[binary]]["payload_size"] == len(binary)
        assert items[ids[cut]]["payload_preview"].startswith("x" * 2047)
    finally:
        # Leave no bytes behind that would break other tests' listings of the session database.
        conn.execute("DELETE FROM quarantine WHERE device_serial = %s", (device.serial,))


# --- 7. sequence arithmetic and message identity (issue 22, findings 4 and 5) ---------------

MAX_SEQ = 2**63 - 1


def _stored_readings(conn: psycopg.Connection, serial: str) -> list[tuple[int, int, str, int]]:
    """(boot, seq, feature, count) of a device's stored usage readings."""
    return [
        tuple(row)
        for row in conn.execute(
            """SELECT u.boot, u.seq, u.feature_key, u.count FROM usage_events u
               JOIN devices d ON d.id = u.device_id WHERE d.serial = %s
               ORDER BY u.boot, u.seq, u.item""",
            (serial,),
        )
    ]


def _hourly(conn: psycopg.Connection, serial: str) -> tuple[int, int, int]:
    """(messages, missing, seq_jumps) of a device, summed over its hours."""
    row = conn.execute(
        """SELECT coalesce(sum(messages), 0), coalesce(sum(missing), 0),
                  coalesce(sum(seq_jumps), 0)
           FROM device_hourly h JOIN devices d ON d.id = h.device_id WHERE d.serial = %s""",
        (serial,),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def test_a_sequence_number_of_2_63_does_not_cost_the_project_its_other_devices(
    ingest: IngestService,
    conn: psycopg.Connection,
    project: Project,
    provision: Callable[[int, str], SimDevice],
    unique: str,
) -> None:
    """Finding 4: one device sending seq 0 then 2^63-1 once made its project's `missing`
    overflow, and every later message of the project with a gap was quarantined as
    rejected_by_database: other devices' acknowledged data, gone."""
    feature = project.feature_key
    at = datetime.now(UTC) - timedelta(minutes=5)
    wild = provision(project.id, f"wild-{unique}")
    for seq, offset in ((0, 0), (MAX_SEQ, 1)):
        wild.publish(MessageKind.USAGE, usage_body(seq, at + timedelta(seconds=offset), feature))
    wait_for(lambda: len(_stored_seqs(conn, wild.serial)) == 2)
    others = [provision(project.id, f"gappy-{unique}-{i}") for i in range(3)]
    sent = {device.serial: (0, 5, 9) for device in others}  # 7 numbers skipped each
    for device in others:
        for n, seq in enumerate(sent[device.serial]):
            at_n = at + timedelta(seconds=10 + n)
            device.publish(MessageKind.USAGE, usage_body(seq, at_n, feature)).wait_for_publish(5)

    def settled() -> bool:
        return all(
            len(_stored_seqs(conn, d.serial)) + len(_quarantine(conn, d.serial)) >= 3
            for d in others
        )

    wait_for(settled)
    quarantined = {d.serial: [r for _, r, _, _ in _quarantine(conn, d.serial)] for d in others}
    print(f"\n[seq 2^63] wild: {_hourly(conn, wild.serial)}; others quarantined: {quarantined}")
    assert quarantined == {d.serial: [] for d in others}
    for device in others:
        assert sorted(_stored_seqs(conn, device.serial)) == [0, 5, 9]
        assert _hourly(conn, device.serial) == (3, 7, 0)
    # the jump is a restart, said as such: not 2^63-2 messages missing
    assert _hourly(conn, wild.serial) == (2, 0, 1)
    missing = conn.execute(
        "SELECT sum(missing) FROM project_hourly WHERE project_id = %s", (project.id,)
    ).fetchone()
    assert missing == (21,)


def test_an_outbox_resent_with_a_fresh_ts_is_stored_once(
    ingest: IngestService,
    conn: psycopg.Connection,
    project: Project,
    provision: Callable[[int, str], SimDevice],
    unique: str,
) -> None:
    """Finding 5: firmware that resends its outbox stamps each message with a fresh `ts`. With
    a boot counter, (boot, seq) is the message's identity and the resend adds nothing; once
    it was stored twice."""
    device = provision(project.id, f"outbox-{unique}")
    feature = project.feature_key
    sent = datetime.now(UTC) - timedelta(minutes=3)
    for seq in (40, 41):
        device.publish(
            MessageKind.USAGE, usage_body(seq, sent, feature, count=seq, boot=12)
        ).wait_for_publish(5)
    wait_for(lambda: len(_stored_readings(conn, device.serial)) == 2)
    for seq in (40, 41):  # the outbox again, each message stamped as it goes out
        resent = sent + timedelta(seconds=90 + seq)
        device.publish(MessageKind.USAGE, usage_body(seq, resent, feature, count=seq, boot=12))
    device.publish(MessageKind.USAGE, usage_body(42, sent + timedelta(minutes=2), feature, boot=12))
    wait_for(lambda: 42 in {seq for _, seq, _, _ in _stored_readings(conn, device.serial)})
    time.sleep(0.3)  # anything of the resend still in flight would show now
    readings = _stored_readings(conn, device.serial)
    print(f"\n[outbox] stored: {readings}")
    assert _quarantine(conn, device.serial) == []
    assert readings == [(12, 40, feature, 40), (12, 41, feature, 41), (12, 42, feature, 1)]
    assert _hourly(conn, device.serial) == (3, 0, 0)
    events = conn.execute(
        """SELECT sum(events) FROM usage_hourly h JOIN devices d ON d.id = h.device_id
           WHERE d.serial = %s""",
        (device.serial,),
    ).fetchone()
    assert events == (82,)


def test_a_device_without_a_clock_keeps_what_it_sends_after_a_reboot(
    ingest: IngestService,
    conn: psycopg.Connection,
    project: Project,
    provision: Callable[[int, str], SimDevice],
    unique: str,
) -> None:
    """Finding 5: a device without a real-time clock restarts at the same time with seq 0.
    Its next boot's messages once collided with the previous boot's (same time, same seq)
    and were dropped as duplicates; a new boot counter makes them new messages."""
    device = provision(project.id, f"noclock-{unique}")
    feature = project.feature_key
    epoch = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)  # its clock at boot
    for boot, counts in ((1, (3, 4, 5)), (2, (6, 7, 8))):
        for seq, count in enumerate(counts):
            at = epoch + timedelta(seconds=seq)
            body = usage_body(seq, at, feature, count=count, boot=boot)
            device.publish(MessageKind.USAGE, body).wait_for_publish(5)
        if boot == 1:
            wait_for(lambda: len(_stored_readings(conn, device.serial)) == 3)
    wait_for(lambda: len(_stored_readings(conn, device.serial)) >= 6)
    readings = _stored_readings(conn, device.serial)
    print(f"\n[no clock] stored: {readings}")
    assert _quarantine(conn, device.serial) == []
    expected = [(boot, seq, feature, 3 * boot + seq) for boot in (1, 2) for seq in range(3)]
    assert readings == expected
    # a reboot is neither a gap nor a late message filling one
    assert _hourly(conn, device.serial) == (6, 0, 0)
