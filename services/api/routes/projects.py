from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from services.accounts.roles import Permission, Principal
from services.analytics.usage import DailyUsage, ProjectUsage, daily_usage, project_usage
from services.api.auth import require, visible_project
from services.api.deps import ReadConnDep, UsageWindowDep
from services.api.errors import NOT_FOUND
from services.api.routes.crud import ItemId, crud_router
from services.registry import models
from services.registry.resources import PROJECTS

router = crud_router(
    resource=PROJECTS,
    create=models.ProjectCreate,
    update=models.ProjectUpdate,
    plural="projects",
)


@router.get(
    "/{item_id}/usage",
    response_model=ProjectUsage,
    responses=NOT_FOUND,
    summary="Feature usage in a window beside what was delivered",
)
def get_project_usage(
    item_id: ItemId,
    conn: ReadConnDep,
    caller: Annotated[Principal, Depends(require(Permission.READ_USAGE))],
    window: UsageWindowDep,
) -> ProjectUsage:
    visible_project(conn, caller, item_id)
    # a customer's own staff see the use of what was delivered to them, nothing else
    delivered_only = caller.customer_scope is not None
    return project_usage(conn, item_id, window.since, window.until, delivered_only=delivered_only)


@router.get(
    "/{item_id}/usage/daily",
    response_model=list[DailyUsage],
    responses=NOT_FOUND,
    summary="Use per feature and UTC day in a window (for charts)",
)
def get_daily_usage(
    item_id: ItemId,
    conn: ReadConnDep,
    caller: Annotated[Principal, Depends(require(Permission.READ_USAGE))],
    window: UsageWindowDep,
) -> list[DailyUsage]:
    visible_project(conn, caller, item_id)
    delivered_only = caller.customer_scope is not None
    return daily_usage(conn, item_id, window.since, window.until, delivered_only=delivered_only)
