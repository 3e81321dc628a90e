"""Alerts: what is firing, who acknowledged it, the rules, channels and notification outbox."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel

from services.accounts.roles import Permission, Principal
from services.alerts import store
from services.alerts.enums import AlertState, NotificationState
from services.alerts.rules import catalog
from services.alerts.store import (
    Alert,
    AlertRule,
    Channel,
    ChannelCreate,
    Notification,
    RuleCreate,
    RuleUpdate,
)
from services.api.auth import require
from services.api.deps import ConnDep
from services.api.errors import CONFLICT, NOT_FOUND
from services.api.routes.crud import ItemId
from services.registry.models import MAX_BIGINT, Page

router = APIRouter(prefix="/alerts", tags=["alerts"])
Reader = Annotated[Principal, Depends(require(Permission.READ_ALERTS))]
Acknowledger = Annotated[Principal, Depends(require(Permission.ACK_ALERTS))]
Manager = Annotated[Principal, Depends(require(Permission.MANAGE_ALERTS))]


class OpenCount(BaseModel):
    firing: int
    open: int


@router.get("", response_model=Page[Alert], summary="Alerts the caller may see, open first")
def list_alerts(
    conn: ConnDep,
    caller: Reader,
    *,
    open: Annotated[bool | None, Query(description="true: firing or acknowledged")] = None,
    state: AlertState | None = None,
    project_id: Annotated[int | None, Query(ge=1, le=MAX_BIGINT)] = None,
    limit: Annotated[int, Query(ge=1, le=store.MAX_LIMIT)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Page[Alert]:
    items = store.list_alerts(
        conn,
        caller,
        open_only=open,
        state=state,
        project_id=project_id,
        limit=limit,
        offset=offset,
    )
    total = store.count_alerts(conn, caller, open_only=open, state=state, project_id=project_id)
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.get("/count", response_model=OpenCount, summary="Open alerts (the top bar's badge)")
def count_open(conn: ConnDep, caller: Reader) -> OpenCount:
    firing, open_ = store.open_counts(conn, caller)
    return OpenCount(firing=firing, open=open_)


@router.get("/kinds", summary="Every rule kind: audience, description, parameters")
def list_kinds(_: Reader) -> list[dict[str, Any]]:
    return catalog()


@router.get("/rules", response_model=list[AlertRule], summary="Alert rules")
def list_rules(conn: ConnDep, _: Manager) -> list[AlertRule]:
    return store.list_rules(conn)


@router.post(
    "/rules",
    response_model=AlertRule,
    status_code=status.HTTP_201_CREATED,
    responses=CONFLICT,
    summary="A project's own rule of a kind (replaces the default for that project)",
)
def create_rule(body: RuleCreate, conn: ConnDep, caller: Manager) -> AlertRule:
    return store.create_rule(conn, body, caller)


@router.patch(
    "/rules/{item_id}", response_model=AlertRule, responses=NOT_FOUND, summary="Change a rule"
)
def update_rule(item_id: ItemId, body: RuleUpdate, conn: ConnDep, caller: Manager) -> AlertRule:
    return store.update_rule(conn, item_id, body, caller)


@router.delete(
    "/rules/{item_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Delete a project's own rule (a default can only be disabled)",
)
def delete_rule(item_id: ItemId, conn: ConnDep, caller: Manager) -> None:
    store.delete_rule(conn, item_id, caller)


@router.get("/channels", response_model=list[Channel], summary="Notification channels")
def list_channels(conn: ConnDep, _: Manager) -> list[Channel]:
    return store.list_channels(conn)


@router.post(
    "/channels",
    response_model=Channel,
    status_code=status.HTTP_201_CREATED,
    responses=CONFLICT,
    summary="A webhook or email channel",
)
def create_channel(body: ChannelCreate, conn: ConnDep, _: Manager) -> Channel:
    return store.create_channel(conn, body)


@router.delete(
    "/channels/{item_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=NOT_FOUND,
    summary="Delete a channel (its pending notifications go with it)",
)
def delete_channel(item_id: ItemId, conn: ConnDep, _: Manager) -> None:
    store.delete_channel(conn, item_id)


@router.get(
    "/notifications",
    response_model=list[Notification],
    summary="The outbox: pending, sent and dead notifications",
)
def list_notifications(
    conn: ConnDep,
    _: Manager,
    state: NotificationState | None = None,
    alert_id: Annotated[int | None, Query(ge=1, le=MAX_BIGINT)] = None,
    limit: Annotated[int, Query(ge=1, le=store.MAX_LIMIT)] = 100,
) -> list[Notification]:
    return store.list_notifications(conn, state, alert_id, limit)


@router.post(
    "/notifications/{item_id}/retry",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=NOT_FOUND,
    summary="Send a dead notification again",
)
def retry_notification(item_id: ItemId, conn: ConnDep, _: Manager) -> None:
    store.retry_notification(conn, item_id)


@router.get("/{item_id}", response_model=Alert, responses=NOT_FOUND, summary="One alert")
def get_alert(item_id: ItemId, conn: ConnDep, caller: Reader) -> Alert:
    return store.get_alert(conn, caller, item_id)


@router.post(
    "/{item_id}/acknowledge",
    response_model=Alert,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Acknowledge a firing alert (it resolves by itself when the condition clears)",
)
def acknowledge(item_id: ItemId, conn: ConnDep, caller: Acknowledger) -> Alert:
    return store.acknowledge(conn, caller, item_id, datetime.now(UTC))
