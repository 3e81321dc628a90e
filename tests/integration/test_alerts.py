"""Alerts end to end: real devices through the broker and ingest, `fieldtrack alerts run` as a
real process, notifications into a real SMTP server and a real webhook receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from prometheus_client import REGISTRY

from device_sim.device import SimDevice
from services.accounts.roles import Principal, Role
from services.alerts import store
from services.alerts.engine import evaluate
from services.alerts.enums import NotificationState
from services.alerts.notify import MAX_ATTEMPTS, SIGNATURE_HEADER, deliver_due
from services.alerts.rules import RuleKind
from services.alerts.runner import run_once
from services.alerts.store import ChannelCreate, RuleCreate
from services.core.broker_admin import BrokerAdmin
from services.core.errors import NotFoundError
from services.core.settings import AlertSettings, Settings
from services.core.topics import MessageKind, device_topic
from services.ingest.batch import RawMessage
from services.ingest.directory import DeviceDirectory
from services.ingest.service import IngestService
from services.ingest.store import store_batch
from services.registry import upserts as registry
from tests.integration.alert_support import (
    AlertsProcess,
    SmtpSink,
    WebhookSink,
    smtp_server,
    webhook_receiver,
)
from tests.integration.conftest import Project, wait_for

SECRET = "a-webhook-secret-of-some-length"
SILENT_S = 10  # the rule's time
EVAL_INTERVAL_S = 1  # AlertsProcess evaluates every second
# Beyond the rule's time and one interval: the last message's trip through ingest, one
# evaluation's run time and the delivery, on a loaded two-CPU test machine.
SLACK_S = 6


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with smtp_server() as sink:
        yield sink


@pytest.fixture
def webhook() -> Iterator[WebhookSink]:
    with webhook_receiver() as sink:
        yield sink


class Publisher:
    """Devices reporting telemetry every 0.5 s until stopped."""

    def __init__(self, devices: list[SimDevice]) -> None:
        self.devices = devices
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for device in self.devices:
                device.telemetry({"battery": (90.0, "%")})

    def __enter__(self) -> Publisher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _last_seen(conn: psycopg.Connection, project_id: int) -> datetime | None:
    row = conn.execute(
        "SELECT max(s.last_seen) FROM device_state s JOIN devices d ON d.id = s.device_id "
        "WHERE d.project_id = %s",
        (project_id,),
    ).fetchone()
    return row[0] if row else None


ADMIN = Principal(kind="user", id=0, name="test", role=Role.ADMIN, customer_id=None)


def _for_project(
    smtp: SmtpSink, webhook: WebhookSink, project_id: int
) -> tuple[list[str], list[str]]:
    """The events (fired/resolved) each receiver got about this project."""
    mails = [
        str(m["X-Fieldtrack-Event"])
        for m in smtp.messages
        if m["X-Fieldtrack-Project"] == str(project_id)
    ]
    hooks = [
        d.json["event"] for d in webhook.deliveries if d.json["alert"]["project_id"] == project_id
    ]
    return mails, hooks


def test_a_silent_project_notifies_once_resolves_once_and_a_restart_repeats_nothing(
    settings: Settings,
    conn: psycopg.Connection,
    ingest: IngestService,
    project: Project,
    broker_admin: BrokerAdmin,
    unique: str,
    smtp: SmtpSink,
    webhook: WebhookSink,
    tmp_path: Path,
) -> None:
    mail = store.create_channel(
        conn, ChannelCreate(name=f"mail-{unique}", kind="email", target=f"ops-{unique}@example.com")
    )
    hook = store.create_channel(
        conn,
        ChannelCreate(name=f"hook-{unique}", kind="webhook", target=webhook.url, secret=SECRET),
    )
    rule = store.create_rule(
        conn,
        RuleCreate(
            kind="project_silent",
            project_id=project.id,
            params={"silent_s": SILENT_S},
            channels=[mail.id, hook.id],
        ),
        ADMIN,
    )
    credentials = registry.provision_devices(
        conn, broker_admin, project.id, [(f"alert-{unique}-{i}", "T1", "1.0") for i in range(3)]
    )

    def connect() -> list[SimDevice]:
        devices = [SimDevice(c.serial, c.password, settings.broker_nodes()) for c in credentials]
        for device in devices:
            device.start()
            assert device.connected.wait(10), device.refused
        return devices

    devices = connect()
    alerts = AlertsProcess(settings.database_url.get_secret_value(), smtp.port, tmp_path)
    alerts.start()
    try:
        with Publisher(devices):
            wait_for(lambda: _last_seen(conn, project.id), timeout=15)
            time.sleep(3)  # reporting, and the alerts process evaluating it: nothing fires
            assert _for_project(smtp, webhook, project.id) == ([], [])
        for device in devices:
            device.stop()
        last = _last_seen(conn, project.id)
        assert last is not None

        # silent: one notification on each channel, within the rule's time and one interval
        wait_for(
            lambda: _for_project(smtp, webhook, project.id) == (["fired"], ["fired"]),
            timeout=SILENT_S + EVAL_INTERVAL_S + SLACK_S + 10,
            interval=0.1,
        )
        arrived = datetime.now(UTC)
        assert arrived - last <= timedelta(seconds=SILENT_S + EVAL_INTERVAL_S + SLACK_S), (
            f"notified {arrived - last} after the last message"
        )
        [delivery] = [d for d in webhook.deliveries if d.json["alert"]["project_id"] == project.id]
        expected = hmac.new(
            SECRET.encode(),
            delivery.headers["X-Fieldtrack-Timestamp"].encode() + b"." + delivery.body,
            hashlib.sha256,
        ).hexdigest()
        assert delivery.headers[SIGNATURE_HEADER] == f"sha256={expected}"
        assert delivery.json["alert"]["kind"] == "project_silent"
        assert delivery.json["alert"]["state"] == "firing"

        # the alerts process restarts while the alert is open: nothing is sent twice
        alerts.stop()
        alerts.start()
        time.sleep(4 * EVAL_INTERVAL_S)
        assert _for_project(smtp, webhook, project.id) == (["fired"], ["fired"])

        # the devices come back: one resolution on each channel
        back = connect()
        with Publisher(back):
            wait_for(
                lambda: (
                    _for_project(smtp, webhook, project.id)
                    == (["fired", "resolved"], ["fired", "resolved"])
                ),
                timeout=20,
                interval=0.1,
            )
            alerts.stop()
            alerts.start()
            time.sleep(4 * EVAL_INTERVAL_S)
        assert _for_project(smtp, webhook, project.id) == (
            ["fired", "resolved"],
            ["fired", "resolved"],
        )
        for device in back:
            device.stop()
    finally:
        alerts.stop()
        store.update_rule(conn, rule.id, store.RuleUpdate(enabled=False), ADMIN)
    opened = store.list_alerts(conn, ADMIN, project_id=project.id)
    assert [(a.kind, a.state) for a in opened if a.rule_id == rule.id] == [
        ("project_silent", "resolved")
    ], alerts.log()


QUARANTINE = frozenset({RuleKind.QUARANTINE_RATE})


def local(settings: Settings) -> AlertSettings:
    """The alert settings with webhooks allowed to reach this host (the test's receiver)."""
    return settings.alerts.model_copy(update={"webhook_allow_private": True})


def _default_rule(conn: psycopg.Connection, kind: RuleKind) -> store.AlertRule:
    return next(r for r in store.list_rules(conn) if r.kind == kind and r.project_id is None)


@pytest.fixture
def quarantine_rule(
    settings: Settings, conn: psycopg.Connection, webhook: WebhookSink, unique: str
) -> Iterator[int]:
    """The portfolio-wide quarantine rule notifying the test's webhook; its open alerts
    resolved first (evaluated a day ahead, when no quarantine is recent), restored after."""
    rule = _default_rule(conn, RuleKind.QUARANTINE_RATE)
    hook = store.create_channel(
        conn, ChannelCreate(name=f"flood-{unique}", kind="webhook", target=webhook.url)
    )
    later = datetime.now(UTC) + timedelta(days=1)
    evaluate(conn, settings, later, QUARANTINE)  # clear from then on …
    evaluate(conn, settings, later + timedelta(hours=1), QUARANTINE)  # … long enough: resolved
    store.update_rule(conn, rule.id, store.RuleUpdate(channels=[hook.id]), ADMIN)
    yield hook.id
    store.update_rule(conn, rule.id, store.RuleUpdate(channels=rule.channels), ADMIN)
    store.delete_channel(conn, hook.id)


def test_a_quarantine_flood_fires_one_alert_naming_the_reason_and_the_device(
    settings: Settings,
    conn: psycopg.Connection,
    ingest: IngestService,
    project: Project,
    broker_admin: BrokerAdmin,
    unique: str,
    webhook: WebhookSink,
    quarantine_rule: int,
) -> None:
    [credential] = registry.provision_devices(
        conn, broker_admin, project.id, [(f"flood-{unique}", "T1", "1.0")]
    )
    device = SimDevice(credential.serial, credential.password, settings.broker_nodes())
    device.start()
    assert device.connected.wait(10), device.refused
    flood = 80  # over the default 10 a minute across 5 minutes
    for i in range(flood):
        device.publish(MessageKind.TELEMETRY, f"not json {i}".encode())
    wait_for(
        lambda: (
            conn.execute(
                "SELECT count(*) FROM quarantine WHERE device_serial = %s", (credential.serial,)
            ).fetchone()
            == (flood,)
        ),
        timeout=20,
    )
    device.stop()
    for _ in range(3):  # evaluated again and again: still one alert, one notification
        evaluate(conn, settings, datetime.now(UTC), QUARANTINE)
        deliver_due(conn, local(settings), datetime.now(UTC))
    [alert] = [
        a
        for a in store.list_alerts(conn, ADMIN, open_only=True)
        if a.kind == RuleKind.QUARANTINE_RATE and a.subject == "reason:not_json"
    ]
    assert alert.evidence["reason"] == "not_json"
    assert {"serial": credential.serial, "messages": flood} in alert.evidence["devices"]
    assert credential.serial in alert.summary
    [delivery] = webhook.deliveries
    assert delivery.json["event"] == "fired"
    assert delivery.json["alert"]["subject"] == "reason:not_json"
    # and Prometheus sees it firing (the gauge `alerts run` serves)
    run_once(conn, settings)
    firing = REGISTRY.get_sample_value(
        "fieldtrack_alerts_open", {"kind": "quarantine_rate", "state": "firing"}
    )
    assert firing is not None and firing >= 1
    assert credential.serial in delivery.json["alert"]["summary"]


@pytest.fixture
def silent_to(
    settings: Settings, conn: psycopg.Connection, project: Project, unique: str
) -> Iterator[Callable[[WebhookSink], store.AlertRule]]:
    """The project's own silence rule notifying a webhook, its project silent for an hour and
    evaluated: one firing alert, its notification owed. The rule is disabled afterwards."""
    made: list[store.AlertRule] = []

    def make(webhook: WebhookSink) -> store.AlertRule:
        hook = store.create_channel(
            conn, ChannelCreate(name=f"hook-{unique}", kind="webhook", target=webhook.url)
        )
        body = RuleCreate(
            kind="project_silent",
            project_id=project.id,
            params={"silent_s": 10},
            channels=[hook.id],
        )
        rule = store.create_rule(conn, body, ADMIN)
        _heard(conn, project.id, datetime.now(UTC) - timedelta(hours=1))
        evaluate(conn, settings, datetime.now(UTC), frozenset({RuleKind.PROJECT_SILENT}))
        made.append(rule)
        return rule

    yield make
    for rule in made:
        store.update_rule(conn, rule.id, store.RuleUpdate(enabled=False), ADMIN)


def test_a_failing_webhook_is_retried_with_backoff_then_listed_dead(
    settings: Settings,
    conn: psycopg.Connection,
    silent_to: Callable[[WebhookSink], store.AlertRule],
    webhook: WebhookSink,
) -> None:
    rule = silent_to(webhook)
    now = datetime.now(UTC)
    webhook.failures = [500] * MAX_ATTEMPTS
    [notification] = store.list_notifications(conn, alert_id=_open_alert(conn, rule.id))
    waits = []
    at = now
    for _ in range(MAX_ATTEMPTS):
        deliver_due(conn, local(settings), at)
        [notification] = store.list_notifications(conn, alert_id=notification.alert_id)
        waits.append(notification.next_attempt_at - at)
        at = notification.next_attempt_at
    assert notification.state == "dead"
    assert notification.attempts == MAX_ATTEMPTS
    assert "HTTP 500" in (notification.last_error or "")
    # each wait doubles from 15 s, capped at 30 minutes
    assert [round(w.total_seconds()) for w in waits[:-1]] == [
        min(15 * 2**i, 1800) for i in range(MAX_ATTEMPTS - 1)
    ]
    assert webhook.deliveries == []
    dead = store.list_notifications(conn, state=NotificationState.DEAD)
    assert notification.id in {n.id for n in dead}
    # re-queued by hand, it goes out once the receiver answers
    store.retry_notification(conn, notification.id)
    deliver_due(conn, local(settings), datetime.now(UTC))
    assert [d.json["event"] for d in webhook.deliveries] == ["fired"]
    with pytest.raises(NotFoundError):
        store.retry_notification(conn, notification.id)  # no longer dead


def _heard(conn: psycopg.Connection, project_id: int, at: datetime) -> int:
    """A device of the project last heard at *at* (as ingest records it); its id."""
    [device_id] = conn.execute(
        "INSERT INTO devices (serial, project_id) VALUES (%s, %s) RETURNING id",
        (f"heard-{project_id}-{at.timestamp():.0f}", project_id),
    ).fetchone() or (None,)
    conn.execute(
        "INSERT INTO device_state (device_id, online, last_seen) VALUES (%s, false, %s)",
        (device_id, at),
    )
    assert isinstance(device_id, int)
    return device_id


def _open_alert(conn: psycopg.Connection, rule_id: int, project_id: int | None = None) -> int:
    """The one open alert under this rule (about this project, for a default rule)."""
    alerts = store.list_alerts(conn, ADMIN, open_only=True, project_id=project_id)
    [alert] = [a for a in alerts if a.rule_id == rule_id]
    return alert.id


def _history(
    conn: psycopg.Connection,
    project: Project,
    serials: list[str],
    using: Callable[[int, int], bool],
) -> None:
    """24 days of a daily report from each device, and a use of the project's feature on the
    days using(week, device) says, the week counted back from this one (0: this week)."""
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    batch = []
    for number, serial in enumerate(serials):
        seq = 0
        for days_ago in range(24, 0, -1):
            at = today - timedelta(days=days_ago)
            monday = today.date() - timedelta(days=today.weekday())
            week = ((monday - at.date()).days - 1) // 7 + 1
            body: dict[str, object] = {
                "v": 1,
                "seq": (seq := seq + 1),
                "ts": at.isoformat(),
                "metrics": [{"name": "battery", "value": 90, "unit": "%"}],
            }
            batch.append(
                RawMessage(
                    device_topic(serial, MessageKind.TELEMETRY), json.dumps(body).encode(), at
                )
            )
            if using(week, number):
                use = {
                    "v": 1,
                    "seq": (seq := seq + 1),
                    "ts": (at + timedelta(minutes=1)).isoformat(),
                    "events": [{"feature": project.feature_key, "count": 1}],
                }
                batch.append(
                    RawMessage(
                        device_topic(serial, MessageKind.USAGE), json.dumps(use).encode(), at
                    )
                )
    with conn.transaction():
        result = store_batch(
            conn,
            batch,
            DeviceDirectory(),
            max_future_skew=timedelta(minutes=10),
            now=datetime.now(UTC),
            late_data_days=None,
        )
    assert result.quarantined == {} or not any(result.quarantined.values()), result


@pytest.mark.parametrize(
    ("devices", "before", "after", "fires"),
    [
        (20, 18, 2, True),  # 90 % → 10 %: a collapse, beyond both intervals
        (20, 12, 9, False),  # 60 % → 45 %: within the 20 points
        (4, 4, 0, False),  # a tiny pilot: too few devices to say
    ],
)
def test_a_collapse_of_weekly_adoption_is_a_pm_alert_with_its_evidence(
    settings: Settings,
    conn: psycopg.Connection,
    project: Project,
    unique: str,
    devices: int,
    before: int,
    after: int,
    fires: bool,
) -> None:
    serials = [
        c.serial
        for c in registry.provision_devices(
            conn, None, project.id, [(f"adopt-{unique}-{i}", "T1", "1.0") for i in range(devices)]
        )
    ]
    # week 2: the week before last, week 1: last week (both whole), week 0: this one
    _history(
        conn,
        project,
        serials,
        lambda week, n: (week == 2 and n < before) or (week == 1 and n < after) or week >= 3,
    )
    evaluate(conn, settings, datetime.now(UTC), frozenset({RuleKind.ADOPTION_DROP}))
    found = [
        a
        for a in store.list_alerts(conn, ADMIN, open_only=True, project_id=project.id)
        if a.kind == RuleKind.ADOPTION_DROP
    ]
    if not fires:
        assert found == []
        return
    [alert] = found
    assert alert.subject == f"feature:{project.id}:{project.feature_key}"
    earlier, last = alert.evidence["weeks"]
    assert (earlier["devices_using"], last["devices_using"]) == (before, after)
    assert last["adoption_high"] < earlier["adoption_low"]
    assert "90% → 10%" in alert.summary
    # a customer's viewer never sees it; a PM does
    viewer = Principal(
        kind="user", id=0, name="v", role=Role.VIEWER, customer_id=project.customer_id
    )
    assert store.list_alerts(conn, viewer, project_id=project.id) == []
    pm = Principal(kind="user", id=0, name="pm", role=Role.PM, customer_id=None)
    assert [a.id for a in store.list_alerts(conn, pm, project_id=project.id)] == [alert.id]


def test_a_webhook_to_a_private_address_is_refused_unless_allowed(
    settings: Settings,
    conn: psycopg.Connection,
    silent_to: Callable[[WebhookSink], store.AlertRule],
    webhook: WebhookSink,
) -> None:
    rule = silent_to(webhook)
    now = datetime.now(UTC)
    deliver_due(conn, settings.alerts, now)  # the default: private addresses refused
    [notification] = store.list_notifications(conn, alert_id=_open_alert(conn, rule.id))
    assert notification.state == "pending"
    assert "refused: 127.0.0.1 is a private or local address" in (notification.last_error or "")
    assert webhook.deliveries == []


def test_an_alert_follows_its_rule_across_an_override_and_closes_when_the_rule_goes_off(
    settings: Settings,
    conn: psycopg.Connection,
    project: Project,
    unique: str,
    webhook: WebhookSink,
) -> None:
    silent = frozenset({RuleKind.PROJECT_SILENT})
    default = _default_rule(conn, RuleKind.PROJECT_SILENT)
    _heard(conn, project.id, datetime.now(UTC) - timedelta(hours=2))
    now = datetime.now(UTC)
    evaluate(conn, settings, now, silent)
    first = _open_alert(conn, default.id, project.id)
    hook = store.create_channel(
        conn, ChannelCreate(name=f"own-{unique}", kind="webhook", target=webhook.url)
    )
    own = store.create_rule(
        conn,
        RuleCreate(
            kind="project_silent",
            project_id=project.id,
            params={"silent_s": 60},
            channels=[hook.id],
        ),
        ADMIN,
    )
    evaluate(conn, settings, now + timedelta(seconds=30), silent)
    assert _open_alert(conn, own.id) == first  # the same alert, now under the project's rule
    store.delete_rule(conn, own.id, ADMIN)
    evaluate(conn, settings, now + timedelta(seconds=60), silent)
    assert (
        _open_alert(conn, default.id, project.id) == first
    )  # its history kept, back under the default
    try:
        store.update_rule(conn, default.id, store.RuleUpdate(enabled=False), ADMIN)
        evaluate(conn, settings, now + timedelta(seconds=90), silent)
        closed = store.get_alert(conn, ADMIN, first)
        assert (closed.state, closed.resolution) == ("resolved", "rule off")
    finally:
        store.update_rule(conn, default.id, store.RuleUpdate(enabled=True), ADMIN)


def test_one_good_reading_in_a_bad_spell_does_not_resolve_an_alert(
    settings: Settings, conn: psycopg.Connection, project: Project
) -> None:
    silent = frozenset({RuleKind.PROJECT_SILENT})
    default = _default_rule(conn, RuleKind.PROJECT_SILENT)
    device = _heard(conn, project.id, datetime.now(UTC) - timedelta(hours=2))
    start = datetime.now(UTC)
    evaluate(conn, settings, start, silent)
    alert = _open_alert(conn, default.id, project.id)
    hold = timedelta(seconds=settings.alerts.clear_after_s)
    conn.execute("UPDATE device_state SET last_seen = %s WHERE device_id = %s", (start, device))
    evaluate(conn, settings, start + timedelta(seconds=1), silent)  # clear, but not for long
    assert store.get_alert(conn, ADMIN, alert).state == "firing"
    evaluate(conn, settings, start + hold / 2, silent)
    assert store.get_alert(conn, ADMIN, alert).state == "firing"
    evaluate(conn, settings, start + hold + timedelta(seconds=2), silent)
    resolved = store.get_alert(conn, ADMIN, alert)
    assert (resolved.state, resolved.resolution) == ("resolved", "cleared")
