"""Who is calling, and may they: bearer tokens, dashboard sessions, CSRF, object scoping.

Every route declares its access rule with one of `require(...)`, `authenticated` or
`public`; tests walk the route list and fail on a route without one (see ACCESS_RULE).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any, Literal

import psycopg
from fastapi import Depends, Form, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from itsdangerous import BadSignature, URLSafeTimedSerializer

from services.accounts import store
from services.accounts.roles import Audience, Permission, Principal
from services.api.deps import SAFE_METHODS, SESSION_COOKIE, ConnDep
from services.core.errors import AuthenticationError, NotFoundError, PermissionDeniedError

LOGIN_CSRF_COOKIE = "fieldtrack_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
# The attribute a dependency carries to say which access rule it is (read by the tests).
ACCESS_RULE = "__fieldtrack_access__"

bearer = HTTPBearer(
    auto_error=False,
    description="a token from `fieldtrack login`, `fieldtrack tokens create` or POST /auth/token",
)


class LoginRequired(AuthenticationError):
    """A page was opened without a session: the browser is sent to the login form."""


def _serializer(request: Request, purpose: str) -> URLSafeTimedSerializer:
    secret = request.app.state.settings.session_secret.get_secret_value()
    return URLSafeTimedSerializer(secret, salt=f"fieldtrack-{purpose}")


def sign(request: Request, purpose: str, value: str) -> str:
    return _serializer(request, purpose).dumps(value)


def unsign(request: Request, purpose: str, signed: str, max_age: timedelta) -> str | None:
    """The value if the signature is ours and fresh; None for anything else."""
    try:
        value = _serializer(request, purpose).loads(signed, max_age=int(max_age.total_seconds()))
    except BadSignature:
        return None
    return value if isinstance(value, str) else None


def set_cookie(request: Request, response: Response, name: str, value: str, ttl: timedelta) -> None:
    response.set_cookie(
        name,
        value,
        max_age=int(ttl.total_seconds()),
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.app.state.settings.session_cookie_secure,
    )


def _identify(
    request: Request, conn: psycopg.Connection, credentials: HTTPAuthorizationCredentials | None
) -> Principal | None:
    if credentials is not None:
        principal = store.token_principal(conn, credentials.credentials)
        if principal is None:
            raise AuthenticationError("the token is invalid, expired or revoked")
        return principal
    signed = request.cookies.get(SESSION_COOKIE)
    if signed:
        session_id = unsign(request, "session", signed, store.SESSION_TTL)
        if session_id is not None:
            return store.session_principal(conn, session_id)
    return None


def _check_csrf(principal: Principal, sent: str | None) -> None:
    if principal.csrf_token is None:  # bearer tokens are not sent by browsers on their own
        return
    if not sent or not hmac.compare_digest(sent.encode(), principal.csrf_token.encode()):
        raise PermissionDeniedError(
            f"missing or wrong CSRF token: send the session's token in the {CSRF_HEADER} header"
        )


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
Kind = Literal["api", "page", "form"]


def _rule(permissions: tuple[Permission, ...], kind: Kind) -> Callable[..., Principal]:
    """The dependency for one access rule; `kind` says how failures and CSRF are handled."""

    def authorise(principal: Principal | None, csrf_sent: str | None, method: str) -> Principal:
        if principal is None:
            if kind == "api":
                raise AuthenticationError(
                    "authentication required: send `Authorization: Bearer <token>`"
                )
            raise LoginRequired("log in to see this page")
        if method not in SAFE_METHODS:
            _check_csrf(principal, csrf_sent)
        missing = [p.value for p in permissions if not principal.can(p)]
        if missing:
            raise PermissionDeniedError(
                f"role {principal.role.value!r} may not do this (needs {', '.join(missing)})"
            )
        return principal

    if kind == "form":

        def from_form(
            request: Request,
            conn: ConnDep,
            credentials: Credentials,
            csrf_token: Annotated[str | None, Form()] = None,
        ) -> Principal:
            return authorise(_identify(request, conn, credentials), csrf_token, request.method)

        dependency: Callable[..., Principal] = from_form
    else:

        def from_request(request: Request, conn: ConnDep, credentials: Credentials) -> Principal:
            return authorise(
                _identify(request, conn, credentials),
                request.headers.get(CSRF_HEADER),
                request.method,
            )

        dependency = from_request
    setattr(dependency, ACCESS_RULE, (kind, frozenset(permissions)))
    return dependency


_RULES: dict[tuple[tuple[Permission, ...], Kind], Callable[..., Principal]] = {}


def require(*permissions: Permission, kind: Kind = "api") -> Callable[..., Principal]:
    """The dependency for "a caller holding all these permissions" (one per rule, so FastAPI
    resolves it once per request)."""
    key = (tuple(sorted(permissions)), kind)
    if key not in _RULES:
        _RULES[key] = _rule(key[0], kind)
    return _RULES[key]


def public() -> None:
    """No credentials needed (health, login, static assets, API docs)."""


setattr(public, ACCESS_RULE, ("public", frozenset()))

CurrentUser = Annotated[Principal, Depends(require())]
Public = Depends(public)


def access_rule(dependency: Any) -> tuple[str, frozenset[Permission]] | None:
    rule: tuple[str, frozenset[Permission]] | None = getattr(dependency, ACCESS_RULE, None)
    return rule


# --- object-level scoping ----------------------------------------------------------------

PROJECT_CUSTOMER = "SELECT customer_id FROM projects WHERE id = %s"


def visible_project(conn: psycopg.Connection, principal: Principal, project_id: int) -> None:
    """Raise NotFoundError unless the project exists and the caller may see it (a viewer
    asking for another customer's project learns nothing, not even that it exists)."""
    row = conn.execute(PROJECT_CUSTOMER, (project_id,)).fetchone()
    scope = principal.customer_scope
    if row is None or (scope is not None and row[0] != scope):
        raise NotFoundError(f"project {project_id} not found")


# --- audiences ----------------------------------------------------------------------------


AudienceQuery = Annotated[
    Audience | None,
    Query(
        description="customer: usage, adoption and completeness only (what customer viewers "
        "always get); internal: with business value and verdicts (staff only)"
    ),
]


def audience_of(principal: Principal, asked: Audience | None, default: Audience) -> Audience:
    """The audience to serve: a customer viewer may never have the internal one."""
    if principal.customer_scope is not None:
        if asked is Audience.INTERNAL:
            raise PermissionDeniedError(
                "customer viewers see the customer version of the analytics: leave out "
                "audience=internal"
            )
        return Audience.CUSTOMER
    return asked or default
