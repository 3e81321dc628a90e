from __future__ import annotations

from services.api.routes.crud import crud_router
from services.registry import models
from services.registry.resources import FEATURES

router = crud_router(
    resource=FEATURES,
    create=models.FeatureCreate,
    update=models.FeatureUpdate,
    plural="features",
)
