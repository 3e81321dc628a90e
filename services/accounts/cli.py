"""`fieldtrack users …` and `fieldtrack tokens …`: account administration on the database
itself, for operators (the first admin cannot be made through an API that needs an admin)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import psycopg
import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from services.accounts import store
from services.accounts.roles import Role
from services.core.console import command_group, console, fail
from services.core.errors import FieldtrackError
from services.core.migrate import migrate
from services.core.settings import get_settings

users_app = command_group("People who log in (needs database access).")
tokens_app = command_group("Service tokens for machines (needs database access).")

FIRST_ADMIN = "admin"
# Generated passwords: long enough that nobody needs to guess at their strength.
GENERATED_PASSWORD_BYTES = 18


@contextmanager
def _connection() -> Iterator[psycopg.Connection]:
    url = get_settings().database_url.get_secret_value()
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def _customer_id(conn: psycopg.Connection, customer: str | None) -> int | None:
    if customer is None:
        return None
    row = conn.execute(
        "SELECT id FROM customers WHERE name = %s OR id::text = %s", (customer, customer)
    ).fetchone()
    if row is None:
        raise FieldtrackError(f"no customer named {customer!r}")
    return int(row[0])


def ensure_first_admin(conn: psycopg.Connection) -> tuple[str, str] | None:
    """Create the first admin with a generated password if there is no admin yet; the
    password is returned once (only its hash is stored)."""
    if store.admin_exists(conn):
        return None
    password = secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
    store.create_user(
        conn, store.UserCreate(username=FIRST_ADMIN, password=password, role=Role.ADMIN)
    )
    return FIRST_ADMIN, password


@users_app.command("add")
def add_user(
    username: str,
    role: Annotated[Role, typer.Option(help="admin, pm, ops or viewer")],
    customer: Annotated[
        str | None, typer.Option(help="name or id of the one customer a viewer sees")
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(help="at least 12 characters; generated and printed once if left out"),
    ] = None,
) -> None:
    """Add a user. Without --password a strong one is generated and shown once."""
    generated = password is None
    secret = password or secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
    try:
        with _connection() as conn:
            user = store.create_user(
                conn,
                store.UserCreate(
                    username=username,
                    password=secret,
                    role=role,
                    customer_id=_customer_id(conn, customer),
                ),
            )
    except ValidationError as exc:
        raise fail(exc) from exc
    console.print(f"user [bold]{user.username}[/] ({user.role.value}) added, id {user.id}")
    if generated:
        console.print(f"password (shown once): [bold]{escape(secret)}[/]")


@users_app.command("list")
def list_users() -> None:
    """Every user with role, customer and state."""
    with _connection() as conn:
        users = store.list_users(conn)
    table = Table("id", "username", "role", "customer", "state")
    for user in users:
        table.add_row(
            str(user.id),
            user.username,
            user.role.value,
            str(user.customer_id or ""),
            "disabled" if user.disabled_at else "active",
        )
    console.print(table)


@users_app.command("passwd")
def reset_password(
    username: str,
    password: Annotated[
        str | None, typer.Option(help="the new password; generated and printed once if left out")
    ] = None,
) -> None:
    """Set a new password (ends the user's sessions and revokes their personal tokens)."""
    secret = password or secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
    try:
        with _connection() as conn:
            user = store.find_user(conn, username)
            store.update_user(conn, user.id, store.UserUpdate(password=secret))
    except ValidationError as exc:
        raise fail(exc) from exc
    console.print(f"password of [bold]{user.username}[/] changed")
    if password is None:
        console.print(f"new password (shown once): [bold]{escape(secret)}[/]")


@users_app.command("disable")
def disable_user(username: str) -> None:
    """Disable a user: their sessions and personal tokens stop working at once."""
    with _connection() as conn:
        user = store.find_user(conn, username)
        store.update_user(conn, user.id, store.UserUpdate(disabled=True))
    console.print(f"user [bold]{user.username}[/] disabled")


@tokens_app.command("create")
def create_token(
    name: str,
    role: Annotated[Role, typer.Option(help="admin, pm, ops or viewer")],
    customer: Annotated[str | None, typer.Option(help="for a viewer: its one customer")] = None,
    expires_in_days: Annotated[
        int, typer.Option(min=1, max=store.MAX_TOKEN_DAYS, help="every token expires")
    ] = store.DEFAULT_TOKEN_DAYS,
) -> None:
    """Create a service token; the secret is printed once. Made here (with database access)
    it has no creator, so no user's demotion revokes it: revoke it when it is no longer
    needed."""
    try:
        with _connection() as conn:
            token = store.create_token(
                conn,
                store.TokenCreate(
                    name=name,
                    role=role,
                    customer_id=_customer_id(conn, customer),
                    expires_in_days=expires_in_days,
                ),
            )
    except ValidationError as exc:
        raise fail(exc) from exc
    console.print(f"token {token.id} ({token.role.value}) created; secret (shown once):")
    # Printed plain so scripts can capture it: `TOKEN=$(fieldtrack tokens create … | tail -1)`.
    print(token.token)


@tokens_app.command("list")
def list_tokens() -> None:
    """Every token with its prefix, role and state (never the secret)."""
    with _connection() as conn:
        tokens = store.list_tokens(conn)
    table = Table(
        "id", "name", "prefix", "role", "customer", "user", "created by", "expires", "state"
    )
    for t in tokens:
        expires = t.expires_at.isoformat(timespec="minutes") if t.expires_at else ""
        table.add_row(
            str(t.id),
            t.name,
            t.prefix + "…",
            t.role.value,
            str(t.customer_id or ""),
            str(t.user_id or ""),
            str(t.created_by or ""),
            expires,
            "revoked" if t.revoked_at else "active",
        )
    console.print(table)


@tokens_app.command("revoke")
def revoke_token(token_id: int) -> None:
    """Revoke a token: it stops working at once."""
    with _connection() as conn:
        store.revoke_token(conn, token_id)
    console.print(f"token {token_id} revoked")
