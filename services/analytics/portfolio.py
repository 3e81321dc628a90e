"""Projects and the whole portfolio: measures, confidence and recommendations together.

User and business value are normalised across every delivered feature of the portfolio in
the window, so a project's assessment is always read against its peers.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import psycopg
from pydantic import BaseModel, Field

from services.analytics.measures import (
    Coverage,
    FeatureMeasures,
    ProjectContext,
    ProjectMeasures,
    Window,
    measure_projects,
)
from services.analytics.recommend import (
    AnalyticsThresholds,
    Assessment,
    Confidence,
    FeatureEvidence,
    Recommendation,
    assess,
    confidence,
)
from services.analytics.windows import Span, reporting_devices, using_devices
from services.core.errors import NotFoundError

DELIVERIES = """
SELECT dl.project_id, f.key, dl.contract_line_value::float8, dl.business_score, dl.strategic,
       (SELECT count(DISTINCT p2.customer_id) FROM deliveries d2
          JOIN projects p2 ON p2.id = d2.project_id
         WHERE d2.feature_id = dl.feature_id AND d2.status = 'delivered')::int
FROM deliveries dl JOIN features f ON f.id = dl.feature_id
WHERE dl.status = 'delivered'
"""
PROJECT_IDS = "SELECT id FROM projects ORDER BY id"
FIRMWARE = f"""
WITH reporting AS ({reporting_devices()}),
using_ AS ({using_devices(where="AND feature_key = %(feature)s")})
SELECT coalesce(d.firmware, 'unknown'), count(*)::int,
       count(*) FILTER (WHERE d.id IN (SELECT device_id FROM using_))::int
FROM reporting r JOIN devices d ON d.id = r.device_id
GROUP BY 1 ORDER BY 1
"""


class FeatureRow(FeatureMeasures):
    """A feature's measures with its assessment (null for undelivered usage)."""

    user_value: float | None = None
    business_value: float | None = None
    recommendation: Recommendation | None = None
    explanation: str | None = None


class ProjectAnalytics(BaseModel):
    project: ProjectContext
    since: datetime
    until: datetime
    coverage: Coverage
    confidence: Confidence
    confidence_reason: str
    features: list[FeatureRow]
    undelivered_usage: list[FeatureRow] = Field(
        description="features used here but never delivered here: demand or misconfiguration"
    )


class Breakdown(BaseModel):
    group: str
    projects: int
    devices_reporting: int
    devices_using: int
    adoption: float = Field(description="device-weighted: using ÷ reporting across the group")


class PortfolioFeature(BaseModel):
    feature_key: str
    projects_delivered: int
    devices_reporting: int
    devices_using: int
    adoption: float
    recommendations: dict[str, int] = Field(description="how many projects got each")
    by_tier: list[Breakdown]
    by_industry: list[Breakdown]
    by_lifecycle_stage: list[Breakdown]


class Portfolio(BaseModel):
    since: datetime
    until: datetime
    projects: list[ProjectAnalytics]
    features: list[PortfolioFeature]
    cut_candidates: list[Assessment]
    iterate_candidates: list[Assessment]


class FirmwareGroup(BaseModel):
    firmware: str
    devices_reporting: int
    devices_using: int
    adoption: float


def portfolio(
    conn: psycopg.Connection, window: Window, thresholds: AnalyticsThresholds
) -> Portfolio:
    ids = [row[0] for row in conn.execute(PROJECT_IDS)]
    measured = measure_projects(conn, ids, window)
    business = {(p, k): rest for p, k, *rest in conn.execute(DELIVERIES)}
    evidence: list[FeatureEvidence] = []
    levels: dict[int, tuple[Confidence, str]] = {}
    for pid, m in measured.items():
        levels[pid] = confidence(
            m.coverage.devices_reporting, window.days, m.coverage.completeness, thresholds
        )
        for f in m.features:
            if f.delivery_status != "delivered" or (pid, f.feature_key) not in business:
                continue
            line, score, strategic, customers = business[(pid, f.feature_key)]
            evidence.append(
                FeatureEvidence(
                    project_id=pid, feature_key=f.feature_key, adoption=f.adoption,
                    stickiness=f.stickiness, trend=f.trend,
                    devices_reporting=m.coverage.devices_reporting, confidence=levels[pid][0],
                    confidence_reason=levels[pid][1], contract_line_value=line,
                    business_score=score, strategic=strategic, customers_bought=customers,
                )
            )  # fmt: skip
    assessed = {(a.project_id, a.feature_key): a for a in assess(evidence, thresholds)}
    projects = [_project(m, levels[pid], assessed) for pid, m in measured.items()]
    return Portfolio(
        since=window.since, until=window.until, projects=projects,
        features=_features(projects),
        cut_candidates=sorted(
            (a for a in assessed.values() if a.recommendation is Recommendation.CUT_CANDIDATE),
            key=lambda a: (a.user_value, -a.business_value),
        ),
        iterate_candidates=sorted(
            (a for a in assessed.values() if a.recommendation is Recommendation.ITERATE_INVEST),
            key=lambda a: -(a.user_value + a.business_value),
        ),
    )  # fmt: skip


def project_analytics(
    conn: psycopg.Connection, project_id: int, window: Window, thresholds: AnalyticsThresholds
) -> ProjectAnalytics:
    if conn.execute("SELECT 1 FROM projects WHERE id = %s", (project_id,)).fetchone() is None:
        raise NotFoundError(f"project {project_id} not found")
    whole = portfolio(conn, window, thresholds)
    return next(p for p in whole.projects if p.project.project_id == project_id)


def firmware_breakdown(
    conn: psycopg.Connection, project_id: int, feature_key: str, window: Window
) -> list[FirmwareGroup]:
    params = {"projects": [project_id], "feature": feature_key,
              **Span.of(window.since, window.until).params()}  # fmt: skip
    return [
        FirmwareGroup(
            firmware=fw, devices_reporting=n, devices_using=u, adoption=u / n if n else 0.0
        )
        for fw, n, u in conn.execute(FIRMWARE, params)
    ]


def _project(
    m: ProjectMeasures, level: tuple[Confidence, str], assessed: dict[tuple[int, str], Assessment]
) -> ProjectAnalytics:
    rows = []
    for f in m.features:
        a = assessed.get((m.project.project_id, f.feature_key))
        rows.append(
            FeatureRow(
                **f.model_dump(),
                user_value=a.user_value if a else None,
                business_value=a.business_value if a else None,
                recommendation=a.recommendation if a else None,
                explanation=a.explanation if a else None,
            )
        )
    return ProjectAnalytics(
        project=m.project, since=m.since, until=m.until, coverage=m.coverage,
        confidence=level[0], confidence_reason=level[1],
        features=[r for r in rows if r.delivery_status is not None],
        # used here without a delivery in force (never delivered, only planned, or cut)
        undelivered_usage=[r for r in rows if r.delivery_status != "delivered" and r.events > 0],
    )  # fmt: skip


def _features(projects: list[ProjectAnalytics]) -> list[PortfolioFeature]:
    rows: dict[str, list[tuple[ProjectAnalytics, FeatureRow]]] = defaultdict(list)
    for p in projects:
        for f in p.features:
            if f.delivery_status == "delivered":
                rows[f.feature_key].append((p, f))

    def breakdown(items: list[tuple[ProjectAnalytics, FeatureRow]], attr: str) -> list[Breakdown]:
        groups: dict[str, list[tuple[ProjectAnalytics, FeatureRow]]] = defaultdict(list)
        for p, f in items:
            groups[str(getattr(p.project, attr))].append((p, f))
        out = []
        for group, members in sorted(groups.items()):
            reporting = sum(p.coverage.devices_reporting for p, _ in members)
            using = sum(f.devices_using for _, f in members)
            out.append(
                Breakdown(
                    group=group, projects=len(members), devices_reporting=reporting,
                    devices_using=using, adoption=using / reporting if reporting else 0.0,
                )
            )  # fmt: skip
        return out

    out = []
    for key, items in sorted(rows.items()):
        reporting = sum(p.coverage.devices_reporting for p, _ in items)
        using = sum(f.devices_using for _, f in items)
        recs: dict[str, int] = defaultdict(int)
        for _, f in items:
            if f.recommendation:
                recs[f.recommendation.value] += 1
        out.append(
            PortfolioFeature(
                feature_key=key, projects_delivered=len(items), devices_reporting=reporting,
                devices_using=using, adoption=using / reporting if reporting else 0.0,
                recommendations=dict(recs), by_tier=breakdown(items, "tier"),
                by_industry=breakdown(items, "industry"),
                by_lifecycle_stage=breakdown(items, "lifecycle_stage"),
            )
        )  # fmt: skip
    return out
