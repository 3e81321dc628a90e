from __future__ import annotations

from typing import Annotated

from fastapi import Query

from services.accounts.roles import Permission
from services.api.routes.crud import crud_router
from services.registry import models
from services.registry.resources import DELIVERIES


class DeliveryFilters:
    def __init__(
        self,
        project_id: Annotated[int | None, Query(ge=1, le=models.MAX_BIGINT)] = None,
        feature_id: Annotated[int | None, Query(ge=1, le=models.MAX_BIGINT)] = None,
        status: Annotated[models.DeliveryStatus | None, Query()] = None,
        strategic: Annotated[bool | None, Query()] = None,
    ) -> None:
        self.project_id, self.feature_id = project_id, feature_id
        self.status, self.strategic = status, strategic


router = crud_router(
    resource=DELIVERIES,
    create=models.DeliveryCreate,
    update=models.DeliveryUpdate,
    filters=DeliveryFilters,
    plural="deliveries",
    write=Permission.WRITE_DELIVERIES,
)
