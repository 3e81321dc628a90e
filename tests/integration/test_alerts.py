"""Alerts end to end: real devices through the broker and ingest, `fieldtrack alerts run` as a
real process, notifications into a real SMTP server and a real webhook receiver."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from device_sim.device import SimDevice
from services.accounts.roles import Principal, Role
from services.alerts import store
from services.alerts.notify import SIGNATURE_HEADER
from services.alerts.store import ChannelCreate, RuleCreate
from services.core.broker_admin import BrokerAdmin
from services.core.settings import Settings
from services.ingest.service import IngestService
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
        "test",
    )
    credentials = registry.provision_devices(
        conn, broker_admin, project.id, [(f"alert-{unique}-{i}", "T1", "1.0") for i in range(3)]
    )

    def connect() -> list[SimDevice]:
        devices = [
            SimDevice(c.serial, c.password, settings.mqtt_host, settings.mqtt_port)
            for c in credentials
        ]
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
        store.update_rule(conn, rule.id, store.RuleUpdate(enabled=False), "test")
    opened = store.list_alerts(conn, ADMIN, project_id=project.id)
    assert [(a.kind, a.state) for a in opened if a.rule_id == rule.id] == [
        ("project_silent", "resolved")
    ], alerts.log()
