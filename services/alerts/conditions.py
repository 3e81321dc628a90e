"""What each rule kind finds wrong right now: the subjects in violation, with their evidence.

Read from device state, the rollups and the quarantine, bounded by time; never from the
raw hypertables except through the ingest-health reader. A subject is what one alert is
about: a project (its silent devices listed in the evidence, not one alert each), a
quarantine reason, the ingest path, or a project's feature.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from services.alerts.rules import (
    AdoptionDrop,
    CompletenessLow,
    DeviceSilent,
    DevicesOffline,
    IngestLag,
    ProjectSilent,
    QuarantineRate,
    RuleKind,
)
from services.analytics.adoption import project_adoption
from services.analytics.measures import project_measures
from services.core.settings import Settings
from services.core.windows import Window
from services.fleet.ingest_health import recent_ingest
from services.fleet.ingest_metrics import scrape

# A device's or project's usual interval is estimated from at least this many hours with
# reports in its last week; with less, only the rule's fixed bound applies.
USUAL_MIN_HOURS = 24
# A project is silent only after this many of its usual intervals (and silent_s) pass.
PROJECT_INTERVALS = 3
# An ingest whose metrics do not answer is tried once more, this patiently, before it is
# called unreachable: one slow scrape of a busy process is not an outage.
RESCRAPE_TIMEOUT_S = 3.0
# An alert names at most this many devices; the count says how many there are in all.
LISTED_DEVICES = 50
# Receive lag is judged over this recent span (as the ingest page's figures are).
LAG_SPAN = timedelta(minutes=5)
# Adoption is compared between the last two whole weeks: three weeks are read.
ADOPTION_SPAN = timedelta(days=21)


@dataclass(frozen=True)
class Violation:
    subject: str
    project_id: int | None
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """What every check may use: the connection, the time of this evaluation, settings."""

    conn: psycopg.Connection
    now: datetime
    settings: Settings


# Each device's usual interval, from its last week of reports: the larger of the mean gap
# (span ÷ messages) and the 90th percentile over its hours of 3600 s ÷ messages that hour,
# so a device whose day is busy (many uses) and night quiet (telemetry only) is judged by
# its quiet hours, not by its busy ones. Under USUAL_MIN_HOURS of history (the first hour's
# bucket would stretch the span): unknown, and only min_silence_s applies.
SILENT_DEVICES = """
SELECT d.project_id, d.serial, s.last_seen,
       CASE WHEN u.hours >= %(min_hours)s
            THEN greatest(extract(epoch FROM s.last_seen - u.first_hour)
                          / nullif(u.messages - 1, 0), u.p90_s) END AS usual_s
FROM devices d
JOIN device_state s ON s.device_id = d.id
JOIN projects p ON p.id = d.project_id
LEFT JOIN LATERAL (
    SELECT sum(h.messages) AS messages, min(h.hour) AS first_hour, count(*) AS hours,
           percentile_cont(0.9) WITHIN GROUP (ORDER BY 3600.0 / h.messages) AS p90_s
    FROM device_hourly h
    WHERE h.device_id = d.id AND h.hour > s.last_seen - interval '7 days'
      AND h.hour <= s.last_seen AND h.messages > 0
) u ON true
WHERE d.status = 'active' AND p.status <> 'ended' AND d.project_id = ANY(%(projects)s)
  AND s.last_seen IS NOT NULL AND s.last_seen < %(now)s - make_interval(secs => %(floor)s)
ORDER BY d.project_id, s.last_seen, d.serial
"""
# When a project was last heard from, and how often it is usually heard from: its last
# week's span over its messages (any device), so a small fleet of hourly sensors is not
# "silent" between two reports.
LAST_HEARD = """
SELECT p.id, max(s.last_seen) AS last_heard,
       (SELECT CASE WHEN count(*) >= %(min_hours)s
                    THEN extract(epoch FROM max(s.last_seen) - min(h.hour))
                         / nullif(sum(h.messages) - 1, 0) END
        FROM device_hourly h
        WHERE h.project_id = p.id AND h.hour > max(s.last_seen) - interval '7 days'
          AND h.hour <= max(s.last_seen)) AS usual_s
FROM projects p
JOIN devices d ON d.project_id = p.id AND d.status = 'active'
JOIN device_state s ON s.device_id = d.id
WHERE p.status <> 'ended' AND p.id = ANY(%(projects)s)
GROUP BY p.id HAVING max(s.last_seen) IS NOT NULL
"""
# Offline as the fleet pages count it: its last status said offline, or it sent data but
# no status; never-seen devices are left out.
OFFLINE = """
SELECT d.project_id,
       count(*) FILTER (WHERE s.online)::int AS online,
       count(*) FILTER (WHERE s.online IS FALSE
                        OR (s.online IS NULL AND s.last_seen IS NOT NULL))::int AS offline,
       array_agg(d.serial ORDER BY d.serial) FILTER (WHERE s.online IS FALSE
                        OR (s.online IS NULL AND s.last_seen IS NOT NULL)) AS serials
FROM devices d JOIN device_state s ON s.device_id = d.id JOIN projects p ON p.id = d.project_id
WHERE d.status = 'active' AND p.status <> 'ended' AND d.project_id = ANY(%(projects)s)
GROUP BY d.project_id
"""
COMPLETENESS = """
SELECT h.project_id, sum(h.messages)::bigint, greatest(sum(h.missing), 0)::bigint
FROM device_hourly h JOIN projects p ON p.id = h.project_id
WHERE p.status <> 'ended' AND h.project_id = %(project)s
  AND h.hour >= time_bucket('1 hour', %(since)s::timestamptz) AND h.hour < %(now)s
GROUP BY h.project_id
"""
QUARANTINED = """
SELECT reason, count(*)::int FROM quarantine
WHERE received_at >= %(since)s AND received_at < %(now)s
GROUP BY reason
"""
QUARANTINE_BY_DEVICE = """
SELECT coalesce(device_serial, '(unknown)'), count(*)::int FROM quarantine
WHERE received_at >= %(since)s AND received_at < %(now)s AND reason = %(reason)s
GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %(limit)s
"""


def _project_subject(project_id: int) -> str:
    return f"project:{project_id}"


def device_silent(ctx: Context, rules: Mapping[int, DeviceSilent]) -> list[Violation]:
    floor = min(r.min_silence_s for r in rules.values())
    params = {"projects": list(rules), "now": ctx.now, "floor": floor, "min_hours": USUAL_MIN_HOURS}
    silent: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for project, serial, last_seen, usual_s in ctx.conn.execute(SILENT_DEVICES, params):
        rule = rules[project]
        quiet = (ctx.now - last_seen).total_seconds()
        bound = max(rule.min_silence_s, rule.intervals * usual_s if usual_s else 0.0)
        if quiet > bound:
            # nothing that grows by itself (a silence in seconds): evidence changes only
            # when the devices do, so an open alert is not rewritten at every evaluation
            silent[project].append({"serial": serial, "last_seen": last_seen.isoformat()})
    return [
        Violation(
            _project_subject(project),
            project,
            f"{len(devices)} device{'s' if len(devices) > 1 else ''} silent longer than "
            f"{rules[project].intervals:g}× their usual reporting interval",
            {"devices": len(devices), "silent": devices[:LISTED_DEVICES]},
        )
        for project, devices in sorted(silent.items())
    ]


def project_silent(ctx: Context, rules: Mapping[int, ProjectSilent]) -> list[Violation]:
    out = []
    params = {"projects": list(rules), "min_hours": USUAL_MIN_HOURS}
    for project, last_heard, usual_s in ctx.conn.execute(LAST_HEARD, params):
        quiet = (ctx.now - last_heard).total_seconds()
        bound = max(rules[project].silent_s, PROJECT_INTERVALS * (usual_s or 0.0))
        if quiet > bound:
            out.append(
                Violation(
                    _project_subject(project),
                    project,
                    f"no message from the project's devices since {last_heard:%Y-%m-%d %H:%M} UTC",
                    {"last_message": last_heard.isoformat()},
                )
            )
    return sorted(out, key=lambda v: v.subject)


def devices_offline(ctx: Context, rules: Mapping[int, DevicesOffline]) -> list[Violation]:
    out = []
    for project, online, offline, serials in ctx.conn.execute(OFFLINE, {"projects": list(rules)}):
        rule, seen = rules[project], online + offline
        if seen >= rule.min_devices and offline / seen > rule.share:
            out.append(
                Violation(
                    _project_subject(project),
                    project,
                    f"{offline} of {seen} devices offline ({offline / seen:.0%})",
                    {"online": online, "offline": offline, "devices": serials[:LISTED_DEVICES]},
                )
            )
    return sorted(out, key=lambda v: v.subject)


def completeness_low(ctx: Context, rules: Mapping[int, CompletenessLow]) -> list[Violation]:
    out = []
    for project, rule in sorted(rules.items()):
        since = ctx.now - timedelta(seconds=rule.window_s)
        row = ctx.conn.execute(
            COMPLETENESS, {"project": project, "since": since, "now": ctx.now}
        ).fetchone()
        if row is None:
            continue
        _, received, missing = row
        expected = received + missing
        if expected >= rule.min_messages and received / expected < rule.below:
            out.append(
                Violation(
                    _project_subject(project),
                    project,
                    f"completeness {received / expected:.1%} over the last "
                    f"{_duration(rule.window_s)}: {missing} of {expected} messages missing",
                    {"received": received, "missing": missing, "since": since.isoformat()},
                )
            )
    return out


def quarantine_rate(ctx: Context, rule: QuarantineRate) -> list[Violation]:
    since = ctx.now - timedelta(seconds=rule.window_s)
    params: dict[str, Any] = {"since": since, "now": ctx.now, "limit": LISTED_DEVICES}
    out = []
    for reason, count in ctx.conn.execute(QUARANTINED, params).fetchall():
        rate = count / (rule.window_s / 60)
        if rate > rule.per_minute:
            devices = ctx.conn.execute(QUARANTINE_BY_DEVICE, {**params, "reason": reason})
            listed = [{"serial": serial, "messages": n} for serial, n in devices]
            names = ", ".join(d["serial"] for d in listed[:3])
            out.append(
                Violation(
                    f"reason:{reason}",
                    None,
                    f"{count} messages quarantined as {reason} in {_duration(rule.window_s)} "
                    f"({rate:.1f}/min), from {names}",
                    {"reason": reason, "messages": count, "per_minute": rate, "devices": listed},
                )
            )
    return sorted(out, key=lambda v: v.subject)


def ingest_lag(ctx: Context, rule: IngestLag) -> list[Violation]:
    metrics = scrape(ctx.settings)
    if metrics.url is not None and not metrics.reachable:
        metrics = scrape(ctx.settings, timeout=RESCRAPE_TIMEOUT_S)
    problems: list[str] = []
    evidence: dict[str, Any] = {"metrics_url": metrics.url}
    if metrics.url is not None and not metrics.reachable:
        problems.append(f"ingest is unreachable ({metrics.error})")
    if metrics.writer_alive is False:
        problems.append("ingest's writer has stopped")
    if metrics.queue_depth is not None:
        evidence["queue"] = metrics.queue_depth
        if metrics.queue_depth > rule.queue:
            problems.append(f"ingest's queue holds {metrics.queue_depth:.0f} messages")
    recent = recent_ingest(ctx.conn, ctx.now - LAG_SPAN, ctx.now)
    evidence["lag_p95_s"] = recent.lag_p95_seconds
    if recent.lag_p95_seconds is not None and recent.lag_p95_seconds > rule.lag_s:
        problems.append(f"live receive lag p95 {recent.lag_p95_seconds:.0f} s")
    if not problems:
        return []
    return [Violation("ingest", None, "; ".join(problems), evidence)]


def adoption_drop(ctx: Context, rules: Mapping[int, AdoptionDrop]) -> list[Violation]:
    out = []
    window = Window(ctx.now - ADOPTION_SPAN, ctx.now)
    for project, rule in sorted(rules.items()):
        measures = project_measures(ctx.conn, project, window, ctx.settings.analytics)
        delivered = [f for f in measures.features if f.delivery_status == "delivered"]
        for feature in project_adoption(ctx.conn, project, window, delivered).features:
            # whole weeks, over before today (this week is never compared, even on a Sunday)
            whole = [
                w
                for w in feature.weekly
                if w.days == 7 and w.week + timedelta(days=7) <= ctx.now.date()
            ]
            if len(whole) < 2:  # the last two weeks
                continue
            before, last = whole[-2], whole[-1]
            points = (before.adoption - last.adoption) * 100
            if (
                min(before.devices_reporting, last.devices_reporting) >= rule.min_devices
                and points > rule.points
                and last.adoption_high < before.adoption_low  # beyond both intervals
            ):
                out.append(
                    Violation(
                        f"feature:{project}:{feature.feature_key}",
                        project,
                        f"{feature.feature_key}: weekly adoption {before.adoption:.0%} → "
                        f"{last.adoption:.0%} (−{points:.0f} points)",
                        {
                            "feature": feature.feature_key,
                            "weeks": [w.model_dump(mode="json") for w in (before, last)],
                        },
                    )
                )
    return out


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = round(seconds / 3600)
    return f"{hours} h" if hours < 48 else f"{round(hours / 24)} days"


PerProject = Callable[[Context, Mapping[int, Any]], list[Violation]]
Portfolio = Callable[[Context, Any], list[Violation]]
PER_PROJECT_CHECKS: dict[RuleKind, PerProject] = {
    RuleKind.DEVICE_SILENT: device_silent,
    RuleKind.PROJECT_SILENT: project_silent,
    RuleKind.DEVICES_OFFLINE: devices_offline,
    RuleKind.COMPLETENESS_LOW: completeness_low,
    RuleKind.ADOPTION_DROP: adoption_drop,
}
PORTFOLIO_CHECKS: dict[RuleKind, Portfolio] = {
    RuleKind.QUARANTINE_RATE: quarantine_rate,
    RuleKind.INGEST_LAG: ingest_lag,
}
