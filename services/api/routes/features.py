from __future__ import annotations

from typing import Annotated

from fastapi import Query

from services.api.routes.crud import crud_router
from services.registry import models
from services.registry.resources import FEATURES


class FeatureFilters:
    def __init__(
        self,
        product_line: Annotated[str | None, Query(max_length=100)] = None,
        kind: Annotated[models.FeatureKind | None, Query()] = None,
    ) -> None:
        self.product_line, self.kind = product_line, kind


router = crud_router(
    resource=FEATURES,
    create=models.FeatureCreate,
    update=models.FeatureUpdate,
    filters=FeatureFilters,
    plural="features",
)
