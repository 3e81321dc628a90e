"""Users, API tokens and dashboard sessions in the database.

Passwords are argon2id hashes (argon2-cffi). Tokens and session ids are 256-bit random
strings stored only as SHA-256 digests, looked up by digest and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from psycopg.rows import class_row
from pydantic import BaseModel, Field, StringConstraints, model_validator

from services.accounts.roles import Principal, Role
from services.core.errors import ConflictError, InvalidInputError, NotFoundError
from services.registry.models import MAX_BIGINT
from services.registry.repository import translate_errors

TOKEN_PREFIX = "ft_"  # marks fieldtrack tokens for people and secret scanners
# How much of a token is kept in clear, so people can tell their tokens apart.
SHOWN_PREFIX_CHARS = 10
SESSION_TTL = timedelta(hours=12)
MAX_TOKEN_DAYS = 3650
# Writing last_used_at on every request would turn reads into writes; once a minute is enough.
LAST_USED_RESOLUTION = "1 minute"

_hasher = PasswordHasher()
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
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class NewToken(Token):
    token: str = Field(description="the secret; shown once, never stored")


class TokenCreate(BaseModel, extra="forbid"):
    name: TokenName
    role: Role
    customer_id: CustomerRef | None = None
    expires_in_days: Annotated[int, Field(ge=1, le=MAX_TOKEN_DAYS)] | None = None

    @model_validator(mode="after")
    def _scope(self) -> TokenCreate:
        _scope_matches_role(self.role, self.customer_id)
        return self


USER_COLUMNS = "id, username, role, customer_id, created_at, disabled_at"
TOKEN_COLUMNS = (
    "id, name, prefix, role, customer_id, user_id, created_at, expires_at, revoked_at, last_used_at"
)
INSERT_USER = f"""
INSERT INTO users (username, password_hash, role, customer_id)
VALUES (%(username)s, %(password_hash)s, %(role)s, %(customer_id)s)
RETURNING {USER_COLUMNS}
"""
SELECT_USER = f"SELECT {USER_COLUMNS} FROM users WHERE id = %s"
LIST_USERS = f"SELECT {USER_COLUMNS} FROM users ORDER BY username"
LOGIN_USER = """
SELECT id, username, role, customer_id, password_hash FROM users
WHERE username = %s AND disabled_at IS NULL
"""
INSERT_TOKEN = f"""
INSERT INTO api_tokens (name, digest, prefix, role, customer_id, user_id, expires_at)
VALUES (%(name)s, %(digest)s, %(prefix)s, %(role)s, %(customer_id)s, %(user_id)s,
        %(expires_at)s)
RETURNING {TOKEN_COLUMNS}
"""
LIST_TOKENS = f"SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at DESC, id DESC"
REVOKE_TOKEN = f"""
UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s
RETURNING {TOKEN_COLUMNS}
"""
TOKEN_PRINCIPAL = """
SELECT t.id, t.digest, coalesce(u.username, t.name), t.role, t.customer_id, t.user_id
FROM api_tokens t
LEFT JOIN users u ON u.id = t.user_id
WHERE t.digest = %s AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())
  AND (t.user_id IS NULL OR u.disabled_at IS NULL)
"""
TOUCH_TOKEN = f"""
UPDATE api_tokens SET last_used_at = now()
WHERE id = %s AND (last_used_at IS NULL OR last_used_at < now() - interval '{LAST_USED_RESOLUTION}')
"""
INSERT_SESSION = """
INSERT INTO sessions (digest, user_id, csrf_token, expires_at) VALUES (%s, %s, %s, %s)
"""
SESSION_PRINCIPAL = """
SELECT u.id, s.digest, u.username, u.role, u.customer_id, s.csrf_token FROM sessions s
JOIN users u ON u.id = s.user_id
WHERE s.digest = %s AND s.expires_at > now() AND u.disabled_at IS NULL
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
                "username": body.username, "password_hash": hash_password(body.password),
                "role": body.role.value, "customer_id": body.customer_id,
            },
        ).fetchone()  # fmt: skip
    if row is None:  # RETURNING always yields the row; this keeps mypy honest
        raise RuntimeError("INSERT … RETURNING returned nothing")
    return row


def get_user(conn: psycopg.Connection, user_id: int) -> User:
    with conn.cursor(row_factory=class_row(User)) as cur:
        row = cur.execute(SELECT_USER, (user_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"user {user_id} not found")
    return row


def find_user(conn: psycopg.Connection, username: str) -> User:
    with conn.cursor(row_factory=class_row(User)) as cur:
        row = cur.execute(
            f"SELECT {USER_COLUMNS} FROM users WHERE username = %s", (username.lower(),)
        ).fetchone()
    if row is None:
        raise NotFoundError(f"user {username!r} not found")
    return row


def list_users(conn: psycopg.Connection) -> list[User]:
    with conn.cursor(row_factory=class_row(User)) as cur:
        return cur.execute(LIST_USERS).fetchall()


def update_user(conn: psycopg.Connection, user_id: int, body: UserUpdate) -> User:
    current = get_user(conn, user_id)
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
    values: dict[str, Any] = {"id": user_id, "role": role.value, "customer_id": customer_id}
    sets = ["role = %(role)s", "customer_id = %(customer_id)s"]
    if body.password is not None:
        values["password_hash"] = hash_password(body.password)
        sets.append("password_hash = %(password_hash)s")
    if body.disabled is not None:
        sets.append(
            "disabled_at = " + ("coalesce(disabled_at, now())" if body.disabled else "NULL")
        )
    with conn.transaction():
        conn.execute(f"UPDATE users SET {', '.join(sets)} WHERE id = %(id)s", values)
        if current.role is Role.ADMIN and current.disabled_at is None:
            _keep_an_admin(conn)
        if body.password is not None or body.disabled or body.role is not None:
            # A changed password, role or a disabled account ends every open session.
            conn.execute("DELETE FROM sessions WHERE user_id = %s", (user_id,))
    return get_user(conn, user_id)


def delete_user(conn: psycopg.Connection, user_id: int) -> None:
    with conn.transaction(), translate_errors("user"):
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


def authenticate(conn: psycopg.Connection, username: str, password: str) -> Principal | None:
    """The user if the password is right; the same work is done when the user is unknown."""
    row = conn.execute(LOGIN_USER, (username.strip().lower(),)).fetchone()
    stored = row[4] if row else _DUMMY_HASH
    try:
        _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    if _hasher.check_needs_rehash(stored):
        conn.execute(
            "UPDATE users SET password_hash = %s WHERE id = %s", (hash_password(password), row[0])
        )
    return Principal("user", row[0], row[1], Role(row[2]), row[3], user_id=row[0])


def create_token(
    conn: psycopg.Connection, body: TokenCreate, user_id: int | None = None
) -> NewToken:
    _customer_exists(conn, body.customer_id)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = (
        datetime.now(UTC) + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    )
    with conn.cursor(row_factory=class_row(Token)) as cur:
        row = cur.execute(
            INSERT_TOKEN,
            {
                "name": body.name, "digest": digest(secret),
                "prefix": secret[:SHOWN_PREFIX_CHARS], "role": body.role.value,
                "customer_id": body.customer_id, "user_id": user_id, "expires_at": expires_at,
            },
        ).fetchone()  # fmt: skip
    if row is None:
        raise RuntimeError("INSERT … RETURNING returned nothing")
    return NewToken(**row.model_dump(), token=secret)


def list_tokens(conn: psycopg.Connection, user_id: int | None = None) -> list[Token]:
    with conn.cursor(row_factory=class_row(Token)) as cur:
        if user_id is None:
            return cur.execute(LIST_TOKENS).fetchall()
        return cur.execute(
            f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE user_id = %s "
            "ORDER BY created_at DESC, id DESC",
            (user_id,),
        ).fetchall()


def revoke_token(conn: psycopg.Connection, token_id: int, user_id: int | None = None) -> Token:
    """Revoke a token; with user_id, only one of that user's own tokens."""
    query = REVOKE_TOKEN
    params: tuple[Any, ...] = (token_id,)
    if user_id is not None:
        query = query.replace("WHERE id = %s", "WHERE id = %s AND user_id = %s")
        params = (token_id, user_id)
    with conn.cursor(row_factory=class_row(Token)) as cur:
        row = cur.execute(query, params).fetchone()
    if row is None:
        raise NotFoundError(f"token {token_id} not found")
    return row


def token_principal(conn: psycopg.Connection, secret: str) -> Principal | None:
    wanted = digest(secret)
    row = conn.execute(TOKEN_PRINCIPAL, (wanted,)).fetchone()
    if row is None or not hmac.compare_digest(bytes(row[1]), wanted):
        return None
    conn.execute(TOUCH_TOKEN, (row[0],))
    return Principal("token", row[0], row[2], Role(row[3]), row[4], user_id=row[5])


def start_session(conn: psycopg.Connection, user_id: int) -> tuple[str, str]:
    """A new dashboard session: (session id for the cookie, its anti-CSRF token)."""
    session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    conn.execute(PURGE_SESSIONS)
    conn.execute(
        INSERT_SESSION, (digest(session_id), user_id, csrf, datetime.now(UTC) + SESSION_TTL)
    )
    return session_id, csrf


def session_principal(conn: psycopg.Connection, session_id: str) -> Principal | None:
    wanted = digest(session_id)
    row = conn.execute(SESSION_PRINCIPAL, (wanted,)).fetchone()
    if row is None or not hmac.compare_digest(bytes(row[1]), wanted):
        return None
    return Principal(
        "user", row[0], row[2], Role(row[3]), row[4], user_id=row[0], csrf_token=row[5]
    )


def end_session(conn: psycopg.Connection, session_id: str) -> None:
    conn.execute(DELETE_SESSION, (digest(session_id),))
