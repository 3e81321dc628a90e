"""Usage vs. delivery: per project, across the portfolio, by firmware; JSON or CSV."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from services.accounts.roles import Permission, Principal
from services.analytics.export import analytics_csv
from services.analytics.measures import Window
from services.analytics.portfolio import (
    FirmwareGroup,
    Portfolio,
    ProjectAnalytics,
    firmware_breakdown,
    portfolio,
    project_analytics,
)
from services.analytics.recommend import AnalyticsThresholds
from services.api.auth import require, visible_project
from services.api.deps import ConnDep, WindowDep
from services.api.errors import NOT_FOUND, Responses
from services.api.routes.crud import ItemId
from services.registry.models import FeatureKey

router = APIRouter(tags=["analytics"])
UsageReader = Annotated[Principal, Depends(require(Permission.READ_USAGE))]

Format = Annotated[Literal["json", "csv"], Query(description="csv: one row per project × feature")]
CSV_RESPONSE: Responses = {
    200: {"content": {"text/csv": {}}, "description": "the same numbers as CSV"}
}


def _thresholds(request: Request) -> AnalyticsThresholds:
    thresholds: AnalyticsThresholds = request.app.state.settings.analytics
    return thresholds


def _csv(body: str, name: str) -> Response:
    return Response(
        body, media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )  # fmt: skip


@router.get(
    "/projects/{item_id}/analytics",
    response_model=ProjectAnalytics,
    responses={**NOT_FOUND, **CSV_RESPONSE},
    summary="Each delivered feature beside its measured use, with a recommendation",
)
def get_project_analytics(  # noqa: PLR0917 - FastAPI reads each as a parameter
    item_id: ItemId,
    request: Request,
    conn: ConnDep,
    caller: UsageReader,
    window: WindowDep,
    format: Format = "json",
) -> ProjectAnalytics | Response:
    visible_project(conn, caller, item_id)
    result = project_analytics(
        conn, item_id, Window(window.since, window.until), _thresholds(request)
    )
    if format == "csv":
        return _csv(analytics_csv([result]), f"project-{item_id}-analytics")
    return result


@router.get(
    "/portfolio",
    response_model=Portfolio,
    responses=CSV_RESPONSE,
    summary="Every project and feature; cut and iterate candidates across the portfolio",
    dependencies=[Depends(require(Permission.READ_PORTFOLIO))],
)
def get_portfolio(
    request: Request, conn: ConnDep, window: WindowDep, format: Format = "json"
) -> Portfolio | Response:
    result = portfolio(conn, Window(window.since, window.until), _thresholds(request))
    if format == "csv":
        return _csv(analytics_csv(result.projects), "portfolio-analytics")
    return result


@router.get(
    "/projects/{item_id}/firmware",
    response_model=list[FirmwareGroup],
    responses=NOT_FOUND,
    summary="Adoption of one feature by firmware version (before / after a release)",
)
def get_firmware_breakdown(
    item_id: ItemId,
    conn: ConnDep,
    caller: UsageReader,
    window: WindowDep,
    feature: Annotated[FeatureKey, Query()],
) -> list[FirmwareGroup]:
    visible_project(conn, caller, item_id)
    return firmware_breakdown(conn, item_id, feature, Window(window.since, window.until))
