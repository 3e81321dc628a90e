"""Deliver the outbox: webhooks (signed JSON) and email (SMTP), with retries and dead letters.

Each notification is claimed with FOR UPDATE SKIP LOCKED in its own short transaction, sent,
and marked sent, retried later (exponential backoff) or dead (after MAX_ATTEMPTS; listed by
`GET /alerts/notifications?state=dead`, re-queued by a retry). Delivery is at least once: a
process killed between a receiver's "200" and the commit sends that one notification again,
with the same `X-Fieldtrack-Delivery` id (webhooks) or Message-ID (email), so a receiver can
tell a repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import smtplib
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import psycopg
from psycopg.rows import class_row

from services.core.settings import AlertSettings

log = logging.getLogger(__name__)

# After this many failed attempts a notification is dead: kept, listed, never sent again
# unless someone re-queues it.
MAX_ATTEMPTS = 8
# Retries wait 15 s, 30 s, 1 min … capped at 30 min: a receiver down for an hour still gets
# the notification soon after it is back.
BACKOFF_BASE = timedelta(seconds=15)
BACKOFF_MAX = timedelta(minutes=30)
# A receiver that does not answer within this long counts as a failed attempt.
SEND_TIMEOUT_S = 10.0
# At most this many notifications per delivery pass: the evaluation loop is not held up.
PASS_LIMIT = 100
SIGNATURE_HEADER = "X-Fieldtrack-Signature"
# The dashboards' Alerts page; one alert's page is below it (the links in notifications).
ALERTS_PAGE = "/dashboards/alerts"

# A claimed notification is due again after this long if its sender died mid-send.
LEASE = timedelta(seconds=60)

DUE = """
SELECT n.id, n.event, n.attempts, c.id AS channel_id, c.name AS channel, c.kind, c.target,
       c.secret, c.quiet_start, c.quiet_end, a.id AS alert_id, a.kind AS alert_kind,
       a.subject, a.state, a.summary, a.evidence, a.project_id, p.name AS project_name,
       cu.name AS customer_name, a.fired_at, a.resolved_at, a.resolution
FROM alert_notifications n
JOIN alert_channels c ON c.id = n.channel_id
JOIN alerts a ON a.id = n.alert_id
LEFT JOIN projects p ON p.id = a.project_id
LEFT JOIN customers cu ON cu.id = p.customer_id
WHERE n.state = 'pending' AND n.next_attempt_at <= %(now)s
  -- a resolution waits for its alert's firing on that channel: never "resolved" first
  AND (n.event = 'fired' OR NOT EXISTS (
      SELECT 1 FROM alert_notifications f
      WHERE f.alert_id = n.alert_id AND f.channel_id = n.channel_id AND f.event = 'fired'
        AND f.state = 'pending'))
ORDER BY n.next_attempt_at, n.id
LIMIT 1
FOR UPDATE OF n SKIP LOCKED
"""
# A receiver that never heard of an alert is not told it resolved.
ORPHANED_RESOLUTIONS = """
UPDATE alert_notifications n SET state = 'dead', last_error = 'its firing notification is dead'
WHERE n.event = 'resolved' AND n.state = 'pending' AND EXISTS (
    SELECT 1 FROM alert_notifications f
    WHERE f.alert_id = n.alert_id AND f.channel_id = n.channel_id AND f.event = 'fired'
      AND f.state = 'dead')
"""
CLAIM = "UPDATE alert_notifications SET next_attempt_at = %(until)s WHERE id = %(id)s"
SENT = """
UPDATE alert_notifications SET state = 'sent', attempts = attempts + 1, sent_at = %(now)s,
       last_error = NULL
WHERE id = %(id)s
"""
FAILED = """
UPDATE alert_notifications
SET attempts = attempts + 1, last_error = %(error)s, next_attempt_at = %(next)s,
    state = CASE WHEN attempts + 1 >= %(max)s THEN 'dead' ELSE 'pending' END
WHERE id = %(id)s
RETURNING state
"""
HOLD = "UPDATE alert_notifications SET next_attempt_at = %(next)s WHERE id = %(id)s"


@dataclass(frozen=True)
class Due:
    id: int
    event: str
    attempts: int
    channel_id: int
    channel: str
    kind: str
    target: str
    secret: str | None
    quiet_start: time | None
    quiet_end: time | None
    alert_id: int
    alert_kind: str
    subject: str
    state: str
    summary: str
    evidence: dict[str, Any]
    project_id: int | None
    project_name: str | None
    customer_name: str | None
    fired_at: datetime
    resolved_at: datetime | None
    resolution: str | None


class DeliveryError(Exception):
    """A receiver refused or did not answer; the notification is retried."""


@dataclass(frozen=True)
class DeliveryPass:
    sent: int
    failed: int
    dead: int


def deliver_due(
    conn: psycopg.Connection, settings: AlertSettings, now: datetime | None = None
) -> DeliveryPass:
    """Send what is due, until none is or PASS_LIMIT. Each notification is claimed (a lease,
    committed) before it is sent and settled after, so no transaction or lock is held while a
    receiver answers. *now* fixes the clock (tests); by default each notification reads it."""
    sent = failed = dead = 0
    with conn.transaction():
        conn.execute(ORPHANED_RESOLUTIONS)
    for _ in range(PASS_LIMIT):
        at = now or datetime.now(UTC)
        with conn.transaction(), conn.cursor(row_factory=class_row(Due)) as cur:
            due = cur.execute(DUE, {"now": at}).fetchone()
            if due is None:
                break
            held = quiet_until(due.quiet_start, due.quiet_end, at)
            conn.execute(CLAIM, {"id": due.id, "until": held or at + LEASE})
        if held is not None:
            continue
        try:
            send(due, settings)
        except Exception as exc:
            wait = min(BACKOFF_BASE * 2**due.attempts, BACKOFF_MAX)
            error = str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
            params = {"id": due.id, "error": error[:500], "next": at + wait, "max": MAX_ATTEMPTS}
            with conn.transaction():
                state = conn.execute(FAILED, params).fetchone()
            log.warning("notification %s to %s failed: %s", due.id, due.channel, error)
            if state is not None and state[0] == "dead":
                dead += 1
            else:
                failed += 1
            continue
        with conn.transaction():
            conn.execute(SENT, {"id": due.id, "now": at})
        sent += 1
    return DeliveryPass(sent, failed, dead)


def quiet_until(start: time | None, end: time | None, now: datetime) -> datetime | None:
    """The end of the quiet hours (UTC) *now* falls in, or None outside them."""
    if start is None or end is None or start == end:
        return None
    clock = now.timetz().replace(tzinfo=None)
    inside = start <= clock < end if start < end else clock >= start or clock < end
    if not inside:
        return None
    until = now.replace(hour=end.hour, minute=end.minute, second=end.second, microsecond=0)
    return until if until > now else until + timedelta(days=1)


def payload(due: Due, settings: AlertSettings) -> dict[str, Any]:
    """What a receiver gets: the event and the alert with its evidence and a link."""
    return {
        "event": due.event,
        "delivery": due.id,
        "alert": {
            "id": due.alert_id,
            "kind": due.alert_kind,
            "subject": due.subject,
            "state": due.state,
            "summary": due.summary,
            "evidence": due.evidence,
            "project_id": due.project_id,
            "project": due.project_name,
            "customer": due.customer_name,
            "fired_at": due.fired_at.isoformat(),
            "resolved_at": due.resolved_at.isoformat() if due.resolved_at else None,
            "resolution": due.resolution,
            "url": f"{settings.public_url.rstrip('/')}{ALERTS_PAGE}/{due.alert_id}",
        },
    }


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>.<body>"): the timestamp is signed
    too, so a captured request cannot be replayed later under a fresh one."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def send(due: Due, settings: AlertSettings) -> None:
    if due.kind == "webhook":
        _post(due, settings)
    else:
        _mail(due, settings)


def _post(due: Due, settings: AlertSettings) -> None:
    _check_destination(due.target, settings)
    body = json.dumps(payload(due, settings), sort_keys=True).encode()
    timestamp = str(int(datetime.now(UTC).timestamp()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "fieldtrack-alerts",
        "X-Fieldtrack-Event": due.event,
        "X-Fieldtrack-Delivery": str(due.id),
        "X-Fieldtrack-Timestamp": timestamp,
    }
    if due.secret:
        headers[SIGNATURE_HEADER] = signature(due.secret, timestamp, body)
    try:
        # The answer's body is never read: only its status counts, and nothing a receiver
        # says is stored (a webhook must not become a way to read internal pages).
        with httpx.stream(
            "POST", due.target, content=body, headers=headers, timeout=SEND_TIMEOUT_S
        ) as response:
            status = response.status_code
    except httpx.HTTPError as exc:
        raise DeliveryError(type(exc).__name__) from exc
    if not 200 <= status < 300:
        raise DeliveryError(f"HTTP {status}")


def _check_destination(url: str, settings: AlertSettings) -> None:
    """Refuse a webhook whose host is (or resolves to) a loopback, private, link-local or
    otherwise non-public address, unless FIELDTRACK_ALERTS__WEBHOOK_ALLOW_PRIVATE: an ops
    user must not aim fieldtrack at the database, the metrics endpoints or a cloud's
    metadata service."""
    if settings.webhook_allow_private:
        return
    host = httpx.URL(url).host
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError as exc:
        raise DeliveryError(f"cannot resolve {host}") from exc
    private = sorted(a for a in addresses if not ipaddress.ip_address(a).is_global)
    if private:
        raise DeliveryError(
            f"refused: {host} is a private or local address ({', '.join(private)}); "
            "FIELDTRACK_ALERTS__WEBHOOK_ALLOW_PRIVATE=true allows it"
        )


def _one_line(text: str) -> str:
    """A header value: line breaks in names or summaries must not start a new header."""
    return " ".join(text.split())


def _mail(due: Due, settings: AlertSettings) -> None:
    if not settings.smtp_host:
        raise DeliveryError("no SMTP server configured (FIELDTRACK_ALERTS__SMTP_HOST)")
    message = EmailMessage()
    state = "FIRING"
    if due.event == "resolved":
        state = "RESOLVED" if due.resolution in (None, "cleared") else f"CLOSED ({due.resolution})"
    where = f"{due.customer_name} / {due.project_name}" if due.project_name else "fieldtrack"
    message["Subject"] = _one_line(f"[fieldtrack {state}] {where}: {due.summary}")[:250]
    message["From"] = settings.smtp_from
    message["To"] = due.target
    message["Message-ID"] = f"<alert-{due.alert_id}-{due.event}-{due.channel_id}@fieldtrack>"
    # for mail filters: what the alert is about, without parsing the subject line
    message["X-Fieldtrack-Alert"] = str(due.alert_id)
    message["X-Fieldtrack-Event"] = due.event
    if due.project_id is not None:
        message["X-Fieldtrack-Project"] = str(due.project_id)
    data = payload(due, settings)
    evidence = json.dumps(due.evidence, indent=2, sort_keys=True)
    message.set_content(
        f"{state}: {due.summary}\n\nsubject: {due.subject}\nfired: {data['alert']['fired_at']}\n"
        f"{'resolved: ' + data['alert']['resolved_at'] + chr(10) if due.resolved_at else ''}"
        f"\n{data['alert']['url']}\n\nevidence:\n{evidence}\n"
    )
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=SEND_TIMEOUT_S) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_username and password:
                smtp.login(settings.smtp_username, password)
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}"[:300]) from exc
