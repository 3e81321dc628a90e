"""Usage vs. delivery: per project, across the portfolio, by firmware, over time and what a
cut would risk; JSON or CSV.

A customer's own viewers get the customer's view of their projects: usage, adoption and
completeness, without business value, contract values, verdicts or explanations — response
models that do not have those fields at all.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from services.accounts.roles import Audience, Permission, Principal
from services.analytics.adoption import ProjectAdoption, project_adoption
from services.analytics.export import analytics_csv
from services.analytics.impact import FeatureImpact, feature_impact
from services.analytics.measures import project_measures
from services.analytics.portfolio import (
    CustomerProjectAnalytics,
    FirmwareGroup,
    Portfolio,
    ProjectAnalytics,
    firmware_breakdown,
    for_customer,
    portfolio,
    project_analytics,
)
from services.analytics.recommend import RuleText, rule_texts
from services.analytics.usage import delivered_keys
from services.api.auth import AudienceQuery, audience_of, require, visible_project
from services.api.deps import ReadConnDep, ThresholdsDep, UsageWindowDep
from services.api.errors import NOT_FOUND, Responses
from services.api.routes.crud import ItemId
from services.core.errors import NotFoundError
from services.registry.enums import DeliveryStatus
from services.registry.models import FeatureKey

router = APIRouter(tags=["analytics"])
UsageReader = Annotated[Principal, Depends(require(Permission.READ_USAGE))]

Format = Annotated[Literal["json", "csv"], Query(description="csv: one row per project × feature")]
CSV_RESPONSE: Responses = {
    200: {"content": {"text/csv": {}}, "description": "the same numbers as CSV"}
}


def _csv(body: str, name: str) -> Response:
    return Response(
        body,
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )


@router.get(
    "/projects/{item_id}/analytics",
    response_model=ProjectAnalytics | CustomerProjectAnalytics,
    responses={**NOT_FOUND, **CSV_RESPONSE},
    summary="Each delivered feature beside its measured use, with a verdict (staff) or without "
    "(the customer's own viewers)",
)
def get_project_analytics(  # noqa: PLR0917 - FastAPI reads each as a parameter
    item_id: ItemId,
    conn: ReadConnDep,
    caller: UsageReader,
    window: UsageWindowDep,
    t: ThresholdsDep,
    format: Format = "json",
    audience: AudienceQuery = None,
) -> ProjectAnalytics | CustomerProjectAnalytics | Response:
    visible_project(conn, caller, item_id)
    internal = audience_of(caller, audience, Audience.INTERNAL) is Audience.INTERNAL
    result = project_analytics(conn, item_id, window, t)
    if format == "csv":
        return _csv(analytics_csv([result], internal=internal), f"project-{item_id}-analytics")
    return result if internal else for_customer(result)


@router.get(
    "/projects/{item_id}/adoption",
    response_model=ProjectAdoption,
    responses=NOT_FOUND,
    summary="Each delivered feature's weekly adoption (with its interval) and device cohorts",
)
def get_project_adoption(
    item_id: ItemId,
    conn: ReadConnDep,
    caller: UsageReader,
    window: UsageWindowDep,
    t: ThresholdsDep,
) -> ProjectAdoption:
    visible_project(conn, caller, item_id)
    span = window
    measures = project_measures(conn, item_id, span, t)
    # the features of the project page: for the customer's own staff the delivered ones only
    # (use of anything else is internal), for staff planned and cut deliveries too
    shown = {"delivered"} if caller.customer_scope is not None else {*DeliveryStatus}
    features = [f for f in measures.features if f.delivery_status in shown]
    return project_adoption(conn, item_id, span, features)


@router.get(
    "/portfolio",
    response_model=Portfolio,
    responses=CSV_RESPONSE,
    summary="Every project and feature; cut and iterate candidates across the portfolio",
    dependencies=[Depends(require(Permission.READ_PORTFOLIO))],
)
def get_portfolio(
    conn: ReadConnDep, window: UsageWindowDep, t: ThresholdsDep, format: Format = "json"
) -> Portfolio | Response:
    result = portfolio(conn, window, t)
    if format == "csv":
        return _csv(analytics_csv(result.projects, internal=True), "portfolio-analytics")
    return result


@router.get(
    "/analytics/rules",
    response_model=list[RuleText],
    summary="The rule table verdicts are decided by, with this server's thresholds",
    dependencies=[Depends(require(Permission.READ_PORTFOLIO))],
)
def get_rules(t: ThresholdsDep) -> list[RuleText]:
    return rule_texts(t)


@router.get(
    "/portfolio/impact",
    response_model=FeatureImpact,
    responses=NOT_FOUND,
    summary="What cutting a feature would put at risk: its users, their devices, their worth",
    dependencies=[Depends(require(Permission.READ_PORTFOLIO))],
)
def get_feature_impact(
    conn: ReadConnDep,
    window: UsageWindowDep,
    t: ThresholdsDep,
    feature: Annotated[FeatureKey, Query(description="the feature's key")],
) -> FeatureImpact:
    return feature_impact(conn, feature, portfolio(conn, window, t))


@router.get(
    "/projects/{item_id}/firmware",
    response_model=list[FirmwareGroup],
    responses=NOT_FOUND,
    summary="Adoption of one feature by the firmware devices report (before / after a release)",
)
def get_firmware_breakdown(
    item_id: ItemId,
    conn: ReadConnDep,
    caller: UsageReader,
    window: UsageWindowDep,
    feature: Annotated[FeatureKey, Query()],
) -> list[FirmwareGroup]:
    visible_project(conn, caller, item_id)
    if caller.customer_scope is not None and feature not in delivered_keys(conn, item_id):
        # the use of a feature the customer did not buy is not theirs to see
        raise NotFoundError(f"feature {feature!r} is not delivered to project {item_id}")
    return firmware_breakdown(conn, item_id, feature, window)
