"""Delivered vs. used, per project and feature over a window — read from the rollups only
(day and month grain with hour-exact edges, windows.py; every project in one pass).

Definitions (also in docs/analytics.md, in a PM's words):
- live since: a project is live from its go-live date (without one, from its first report);
  a delivered feature from the later of that and its delivery date.
- measured part: the part of the window from the day it went live on. Every measure of a
  feature uses only that part; a project live 6 days, seen over 30, is measured over 6.
- reporting devices: devices of the project that sent any message in the measured part.
  Silent devices are counted apart and never lower adoption.
- adoption: devices that used the feature ÷ reporting devices, with its 95 % Wilson interval.
- frequency: uses per using device per measured day.
- stickiness: device-days with use ÷ device-days reporting.
- enabled: devices that reported the feature switched on ÷ devices that report their enabled
  features at all (telemetry's optional `enabled_features`).
- trend: adoption now minus adoption in the previous window of the same length, only when
  the feature was live through both and the previous one holds at least half the device-days.
- completeness: messages received ÷ (received + missing), where missing counts the sequence
  numbers devices skipped (ingest tracks them message by message, across reboots).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

import psycopg
from psycopg.rows import class_row
from pydantic import BaseModel, Field

from services.analytics.recommend import Confidence, Interval, confidence, wilson
from services.analytics.windows import (
    DAY,
    Span,
    enabled_devices,
    feature_events,
    midnight,
    project_messages,
    reporting_by_segment,
    reporting_devices,
    using_devices,
)
from services.core.errors import NotFoundError
from services.core.payloads import ENABLED_REPORTED
from services.core.thresholds import AnalyticsThresholds
from services.core.windows import Window
from services.registry.enums import FeatureKind


class ProjectContext(BaseModel):
    """What a project's analytics say about it, as its customer may read it."""

    project_id: int
    project_name: str
    customer_id: int
    customer_name: str
    industry: str
    go_live_date: date | None
    devices_total: int = Field(description="active devices provisioned to the project")


class InternalProjectContext(ProjectContext):
    """The same, with what only the solution company's staff see."""

    tier: str
    lifecycle_stage: str
    contract_value: float | None


class Coverage(BaseModel):
    measured_since: datetime = Field(
        description="the window's start, or the project's go-live when that is later"
    )
    measured_days: float = Field(description="days from measured_since to the window's end")
    devices_reporting: int = Field(description="devices with any message in the measured part")
    devices_silent: int = Field(description="active devices with no message in it")
    reporting_share: float = Field(description="devices_reporting ÷ devices_total")
    device_days_reporting: int
    completeness: float | None = Field(
        description="messages received ÷ expected from sequence numbers; null without data"
    )


class FeatureMeasures(BaseModel):
    """One feature's use in one project, over the part of the window it was live."""

    feature_key: str
    feature_name: str | None
    kind: FeatureKind
    delivery_status: str | None = Field(description="null: used but never delivered here")
    delivered_on: date | None
    live_since: date | None = Field(
        description="the later of the project's go-live and the delivery; null: not live"
    )
    days_live: float | None = Field(
        description="days from live_since to the window's end (negative: goes live later)"
    )
    measured_since: datetime = Field(description="where the measured part of the window starts")
    measured_days: float = Field(description="its length in days (0: not live in the window)")
    devices_reporting: int = Field(description="devices with any message in the measured part")
    device_days_reporting: int
    devices_using: int
    events: int
    adoption: float = Field(description="devices using ÷ devices reporting (0..1)")
    adoption_low: float = Field(description="lower bound of adoption's 95 % Wilson interval")
    adoption_high: float = Field(description="upper bound of adoption's 95 % Wilson interval")
    frequency: float = Field(description="uses per using device per measured day")
    stickiness: float = Field(description="device-days with use ÷ device-days reporting")
    enabled_reporting: int = Field(
        description="devices that reported which features they have enabled"
    )
    devices_enabled: int = Field(description="of those, devices with this feature enabled")
    enabled_share: float | None = Field(description="devices_enabled ÷ enabled_reporting")
    enabled_low: float | None
    enabled_high: float | None
    adoption_previous: float | None = Field(description="adoption in the previous window")
    trend: float | None = Field(
        description="adoption − adoption_previous; null unless live through both windows"
    )
    first_used: datetime | None = Field(description="first use ever (hour)")
    days_to_first_use: float | None = Field(description="from going live to first use")
    last_used: datetime | None = Field(description="last use in or before the window (hour)")
    confidence: Confidence
    confidence_reason: str


class ProjectReading(BaseModel):
    """What every reading of a project over a window says of its coverage."""

    live_since: date | None = Field(description="go-live, or the first report without one")
    since: datetime
    until: datetime
    coverage: Coverage
    confidence: Confidence
    confidence_reason: str


class ProjectMeasures(ProjectReading):
    project: InternalProjectContext
    features: list[FeatureMeasures]


CONTEXTS = """
SELECT p.id AS project_id, p.name AS project_name, c.id AS customer_id, c.name AS customer_name,
       c.industry, p.go_live_date,
       (SELECT count(*) FROM devices d WHERE d.project_id = p.id AND d.status = 'active')::int
           AS devices_total,
       c.tier, c.lifecycle_stage, p.contract_value::float8 AS contract_value
FROM projects p JOIN customers c ON c.id = p.customer_id
WHERE p.id = ANY(%(projects)s::bigint[]) ORDER BY p.id
"""
# Without a go-live date a project counts as live from its first report: index probes.
FIRST_REPORTS = """
SELECT p.id, (SELECT min(day) FROM project_daily d WHERE d.project_id = p.id)
FROM unnest(%(projects)s::bigint[]) AS p(id)
"""
DELIVERED = """
SELECT dl.project_id, f.key, f.name, f.kind, dl.status, dl.delivered_on
FROM deliveries dl JOIN features f ON f.id = dl.feature_id
WHERE dl.project_id = ANY(%(projects)s::bigint[])
"""
FEATURES = "SELECT key, name, kind FROM features WHERE key = ANY(%(keys)s)"
# Every query below covers all the projects asked for at once, from the day and month
# rollups (windows.py), each part of the window from the day it went live on.
REPORTING = f"""
WITH reporting AS ({reporting_by_segment()})
SELECT project_id, seg_lo, count(*)::int, sum(days)::int FROM reporting GROUP BY 1, 2
"""
MESSAGES = f"""
SELECT project_id, messages, messages + greatest(missing, 0)
FROM ({project_messages(bounded=True)}) m
"""
USAGE = f"""
WITH per_device AS ({using_devices(bounded=True)}),
used AS (
    SELECT project_id, feature_key, count(*)::int AS devices, sum(days)::bigint AS use_days
    FROM per_device GROUP BY 1, 2
), events AS ({feature_events(bounded=True)})
SELECT u.project_id, u.feature_key, u.devices, coalesce(e.events, 0), u.use_days
FROM used u LEFT JOIN events e USING (project_id, feature_key)
"""
ENABLED = f"""
WITH per_device AS ({enabled_devices(where="AND feature_key <> %(reported)s")})
SELECT project_id, feature_key, count(*)::int FROM per_device GROUP BY 1, 2
"""
ENABLED_REPORTING = f"""
WITH reporting AS (
    {reporting_by_segment("enabled_monthly", "enabled_daily", "AND feature_key = %(reported)s")}
)
SELECT project_id, seg_lo, count(*)::int FROM reporting GROUP BY 1, 2
"""
PREVIOUS = f"""
WITH per_device AS ({using_devices("prev_")})
SELECT project_id, feature_key, count(*)::int FROM per_device GROUP BY 1, 2
"""
PREVIOUS_REPORTING = f"""
WITH reporting AS ({reporting_devices("prev_")})
SELECT project_id, count(*)::int, sum(days)::int FROM reporting GROUP BY 1
"""
# A trend compares like with like: the previous window must hold at least this share of the
# device-days the current one does (a fleet that only began reporting late in it, or a
# backfill that starts in it, would make any change look dramatic).
TREND_MIN_DEVICE_DAYS = 0.5
# First use ever and last use before the window's end, per project and feature: two index
# probes each into usage_hourly (its key starts with project, feature, hour).
FIRST_LAST = """
SELECT k.project_id, k.feature_key,
       (SELECT min(hour) FROM usage_hourly u
        WHERE u.project_id = k.project_id AND u.feature_key = k.feature_key),
       (SELECT max(hour) FROM usage_hourly u
        WHERE u.project_id = k.project_id AND u.feature_key = k.feature_key
          AND u.hour < %(until)s)
FROM unnest(%(pids)s::bigint[], %(keys)s::text[]) AS k(project_id, feature_key)
"""


@dataclass(frozen=True)
class Part:
    """The measured part of a window: from the day something went live, if in the window, to
    the window's end or now, whichever is sooner (days that have not happened yet measure
    nothing and make nothing mature)."""

    window: Window
    live_since: date | None
    now: datetime

    @property
    def end(self) -> datetime:
        return min(self.window.until, self.now)

    @property
    def bound(self) -> date | None:
        """The lower bound the queries apply: None when live before the window began."""
        if self.live_since is None or midnight(self.live_since) <= self.window.since:
            return None
        return self.live_since

    @property
    def since(self) -> datetime:
        bound = self.bound
        return self.window.since if bound is None else min(midnight(bound), self.window.until)

    @property
    def days(self) -> float:
        return max(0.0, (self.end - self.since) / DAY)

    @property
    def days_live(self) -> float | None:
        """Days from going live to the part's end (negative: goes live after it)."""
        if self.live_since is None:
            return None
        return (self.end - midnight(self.live_since)) / DAY

    def through(self, moment: datetime) -> bool:
        """Live through all of [moment, the window's end)."""
        return self.live_since is not None and midnight(self.live_since) <= moment


def _later(*days: date | None) -> date | None:
    known = [d for d in days if d is not None]
    return max(known) if known else None


def _days_since(day: date | None, moment: datetime | None) -> float | None:
    """Days from going live to the first use; 0 when it was used before (a pilot)."""
    if day is None or moment is None:
        return None
    return max(0.0, (moment - midnight(day)) / DAY)


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def project_measures(
    conn: psycopg.Connection, project_id: int, window: Window, t: AnalyticsThresholds
) -> ProjectMeasures:
    measured = measure_projects(conn, [project_id], window, t)
    if project_id not in measured:
        raise NotFoundError(f"project {project_id} not found")
    return measured[project_id]


@dataclass
class _Raw:
    """What the queries returned, keyed for `_measures`."""

    contexts: dict[int, InternalProjectContext]
    parts: dict[int, Part]  # per project
    feature_parts: dict[tuple[int, str], Part]  # per delivered feature
    reporting: dict[tuple[int, date | None], tuple[int, int]]  # devices, device-days
    messages: dict[int, tuple[int, int]]  # received, expected
    usage: dict[tuple[int, str], tuple[int, int, int]]  # devices, events, use days
    enabled: dict[tuple[int, str], int]
    enabled_reporting: dict[tuple[int, date | None], int]
    previous: dict[tuple[int, str], int]
    prev_reporting: dict[int, tuple[int, int]]  # devices, device-days
    catalog: dict[int, dict[str, tuple[str | None, FeatureKind, str | None, date | None]]]
    first_last: dict[tuple[int, str], tuple[datetime | None, datetime | None]]


def measure_projects(
    conn: psycopg.Connection, project_ids: Sequence[int], window: Window, t: AnalyticsThresholds
) -> dict[int, ProjectMeasures]:
    """The measures of every project asked for (unknown ids are left out), in a few
    set-based queries over the rollups."""
    raw = _read(conn, list(project_ids), window, datetime.now(UTC))
    return {pid: _measures(raw, pid, window, t) for pid in raw.contexts}


def _read(conn: psycopg.Connection, project_ids: list[int], window: Window, now: datetime) -> _Raw:
    params: dict[str, object] = {"projects": project_ids}
    with conn.cursor(row_factory=class_row(InternalProjectContext)) as cur:
        contexts = {c.project_id: c for c in cur.execute(CONTEXTS, params)}
    first: dict[int, date | None] = dict(conn.execute(FIRST_REPORTS, params).fetchall())
    parts = {
        pid: Part(window, c.go_live_date or first.get(pid), now) for pid, c in contexts.items()
    }
    catalog: dict[int, dict[str, tuple[str | None, FeatureKind, str | None, date | None]]]
    catalog = defaultdict(dict)
    feature_parts: dict[tuple[int, str], Part] = {}
    for pid, key, name, kind, status, delivered_on in conn.execute(DELIVERED, params):
        catalog[pid][key] = (name, FeatureKind(kind), status, delivered_on)
        if pid in parts and status == "delivered":
            live = parts[pid].live_since
            feature_parts[(pid, key)] = Part(
                window, _later(live, delivered_on) if live is not None else None, now
            )
    segments = sorted(
        {(pid, p.bound) for pid, p in parts.items()}
        | {(pid, p.bound) for (pid, _), p in feature_parts.items()},
        key=lambda s: (s[0], s[1] or date.min),
    )
    bounded = [(pid, key, p.bound) for (pid, key), p in sorted(feature_parts.items())]
    params.update(
        until=window.until,
        reported=ENABLED_REPORTED,
        bound_project=list(parts),
        bound_day=[p.bound for p in parts.values()],
        fbound_project=[b[0] for b in bounded],
        fbound_feature=[b[1] for b in bounded],
        fbound_day=[b[2] for b in bounded],
        seg_project=[s[0] for s in segments],
        seg_day=[s[1] for s in segments],
        **Span.of(window.since, window.until).params(),
        **Span.of(window.previous, window.since).params("prev_"),
    )
    reporting = {(pid, lo): (n, days) for pid, lo, n, days in conn.execute(REPORTING, params)}
    messages = {pid: (got, expected) for pid, got, expected in conn.execute(MESSAGES, params)}
    usage = {
        (pid, key): (n, events, days) for pid, key, n, events, days in conn.execute(USAGE, params)
    }
    enabled = {(pid, key): n for pid, key, n in conn.execute(ENABLED, params)}
    enabled_reporting = {(pid, lo): n for pid, lo, n in conn.execute(ENABLED_REPORTING, params)}
    previous = {(pid, key): n for pid, key, n in conn.execute(PREVIOUS, params)}
    prev_reporting = {pid: (n, days) for pid, n, days in conn.execute(PREVIOUS_REPORTING, params)}
    undelivered = sorted((pid, key) for pid, key in usage if key not in catalog[pid])
    known = {
        key: (name, FeatureKind(kind))
        for key, name, kind in conn.execute(FEATURES, {"keys": [k for _, k in undelivered]})
    }
    for pid, key in undelivered:  # a key not in the catalog at all has no name
        name, kind = known.get(key, (None, FeatureKind.INTERACTIVE))
        catalog[pid][key] = (name, kind, None, None)
    pairs = [(pid, key) for pid in contexts for key in sorted(catalog[pid])]
    first_last = {
        (pid, key): (first_use, last_use)
        for pid, key, first_use, last_use in conn.execute(
            FIRST_LAST,
            {"pids": [p for p, _ in pairs], "keys": [k for _, k in pairs], "until": window.until},
        )
    }
    return _Raw(
        contexts,
        parts,
        feature_parts,
        reporting,
        messages,
        usage,
        enabled,
        enabled_reporting,
        previous,
        prev_reporting,
        catalog,
        first_last,
    )


def _measures(raw: _Raw, pid: int, window: Window, t: AnalyticsThresholds) -> ProjectMeasures:
    context, part = raw.contexts[pid], raw.parts[pid]
    reporting, device_days = raw.reporting.get((pid, part.bound), (0, 0))
    received, expected = raw.messages.get(pid, (0, 0))
    completeness = min(1.0, received / expected) if received and expected else None
    coverage = Coverage(
        measured_since=part.since,
        measured_days=part.days,
        devices_reporting=reporting,
        devices_silent=max(0, context.devices_total - reporting),
        reporting_share=_ratio(reporting, context.devices_total),
        device_days_reporting=device_days,
        completeness=completeness,
    )
    level, reason = confidence(reporting, coverage.measured_days, completeness, t)
    features = []
    for key, (name, kind, status, delivered_on) in raw.catalog[pid].items():
        # undelivered use (and planned or cut deliveries) is measured over the project's part
        fpart = raw.feature_parts.get((pid, key), part) if status == "delivered" else part
        n, days = raw.reporting.get((pid, fpart.bound), (0, 0))
        using, events, use_days = raw.usage.get((pid, key), (0, 0, 0))
        # A reading may carry its own time, in an hour where its device sent no message of
        # its own (a reading stored and sent later, across the part's first midnight): such a
        # device has used the feature without reporting in the part. It is not counted twice
        # over, nor above the devices and days reporting.
        using, use_days = min(using, n), min(use_days, days)
        adoption = wilson(using, n)
        enabled_of = raw.enabled_reporting.get((pid, fpart.bound), 0)
        enabled = wilson(raw.enabled.get((pid, key), 0), enabled_of) if enabled_of else None
        prev_n, prev_days = raw.prev_reporting.get(pid, (0, 0))
        comparable = fpart.through(window.previous) and prev_days >= TREND_MIN_DEVICE_DAYS * days
        previous = _ratio(raw.previous.get((pid, key), 0), prev_n) if comparable else None
        measured = fpart.days
        first, last = raw.first_last.get((pid, key), (None, None))
        fconf, freason = confidence(n, measured, completeness, t)
        features.append(
            FeatureMeasures(
                feature_key=key,
                feature_name=name,
                kind=kind,
                delivery_status=status,
                delivered_on=delivered_on,
                live_since=fpart.live_since,
                days_live=fpart.days_live,
                measured_since=fpart.since,
                measured_days=measured,
                devices_reporting=n,
                device_days_reporting=days,
                devices_using=using,
                events=events,
                adoption=adoption.share,
                adoption_low=adoption.low,
                adoption_high=adoption.high,
                frequency=_ratio(events, using * measured),
                stickiness=_ratio(use_days, days),
                enabled_reporting=enabled_of,
                devices_enabled=enabled.part if enabled else 0,
                **_enabled_fields(enabled),
                adoption_previous=previous if prev_n else None,
                trend=adoption.share - previous if previous is not None and prev_n else None,
                first_used=first,
                days_to_first_use=_days_since(fpart.live_since, first),
                last_used=last,
                confidence=fconf,
                confidence_reason=freason,
            )
        )
    features.sort(key=lambda f: (f.delivery_status is None, -f.adoption, f.feature_key))
    return ProjectMeasures(
        project=context,
        live_since=part.live_since,
        since=window.since,
        until=window.until,
        coverage=coverage,
        confidence=level,
        confidence_reason=reason,
        features=features,
    )


def _enabled_fields(enabled: Interval | None) -> dict[str, float | None]:
    if enabled is None:
        return {"enabled_share": None, "enabled_low": None, "enabled_high": None}
    return {
        "enabled_share": enabled.share,
        "enabled_low": enabled.low,
        "enabled_high": enabled.high,
    }
