"""One evaluation: every enabled rule checked, alerts opened, updated and resolved, and the
notifications they owe written to the outbox — all in one transaction.

Restart-safe by construction: the state is the database's. An alert is opened with
INSERT … ON CONFLICT on the one-open-alert index, resolved only while open, and each
transition's notifications are unique per alert × event × channel; an evaluation that dies
half-way commits nothing, and the next one does it all. A transaction-level advisory lock
lets one evaluator at a time decide, whatever runs beside it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from services.alerts.conditions import PER_PROJECT_CHECKS, PORTFOLIO_CHECKS, Context, Violation
from services.alerts.rules import RuleKind, parse_params
from services.core.settings import Settings

ALL_KINDS = frozenset(RuleKind)
# pg_advisory_xact_lock key: "alerts" in ASCII, one evaluation at a time across processes.
EVALUATION_LOCK = 0x616C65727473

RULES = """
SELECT id, kind, project_id, params, enabled, channels FROM alert_rules ORDER BY id
"""
LIVE_PROJECTS = "SELECT id FROM projects WHERE status <> 'ended' ORDER BY id"
OPEN_ALERTS = """
SELECT id, rule_id, subject FROM alerts WHERE state <> 'resolved' AND kind = ANY(%(kinds)s)
FOR UPDATE
"""
OPEN_ALERT = """
INSERT INTO alerts (rule_id, kind, project_id, subject, state, summary, evidence, fired_at,
                    updated_at)
VALUES (%(rule)s, %(kind)s, %(project)s, %(subject)s, 'firing', %(summary)s, %(evidence)s,
        %(now)s, %(now)s)
ON CONFLICT (rule_id, subject) WHERE state <> 'resolved' DO NOTHING
RETURNING id
"""
UPDATE_EVIDENCE = """
UPDATE alerts SET summary = %(summary)s, evidence = %(evidence)s, updated_at = %(now)s
WHERE id = %(id)s AND (summary <> %(summary)s OR evidence <> %(evidence)s)
"""
RESOLVE = """
UPDATE alerts SET state = 'resolved', resolved_at = %(now)s, updated_at = %(now)s
WHERE id = %(id)s AND state <> 'resolved'
RETURNING rule_id
"""
# Only channels still enabled; quiet hours are applied when the notification is delivered.
OWE = """
INSERT INTO alert_notifications (alert_id, event, channel_id, next_attempt_at, created_at)
SELECT %(alert)s, %(event)s, c.id, %(now)s, %(now)s FROM alert_channels c
WHERE c.id = ANY(%(channels)s) AND c.enabled
ON CONFLICT (alert_id, event, channel_id) DO NOTHING
"""


@dataclass(frozen=True)
class Rule:
    id: int
    kind: RuleKind
    project_id: int | None
    params: Any
    enabled: bool
    channels: list[int]


@dataclass(frozen=True)
class Evaluation:
    fired: int
    resolved: int
    open: int


def load_rules(conn: psycopg.Connection) -> list[Rule]:
    """Every rule, parameters parsed (a rule stored with bad parameters is a bug: it raises)."""
    return [
        Rule(id_, RuleKind(kind), project, parse_params(RuleKind(kind), params), on, channels)
        for id_, kind, project, params, on, channels in conn.execute(RULES)
    ]


def effective_rules(
    rules: list[Rule], projects: list[int], kinds: frozenset[RuleKind] = ALL_KINDS
) -> tuple[dict[RuleKind, dict[int, Rule]], dict[RuleKind, Rule]]:
    """Per-project kinds: each live project's own rule, else the default; portfolio kinds:
    the default. Disabled rules are left out (a project's disabled rule silences the default
    for that project)."""
    defaults = {r.kind: r for r in rules if r.project_id is None}
    own = {(r.kind, r.project_id): r for r in rules if r.project_id is not None}
    per_project: dict[RuleKind, dict[int, Rule]] = defaultdict(dict)
    for kind in PER_PROJECT_CHECKS.keys() & kinds:
        for project in projects:
            rule = own.get((kind, project), defaults.get(kind))
            if rule is not None and rule.enabled:
                per_project[kind][project] = rule
    portfolio = {
        k: r for k in PORTFOLIO_CHECKS.keys() & kinds if (r := defaults.get(k)) and r.enabled
    }
    return per_project, portfolio


def violations(
    ctx: Context, rules: list[Rule], projects: list[int], kinds: frozenset[RuleKind] = ALL_KINDS
) -> list[tuple[Rule, Violation]]:
    """Every (rule, violation) of these kinds found now."""
    per_project, portfolio = effective_rules(rules, projects, kinds)
    found: list[tuple[Rule, Violation]] = []
    for kind, by_project in per_project.items():
        params = {project: rule.params for project, rule in by_project.items()}
        for violation in PER_PROJECT_CHECKS[kind](ctx, params):
            found.append((by_project[violation.project_id or 0], violation))
    for kind, rule in portfolio.items():
        found.extend((rule, v) for v in PORTFOLIO_CHECKS[kind](ctx, rule.params))
    return found


def evaluate(
    conn: psycopg.Connection,
    settings: Settings,
    now: datetime,
    kinds: frozenset[RuleKind] = ALL_KINDS,
) -> Evaluation:
    """One evaluation of these kinds at *now*, committed (or nothing, if it fails). Alerts of
    other kinds are left as they are."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (EVALUATION_LOCK,))
        rules = load_rules(conn)
        by_id = {r.id: r for r in rules}
        projects = [row[0] for row in conn.execute(LIVE_PROJECTS)]
        found = violations(Context(conn, now, settings), rules, projects, kinds)
        current = {(rule.id, v.subject): (rule, v) for rule, v in found}
        fired = resolved = 0
        open_alerts = {
            (rule_id, subject): id_
            for id_, rule_id, subject in conn.execute(
                OPEN_ALERTS, {"kinds": [k.value for k in kinds]}
            )
        }
        for key, alert_id in open_alerts.items():
            if key in current:
                _, v = current[key]
                conn.execute(
                    UPDATE_EVIDENCE,
                    {
                        "id": alert_id,
                        "summary": v.summary,
                        "evidence": Jsonb(v.evidence),
                        "now": now,
                    },
                )
                continue
            row = conn.execute(RESOLVE, {"id": alert_id, "now": now}).fetchone()
            if row is not None:
                resolved += 1
                rule = by_id.get(row[0])
                _owe(conn, alert_id, "resolved", rule.channels if rule else [], now)
        for key, (rule, v) in current.items():
            if key in open_alerts:
                continue
            row = conn.execute(
                OPEN_ALERT,
                {
                    "rule": rule.id,
                    "kind": rule.kind,
                    "project": v.project_id,
                    "subject": v.subject,
                    "summary": v.summary,
                    "evidence": Jsonb(v.evidence),
                    "now": now,
                },
            ).fetchone()
            if row is not None:
                fired += 1
                _owe(conn, row[0], "fired", rule.channels, now)
        return Evaluation(fired, resolved, len(current))


def _owe(
    conn: psycopg.Connection, alert_id: int, event: str, channels: list[int], now: datetime
) -> None:
    if channels:
        conn.execute(OWE, {"alert": alert_id, "event": event, "channels": channels, "now": now})
