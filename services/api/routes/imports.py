from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, status

from services.api.deps import ConnDep
from services.api.errors import IMPORT_REJECTED
from services.registry import imports

router = APIRouter(prefix="/imports", tags=["imports"])

MAX_CSV_BYTES = 5 * 1024 * 1024


@router.post(
    "/{kind}",
    response_model=imports.ImportReport,
    status_code=status.HTTP_201_CREATED,
    responses=IMPORT_REJECTED,
    summary="Import customers, projects, features or deliveries from CSV; all rows or none",
    description=(
        "The header names the fields (as in the create request). Empty cells are not given; "
        "lists are separated by `;`. Projects may give `customer` (name) instead of "
        "`customer_id`, deliveries `feature_key` instead of `feature_id`. Devices are "
        "imported with `POST /devices/import`, which returns their credentials."
    ),
)
def import_csv(
    kind: Literal["customers", "projects", "features", "deliveries"],
    body: Annotated[str, Body(media_type="text/csv", max_length=MAX_CSV_BYTES)],
    conn: ConnDep,
) -> imports.ImportReport:
    return imports.import_csv(conn, kind, body)
