"""Devices: the registry row and the broker identity, kept in step (see provisioning)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, status
from fastapi.responses import Response

from services.accounts.roles import Permission, Principal
from services.api.auth import require
from services.api.deps import BrokerDep, ConnDep, ListDep
from services.api.errors import BROKER_DOWN, CONFLICT, IMPORT_REJECTED, NOT_FOUND
from services.api.routes.crud import ItemId, list_page, query_filters
from services.core.errors import InvalidInputError
from services.registry import imports, models, provisioning, repository
from services.registry.resources import DEVICES

router = APIRouter(prefix="/devices", tags=["devices"])
FleetReader = Annotated[Principal, Depends(require(Permission.READ_FLEET))]
# Provisioning and revocation change who may talk to the broker: ops and admins only.
MANAGE = [Depends(require(Permission.MANAGE_DEVICES))]

MAX_BATCH = 1000
MAX_CSV_BYTES = 5 * 1024 * 1024
NO_STORE = "no-store"  # responses carrying passwords must not sit in any cache


device_filters = query_filters(DEVICES, models.DeviceCreate)


@router.get("", response_model=models.Page[models.Device], summary="List devices")
def list_devices(
    conn: ConnDep,
    caller: FleetReader,
    page: ListDep,
    where: Annotated[dict[str, Any], Depends(device_filters)],
) -> models.Page[Any]:
    return list_page(conn, DEVICES, page, where, caller.customer_scope)


@router.get("/{item_id}", response_model=models.Device, responses=NOT_FOUND, summary="One device")
def get_device(item_id: ItemId, conn: ConnDep, caller: FleetReader) -> Any:
    return repository.get_item(conn, DEVICES, item_id, caller.customer_scope)


@router.post(
    "",
    response_model=models.ProvisionedDevice,
    status_code=status.HTTP_201_CREATED,
    responses={**CONFLICT, **BROKER_DOWN},
    summary="Provision a device: registry row plus MQTT identity; the password is shown once",
    dependencies=MANAGE,
)
def provision_device(
    body: models.DeviceCreate, conn: ConnDep, admin: BrokerDep, response: Response
) -> models.ProvisionedDevice:
    response.headers["Cache-Control"] = NO_STORE
    [provisioned] = provisioning.provision(conn, admin, [body])
    return provisioned


@router.post(
    "/batch",
    response_model=list[models.ProvisionedDevice],
    status_code=status.HTTP_201_CREATED,
    responses={**CONFLICT, **BROKER_DOWN},
    summary=f"Provision up to {MAX_BATCH} devices at once, all or none",
    dependencies=MANAGE,
)
def provision_batch(
    body: Annotated[list[models.DeviceCreate], Body(min_length=1, max_length=MAX_BATCH)],
    conn: ConnDep,
    admin: BrokerDep,
    response: Response,
) -> list[models.ProvisionedDevice]:
    response.headers["Cache-Control"] = NO_STORE
    errors = imports.check_devices(conn, list(enumerate(body)))
    if errors:
        first = errors[0]
        raise InvalidInputError(
            f"item {first.row}: {first.message}"
            + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""),
            field=first.field,
        )
    return provisioning.provision(conn, admin, body)


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    responses={
        **IMPORT_REJECTED,
        **BROKER_DOWN,
        201: {
            "content": {"text/csv": {"example": "serial,password,project_id,device_id\n"}},
            "description": "credentials, once: serial, password, project_id, device_id",
        },
    },
    response_class=Response,
    summary="Provision devices from CSV (serial,project_id,model,firmware,site,tags); all or none",
    dependencies=MANAGE,
)
def import_devices(
    body: Annotated[str, Body(media_type="text/csv", max_length=MAX_CSV_BYTES)],
    conn: ConnDep,
    admin: BrokerDep,
) -> Response:
    provisioned = imports.import_devices(conn, admin, body)
    return Response(
        imports.credentials_csv(provisioned),
        status_code=status.HTTP_201_CREATED,
        media_type="text/csv",
        headers={"Cache-Control": NO_STORE},
    )


@router.patch(
    "/{item_id}",
    response_model=models.Device,
    responses=NOT_FOUND,
    summary="Change model, firmware, site or tags",
    dependencies=MANAGE,
)
def update_device(item_id: ItemId, body: models.DeviceUpdate, conn: ConnDep) -> Any:
    return repository.update_item(conn, DEVICES, item_id, body)


@router.post(
    "/{item_id}/revoke",
    response_model=models.Device,
    responses={**NOT_FOUND, **BROKER_DOWN},
    summary="Revoke: disabled in the broker (disconnected at once); history stays",
    dependencies=MANAGE,
)
def revoke_device(item_id: ItemId, conn: ConnDep, admin: BrokerDep) -> models.Device:
    return provisioning.revoke(conn, admin, item_id)


@router.post(
    "/{item_id}/credentials",
    response_model=models.ProvisionedDevice,
    responses={**NOT_FOUND, **CONFLICT, **BROKER_DOWN},
    summary="Rotate the device's password; the old one stops working at once",
    dependencies=MANAGE,
)
def rotate_credentials(
    item_id: ItemId, conn: ConnDep, admin: BrokerDep
) -> models.ProvisionedDevice:
    return provisioning.rotate_credentials(conn, admin, item_id)


@router.delete(
    "/{item_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, **CONFLICT, **BROKER_DOWN},
    summary="Delete a device that never sent data (otherwise revoke it)",
    dependencies=MANAGE,
)
def delete_device(item_id: ItemId, conn: ConnDep, admin: BrokerDep) -> None:
    provisioning.delete(conn, admin, item_id)
