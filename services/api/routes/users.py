"""People who log in, managed by admins."""

from __future__ import annotations

from fastapi import APIRouter, Depends, status

from services.accounts import store
from services.accounts.roles import Permission
from services.api.auth import require
from services.api.deps import ConnDep
from services.api.errors import CONFLICT, NOT_FOUND
from services.api.routes.crud import ItemId

router = APIRouter(
    prefix="/users",
    tags=["users"],
    dependencies=[Depends(require(Permission.MANAGE_ACCOUNTS))],
)


@router.get("", response_model=list[store.User], summary="Every user")
def list_users(conn: ConnDep) -> list[store.User]:
    return store.list_users(conn)


@router.post(
    "",
    response_model=store.User,
    status_code=status.HTTP_201_CREATED,
    responses=CONFLICT,
    summary="Add a user with a role (a viewer with the one customer they may see)",
)
def add_user(body: store.UserCreate, conn: ConnDep) -> store.User:
    return store.create_user(conn, body)


@router.get("/{item_id}", response_model=store.User, responses=NOT_FOUND, summary="One user")
def get_user(item_id: ItemId, conn: ConnDep) -> store.User:
    return store.get_user(conn, item_id)


@router.patch(
    "/{item_id}",
    response_model=store.User,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Change a user's password, role or customer, or disable or enable them (any change "
    "ends their sessions and revokes their personal tokens; a role change or disabling also "
    "revokes the service tokens they made)",
)
def change_user(item_id: ItemId, body: store.UserUpdate, conn: ConnDep) -> store.User:
    return store.update_user(conn, item_id, body)


@router.delete(
    "/{item_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Delete a user and their personal tokens; the service tokens they made are revoked",
)
def remove_user(item_id: ItemId, conn: ConnDep) -> None:
    store.delete_user(conn, item_id)
