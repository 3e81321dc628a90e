"""The quarantine: every message ingest could not store, with its reason and raw bytes."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from services.accounts.roles import Permission
from services.api.auth import require
from services.api.deps import ConnDep, PageDep, WindowDep
from services.api.errors import NOT_FOUND
from services.api.routes.crud import ItemId
from services.core.payloads import QuarantineReason
from services.ingest.quarantine.read import (
    QuarantinedMessage,
    ReasonSummary,
    quarantined_message,
    quarantined_messages,
    quarantined_payload,
    reason_summary,
)
from services.registry.models import Page

# Raw payloads may carry anything a device sent: ingest health is for ops and admins.
router = APIRouter(
    prefix="/quarantine",
    tags=["quarantine"],
    dependencies=[Depends(require(Permission.READ_INGEST))],
)


@router.get(
    "",
    response_model=Page[QuarantinedMessage],
    summary="Quarantined messages in the order they were quarantined, latest first by default",
)
def list_quarantine(
    conn: ConnDep,
    window: WindowDep,
    page: PageDep,
    *,
    sort: Annotated[
        Literal["-id", "id"],
        Query(description="-id: latest quarantined first; id: oldest first"),
    ] = "-id",
    reason: Annotated[QuarantineReason | None, Query()] = None,
    device: Annotated[str | None, Query(max_length=64, description="device serial")] = None,
) -> Page[QuarantinedMessage]:
    total, items = quarantined_messages(
        conn,
        since=window.since,
        until=window.until,
        reason=reason,
        device=device,
        limit=page.limit,
        offset=page.offset,
        latest_first=sort == "-id",
    )
    return Page[QuarantinedMessage](items=items, total=total, limit=page.limit, offset=page.offset)


@router.get(
    "/summary", response_model=list[ReasonSummary], summary="Counts by reason, with a sample"
)
def quarantine_summary(conn: ConnDep, window: WindowDep) -> list[ReasonSummary]:
    return reason_summary(conn, window.since, window.until)


@router.get("/{item_id}", response_model=QuarantinedMessage, responses=NOT_FOUND)
def get_quarantined(item_id: ItemId, conn: ConnDep) -> QuarantinedMessage:
    return quarantined_message(conn, item_id)


@router.get(
    "/{item_id}/payload",
    response_class=Response,
    responses={**NOT_FOUND, 200: {"content": {"application/octet-stream": {}}}},
    summary="The stored raw bytes (up to 64 KiB of the original)",
)
def get_quarantined_payload(item_id: ItemId, conn: ConnDep) -> Response:
    return Response(quarantined_payload(conn, item_id), media_type="application/octet-stream")
