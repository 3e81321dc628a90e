from __future__ import annotations

from services.api.routes.crud import crud_router
from services.registry import models
from services.registry.resources import CUSTOMERS

router = crud_router(
    resource=CUSTOMERS,
    create=models.CustomerCreate,
    update=models.CustomerUpdate,
    plural="customers",
)
