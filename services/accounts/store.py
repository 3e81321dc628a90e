"""Users, API tokens and dashboard sessions in the database.

Passwords are argon2id hashes (argon2-cffi). Tokens and session ids are 256-bit random
strings stored only as SHA-256 digests, looked up by digest and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from psycopg.rows import class_row
from pydantic import BaseModel, BeforeValidator, Field, StringConstraints, model_validator

from services.accounts.roles import Principal, Role
from services.core.db import MAX_BIGINT, fetch_one, translate_errors
from services.core.errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
)

TOKEN_PREFIX = "ft_"  # marks fieldtrack tokens for people and secret scanners
# How much of a token is kept in clear, so people can tell their tokens apart.
SHOWN_PREFIX_CHARS = 10
SESSION_TTL = timedelta(hours=12)
# Every token expires: a forgotten laptop, a leaked CLI file or a CI secret copied somewhere
# stops working by itself. The default is what `fieldtrack login` has always asked for.
DEFAULT_TOKEN_DAYS = 90
MAX_TOKEN_DAYS = 365
DEFAULT_PERSONAL_TOKEN_DAYS = DEFAULT_TOKEN_DAYS
MAX_PERSONAL_TOKEN_DAYS = MAX_TOKEN_DAYS
# Writing last_used_at on every request would turn reads into writes; once a minute is enough.
LAST_USED_RESOLUTION = "1 minute"

_hasher = PasswordHasher()
# What one argon2 hash or check holds in memory (KiB): the login throttle budgets by it.
PASSWORD_MEMORY_KIB = _hasher.memory_cost
# Verified against when the username is unknown, so both cases take the same time.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

Username = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_lower=True, pattern=r"^[a-z0-9][a-z0-9._@-]{1,63}$"
    ),
]
Password = Annotated[str, StringConstraints(min_length=12, max_length=256)]
TokenName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
CustomerRef = Annotated[int, Field(ge=1, le=MAX_BIGINT)]


def _scope_matches_role(role: Role | None, customer_id: int | None) -> None:
    if role is None:
        return
    if role is Role.VIEWER and customer_id is None:
        raise ValueError("a viewer needs customer_id: the one customer they may see")
    if role is not Role.VIEWER and customer_id is not None:
        raise ValueError("only a viewer is tied to one customer; leave customer_id out")


class User(BaseModel):
    id: int
    username: str
    role: Role
    customer_id: int | None
    created_at: datetime
    disabled_at: datetime | None


class UserCreate(BaseModel, extra="forbid"):
    username: Username
    password: Password
    role: Role
    customer_id: CustomerRef | None = None

    @model_validator(mode="after")
    def _scope(self) -> UserCreate:
        _scope_matches_role(self.role, self.customer_id)
        return self


class UserUpdate(BaseModel, extra="forbid"):
    password: Password | None = None
    role: Role | None = None
    customer_id: CustomerRef | None = None
    disabled: bool | None = None


class Token(BaseModel):
    id: int
    name: str
    prefix: str
    role: Role
    customer_id: int | None
    user_id: int | None
    created_by: int | None = Field(
        description="service tokens: the user whose request made it (revoked when their role "
        "changes or they are disabled or deleted); null for personal tokens and tokens made "
        "with database access"
    )
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class NewToken(Token):
    token: str = Field(description="the secret; shown once, never stored")


def _must_expire(kind: str) -> Callable[[object], object]:
    def days_given(days: object) -> object:
        """A token's lifetime as asked for; `null` is refused with what to send."""
        if days is None:
            raise ValueError(
                f"{kind} tokens always expire: give 1 to {MAX_TOKEN_DAYS} days, or leave "
                f"expires_in_days out for {DEFAULT_TOKEN_DAYS}"
            )
        return days

    return days_given


PersonalTokenDays = Annotated[
    int, Field(ge=1, le=MAX_TOKEN_DAYS), BeforeValidator(_must_expire("personal"))
]
ServiceTokenDays = Annotated[
    int, Field(ge=1, le=MAX_TOKEN_DAYS), BeforeValidator(_must_expire("service"))
]


class TokenCreate(BaseModel, extra="forbid"):
    name: TokenName
    role: Role
    customer_id: CustomerRef | None = None
    expires_in_days: ServiceTokenDays = DEFAULT_TOKEN_DAYS

    @model_validator(mode="after")
    def _scope(self) -> TokenCreate:
        _scope_matches_role(self.role, self.customer_id)
        return self


USER_COLUMNS = "id, username, role, customer_id, created_at, disabled_at"
TOKEN_COLUMNS = (
    "id, name, prefix, role, customer_id, user_id, created_by, created_at, expires_at, "
    "revoked_at, last_used_at"
)
INSERT_USER = f"""
INSERT INTO users (username, password_hash, role, customer_id)
VALUES (%(username)s, %(password_hash)s, %(role)s, %(customer_id)s)
RETURNING {USER_COLUMNS}
"""
SELECT_USER = f"SELECT {USER_COLUMNS} FROM users WHERE id = %s"
FIND_USER = f"SELECT {USER_COLUMNS} FROM users WHERE username = %s"
LOCK_USER = f"SELECT {USER_COLUMNS} FROM users WHERE id = %s FOR UPDATE"
LIST_USERS = f"SELECT {USER_COLUMNS} FROM users ORDER BY username"
LOGIN_USER = """
SELECT id, username, role, customer_id, password_hash, auth_epoch FROM users
WHERE username = %s AND disabled_at IS NULL
"""
# Only within the generation the password was checked in: a reset meanwhile stays.
REHASH_PASSWORD = "UPDATE users SET password_hash = %s WHERE id = %s AND auth_epoch = %s"
# Every SET expression reads the row as it was, so the generation moves exactly when what
# the user's credentials stand for changes, however concurrent admins interleave.
UPDATE_USER = """
UPDATE users SET
    auth_epoch = auth_epoch + CASE
        WHEN role IS DISTINCT FROM %(role)s OR customer_id IS DISTINCT FROM %(customer_id)s
          OR %(password_hash)s::text IS NOT NULL
          OR (disabled_at IS NOT NULL) IS DISTINCT FROM coalesce(%(disabled)s::boolean,
                                                                  disabled_at IS NOT NULL)
        THEN 1 ELSE 0 END,
    role = %(role)s,
    customer_id = %(customer_id)s,
    password_hash = coalesce(%(password_hash)s::text, password_hash),
    disabled_at = CASE WHEN %(disabled)s::boolean IS NULL THEN disabled_at
                       WHEN %(disabled)s::boolean THEN coalesce(disabled_at, now())
                       END
WHERE id = %(id)s
RETURNING auth_epoch
"""
# Credentials issued under an earlier generation end with it (the lookups below refuse them
# anyway; this makes listings say so, and keeps no dead session rows).
REVOKE_STALE_TOKENS = """
UPDATE api_tokens SET revoked_at = now()
WHERE user_id = %(id)s AND revoked_at IS NULL AND user_epoch <> %(epoch)s
"""
END_STALE_SESSIONS = "DELETE FROM sessions WHERE user_id = %(id)s AND user_epoch <> %(epoch)s"
# The service tokens a user made end when they stop being an enabled admin.
REVOKE_CREATED_TOKENS = """
UPDATE api_tokens SET revoked_at = now() WHERE created_by = %s AND revoked_at IS NULL
"""
# Run after any revocation: what a revoked token made (and what that made) ends with it.
REVOKE_DESCENDANTS = """
WITH RECURSIVE doomed AS (
    SELECT t.id FROM api_tokens t JOIN api_tokens p ON p.id = t.parent_id
    WHERE t.revoked_at IS NULL AND p.revoked_at IS NOT NULL
    UNION
    SELECT t.id FROM api_tokens t JOIN doomed d ON t.parent_id = d.id
)
UPDATE api_tokens SET revoked_at = now()
WHERE revoked_at IS NULL AND id IN (SELECT id FROM doomed)
"""
INSERT_TOKEN = f"""
INSERT INTO api_tokens (name, digest, prefix, role, customer_id, user_id, expires_at,
                        created_by, parent_id)
VALUES (%(name)s, %(digest)s, %(prefix)s, %(role)s, %(customer_id)s, NULL, %(expires_at)s,
        %(created_by)s, %(parent_id)s)
RETURNING {TOKEN_COLUMNS}
"""
# What a token-authenticated request needs of the token it came with: tokens it makes expire
# no later, and service tokens it makes have its creator.
PARENT_TOKEN = "SELECT expires_at, created_by FROM api_tokens WHERE id = %s"
# The creator of a new service token, locked (FOR SHARE) while the token is stored: a
# concurrent change of the user waits, then revokes the new token too; a change that came
# first leaves no row here. `epoch` NULL: the caller was a service token, no generation.
LOCK_CREATOR = """
SELECT 1 FROM users
WHERE id = %(id)s AND role = 'admin' AND disabled_at IS NULL
  AND auth_epoch = coalesce(%(epoch)s::integer, auth_epoch)
FOR SHARE
"""
# Role, customer and generation come from the user's row as it is now, and only if it is
# still the generation the caller authenticated under (NULL: whatever it is now). FOR SHARE
# makes a concurrent change of the user wait for this token, so it revokes it too.
INSERT_PERSONAL_TOKEN = f"""
INSERT INTO api_tokens (name, digest, prefix, role, customer_id, user_id, expires_at,
                        user_epoch, parent_id)
SELECT %(name)s, %(digest)s, %(prefix)s, u.role, u.customer_id, u.id, %(expires_at)s,
       u.auth_epoch, %(parent_id)s
FROM users u
WHERE u.id = %(user_id)s AND u.disabled_at IS NULL
  AND u.auth_epoch = coalesce(%(epoch)s::integer, u.auth_epoch)
FOR SHARE
RETURNING {TOKEN_COLUMNS}
"""
LIST_TOKENS = f"SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at DESC, id DESC"
LIST_USER_TOKENS = f"""
SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE user_id = %s ORDER BY created_at DESC, id DESC
"""
REVOKE_TOKEN = f"""
UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s
RETURNING {TOKEN_COLUMNS}
"""
REVOKE_USER_TOKEN = f"""
UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s AND user_id = %s
RETURNING {TOKEN_COLUMNS}
"""
# A service token acts with its own role and customer, and only while its creator (if it
# has one) is an enabled admin; a personal token with its user's current role and customer,
# and only while it belongs to the user's current generation and expires.
TOKEN_PRINCIPAL = """
SELECT t.id, t.digest, coalesce(u.username, t.name),
       CASE WHEN t.user_id IS NULL THEN t.role ELSE u.role END,
       CASE WHEN t.user_id IS NULL THEN t.customer_id ELSE u.customer_id END,
       t.user_id, t.user_epoch
FROM api_tokens t
LEFT JOIN users u ON u.id = t.user_id
LEFT JOIN users c ON c.id = t.created_by
LEFT JOIN api_tokens p ON p.id = t.parent_id
WHERE t.digest = %s AND t.revoked_at IS NULL AND t.expires_at > now()
  AND p.revoked_at IS NULL
  AND (t.user_id IS NULL OR (u.disabled_at IS NULL AND t.user_epoch = u.auth_epoch))
  AND (t.created_by IS NULL OR (c.role = 'admin' AND c.disabled_at IS NULL))
"""
TOUCH_TOKEN = f"""
UPDATE api_tokens SET last_used_at = now()
WHERE id = %s AND (last_used_at IS NULL OR last_used_at < now() - interval '{LAST_USED_RESOLUTION}')
"""
INSERT_SESSION = """
INSERT INTO sessions (digest, user_id, csrf_token, expires_at, user_epoch)
SELECT %(digest)s, u.id, %(csrf)s, %(expires_at)s, u.auth_epoch FROM users u
WHERE u.id = %(user_id)s AND u.auth_epoch = %(epoch)s AND u.disabled_at IS NULL
FOR SHARE
"""
SESSION_PRINCIPAL = """
SELECT u.id, s.digest, u.username, u.role, u.customer_id, s.csrf_token, u.auth_epoch
FROM sessions s
JOIN users u ON u.id = s.user_id
WHERE s.digest = %s AND s.expires_at > now() AND u.disabled_at IS NULL
  AND s.user_epoch = u.auth_epoch
"""
DELETE_SESSION = "DELETE FROM sessions WHERE digest = %s"
PURGE_SESSIONS = "DELETE FROM sessions WHERE expires_at <= now()"
ADMIN_EXISTS = "SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin' AND disabled_at IS NULL)"


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _customer_exists(conn: psycopg.Connection, customer_id: int | None) -> None:
    if customer_id is None:
        return
    if conn.execute("SELECT 1 FROM customers WHERE id = %s", (customer_id,)).fetchone() is None:
        raise InvalidInputError(f"customer {customer_id} does not exist", field="customer_id")


def create_user(conn: psycopg.Connection, body: UserCreate) -> User:
    _customer_exists(conn, body.customer_id)
    with translate_errors("user"), conn.cursor(row_factory=class_row(User)) as cur:
        row = cur.execute(
            INSERT_USER,
            {
                "username": body.username,
                "password_hash": hash_password(body.password),
                "role": body.role.value,
                "customer_id": body.customer_id,
            },
        ).fetchone()
    if row is None:  # RETURNING always yields the row; this keeps mypy honest
        raise RuntimeError("INSERT … RETURNING returned nothing")
    return row


def get_user(conn: psycopg.Connection, user_id: int) -> User:
    return fetch_one(conn, SELECT_USER, (user_id,), User, f"user {user_id}")


def find_user(conn: psycopg.Connection, username: str) -> User:
    return fetch_one(conn, FIND_USER, (username.lower(),), User, f"user {username!r}")


def list_users(conn: psycopg.Connection) -> list[User]:
    with conn.cursor(row_factory=class_row(User)) as cur:
        return cur.execute(LIST_USERS).fetchall()


def update_user(conn: psycopg.Connection, user_id: int, body: UserUpdate) -> User:
    """Change a user; any change of role, customer, password or disabled state starts a new
    credential generation: the user's personal tokens are revoked and sessions ended. A
    change of role, or disabling, also revokes the service tokens the user made."""
    # Hashed before the transaction: argon2 takes a while and the user's row stays unlocked.
    password_hash = hash_password(body.password) if body.password is not None else None
    with conn.transaction():
        current = fetch_one(conn, LOCK_USER, (user_id,), User, f"user {user_id}")
        role = body.role or current.role
        customer_id = (
            body.customer_id if "customer_id" in body.model_fields_set else current.customer_id
        )
        if role is not Role.VIEWER and "customer_id" not in body.model_fields_set:
            customer_id = None
        try:
            _scope_matches_role(role, customer_id)
        except ValueError as exc:
            raise InvalidInputError(str(exc), field="customer_id") from exc
        _customer_exists(conn, customer_id)
        values: dict[str, Any] = {
            "id": user_id,
            "role": role.value,
            "customer_id": customer_id,
            "password_hash": password_hash,
            "disabled": body.disabled,
        }
        row = conn.execute(UPDATE_USER, values).fetchone()
        if row is None:  # the row is locked above; this keeps mypy honest
            raise RuntimeError("UPDATE … RETURNING returned nothing")
        if current.role is Role.ADMIN and current.disabled_at is None:
            _keep_an_admin(conn)
        generation = {"id": user_id, "epoch": row[0]}
        conn.execute(REVOKE_STALE_TOKENS, generation)
        conn.execute(END_STALE_SESSIONS, generation)
        # Any role change: only admins make service tokens, so it is always a demotion.
        if role is not current.role or body.disabled:
            conn.execute(REVOKE_CREATED_TOKENS, (user_id,))
        conn.execute(REVOKE_DESCENDANTS)
    return get_user(conn, user_id)


def delete_user(conn: psycopg.Connection, user_id: int) -> None:
    with conn.transaction(), translate_errors("user"):
        conn.execute(REVOKE_CREATED_TOKENS, (user_id,))
        conn.execute(REVOKE_DESCENDANTS)
        deleted = conn.execute(
            "DELETE FROM users WHERE id = %s RETURNING role", (user_id,)
        ).fetchone()
        if deleted is None:
            raise NotFoundError(f"user {user_id} not found")
        if deleted[0] == Role.ADMIN.value:
            _keep_an_admin(conn)


def _keep_an_admin(conn: psycopg.Connection) -> None:
    # Raising inside the caller's transaction undoes the change.
    if not admin_exists(conn):
        raise ConflictError("that would leave no enabled admin; make another admin first")


def admin_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute(ADMIN_EXISTS).fetchone()
    return bool(row and row[0])


LoginRow = tuple[Any, ...] | None


def login_row(conn: psycopg.Connection, username: str) -> LoginRow:
    """What a login checks the password against: the enabled user's row, or None."""
    return conn.execute(LOGIN_USER, (username.strip().lower(),)).fetchone()


def check_password(row: LoginRow, password: str) -> tuple[Principal | None, str | None]:
    """The user if the password is right, and a new hash to store when the stored one has
    weaker parameters. No database: the slow part of a login holds no connection. The same
    work is done when the user is unknown."""
    stored = row[4] if row else _DUMMY_HASH
    try:
        _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None, None
    if row is None:
        return None, None
    rehashed = hash_password(password) if _hasher.check_needs_rehash(stored) else None
    user = Principal("user", row[0], row[1], Role(row[2]), row[3], user_id=row[0], epoch=row[5])
    return user, rehashed


def store_rehash(conn: psycopg.Connection, user: Principal, password_hash: str) -> None:
    conn.execute(REHASH_PASSWORD, (password_hash, user.user_id, user.epoch))


def authenticate(conn: psycopg.Connection, username: str, password: str) -> Principal | None:
    """The user if the password is right (holding `conn` throughout: for operators and
    tests; the login routes use the three steps above)."""
    user, rehashed = check_password(login_row(conn, username), password)
    if user is not None and rehashed is not None:
        store_rehash(conn, user, rehashed)
    return user


def _new_secret() -> tuple[str, dict[str, Any]]:
    """A token secret, and what of it is stored."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return secret, {"digest": digest(secret), "prefix": secret[:SHOWN_PREFIX_CHARS]}


CHANGED_WHILE_RUNNING = "your account was changed or disabled while this request ran; log in again"


def _expiry(conn: psycopg.Connection, days: int, caller: Principal | None) -> datetime:
    """`days` from now, but never after the token the caller authenticated with: a token
    cannot mint a successor that outlives it, so a chain of tokens still ends."""
    expires = datetime.now(UTC) + timedelta(days=days)
    if caller is not None and caller.kind == "token":
        parent = conn.execute(PARENT_TOKEN, (caller.id,)).fetchone()
        if parent is not None and parent[0] is not None:
            expires = min(expires, parent[0])
    return expires


def create_token(
    conn: psycopg.Connection,
    body: TokenCreate,
    user_id: int | None = None,
    *,
    caller: Principal | None = None,
) -> NewToken:
    """A service token made by `caller` (None: an operator with database access); with
    user_id, a personal token of that user (whose role and customer body must name)."""
    if user_id is not None:
        user = get_user(conn, user_id)
        if (user.role, user.customer_id) != (body.role, body.customer_id):
            raise InvalidInputError(
                "a personal token has its user's role and customer", field="role"
            )
        return create_personal_token(conn, user_id, None, body.name, body.expires_in_days)
    _customer_exists(conn, body.customer_id)
    secret, stored = _new_secret()
    with conn.transaction():
        created_by = _lock_creator(conn, caller)
        with conn.cursor(row_factory=class_row(Token)) as cur:
            row = cur.execute(
                INSERT_TOKEN,
                {
                    "name": body.name,
                    "role": body.role.value,
                    "customer_id": body.customer_id,
                    "expires_at": _expiry(conn, body.expires_in_days, caller),
                    "created_by": created_by,
                    "parent_id": _parent(caller),
                    **stored,
                },
            ).fetchone()
    if row is None:
        raise RuntimeError("INSERT … RETURNING returned nothing")
    return NewToken(**row.model_dump(), token=secret)


def _parent(caller: Principal | None) -> int | None:
    """The token a request came with, which a token it makes ends with."""
    return caller.id if caller is not None and caller.kind == "token" else None


def _lock_creator(conn: psycopg.Connection, caller: Principal | None) -> int | None:
    """Who is answerable for a new service token: the caller's user, or for a service token
    the user who made it; locked, and only while an enabled admin in the generation the
    caller authenticated under."""
    if caller is None:
        return None
    creator, epoch = caller.user_id, caller.epoch
    if creator is None and caller.kind == "token":
        parent = conn.execute(PARENT_TOKEN, (caller.id,)).fetchone()
        creator, epoch = (parent[1] if parent else None), None
    if creator is None:
        return None
    if conn.execute(LOCK_CREATOR, {"id": creator, "epoch": epoch}).fetchone() is None:
        raise AuthenticationError(CHANGED_WHILE_RUNNING)
    return creator


def create_personal_token(
    conn: psycopg.Connection,
    user_id: int,
    epoch: int | None,
    name: str,
    days: int,
    *,
    caller: Principal | None = None,
) -> NewToken:
    """A token acting for a user, with their role and customer, valid until `days` pass (and
    never after the token `caller` came with) or the user's credential generation moves on.
    `epoch` is the generation the caller authenticated under: if the user changed since, no
    token is made."""
    if not 1 <= days <= MAX_PERSONAL_TOKEN_DAYS:
        raise InvalidInputError(
            f"personal tokens expire within 1 to {MAX_PERSONAL_TOKEN_DAYS} days",
            field="expires_in_days",
        )
    secret, stored = _new_secret()
    with conn.cursor(row_factory=class_row(Token)) as cur:
        row = cur.execute(
            INSERT_PERSONAL_TOKEN,
            {
                "name": name,
                "user_id": user_id,
                "epoch": epoch,
                "expires_at": _expiry(conn, days, caller),
                "parent_id": _parent(caller),
                **stored,
            },
        ).fetchone()
    if row is None:
        raise AuthenticationError(CHANGED_WHILE_RUNNING)
    return NewToken(**row.model_dump(), token=secret)


def list_tokens(conn: psycopg.Connection, user_id: int | None = None) -> list[Token]:
    with conn.cursor(row_factory=class_row(Token)) as cur:
        if user_id is None:
            return cur.execute(LIST_TOKENS).fetchall()
        return cur.execute(LIST_USER_TOKENS, (user_id,)).fetchall()


def revoke_token(conn: psycopg.Connection, token_id: int, user_id: int | None = None) -> Token:
    """Revoke a token, and the tokens made with it; with user_id, only one of that user's
    own tokens."""
    with conn.transaction(), conn.cursor(row_factory=class_row(Token)) as cur:
        if user_id is None:
            row = cur.execute(REVOKE_TOKEN, (token_id,)).fetchone()
        else:
            row = cur.execute(REVOKE_USER_TOKEN, (token_id, user_id)).fetchone()
        if row is not None:
            cur.execute(REVOKE_DESCENDANTS)
    if row is None:
        raise NotFoundError(f"token {token_id} not found")
    return row


def token_principal(conn: psycopg.Connection, secret: str) -> Principal | None:
    wanted = digest(secret)
    row = conn.execute(TOKEN_PRINCIPAL, (wanted,)).fetchone()
    if row is None or not hmac.compare_digest(bytes(row[1]), wanted):
        return None
    conn.execute(TOUCH_TOKEN, (row[0],))
    return Principal("token", row[0], row[2], Role(row[3]), row[4], user_id=row[5], epoch=row[6])


def start_session(conn: psycopg.Connection, user: Principal) -> tuple[str, str]:
    """A new dashboard session for a user who just authenticated: (session id for the
    cookie, its anti-CSRF token). Refused if the user changed since they authenticated."""
    session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    conn.execute(PURGE_SESSIONS)
    made = conn.execute(
        INSERT_SESSION,
        {
            "digest": digest(session_id),
            "csrf": csrf,
            "user_id": user.user_id,
            "epoch": user.epoch,
            "expires_at": datetime.now(UTC) + SESSION_TTL,
        },
    )
    if made.rowcount != 1:
        raise AuthenticationError("your account was changed or disabled while logging in")
    return session_id, csrf


def session_principal(conn: psycopg.Connection, session_id: str) -> Principal | None:
    wanted = digest(session_id)
    row = conn.execute(SESSION_PRINCIPAL, (wanted,)).fetchone()
    if row is None or not hmac.compare_digest(bytes(row[1]), wanted):
        return None
    return Principal(
        "user",
        row[0],
        row[2],
        Role(row[3]),
        row[4],
        user_id=row[0],
        csrf_token=row[5],
        epoch=row[6],
    )


def end_session(conn: psycopg.Connection, session_id: str) -> None:
    conn.execute(DELETE_SESSION, (digest(session_id),))
