"""`fieldtrack alerts run`: evaluate every rule, then deliver what is owed, every interval.

A failed evaluation or delivery pass is logged and counted, and the next interval tries
again: the loop never dies of one bad pass. Several runners may run (for availability):
the evaluation lock and SKIP LOCKED delivery keep them from doing anything twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
from prometheus_client import Counter, Gauge

from services.alerts.engine import ALL_KINDS, evaluate
from services.alerts.notify import SEND_TIMEOUT_S, deliver_due
from services.alerts.rules import RuleKind
from services.core.settings import Settings

log = logging.getLogger(__name__)

# Kinds checked less often than every pass: weekly adoption changes once a week, and its
# check reads every project's analytics.
CADENCE: dict[RuleKind, timedelta] = {RuleKind.ADOPTION_DROP: timedelta(hours=1)}

# Notifications go out this often at the least (a short eval interval makes it shorter).
DELIVERY_EVERY_S = 5.0

OPEN_BY_KIND = """
SELECT kind, state, count(*)::int FROM alerts WHERE state <> 'resolved' GROUP BY 1, 2
"""

ALERTS_OPEN = Gauge("fieldtrack_alerts_open", "alerts firing or acknowledged", ["kind", "state"])
ALERTS_FIRED = Counter("fieldtrack_alerts_fired_total", "alerts opened by this process")
ALERTS_RESOLVED = Counter("fieldtrack_alerts_resolved_total", "alerts resolved by this process")
NOTIFICATIONS = Counter(
    "fieldtrack_alert_notifications_total", "notification attempts by outcome", ["outcome"]
)
EVALUATIONS = Counter("fieldtrack_alerts_evaluations_total", "evaluations, by outcome", ["outcome"])
LAST_EVALUATION = Gauge(
    "fieldtrack_alerts_last_evaluation_timestamp_seconds", "when the last evaluation committed"
)


class Schedule:
    """Which kinds are due: every kind on a process's first pass, then by CADENCE."""

    def __init__(self) -> None:
        self._last: dict[RuleKind, datetime] = {}

    def due(self, now: datetime) -> frozenset[RuleKind]:
        return frozenset(
            kind
            for kind in ALL_KINDS
            if kind not in CADENCE
            or kind not in self._last
            or now - self._last[kind] >= CADENCE[kind]
        )

    def done(self, kinds: frozenset[RuleKind], now: datetime) -> None:
        self._last.update(dict.fromkeys(kinds, now))


def evaluate_once(
    conn: psycopg.Connection,
    settings: Settings,
    now: datetime | None = None,
    schedule: Schedule | None = None,
) -> None:
    """One evaluation of the kinds due; a failure is logged and counted, never raised (the
    next interval tries again: the loop never dies of one bad pass)."""
    at = now or datetime.now(UTC)
    kinds = schedule.due(at) if schedule else ALL_KINDS
    try:
        result = evaluate(conn, settings, at, kinds)
        _update_open(conn)
    except Exception:
        EVALUATIONS.labels("failed").inc()
        log.exception("alert evaluation failed; the next interval tries again")
        return
    if result.skipped:  # another evaluator is deciding: its turn, not a failure
        EVALUATIONS.labels("skipped").inc()
        return
    EVALUATIONS.labels("ok").inc()
    if schedule:
        schedule.done(kinds, at)
    ALERTS_FIRED.inc(result.fired)
    ALERTS_RESOLVED.inc(result.resolved)
    LAST_EVALUATION.set(at.timestamp())
    if result.fired or result.resolved:
        log.info(
            "alerts: %d fired, %d resolved, %d open", result.fired, result.resolved, result.open
        )


def deliver_once(conn: psycopg.Connection, settings: Settings, now: datetime | None = None) -> None:
    """One delivery pass; a failure is logged, never raised."""
    try:
        delivered = deliver_due(conn, settings.alerts, now)
    except Exception:
        log.exception("notification delivery failed; the next pass tries again")
        return
    NOTIFICATIONS.labels("sent").inc(delivered.sent)
    NOTIFICATIONS.labels("failed").inc(delivered.failed)
    NOTIFICATIONS.labels("dead").inc(delivered.dead)


def run_once(conn: psycopg.Connection, settings: Settings, now: datetime | None = None) -> None:
    """One evaluation, then one delivery pass (`fieldtrack alerts evaluate`, tests)."""
    evaluate_once(conn, settings, now)
    deliver_once(conn, settings, now)


def _update_open(conn: psycopg.Connection) -> None:
    ALERTS_OPEN.clear()
    for kind, state, count in conn.execute(OPEN_BY_KIND):
        ALERTS_OPEN.labels(kind, state).set(count)


def run(settings: Settings, stop: threading.Event) -> None:
    """Until *stop* is set: an evaluation every eval_interval_s, and beside it, on its own
    thread and connection, delivery — a slow receiver never holds up the evaluations."""
    interval = settings.alerts.eval_interval_s
    schedule = Schedule()
    sender = threading.Thread(
        target=_loop,
        args=(settings, stop, min(interval, DELIVERY_EVERY_S), deliver_once),
        name="alerts-delivery",
        daemon=True,
    )
    sender.start()
    _loop(settings, stop, interval, lambda conn, s: evaluate_once(conn, s, schedule=schedule))
    sender.join(SEND_TIMEOUT_S + 1)


def _loop(
    settings: Settings,
    stop: threading.Event,
    every: float,
    step: Callable[[psycopg.Connection, Settings], None],
) -> None:
    """*step* every *every* seconds on a connection of its own, reconnecting after a lost
    database."""
    while not stop.is_set():
        try:
            with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
                while not stop.is_set():
                    step(conn, settings)
                    if conn.broken:
                        break
                    stop.wait(every)
        except psycopg.OperationalError as exc:
            log.warning("database unavailable (%s); retrying in %s s", exc, every)
            stop.wait(every)
