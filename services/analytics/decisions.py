"""The decision log: keep / iterate / cut, with the evidence it was taken on and what usage
did afterwards.

A decision concerns one feature, in one project or across the portfolio (no project). When it
is recorded, the evidence is computed from the analytics over the `window_days` that end at
`decided_at` — the project's analytics row for the feature, or its portfolio row — and stored
as JSON: data that arrives later never changes it. Each decision read back carries an `after`
block: the same measures over the window of equal length that starts at the decision (or up
to now while that window is still running), and the change since the evidence.

Usage is counted by the hour, so the window after a decision starts at the first full hour
after it; the hour the decision falls in belongs to the evidence.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import psycopg
from psycopg.types.json import Jsonb
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from services.analytics.portfolio import FeatureRow, ProjectAnalytics, portfolio, project_analytics
from services.analytics.recommend import (
    AnalyticsThresholds,
    Confidence,
    Recommendation,
    UserValue,
)
from services.core.db import translate_errors
from services.core.errors import InvalidInputError, NotFoundError
from services.core.windows import DEFAULT_WINDOW_DAYS, MAX_WINDOW_DAYS, Window
from services.registry import repository
from services.registry.models import FeatureKey, Id, Name, Notes, Page
from services.registry.repository import Filter, Resource

EARLIEST_DECISION = datetime(2000, 1, 1, tzinfo=UTC)
CLOCK_SKEW = timedelta(minutes=5)  # a client clock slightly ahead is not "the future"
HOUR = timedelta(hours=1)


class DecisionKind(StrEnum):
    KEEP = "keep"
    ITERATE = "iterate"
    CUT = "cut"


class Scope(StrEnum):
    PROJECT = "project"
    PORTFOLIO = "portfolio"


def _not_blank(value: str) -> str:
    stripped = value.strip()
    if not stripped:
        raise ValueError("must not be blank")
    return stripped


Rationale = Annotated[Notes, AfterValidator(_not_blank), Field(min_length=1)]


class DecisionCreate(BaseModel):
    """What a PM records. Name the feature by `feature_key` or `feature_id` (one of them)."""

    model_config = ConfigDict(extra="forbid")

    project_id: Id | None = Field(
        default=None, description="the project decided about; null: a portfolio-wide decision"
    )
    feature_key: FeatureKey | None = None
    feature_id: Id | None = None
    decision: DecisionKind
    rationale: Rationale = Field(
        examples=["Nobody opens the energy report; cut it at renewal."],
        description="why (1–5000 characters)",
    )
    decided_by: Name | None = Field(
        default=None,
        examples=["dana"],
        description="ignored by the API, which records the logged-in user or token",
    )
    window_days: int = Field(
        default=DEFAULT_WINDOW_DAYS,
        ge=1,
        le=MAX_WINDOW_DAYS,
        description="days of evidence before the decision (and of the comparison after it)",
    )
    decided_at: AwareDatetime | None = Field(
        default=None,
        description="when it was decided (default now); the evidence window ends here",
    )

    @field_validator("decided_at")
    @classmethod
    def _plausible_time(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value > datetime.now(UTC) + CLOCK_SKEW:
            raise ValueError("must not be in the future")
        if value < EARLIEST_DECISION:
            raise ValueError("must be after 2000-01-01")
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _one_feature(self) -> DecisionCreate:
        if (self.feature_key is None) == (self.feature_id is None):
            raise ValueError("give exactly one of feature_key and feature_id")
        return self


class Snapshot(BaseModel):
    """One feature's use over one window, in the projects the decision covers."""

    since: datetime
    until: datetime
    days: float = Field(description="length of the window in days")
    project_ids: list[int] = Field(description="the projects measured")
    devices_reporting: int = Field(description="devices with any message in the window")
    devices_using: int
    device_days_reporting: int
    use_days: int = Field(description="device-days with use")
    events: int
    adoption: float = Field(description="devices using ÷ devices reporting (0..1)")
    stickiness: float = Field(description="device-days with use ÷ device-days reporting")
    events_per_day: float = Field(description="uses per day of the window, all devices")


class Evidence(BaseModel):
    """What the analytics said when the decision was taken; never recomputed."""

    scope: Scope
    computed_at: datetime
    measures: Snapshot
    delivery_status: str | None = Field(default=None, description="project decisions")
    confidence: Confidence | None = Field(default=None, description="project decisions")
    confidence_reason: str | None = None
    trend: float | None = Field(default=None, description="project decisions")
    adoption_low: float | None = Field(
        default=None, description="project decisions: lower bound of adoption's 95 % interval"
    )
    adoption_high: float | None = Field(default=None, description="… and its upper bound")
    user_value: UserValue | float | None = Field(
        default=None,
        description="none / unclear / shown; decisions recorded before verdicts were "
        "absolute keep the score (0..1, relative to the portfolio) they were taken on",
    )
    business_value: float | None = None
    recommendation: Recommendation | None = Field(default=None, description="project decisions")
    recommendations: dict[str, int] | None = Field(
        default=None, description="portfolio decisions: how many projects got each"
    )
    explanation: str | None = None
    analytics: dict[str, Any] = Field(
        description="the feature's row exactly as the analytics returned it then "
        "(GET /projects/{id}/analytics, or the feature of GET /portfolio)"
    )


class Change(BaseModel):
    adoption: float = Field(description="after − before (0.1 = ten percentage points)")
    stickiness: float = Field(description="after − before")
    events_per_day: float = Field(description="after − before")
    events_per_day_ratio: float | None = Field(
        description="after ÷ before; null when there was no use before"
    )


class After(BaseModel):
    """The same measures since the decision, and how they moved."""

    complete: bool = Field(
        description="false while the window after the decision is shorter than the evidence "
        "window: ratios over a shorter window are not yet fully comparable"
    )
    measures: Snapshot
    change: Change


class Decision(BaseModel):
    id: int
    scope: Scope
    project_id: int | None
    project_name: str | None
    customer_name: str | None
    feature_id: int
    feature_key: str
    feature_name: str
    decision: DecisionKind
    rationale: str
    decided_by: str | None
    decided_at: datetime
    window_days: int
    evidence: Evidence
    after: After | None = Field(
        default=None,
        description="null until the first full hour after the decision has begun",
    )


DECISIONS = Resource(
    label="decision",
    table="decisions",
    view="decision_details",
    out=Decision,
    sortable=frozenset({"id", "decided_at", "decision", "feature_key", "project_id"}),
    default_sort="-decided_at",
    filters={
        "project_id": Filter("project_id"),
        "feature_key": Filter("feature_key"),
        "decision": Filter("decision"),
        "scope": Filter("scope", description="project or portfolio-wide"),
    },
    search_columns=("rationale", "decided_by", "feature_key"),
)

FEATURE_BY_KEY = "SELECT id, key FROM features WHERE key = %s"
FEATURE_BY_ID = "SELECT id, key FROM features WHERE id = %s"
INSERT = """
INSERT INTO decisions (project_id, feature_id, decision, rationale, decided_by, decided_at,
                       window_days, evidence)
VALUES (%(project_id)s, %(feature_id)s, %(decision)s, %(rationale)s, %(decided_by)s,
        %(decided_at)s, %(window_days)s, %(evidence)s)
RETURNING id
"""
# The definitions of measures.py (COVERAGE and USAGE), over a set of projects.
SNAPSHOT = """
WITH reporting AS (
    SELECT count(DISTINCT device_id)::int AS devices,
           count(DISTINCT (device_id, date_trunc('day', hour, 'UTC')))::int AS device_days
    FROM device_hourly
    WHERE project_id = ANY(%(projects)s::bigint[]) AND hour >= %(since)s AND hour < %(until)s
), per_device AS (
    SELECT project_id, device_id, sum(events) AS events,
           count(DISTINCT date_trunc('day', hour, 'UTC')) AS use_days
    FROM usage_hourly
    WHERE project_id = ANY(%(projects)s::bigint[]) AND feature_key = %(feature)s
      AND hour >= %(since)s AND hour < %(until)s
    GROUP BY 1, 2
)
SELECT r.devices, r.device_days,
       (SELECT count(*) FROM per_device)::int,
       (SELECT coalesce(sum(events), 0) FROM per_device)::bigint,
       (SELECT coalesce(sum(use_days), 0) FROM per_device)::bigint
FROM reporting r
"""


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _snapshot(
    window: Window,
    project_ids: Iterable[int],
    *,
    reporting: int,
    device_days: int,
    using: int,
    use_days: int,
    events: int,
) -> Snapshot:
    return Snapshot(
        since=window.since,
        until=window.until,
        days=window.days,
        project_ids=sorted(project_ids),
        devices_reporting=reporting,
        devices_using=using,
        device_days_reporting=device_days,
        use_days=use_days,
        events=events,
        adoption=_ratio(using, reporting),
        stickiness=_ratio(use_days, device_days),
        events_per_day=_ratio(events, window.days),
    )


def _use_days(stickiness: float, device_days: int) -> int:
    """Device-days with use, back from stickiness = use days ÷ device-days (exact)."""
    return round(stickiness * device_days)


def _feature(conn: psycopg.Connection, body: DecisionCreate) -> tuple[int, str]:
    if body.feature_id is not None:
        row = conn.execute(FEATURE_BY_ID, (body.feature_id,)).fetchone()
        what = f"feature {body.feature_id}"
    else:
        row = conn.execute(FEATURE_BY_KEY, (body.feature_key,)).fetchone()
        what = f"feature {body.feature_key!r}"
    if row is None:
        raise NotFoundError(f"{what} not found")
    return int(row[0]), str(row[1])


def _project_evidence(
    analytics: ProjectAnalytics, feature_key: str, window: Window, now: datetime
) -> Evidence:
    pid = analytics.project.project_id
    row = next(
        (
            f
            for f in [*analytics.features, *analytics.undelivered_usage]
            if f.feature_key == feature_key
        ),
        None,
    )
    if row is None:
        raise InvalidInputError(
            f"feature {feature_key!r} is not delivered to project {pid} and was not used there "
            f"in the {window.days:g} days before the decision: there is nothing to decide on",
            field="feature_key",
        )
    # the part of the window the feature was live in, as its verdict was measured
    measured = Window(row.measured_since, window.until)
    measures = _snapshot(
        measured,
        [pid],
        reporting=row.devices_reporting,
        device_days=row.device_days_reporting,
        using=row.devices_using,
        use_days=_use_days(row.stickiness, row.device_days_reporting),
        events=row.events,
    )
    verdict = row if isinstance(row, FeatureRow) else None
    return Evidence(
        scope=Scope.PROJECT,
        computed_at=now,
        measures=measures,
        delivery_status=row.delivery_status,
        confidence=row.confidence,
        confidence_reason=row.confidence_reason,
        trend=row.trend,
        adoption_low=row.adoption_low,
        adoption_high=row.adoption_high,
        user_value=verdict.user_value if verdict else None,
        business_value=verdict.business_value if verdict else None,
        recommendation=verdict.recommendation if verdict else None,
        explanation=verdict.explanation if verdict else None,
        analytics=row.model_dump(mode="json"),
    )


def _portfolio_evidence(
    conn: psycopg.Connection,
    feature_key: str,
    window: Window,
    thresholds: AnalyticsThresholds,
    now: datetime,
) -> Evidence:
    whole = portfolio(conn, window, thresholds)
    summary = next((f for f in whole.features if f.feature_key == feature_key), None)
    if summary is None:
        raise InvalidInputError(
            f"feature {feature_key!r} is not delivered to any project: there is nothing to "
            "decide on across the portfolio",
            field="feature_key",
        )
    ids: list[int] = []
    reporting = device_days = using = use_days = events = 0
    for p in whole.projects:
        for f in p.features:
            if f.feature_key == feature_key and f.delivery_status == "delivered":
                ids.append(p.project.project_id)
                reporting += p.coverage.devices_reporting
                device_days += p.coverage.device_days_reporting
                using += f.devices_using
                use_days += _use_days(f.stickiness, p.coverage.device_days_reporting)
                events += f.events
    measures = _snapshot(
        window,
        ids,
        reporting=reporting,
        device_days=device_days,
        using=using,
        use_days=use_days,
        events=events,
    )
    return Evidence(
        scope=Scope.PORTFOLIO,
        computed_at=now,
        measures=measures,
        recommendations=summary.recommendations,
        explanation=f"delivered to {summary.projects_delivered} project(s); adoption "
        f"{summary.adoption:.0%} of {summary.devices_reporting} reporting devices",
        analytics=summary.model_dump(mode="json"),
    )


def record_decision(
    conn: psycopg.Connection, body: DecisionCreate, thresholds: AnalyticsThresholds
) -> Decision:
    """Check the references, freeze the evidence as of `decided_at`, store the decision."""
    now = datetime.now(UTC)
    decided_at = body.decided_at or now
    feature_id, feature_key = _feature(conn, body)
    window = Window(decided_at - timedelta(days=body.window_days), decided_at)
    if body.project_id is not None:
        # raises NotFoundError for an unknown project
        analytics = project_analytics(conn, body.project_id, window, thresholds)
        evidence = _project_evidence(analytics, feature_key, window, now)
    else:
        evidence = _portfolio_evidence(conn, feature_key, window, thresholds, now)
    values = {
        "project_id": body.project_id,
        "feature_id": feature_id,
        "decision": body.decision.value,
        "rationale": body.rationale,
        "decided_by": body.decided_by,
        "decided_at": decided_at,
        "window_days": body.window_days,
        "evidence": Jsonb(evidence.model_dump(mode="json")),
    }
    with translate_errors(DECISIONS), conn.transaction():
        row = conn.execute(INSERT, values).fetchone()
    assert row is not None  # noqa: S101 - INSERT … RETURNING always returns the row
    return get_decision(conn, int(row[0]), now=now)


def get_decision(
    conn: psycopg.Connection, decision_id: int, *, now: datetime | None = None
) -> Decision:
    decision = repository.get_item(conn, DECISIONS, decision_id)
    return with_after(conn, decision, now or datetime.now(UTC))


def list_decisions(
    conn: psycopg.Connection,
    *,
    filters: dict[str, Any],
    search: str | None,
    sort: str | None,
    limit: int,
    offset: int,
) -> Page[Decision]:
    page = repository.list_items(
        conn, DECISIONS, filters=filters, search=search, sort=sort, limit=limit, offset=offset
    )
    now = datetime.now(UTC)
    page.items = [with_after(conn, d, now) for d in page.items]
    return page


def after_window(decided_at: datetime, window_days: int, now: datetime) -> Window | None:
    """From the first full hour after the decision, as long as the evidence window or up to
    now; None while not one hour of it has begun."""
    start = decided_at.astimezone(UTC)
    floor = start.replace(minute=0, second=0, microsecond=0)
    since = floor if floor == start else floor + HOUR
    if now <= since:
        return None
    return Window(since, min(since + timedelta(days=window_days), now))


def measure(
    conn: psycopg.Connection, project_ids: list[int], feature_key: str, window: Window
) -> Snapshot:
    """The measures of `Snapshot` for a feature in some projects, straight from the rollups."""
    params = {
        "projects": project_ids,
        "feature": feature_key,
        "since": window.since,
        "until": window.until,
    }
    row = conn.execute(SNAPSHOT, params).fetchone()
    reporting, device_days, using, events, use_days = row or (0, 0, 0, 0, 0)
    return _snapshot(
        window,
        project_ids,
        reporting=reporting,
        device_days=device_days,
        using=using,
        use_days=use_days,
        events=events,
    )


def with_after(conn: psycopg.Connection, decision: Decision, now: datetime) -> Decision:
    window = after_window(decision.decided_at, decision.window_days, now)
    if window is None:
        return decision
    before = decision.evidence.measures
    after = measure(conn, before.project_ids, decision.feature_key, window)
    change = Change(
        adoption=after.adoption - before.adoption,
        stickiness=after.stickiness - before.stickiness,
        events_per_day=after.events_per_day - before.events_per_day,
        events_per_day_ratio=(
            after.events_per_day / before.events_per_day if before.events_per_day else None
        ),
    )
    complete = window.until - window.since >= timedelta(days=decision.window_days)
    return decision.model_copy(
        update={"after": After(complete=complete, measures=after, change=change)}
    )
