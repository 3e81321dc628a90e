"""What cutting a feature would put at risk: who uses it, on how many devices, and how much
those customers are worth and where they are in their lifecycle.

For the solution company's staff only (it carries contract values and verdicts).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import psycopg
from pydantic import BaseModel, Field

from services.analytics.portfolio import Portfolio
from services.analytics.recommend import Recommendation
from services.core.errors import NotFoundError
from services.registry.enums import FeatureKind, LifecycleStage

FEATURE = "SELECT name, kind FROM features WHERE key = %s"
# Every project of the customers concerned: a customer's worth is all of its contracts.
CUSTOMER_VALUES = """
SELECT customer_id, sum(contract_value)::float8 FROM projects
WHERE customer_id = ANY(%(customers)s::bigint[]) GROUP BY 1
"""
LINE_VALUES = """
SELECT dl.project_id, dl.contract_line_value::float8
FROM deliveries dl JOIN features f ON f.id = dl.feature_id WHERE f.key = %s
"""
# Stages in which losing a feature they use weighs most.
SENSITIVE_STAGES = frozenset({LifecycleStage.RENEWAL, LifecycleStage.AT_RISK})


class ProjectImpact(BaseModel):
    project_id: int
    project_name: str
    delivery_status: str | None = Field(description="null: used without being delivered")
    contract_line_value: float | None
    devices_reporting: int
    devices_using: int
    adoption: float
    adoption_low: float
    adoption_high: float
    recommendation: Recommendation | None


class CustomerImpact(BaseModel):
    customer_id: int
    customer_name: str
    tier: str
    industry: str
    lifecycle_stage: str
    contract_value: float | None = Field(description="all of the customer's project contracts")
    devices_using: int
    projects: list[ProjectImpact]


class FeatureImpact(BaseModel):
    feature_key: str
    feature_name: str
    kind: FeatureKind
    since: datetime
    until: datetime
    customers_using: int = Field(description="customers with at least one device using it")
    projects_using: int
    devices_using: int
    contract_value_at_risk: float = Field(
        description="the contract value of the customers who use it"
    )
    customers_in_renewal_or_at_risk: int = Field(
        description="of the customers who use it, those in the renewal or at-risk stage"
    )
    customers: list[CustomerImpact] = Field(
        description="customers who bought or use it; those who use it first, by value"
    )


def feature_impact(conn: psycopg.Connection, feature_key: str, whole: Portfolio) -> FeatureImpact:
    """What cutting *feature_key* would risk, read from the portfolio's analytics."""
    found = conn.execute(FEATURE, (feature_key,)).fetchone()
    if found is None:
        raise NotFoundError(f"feature {feature_key!r} not found")
    name, kind = found
    lines: dict[int, float | None] = dict(conn.execute(LINE_VALUES, (feature_key,)).fetchall())
    by_customer: dict[int, list[ProjectImpact]] = defaultdict(list)
    contexts = {}
    for p in whole.projects:
        rows = [f for f in [*p.features, *p.undelivered_usage] if f.feature_key == feature_key]
        for f in rows:
            by_customer[p.project.customer_id].append(
                ProjectImpact(
                    project_id=p.project.project_id,
                    project_name=p.project.project_name,
                    delivery_status=f.delivery_status,
                    contract_line_value=lines.get(p.project.project_id),
                    devices_reporting=f.devices_reporting,
                    devices_using=f.devices_using,
                    adoption=f.adoption,
                    adoption_low=f.adoption_low,
                    adoption_high=f.adoption_high,
                    # undelivered use has measures and no verdict
                    recommendation=getattr(f, "recommendation", None),
                )
            )
            contexts[p.project.customer_id] = p.project
    values: dict[int, float | None] = dict(
        conn.execute(CUSTOMER_VALUES, {"customers": list(by_customer)}).fetchall()
    )
    customers = [
        CustomerImpact(
            customer_id=cid,
            customer_name=contexts[cid].customer_name,
            tier=contexts[cid].tier,
            industry=contexts[cid].industry,
            lifecycle_stage=contexts[cid].lifecycle_stage,
            contract_value=values.get(cid),
            devices_using=sum(p.devices_using for p in projects),
            projects=projects,
        )
        for cid, projects in by_customer.items()
    ]
    customers.sort(key=lambda c: (c.devices_using == 0, -(c.contract_value or 0), c.customer_name))
    using = [c for c in customers if c.devices_using]
    return FeatureImpact(
        feature_key=feature_key,
        feature_name=name,
        kind=FeatureKind(kind),
        since=whole.since,
        until=whole.until,
        customers_using=len(using),
        projects_using=sum(1 for c in using for p in c.projects if p.devices_using),
        devices_using=sum(c.devices_using for c in using),
        contract_value_at_risk=sum(c.contract_value or 0.0 for c in using),
        customers_in_renewal_or_at_risk=sum(
            1 for c in using if c.lifecycle_stage in SENSITIVE_STAGES
        ),
        customers=customers,
    )
