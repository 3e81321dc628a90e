"""Service tokens for machines (CI, scripts), managed by admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from services.accounts import store
from services.accounts.roles import Permission, Principal
from services.api.auth import require
from services.api.deps import ConnDep
from services.api.errors import NOT_FOUND
from services.api.routes.crud import ItemId

router = APIRouter(
    prefix="/tokens",
    tags=["tokens"],
    dependencies=[Depends(require(Permission.MANAGE_ACCOUNTS))],
)
Admin = Annotated[Principal, Depends(require(Permission.MANAGE_ACCOUNTS))]


@router.get("", response_model=list[store.Token], summary="Every token, personal and service")
def list_tokens(conn: ConnDep) -> list[store.Token]:
    return store.list_tokens(conn)


@router.post(
    "",
    response_model=store.NewToken,
    status_code=status.HTTP_201_CREATED,
    summary="A service token with a role; the secret is shown once. It expires (90 days by "
    "default, at most 365; never after the token this request came with) and is revoked when "
    "its creator's role changes or they are disabled or deleted",
)
def create_token(
    body: store.TokenCreate, caller: Admin, conn: ConnDep, response: Response
) -> store.NewToken:
    response.headers["Cache-Control"] = "no-store"
    return store.create_token(conn, body, caller=caller)


@router.post(
    "/{item_id}/revoke",
    response_model=store.Token,
    responses=NOT_FOUND,
    summary="Revoke a token: it stops working at once",
)
def revoke_token(item_id: ItemId, conn: ConnDep) -> store.Token:
    return store.revoke_token(conn, item_id)
