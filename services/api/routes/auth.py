"""Logging in and out: the dashboard's login form and session, and tokens for the CLI."""

from __future__ import annotations

import hmac
import secrets
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Annotated

import psycopg
from fastapi import APIRouter, Depends, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, Field

from services.accounts import store
from services.accounts.roles import Principal, Role
from services.accounts.throttle import LoginBusyError, LoginThrottle, verification_slot
from services.api.auth import (
    LOGIN_CSRF_COOKIE,
    CurrentUser,
    Public,
    require,
    set_cookie,
    sign,
    unsign,
)
from services.api.deps import SESSION_COOKIE, ConnDep
from services.api.errors import NOT_FOUND, ErrorBody, Responses
from services.api.routes.crud import ItemId
from services.api.templates import templates
from services.core.errors import AuthenticationError, PermissionDeniedError, RateLimitedError

router = APIRouter(tags=["auth"])

LOGIN_FORM_TTL = timedelta(hours=1)
WRONG_LOGIN = "wrong username or password"
LOGIN_RESPONSES: Responses = {
    401: {"model": ErrorBody, "description": WRONG_LOGIN},
    429: {"model": ErrorBody, "description": "too many failed logins; wait Retry-After seconds"},
    503: {"model": ErrorBody, "description": "too many logins at once; retry after Retry-After"},
}
FormText = Annotated[str, Form(max_length=256)]


def safe_next(target: str | None) -> str:
    """Only paths on this site: never an open redirect to somewhere else."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


def pooled(request: Request) -> AbstractContextManager[psycopg.Connection]:
    """A connection from the API's pool, committed and given back when the block ends."""
    pool: ConnectionPool[psycopg.Connection] = request.app.state.pool
    return pool.connection()


def password_login(request: Request, username: str, password: str) -> Principal:
    """Check a username and password, slowed down after repeated failures (see
    services/accounts/throttle.py); LoginBusyError when every password-check slot is taken.

    A pooled connection is held only around the database statements, never while waiting
    for a password-check slot or hashing: a flood of logins cannot take the connections
    every other request needs."""
    throttle: LoginThrottle = request.app.state.login_throttle
    address = request.client.host if request.client else "unknown"
    with pooled(request) as conn:
        attempt = throttle.begin(conn, username, address)
        row = store.login_row(conn, username)
    try:
        with verification_slot():
            principal, rehashed = store.check_password(row, password)
    except LoginBusyError:
        with pooled(request) as conn:
            throttle.cancel(conn, attempt)
        raise
    if principal is None:
        raise AuthenticationError(WRONG_LOGIN)
    with pooled(request) as conn:
        if rehashed is not None:
            store.store_rehash(conn, principal, rehashed)
        throttle.succeeded(conn, attempt)
    return principal


def _login_page(
    request: Request, next_path: str, error: str | None = None, status_code: int = 200
) -> HTMLResponse:
    csrf = secrets.token_urlsafe(32)
    response = templates.TemplateResponse(
        request,
        "login.html",
        {"next": next_path, "csrf_token": csrf, "error": error},
        status_code=status_code,
    )
    set_cookie(request, response, LOGIN_CSRF_COOKIE, sign(request, "login", csrf), LOGIN_FORM_TTL)
    return response


@router.get("/login", response_class=HTMLResponse, include_in_schema=False, dependencies=[Public])
def login_form(request: Request, next: str = "/") -> HTMLResponse:
    return _login_page(request, safe_next(next))


@router.post("/login", include_in_schema=False, dependencies=[Public])
def login(
    request: Request,
    username: FormText,
    password: FormText,
    csrf_token: FormText,
    next: FormText = "/",
) -> Response:
    next_path = safe_next(next)
    signed = request.cookies.get(LOGIN_CSRF_COOKIE)
    expected = unsign(request, "login", signed, LOGIN_FORM_TTL) if signed else None
    if expected is None or not hmac.compare_digest(expected.encode(), csrf_token.encode()):
        return _login_page(
            request,
            next_path,
            "The login form expired. Please try again.",
            status.HTTP_403_FORBIDDEN,
        )
    try:
        principal = password_login(request, username, password)
    except RateLimitedError as exc:
        busy = isinstance(exc, LoginBusyError)
        code = status.HTTP_503_SERVICE_UNAVAILABLE if busy else status.HTTP_429_TOO_MANY_REQUESTS
        page = _login_page(request, next_path, str(exc), code)
        page.headers["Retry-After"] = str(exc.retry_after_s)
        return page
    except AuthenticationError:
        return _login_page(request, next_path, WRONG_LOGIN, status.HTTP_401_UNAUTHORIZED)
    # committed before the response is sent: the browser follows the redirect at once
    with pooled(request) as conn:
        session_id, _ = store.start_session(conn, principal)
    response = RedirectResponse(next_path, status_code=status.HTTP_303_SEE_OTHER)
    set_cookie(
        request,
        response,
        SESSION_COOKIE,
        sign(request, "session", session_id),
        store.SESSION_TTL,
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


@router.post("/logout", include_in_schema=False)
def logout(
    request: Request, conn: ConnDep, caller: Annotated[Principal, Depends(require(kind="form"))]
) -> Response:
    signed = request.cookies.get(SESSION_COOKIE)
    session_id = unsign(request, "session", signed, store.SESSION_TTL) if signed else None
    if session_id:
        store.end_session(conn, session_id)
    response = RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


class Me(BaseModel):
    kind: str
    name: str
    role: Role
    customer_id: int | None


@router.get("/auth/me", response_model=Me, summary="Who the API takes you for")
def me(caller: CurrentUser) -> Me:
    return Me(kind=caller.kind, name=caller.name, role=caller.role, customer_id=caller.customer_id)


class PasswordLogin(BaseModel, extra="forbid"):
    username: Annotated[str, Field(min_length=1, max_length=64)]
    password: Annotated[str, Field(min_length=1, max_length=256)]
    name: store.TokenName = "cli"
    expires_in_days: store.PersonalTokenDays = store.DEFAULT_PERSONAL_TOKEN_DAYS


class PersonalTokenCreate(BaseModel, extra="forbid"):
    name: store.TokenName
    expires_in_days: store.PersonalTokenDays = store.DEFAULT_PERSONAL_TOKEN_DAYS


def _personal(conn: psycopg.Connection, user: Principal, name: str, days: int) -> store.NewToken:
    """A token acting for the user, only if they are still as they were when they
    authenticated (their role, customer and password unchanged, not disabled). Asked for
    with a token, it expires no later than that token, so personal tokens cannot renew
    themselves forever; a password or a dashboard session may ask for the full term."""
    return store.create_personal_token(conn, _user_of(user), user.epoch, name, days, caller=user)


@router.post(
    "/auth/token",
    response_model=store.NewToken,
    status_code=status.HTTP_201_CREATED,
    responses=LOGIN_RESPONSES,
    dependencies=[Public],
    summary="Exchange a username and password for a personal token (shown once)",
)
def token_from_password(
    body: PasswordLogin, request: Request, response: Response
) -> store.NewToken:
    try:
        user = password_login(request, body.username, body.password)
    except LoginBusyError as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            str(exc),
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from exc
    response.headers["Cache-Control"] = "no-store"
    with pooled(request) as conn:
        return _personal(conn, user, body.name, body.expires_in_days)


def _user_of(caller: Principal) -> int:
    if caller.user_id is None:
        raise PermissionDeniedError("a service token has no personal tokens; ask an admin")
    return caller.user_id


@router.get("/auth/tokens", response_model=list[store.Token], summary="Your personal tokens")
def my_tokens(caller: CurrentUser, conn: ConnDep) -> list[store.Token]:
    return store.list_tokens(conn, user_id=_user_of(caller))


@router.post(
    "/auth/tokens",
    response_model=store.NewToken,
    status_code=status.HTTP_201_CREATED,
    summary="A new personal token with your own role (shown once)",
)
def new_personal_token(
    body: PersonalTokenCreate, caller: CurrentUser, conn: ConnDep, response: Response
) -> store.NewToken:
    response.headers["Cache-Control"] = "no-store"
    return _personal(conn, caller, body.name, body.expires_in_days)


@router.post(
    "/auth/tokens/{item_id}/revoke",
    response_model=store.Token,
    responses=NOT_FOUND,
    summary="Revoke one of your personal tokens",
)
def revoke_personal_token(item_id: ItemId, caller: CurrentUser, conn: ConnDep) -> store.Token:
    return store.revoke_token(conn, item_id, user_id=_user_of(caller))
