"""Projects and the whole portfolio: measures, verdicts, peers and what a cut would risk.

Each delivered feature is judged on its own project's evidence (recommend.py); other projects
come in only as a separate, explicit view: the peer adoption beside each feature (same
feature, customers of the same tier and industry) and the portfolio's breakdowns.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

import psycopg
from pydantic import BaseModel, ConfigDict, Field

from services.analytics.measures import (
    FeatureMeasures,
    InternalProjectContext,
    ProjectContext,
    ProjectMeasures,
    ProjectReading,
    measure_projects,
)
from services.analytics.recommend import (
    AnalyticsThresholds,
    Business,
    Evidence,
    Recommendation,
    UserValue,
    judge,
)
from services.analytics.windows import Span, reporting_devices, using_devices
from services.core.errors import NotFoundError
from services.core.windows import Window
from services.registry.enums import DeliveryStatus, FeatureKind

# Quartiles of fewer peers than this would all but name them: only their count is shown.
MIN_PEERS = 3

DELIVERIES = """
SELECT dl.project_id, f.key, dl.contract_line_value::float8, dl.business_score, dl.strategic
FROM deliveries dl JOIN features f ON f.id = dl.feature_id
WHERE dl.status = 'delivered' AND dl.project_id = ANY(%(projects)s::bigint[])
"""
PROJECT_IDS = "SELECT id FROM projects ORDER BY id"
# The project itself and other customers' projects of the same tier and industry (its peers).
PEER_GROUP = """
SELECT p.id FROM projects p JOIN customers c ON c.id = p.customer_id
JOIN projects me ON me.id = %(project)s JOIN customers mine ON mine.id = me.customer_id
WHERE p.id = me.id OR (c.tier = mine.tier AND c.industry = mine.industry AND c.id <> mine.id)
"""
CUSTOMERS_BOUGHT = """
SELECT f.key, count(DISTINCT p.customer_id)::int
FROM deliveries dl JOIN features f ON f.id = dl.feature_id JOIN projects p ON p.id = dl.project_id
WHERE dl.status = 'delivered' GROUP BY 1
"""
# Each device's firmware as it last reported it before the window's end (status messages),
# else as registered: the breakdown says which.
FIRMWARE = f"""
WITH reporting AS ({reporting_devices()}),
using_ AS ({using_devices(where="AND feature_key = %(feature)s")}),
reported AS (
    SELECT r.device_id,
           (SELECT h.firmware FROM device_status_history h
            WHERE h.device_id = r.device_id AND h.firmware IS NOT NULL AND h.at < %(until)s
            ORDER BY h.at DESC LIMIT 1) AS firmware
    FROM reporting r
)
SELECT coalesce(r.firmware, d.firmware, 'unknown'), r.firmware IS NOT NULL, count(*)::int,
       count(*) FILTER (WHERE d.id IN (SELECT device_id FROM using_))::int
FROM reported r JOIN devices d ON d.id = r.device_id
GROUP BY 1, 2 ORDER BY 1, 2 DESC
"""


class Peers(BaseModel):
    """Adoption of the same feature in other customers' projects of the same tier and industry
    (delivered there, live long enough, and with enough devices reporting to be judged)."""

    group: str = Field(description="the tier and industry compared")
    projects: int = Field(description="how many peer projects")
    median: float | None = Field(description="null with fewer than three peers")
    q1: float | None = Field(description="lower quartile (null with fewer than three peers)")
    q3: float | None = Field(description="upper quartile (null with fewer than three peers)")


class FeatureRow(FeatureMeasures):
    """A feature's measures with its verdict: for the solution company's staff only."""

    model_config = ConfigDict(extra="forbid")

    business_value: float | None = Field(
        description="0..1 from the delivery alone (null: not delivered here)"
    )
    business_high: bool | None
    user_value: UserValue | None = Field(
        description="none / unclear / shown; null when not judged (too early, too little data)"
    )
    recommendation: Recommendation | None = Field(description="null: not delivered (planned, cut)")
    explanation: str | None
    peers: Peers | None = Field(description="the same feature at comparable customers")


class ProjectAnalytics(ProjectReading):
    """A project's delivered features beside their use, with verdicts (internal)."""

    model_config = ConfigDict(extra="forbid")

    project: InternalProjectContext
    features: list[FeatureRow]
    undelivered_usage: list[FeatureMeasures] = Field(
        description="features used here but not delivered here: demand or misconfiguration"
    )


class CustomerProjectAnalytics(ProjectReading):
    """What a customer's own staff see of a project: usage, adoption and completeness, never
    business value, contract values, verdicts or their explanations."""

    model_config = ConfigDict(extra="forbid")

    project: ProjectContext
    features: list[FeatureMeasures]


class Breakdown(BaseModel):
    group: str
    projects: int
    devices_reporting: int
    devices_using: int
    adoption: float = Field(description="device-weighted: using ÷ reporting across the group")


class PortfolioFeature(BaseModel):
    feature_key: str
    feature_name: str | None
    kind: FeatureKind
    projects_delivered: int
    customers_bought: int
    devices_reporting: int
    devices_using: int
    adoption: float
    recommendations: dict[str, int] = Field(description="how many projects got each")
    by_tier: list[Breakdown]
    by_industry: list[Breakdown]
    by_lifecycle_stage: list[Breakdown]


class Assessment(BaseModel):
    """One verdict, for the portfolio's candidate lists."""

    project_id: int
    project_name: str
    customer_name: str
    feature_key: str
    recommendation: Recommendation
    adoption: float
    adoption_low: float
    adoption_high: float
    business_value: float
    explanation: str


class Portfolio(BaseModel):
    since: datetime
    until: datetime
    projects: list[ProjectAnalytics]
    features: list[PortfolioFeature]
    cut_candidates: list[Assessment]
    iterate_candidates: list[Assessment]


class FirmwareGroup(BaseModel):
    firmware: str
    reported: bool = Field(
        description="true: the version devices last reported before the window's end; false: "
        "the registered one, for devices that never reported theirs"
    )
    devices_reporting: int
    devices_using: int
    adoption: float


def for_customer(a: ProjectAnalytics) -> CustomerProjectAnalytics:
    """The customer's view of a project: the internal fields are not there at all, nor the
    use of features that are not delivered (planned, cut: demand, for the company)."""
    return CustomerProjectAnalytics(
        project=ProjectContext.model_validate(_only(a.project, ProjectContext)),
        live_since=a.live_since,
        since=a.since,
        until=a.until,
        coverage=a.coverage,
        confidence=a.confidence,
        confidence_reason=a.confidence_reason,
        features=[
            FeatureMeasures.model_validate(_only(f, FeatureMeasures))
            for f in a.features
            if f.delivery_status == DeliveryStatus.DELIVERED
        ],
    )


def _only(model: BaseModel, target: type[BaseModel]) -> dict[str, object]:
    return model.model_dump(include=set(target.model_fields))


def _evidence(m: ProjectMeasures, f: FeatureMeasures, business: Business) -> Evidence:
    return Evidence(
        kind=f.kind,
        devices_reporting=f.devices_reporting,
        devices_using=f.devices_using,
        stickiness=f.stickiness,
        measured_days=f.measured_days,
        completeness=m.coverage.completeness,
        live_since=f.live_since,
        days_live=f.days_live,
        business=business,
        enabled_reporting=f.enabled_reporting,
        devices_enabled=f.devices_enabled,
    )


def _peer_group(p: InternalProjectContext) -> str:
    return f"{p.tier} tier · {p.industry}"


def _peers(
    measured: dict[int, ProjectMeasures], t: AnalyticsThresholds
) -> dict[tuple[str, str], list[tuple[int, int, float]]]:
    """(tier · industry, feature) → (project, customer, adoption) of every project whose
    delivered feature is judged on enough evidence to compare with."""
    out: dict[tuple[str, str], list[tuple[int, int, float]]] = defaultdict(list)
    for pid, m in measured.items():
        for f in m.features:
            if (
                f.delivery_status == DeliveryStatus.DELIVERED
                and f.days_live is not None
                and f.days_live >= t.maturity_days
                and f.devices_reporting >= t.medium_confidence_devices
            ):
                key = (_peer_group(m.project), f.feature_key)
                out[key].append((pid, m.project.customer_id, f.adoption))
    return out


def peer_stats(
    group: str, values: list[tuple[int, int, float]], project: InternalProjectContext
) -> Peers:
    others = sorted(a for _, customer, a in values if customer != project.customer_id)
    if len(others) < MIN_PEERS:
        return Peers(group=group, projects=len(others), median=None, q1=None, q3=None)
    q1, median, q3 = statistics.quantiles(others, n=4, method="inclusive")
    return Peers(group=group, projects=len(others), median=median, q1=q1, q3=q3)


def _assess(
    measured: dict[int, ProjectMeasures],
    business: dict[tuple[int, str], Business],
    t: AnalyticsThresholds,
) -> list[ProjectAnalytics]:
    peers = _peers(measured, t)
    out = []
    for pid, m in measured.items():
        rows = []
        for f in m.features:
            if f.delivery_status is None:
                continue
            values: dict[str, object] = {
                "business_value": None,
                "business_high": None,
                "user_value": None,
                "recommendation": None,
                "explanation": None,
                "peers": None,
            }
            if f.delivery_status == DeliveryStatus.DELIVERED:
                inputs = business.get((pid, f.feature_key), Business())
                verdict = judge(_evidence(m, f, inputs), t)
                group = _peer_group(m.project)
                values.update(
                    business_value=verdict.business_value,
                    business_high=verdict.business_high,
                    user_value=verdict.user_value,
                    recommendation=verdict.recommendation,
                    explanation=verdict.explanation,
                    peers=peer_stats(group, peers.get((group, f.feature_key), []), m.project),
                )
            rows.append(FeatureRow(**f.model_dump(), **values))
        out.append(
            ProjectAnalytics(
                project=m.project,
                live_since=m.live_since,
                since=m.since,
                until=m.until,
                coverage=m.coverage,
                confidence=m.confidence,
                confidence_reason=m.confidence_reason,
                features=rows,
                # used here without a delivery in force (never delivered, only planned, or cut)
                undelivered_usage=[
                    f for f in m.features if f.delivery_status != "delivered" and f.events > 0
                ],
            )
        )
    return out


def _business(
    conn: psycopg.Connection, measured: dict[int, ProjectMeasures]
) -> dict[tuple[int, str], Business]:
    rows = conn.execute(DELIVERIES, {"projects": list(measured)}).fetchall()
    return {
        (pid, key): Business(
            business_score=score,
            contract_line_value=line,
            strategic=strategic,
            contract_value=measured[pid].project.contract_value,
        )
        for pid, key, line, score, strategic in rows
    }


def analyse(
    conn: psycopg.Connection, project_ids: Iterable[int], window: Window, t: AnalyticsThresholds
) -> list[ProjectAnalytics]:
    """Measures and verdicts of these projects (unknown ids are left out)."""
    measured = measure_projects(conn, list(project_ids), window, t)
    return _assess(measured, _business(conn, measured), t)


def portfolio(conn: psycopg.Connection, window: Window, t: AnalyticsThresholds) -> Portfolio:
    projects = analyse(conn, [row[0] for row in conn.execute(PROJECT_IDS)], window, t)
    bought: dict[str, int] = dict(conn.execute(CUSTOMERS_BOUGHT).fetchall())

    def candidates(rec: Recommendation) -> list[Assessment]:
        return [
            Assessment(
                project_id=p.project.project_id,
                project_name=p.project.project_name,
                customer_name=p.project.customer_name,
                feature_key=f.feature_key,
                recommendation=rec,
                adoption=f.adoption,
                adoption_low=f.adoption_low,
                adoption_high=f.adoption_high,
                business_value=f.business_value or 0.0,
                explanation=f.explanation or "",
            )
            for p in projects
            for f in p.features
            if f.recommendation is rec
        ]

    return Portfolio(
        since=window.since,
        until=window.until,
        projects=projects,
        features=_features(projects, bought),
        cut_candidates=sorted(
            candidates(Recommendation.CUT_CANDIDATE),
            key=lambda a: (a.adoption_high, -a.business_value),
        ),
        iterate_candidates=sorted(
            candidates(Recommendation.ITERATE_INVEST),
            key=lambda a: (-a.business_value, -a.adoption_low),
        ),
    )


def project_analytics(
    conn: psycopg.Connection, project_id: int, window: Window, t: AnalyticsThresholds
) -> ProjectAnalytics:
    """One project's analytics; its peers are measured too, for the peer view only."""
    ids = [row[0] for row in conn.execute(PEER_GROUP, {"project": project_id})]
    found = {p.project.project_id: p for p in analyse(conn, ids, window, t)}
    if project_id not in found:
        raise NotFoundError(f"project {project_id} not found")
    return found[project_id]


def firmware_breakdown(
    conn: psycopg.Connection, project_id: int, feature_key: str, window: Window
) -> list[FirmwareGroup]:
    params = {
        "projects": [project_id],
        "feature": feature_key,
        "until": window.until,
        **Span.of(window.since, window.until).params(),
    }
    return [
        FirmwareGroup(
            firmware=fw,
            reported=reported,
            devices_reporting=n,
            devices_using=u,
            adoption=u / n if n else 0.0,
        )
        for fw, reported, n, u in conn.execute(FIRMWARE, params)
    ]


def _features(projects: list[ProjectAnalytics], bought: dict[str, int]) -> list[PortfolioFeature]:
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
            reporting = sum(f.devices_reporting for _, f in members)
            using = sum(f.devices_using for _, f in members)
            out.append(
                Breakdown(
                    group=group,
                    projects=len(members),
                    devices_reporting=reporting,
                    devices_using=using,
                    adoption=using / reporting if reporting else 0.0,
                )
            )
        return out

    out = []
    for key, items in sorted(rows.items()):
        reporting = sum(f.devices_reporting for _, f in items)
        using = sum(f.devices_using for _, f in items)
        recs: dict[str, int] = defaultdict(int)
        for _, f in items:
            if f.recommendation:
                recs[f.recommendation.value] += 1
        first = items[0][1]
        out.append(
            PortfolioFeature(
                feature_key=key,
                feature_name=first.feature_name,
                kind=first.kind,
                projects_delivered=len(items),
                customers_bought=bought.get(key, 0),
                devices_reporting=reporting,
                devices_using=using,
                adoption=using / reporting if reporting else 0.0,
                recommendations=dict(recs),
                by_tier=breakdown(items, "tier"),
                by_industry=breakdown(items, "industry"),
                by_lifecycle_stage=breakdown(items, "lifecycle_stage"),
            )
        )
    return out
