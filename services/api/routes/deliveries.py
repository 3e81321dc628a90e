from __future__ import annotations

from services.accounts.roles import Permission
from services.api.routes.crud import crud_router
from services.registry import models
from services.registry.resources import DELIVERIES

router = crud_router(
    resource=DELIVERIES,
    create=models.DeliveryCreate,
    update=models.DeliveryUpdate,
    plural="deliveries",
    write=Permission.WRITE_DELIVERIES,
)
