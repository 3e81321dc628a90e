"""One evaluation: every enabled rule checked, then alerts opened, updated and resolved,
and the notifications they owe written to the outbox — in one transaction.

Restart-safe by construction: the state is the database's. An alert is opened with
INSERT … ON CONFLICT on the one-open-alert index (kind × subject), resolved only while open,
and each transition's notifications are unique per alert × event × channel; an evaluation
that dies half-way commits nothing, and the next one does it all. The conditions are read
before the transaction; the decisions are taken under a transaction-level advisory lock that
a second evaluator does not wait for (it skips its pass: its reading would be older).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
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
TRY_LOCK = "SELECT pg_try_advisory_xact_lock(%(key)s)"
LIVE_PROJECTS = "SELECT id FROM projects WHERE status <> 'ended' ORDER BY id"
OPEN_ALERTS = """
SELECT id, kind, subject, project_id, clear_since FROM alerts
WHERE state <> 'resolved' AND kind = ANY(%(kinds)s)
FOR UPDATE
"""
OPEN_ALERT = """
INSERT INTO alerts (rule_id, kind, project_id, subject, state, summary, evidence, fired_at,
                    updated_at)
VALUES (%(rule)s, %(kind)s, %(project)s, %(subject)s, 'firing', %(summary)s, %(evidence)s,
        %(now)s, %(now)s)
ON CONFLICT (kind, subject) WHERE state <> 'resolved' DO NOTHING
RETURNING id
"""
# Still holding: follow the evidence (and the rule it now comes under); clear no longer.
HOLDING = """
UPDATE alerts SET summary = %(summary)s, evidence = %(evidence)s, rule_id = %(rule)s,
       clear_since = NULL, updated_at = %(now)s
WHERE id = %(id)s AND (summary <> %(summary)s OR evidence <> %(evidence)s
                       OR rule_id IS DISTINCT FROM %(rule)s OR clear_since IS NOT NULL)
"""
CLEARING = "UPDATE alerts SET clear_since = %(now)s WHERE id = %(id)s AND clear_since IS NULL"
RESOLVE = """
UPDATE alerts SET state = 'resolved', resolved_at = %(now)s, resolution = %(why)s,
       updated_at = %(now)s
WHERE id = %(id)s AND state <> 'resolved'
RETURNING id
"""
# Only channels still enabled; quiet hours are applied when the notification is delivered.
OWE_FIRED = """
INSERT INTO alert_notifications (alert_id, event, channel_id, next_attempt_at, created_at)
SELECT %(alert)s, 'fired', c.id, %(now)s, %(now)s FROM alert_channels c
WHERE c.id = ANY(%(channels)s) AND c.enabled
ON CONFLICT (alert_id, event, channel_id) DO NOTHING
"""
# A resolution goes where the firing went (whatever the rule routes to now).
OWE_RESOLVED = """
INSERT INTO alert_notifications (alert_id, event, channel_id, next_attempt_at, created_at)
SELECT f.alert_id, 'resolved', f.channel_id, %(now)s, %(now)s
FROM alert_notifications f JOIN alert_channels c ON c.id = f.channel_id AND c.enabled
WHERE f.alert_id = %(alert)s AND f.event = 'fired'
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
    skipped: bool = False  # another evaluator held the lock: nothing decided


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
    """One evaluation of these kinds at *now*, committed (or nothing, if it fails); alerts of
    other kinds are left as they are. Skipped (Evaluation.skipped) while another runs."""
    rules = load_rules(conn)
    projects = [row[0] for row in conn.execute(LIVE_PROJECTS)]
    found = violations(Context(conn, now, settings), rules, projects, kinds)
    per_project, portfolio = effective_rules(rules, projects, kinds)
    watched = {(k, p) for k, by_project in per_project.items() for p in by_project}
    current = {(rule.kind, v.subject): (rule, v) for rule, v in found}
    clear_for = timedelta(seconds=settings.alerts.clear_after_s)
    fired = resolved = 0
    with conn.transaction():
        locked = conn.execute(TRY_LOCK, {"key": EVALUATION_LOCK}).fetchone()
        if not (locked and locked[0]):
            return Evaluation(0, 0, 0, skipped=True)
        open_alerts = conn.execute(OPEN_ALERTS, {"kinds": [k.value for k in kinds]}).fetchall()
        for alert_id, kind_name, subject, project, clear_since in open_alerts:
            held = current.get((kind_name, subject))
            if held is not None:
                rule, v = held
                params = {"id": alert_id, "summary": v.summary, "rule": rule.id, "now": now}
                conn.execute(HOLDING, {**params, "evidence": Jsonb(v.evidence)})
                continue
            kind = RuleKind(kind_name)
            if kind in PORTFOLIO_CHECKS:
                why = None if kind in portfolio else "rule off"
            elif project not in projects:
                why = "project ended"
            else:
                why = None if (kind, project) in watched else "rule off"
            if why is None:  # the condition cleared: resolve once it has stayed clear
                if clear_since is None:
                    conn.execute(CLEARING, {"id": alert_id, "now": now})
                    continue
                if now - clear_since < clear_for:
                    continue
                why = "cleared"
            if conn.execute(RESOLVE, {"id": alert_id, "now": now, "why": why}).fetchone():
                resolved += 1
                conn.execute(OWE_RESOLVED, {"alert": alert_id, "now": now})
        already = {(kind, subject) for _, kind, subject, _, _ in open_alerts}
        for key, (rule, v) in current.items():
            if key in already:
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
                if rule.channels:
                    params = {"alert": row[0], "channels": rule.channels, "now": now}
                    conn.execute(OWE_FIRED, params)
    return Evaluation(fired, resolved, len(current))
