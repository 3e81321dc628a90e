from __future__ import annotations

from typing import Annotated

from fastapi import Query

from services.api.routes.crud import crud_router
from services.registry import models
from services.registry.resources import CUSTOMERS


class CustomerFilters:
    def __init__(
        self,
        tier: Annotated[models.Tier | None, Query()] = None,
        industry: Annotated[str | None, Query(max_length=100)] = None,
        lifecycle_stage: Annotated[models.LifecycleStage | None, Query()] = None,
    ) -> None:
        self.tier, self.industry, self.lifecycle_stage = tier, industry, lifecycle_stage


router = crud_router(
    resource=CUSTOMERS,
    create=models.CustomerCreate,
    update=models.CustomerUpdate,
    filters=CustomerFilters,
    plural="customers",
)
