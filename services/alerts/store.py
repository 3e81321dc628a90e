"""Reading and changing alerts, rules, channels and the notification outbox, for the API,
the pages and the CLI. Who sees what is decided here, from the caller's role and customer."""

from __future__ import annotations

import re
from datetime import datetime, time
from typing import Any, TypeVar

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from services.accounts.roles import Principal, Role
from services.alerts.enums import AlertState, ChannelKind, NotificationState
from services.alerts.rules import AUDIENCE, PER_PROJECT, Audience, RuleKind, parse_params
from services.core.db import translate_errors
from services.core.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)

T = TypeVar("T")
# The most a list returns at once.
MAX_LIMIT = 500


class Alert(BaseModel):
    id: int
    rule_id: int | None = Field(description="the rule it comes under (null: that rule is gone)")
    kind: RuleKind
    project_id: int | None
    project_name: str | None
    customer_id: int | None
    customer_name: str | None
    subject: str = Field(description="project:<id>, reason:<reason>, ingest or feature:<p>:<key>")
    state: AlertState
    summary: str
    evidence: dict[str, Any]
    fired_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolution: str | None = Field(
        description="cleared (stayed clear for the hold time), rule off or project ended"
    )
    updated_at: datetime


class AlertRule(BaseModel):
    id: int
    kind: RuleKind
    project_id: int | None = Field(description="null: the portfolio-wide default of its kind")
    params: dict[str, Any] = Field(description="as stored; defaults fill what is left out")
    effective_params: dict[str, Any] = Field(default_factory=dict)
    enabled: bool
    channels: list[int]
    updated_by: str | None
    updated_at: datetime

    @model_validator(mode="after")
    def _effective(self) -> AlertRule:
        self.effective_params = parse_params(self.kind, self.params).model_dump()
        return self


class RuleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: RuleKind
    project_id: int | None = Field(default=None, ge=1, description="null: portfolio-wide")
    params: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    channels: list[int] = Field(default_factory=list, max_length=20)

    @model_validator(mode="after")
    def _checked(self) -> RuleCreate:
        parse_params(self.kind, self.params)
        if self.project_id is not None and self.kind not in PER_PROJECT:
            raise ValueError(f"{self.kind} watches the whole ingest path: it has no project rule")
        return self


class RuleUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: dict[str, Any] | None = None
    enabled: bool | None = None
    channels: list[int] | None = Field(default=None, max_length=20)


_URL = TypeAdapter(AnyHttpUrl)
# ASCII addresses with a dotted domain: anything else would only ever end up dead
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_EMAIL = rf"[A-Za-z0-9.!#$%&'*+/=?^_`{{|}}~-]+@{_LABEL}(?:\.{_LABEL})+"


class ChannelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, pattern=r"^[\w.@ -]+$")
    kind: ChannelKind
    target: str = Field(
        min_length=1, max_length=2000, description="webhook URL, or comma-separated addresses"
    )
    secret: str | None = Field(
        default=None, min_length=16, max_length=200, description="webhook HMAC-SHA256 key"
    )
    quiet_start: time | None = Field(default=None, description="UTC; with quiet_end")
    quiet_end: time | None = None
    enabled: bool = True

    @model_validator(mode="after")
    def _checked(self) -> ChannelCreate:
        if (self.quiet_start is None) != (self.quiet_end is None):
            raise ValueError("quiet_start and quiet_end go together")
        for moment in (self.quiet_start, self.quiet_end):
            if moment is not None and moment.tzinfo is not None:
                raise ValueError("quiet hours are UTC times of day, without an offset")
        if self.quiet_start is not None and self.quiet_start == self.quiet_end:
            raise ValueError("quiet_start and quiet_end are the same time: no quiet hours")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in self.target):
            raise ValueError("target has control characters")
        if self.kind is ChannelKind.WEBHOOK:
            if any(ch.isspace() for ch in self.target):
                raise ValueError("a webhook URL has no spaces")
            # stored as parsed: what is sent to is what was checked
            self.target = str(_URL.validate_python(self.target))
        else:
            addresses = [a.strip() for a in self.target.split(",")]
            bad = [a for a in addresses if not re.fullmatch(_EMAIL, a)]
            if bad:
                raise ValueError(f"not an email address: {', '.join(bad)}")
            self.target = ", ".join(addresses)
            if self.secret is not None:
                raise ValueError("only a webhook channel has a secret")
        return self


class Channel(BaseModel):
    id: int
    name: str
    kind: ChannelKind
    target: str
    signed: bool = Field(description="a webhook whose requests carry an HMAC signature")
    quiet_start: time | None
    quiet_end: time | None
    enabled: bool
    created_at: datetime


class Notification(BaseModel):
    id: int
    alert_id: int
    event: str
    channel_id: int
    channel: str
    state: NotificationState
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None


ALERT_COLUMNS = """
SELECT a.id, a.rule_id, a.kind, a.project_id, p.name AS project_name, p.customer_id,
       c.name AS customer_name, a.subject, a.state, a.summary, a.evidence, a.fired_at,
       a.acknowledged_at, a.acknowledged_by, a.resolved_at, a.resolution, a.updated_at
FROM alerts a
LEFT JOIN projects p ON p.id = a.project_id
LEFT JOIN customers c ON c.id = p.customer_id
"""
# Visibility: the kinds the caller's role may see, and for a viewer only their customer's.
VISIBLE = """
WHERE a.kind = ANY(%(kinds)s)
  AND (%(customer)s::bigint IS NULL OR p.customer_id = %(customer)s)
"""
LIST_ALERTS = (
    ALERT_COLUMNS
    + VISIBLE
    + """
  AND (%(open)s::boolean IS NULL OR (a.state <> 'resolved') = %(open)s::boolean)
  AND (%(state)s::text IS NULL OR a.state = %(state)s)
  AND (%(project)s::bigint IS NULL OR a.project_id = %(project)s)
ORDER BY (a.state = 'resolved'), a.fired_at DESC, a.id DESC
LIMIT %(limit)s OFFSET %(offset)s
"""
)
ONE_ALERT = ALERT_COLUMNS + VISIBLE + " AND a.id = %(id)s"
COUNT_ALERTS = (
    "SELECT count(*)::int FROM alerts a LEFT JOIN projects p ON p.id = a.project_id"
    + VISIBLE
    + """
  AND (%(open)s::boolean IS NULL OR (a.state <> 'resolved') = %(open)s::boolean)
  AND (%(state)s::text IS NULL OR a.state = %(state)s)
  AND (%(project)s::bigint IS NULL OR a.project_id = %(project)s)
"""
)
COUNT_OPEN = (
    "SELECT count(*) FILTER (WHERE a.state = 'firing')::int, count(*)::int FROM alerts a "
    "LEFT JOIN projects p ON p.id = a.project_id" + VISIBLE + " AND a.state <> 'resolved'"
)
ACKNOWLEDGE = """
UPDATE alerts SET state = 'acknowledged', acknowledged_at = %(now)s, acknowledged_by = %(by)s,
       updated_at = %(now)s
WHERE id = %(id)s AND state = 'firing'
"""
# The devices an alert names that the caller may see, for links to their pages.
NAMED_DEVICES = """
SELECT d.serial, d.id FROM devices d JOIN projects p ON p.id = d.project_id
WHERE d.serial = ANY(%(serials)s)
  AND (%(customer)s::bigint IS NULL OR p.customer_id = %(customer)s)
"""
RULE_COLUMNS = (
    "SELECT id, kind, project_id, params, enabled, channels, updated_by, updated_at "
    "FROM alert_rules"
)
LIST_RULES = RULE_COLUMNS + " ORDER BY kind, project_id NULLS FIRST"
ONE_RULE = RULE_COLUMNS + " WHERE id = %(id)s"
CREATE_RULE = """
INSERT INTO alert_rules (kind, project_id, params, enabled, channels, updated_by)
VALUES (%(kind)s, %(project_id)s, %(params)s, %(enabled)s, %(channels)s, %(by)s)
RETURNING id
"""
UPDATE_RULE = """
UPDATE alert_rules SET params = coalesce(%(params)s, params),
       enabled = coalesce(%(enabled)s, enabled), channels = coalesce(%(channels)s, channels),
       updated_by = %(by)s, updated_at = now()
WHERE id = %(id)s
"""
DELETE_RULE = "DELETE FROM alert_rules WHERE id = %(id)s AND project_id IS NOT NULL"
KNOWN_CHANNELS = "SELECT id FROM alert_channels WHERE id = ANY(%(ids)s)"
CHANNEL_COLUMNS = (
    "SELECT id, name, kind, target, secret IS NOT NULL AS signed, quiet_start, quiet_end, "
    "enabled, created_at FROM alert_channels"
)
LIST_CHANNELS = CHANNEL_COLUMNS + " ORDER BY name"
ONE_CHANNEL = CHANNEL_COLUMNS + " WHERE id = %(id)s"
CREATE_CHANNEL = """
INSERT INTO alert_channels (name, kind, target, secret, quiet_start, quiet_end, enabled)
VALUES (%(name)s, %(kind)s, %(target)s, %(secret)s, %(quiet_start)s, %(quiet_end)s, %(enabled)s)
RETURNING id
"""
DELETE_CHANNEL = "DELETE FROM alert_channels WHERE id = %(id)s"
LIST_NOTIFICATIONS = """
SELECT n.id, n.alert_id, n.event, n.channel_id, c.name AS channel, n.state, n.attempts,
       n.next_attempt_at, n.last_error, n.created_at, n.sent_at
FROM alert_notifications n JOIN alert_channels c ON c.id = n.channel_id
WHERE (%(state)s::text IS NULL OR n.state = %(state)s)
  AND (%(alert)s::bigint IS NULL OR n.alert_id = %(alert)s)
ORDER BY n.created_at DESC, n.id DESC LIMIT %(limit)s
"""
RETRY = """
UPDATE alert_notifications SET state = 'pending', attempts = 0, next_attempt_at = now()
WHERE id = %(id)s AND state = 'dead'
"""

ROLE_AUDIENCES: dict[Role, frozenset[Audience]] = {
    Role.ADMIN: frozenset(Audience),
    Role.OPS: frozenset({Audience.PROJECT, Audience.OPS}),
    Role.PM: frozenset({Audience.PROJECT, Audience.PM}),
    Role.VIEWER: frozenset({Audience.PROJECT}),
}


def visible_kinds(caller: Principal) -> list[str]:
    audiences = ROLE_AUDIENCES[caller.role]
    return [kind.value for kind, audience in AUDIENCE.items() if audience in audiences]


def _scope(caller: Principal) -> dict[str, Any]:
    return {"kinds": visible_kinds(caller), "customer": caller.customer_scope}


def list_alerts(
    conn: psycopg.Connection,
    caller: Principal,
    *,
    open_only: bool | None = None,
    state: AlertState | None = None,
    project_id: int | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Alert]:
    params = {
        **_scope(caller),
        "open": open_only,
        "state": state,
        "project": project_id,
        "limit": min(limit, MAX_LIMIT),
        "offset": offset,
    }
    with conn.cursor(row_factory=class_row(Alert)) as cur:
        return cur.execute(LIST_ALERTS, params).fetchall()


def count_alerts(
    conn: psycopg.Connection,
    caller: Principal,
    *,
    open_only: bool | None = None,
    state: AlertState | None = None,
    project_id: int | None = None,
) -> int:
    """How many alerts list_alerts would give over all pages."""
    params = {**_scope(caller), "open": open_only, "state": state, "project": project_id}
    row = conn.execute(COUNT_ALERTS, params).fetchone()
    return row[0] if row else 0


def get_alert(conn: psycopg.Connection, caller: Principal, alert_id: int) -> Alert:
    with conn.cursor(row_factory=class_row(Alert)) as cur:
        alert = cur.execute(ONE_ALERT, {**_scope(caller), "id": alert_id}).fetchone()
    if alert is None:
        raise NotFoundError(f"alert {alert_id} not found")
    return alert


def open_counts(conn: psycopg.Connection, caller: Principal) -> tuple[int, int]:
    """(firing, firing or acknowledged) alerts the caller can see: the top bar's badge."""
    row = conn.execute(COUNT_OPEN, _scope(caller)).fetchone()
    return (row[0], row[1]) if row else (0, 0)


def acknowledge(conn: psycopg.Connection, caller: Principal, alert_id: int, now: datetime) -> Alert:
    """Firing → acknowledged, by the caller; an alert already acknowledged or resolved is a
    conflict (someone else got there first)."""
    alert = get_alert(conn, caller, alert_id)
    with conn.transaction():
        updated = conn.execute(ACKNOWLEDGE, {"id": alert_id, "now": now, "by": caller.name})
    if updated.rowcount == 0:
        raise ConflictError(f"alert {alert_id} is {alert.state}, not firing", field="state")
    return get_alert(conn, caller, alert_id)


def named_serials(alert: Alert) -> list[str]:
    """The device serials an alert's evidence lists (services/alerts/conditions.py: `silent`
    for silent devices, `devices` for offline or quarantined ones), in its order."""
    listed = alert.evidence.get("silent", alert.evidence.get("devices"))
    if not isinstance(listed, list):
        return []
    serials = (item.get("serial") if isinstance(item, dict) else item for item in listed)
    return [s for s in serials if isinstance(s, str)]


def device_ids(conn: psycopg.Connection, caller: Principal, serials: list[str]) -> dict[str, int]:
    """Each of these serials that is a device the caller may see, with its id."""
    if not serials:
        return {}
    params = {"serials": serials, "customer": caller.customer_scope}
    return dict(conn.execute(NAMED_DEVICES, params).fetchall())


def list_rules(conn: psycopg.Connection) -> list[AlertRule]:
    with conn.cursor(row_factory=class_row(AlertRule)) as cur:
        return cur.execute(LIST_RULES).fetchall()


def get_rule(conn: psycopg.Connection, rule_id: int) -> AlertRule:
    with conn.cursor(row_factory=class_row(AlertRule)) as cur:
        rule = cur.execute(ONE_RULE, {"id": rule_id}).fetchone()
    if rule is None:
        raise NotFoundError(f"alert rule {rule_id} not found")
    return rule


def _check_channels(conn: psycopg.Connection, channels: list[int] | None) -> None:
    if not channels:
        return
    known = {row[0] for row in conn.execute(KNOWN_CHANNELS, {"ids": channels})}
    unknown = sorted(set(channels) - known)
    if unknown:
        raise InvalidInputError(f"no such channel: {unknown}", field="channels")


def _may_route(caller: Principal, kind: RuleKind) -> None:
    """A rule's notifications carry its alerts' evidence: only someone who may see a kind's
    alerts may route or change its rules (ops do not get PM evidence by email)."""
    if AUDIENCE[kind] not in ROLE_AUDIENCES[caller.role]:
        raise PermissionDeniedError(
            f"{kind} alerts are for {AUDIENCE[kind]} staff: your role cannot change their rules"
        )


def create_rule(conn: psycopg.Connection, body: RuleCreate, caller: Principal) -> AlertRule:
    _may_route(caller, body.kind)
    _check_channels(conn, body.channels)
    params = {**body.model_dump(), "params": Jsonb(body.params), "by": caller.name}
    with translate_errors("alert rule"), conn.transaction():
        (rule_id,) = _returned(conn.execute(CREATE_RULE, params).fetchone())
    return get_rule(conn, rule_id)


def update_rule(
    conn: psycopg.Connection, rule_id: int, body: RuleUpdate, caller: Principal
) -> AlertRule:
    rule = get_rule(conn, rule_id)
    _may_route(caller, rule.kind)
    if body.params is not None:
        parse_params(rule.kind, body.params)
    _check_channels(conn, body.channels)
    params = {
        "id": rule_id,
        "params": Jsonb(body.params) if body.params is not None else None,
        "enabled": body.enabled,
        "channels": body.channels,
        "by": caller.name,
    }
    with conn.transaction():
        conn.execute(UPDATE_RULE, params)
    return get_rule(conn, rule_id)


def delete_rule(conn: psycopg.Connection, rule_id: int, caller: Principal) -> None:
    """A project's own rule goes (its alerts stay, under the default, which applies again);
    a default cannot be deleted, only disabled."""
    rule = get_rule(conn, rule_id)
    _may_route(caller, rule.kind)
    if rule.project_id is None:
        raise ConflictError(
            f"rule {rule_id} is the portfolio-wide default of {rule.kind}: disable it instead",
            field="project_id",
        )
    with conn.transaction():
        conn.execute(DELETE_RULE, {"id": rule_id})


def _returned(row: T | None) -> T:
    """The row an INSERT … RETURNING (or a read right after it) gives back."""
    if row is None:
        raise RuntimeError("the database returned no row for a write it accepted")
    return row


def list_channels(conn: psycopg.Connection) -> list[Channel]:
    with conn.cursor(row_factory=class_row(Channel)) as cur:
        return cur.execute(LIST_CHANNELS).fetchall()


def create_channel(conn: psycopg.Connection, body: ChannelCreate) -> Channel:
    with translate_errors("channel"), conn.transaction():
        (channel_id,) = _returned(conn.execute(CREATE_CHANNEL, body.model_dump()).fetchone())
    with conn.cursor(row_factory=class_row(Channel)) as cur:
        return _returned(cur.execute(ONE_CHANNEL, {"id": channel_id}).fetchone())


def delete_channel(conn: psycopg.Connection, channel_id: int) -> None:
    with conn.transaction():
        if conn.execute(DELETE_CHANNEL, {"id": channel_id}).rowcount == 0:
            raise NotFoundError(f"channel {channel_id} not found")


def list_notifications(
    conn: psycopg.Connection,
    state: NotificationState | None = None,
    alert_id: int | None = None,
    limit: int = 100,
) -> list[Notification]:
    params = {"state": state, "alert": alert_id, "limit": min(limit, MAX_LIMIT)}
    with conn.cursor(row_factory=class_row(Notification)) as cur:
        return cur.execute(LIST_NOTIFICATIONS, params).fetchall()


def retry_notification(conn: psycopg.Connection, notification_id: int) -> None:
    """A dead notification back in the queue, its attempts reset."""
    with conn.transaction():
        if conn.execute(RETRY, {"id": notification_id}).rowcount == 0:
            raise NotFoundError(f"no dead notification {notification_id}")
