"""How fieldtrack's own errors become HTTP responses, and their documented shapes.

Every 422 has FastAPI's shape (`detail` is a list of {loc, msg, type}), whether the
request failed its schema or a check against the data; other errors carry `detail` text.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import psycopg
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from services.api.auth import LoginRequired
from services.core.errors import (
    AuthenticationError,
    BrokerAdminError,
    ConflictError,
    DisconnectError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
)
from services.registry.imports import ImportRejected, RowError


class UnsupportedMediaType(Exception):
    """The request body is in a format the route does not take."""


class ErrorBody(BaseModel):
    detail: str = Field(examples=["customer 42 not found"])


class ImportErrorBody(BaseModel):
    # text for rejected rows; FastAPI's list of {loc, msg, type} when the request itself is
    # malformed (no file, wrong field)
    detail: str | list[dict[str, Any]] = Field(examples=["2 row error(s); nothing was imported"])
    errors: list[RowError] = Field(default_factory=list)


Responses = dict[int | str, dict[str, Any]]
NOT_FOUND: Responses = {404: {"model": ErrorBody, "description": "no such object"}}
CONFLICT: Responses = {
    409: {"model": ErrorBody, "description": "a duplicate, or the object still has data"}
}
BROKER_DOWN: Responses = {
    503: {
        "model": ErrorBody,
        "description": "the MQTT broker refused or is unreachable; nothing changed",
    }
}
# Every route behind a token may answer these (the access rules are in services/api/auth.py).
ACCESS: Responses = {
    401: {"model": ErrorBody, "description": "no token, or an unknown, expired or revoked one"},
    403: {"model": ErrorBody, "description": "the token's role may not do this"},
}
IMPORT_REJECTED: Responses = {
    422: {"model": ImportErrorBody, "description": "rows with errors; nothing was imported"}
}


def document_access_errors(app: FastAPI) -> None:
    """State 401 and 403 in every operation of the OpenAPI schema: any route behind a token
    may answer them."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                for code, spec in ACCESS.items():
                    operation.setdefault("responses", {}).setdefault(
                        str(code),
                        {
                            "description": spec["description"],
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ErrorBody"}
                                }
                            },
                        },
                    )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.setdefault("ErrorBody", ErrorBody.model_json_schema())
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _unstorable(msg: str, kind: str) -> JSONResponse:
    # FastAPI's 422 shape, so clients parse one kind of validation error
    return JSONResponse(
        {"detail": [{"loc": ["request"], "msg": msg, "type": kind}]},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(psycopg.errors.UntranslatableCharacter)
    @app.exception_handler(psycopg.errors.CharacterNotInRepertoire)
    def unstorable_text(request: Request, exc: psycopg.Error) -> JSONResponse:
        return _unstorable(
            "a text value holds a character that cannot be stored (NUL, \\u0000, or an "
            "invalid code point); remove it and retry",
            "unstorable_text",
        )

    @app.exception_handler(psycopg.DataError)
    def unstorable_value(request: Request, exc: psycopg.DataError) -> JSONResponse:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return _unstorable(f"a value the database cannot store: {first}", "unstorable_value")

    @app.exception_handler(OverflowError)
    def out_of_range(request: Request, exc: OverflowError) -> JSONResponse:
        return _unstorable(
            f"a date or number is out of range ({exc}); use dates between years 1 and 9999 in UTC",
            "out_of_range",
        )

    @app.exception_handler(AuthenticationError)
    def unauthenticated(request: Request, exc: AuthenticationError) -> Response:
        if isinstance(exc, LoginRequired):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(
                f"/login?{urlencode({'next': target})}", status_code=status.HTTP_303_SEE_OTHER
            )
        return JSONResponse(
            {"detail": str(exc)},
            status_code=status.HTTP_401_UNAUTHORIZED,
            headers={"WWW-Authenticate": "Bearer"},
        )

    @app.exception_handler(PermissionDeniedError)
    def forbidden(request: Request, exc: PermissionDeniedError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_403_FORBIDDEN)

    @app.exception_handler(RateLimitedError)
    def too_many(request: Request, exc: RateLimitedError) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)},
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(exc.retry_after_s)},
        )

    @app.exception_handler(RequestValidationError)
    def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes each bad `input`, which cannot always be encoded (NaN,
        # undecodable bytes) and may carry secrets; loc, msg and type are what people act on.
        detail = [
            {
                "loc": [str(p) if not isinstance(p, int) else p for p in err.get("loc", ())],
                "msg": str(err.get("msg", "invalid")),
                "type": str(err.get("type", "invalid")),
            }
            for err in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(NotFoundError)
    def not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(ConflictError)
    def conflict(request: Request, exc: ConflictError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_409_CONFLICT)

    @app.exception_handler(InvalidInputError)
    def invalid(request: Request, exc: InvalidInputError) -> JSONResponse:
        loc = [exc.location, exc.field] if exc.field else [exc.location]
        return JSONResponse(
            {"detail": [{"loc": loc, "msg": str(exc), "type": "invalid_input"}]},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.exception_handler(ImportRejected)
    def rejected(request: Request, exc: ImportRejected) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc), "errors": [e.model_dump() for e in exc.errors]},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.exception_handler(UnsupportedMediaType)
    def unsupported(request: Request, exc: UnsupportedMediaType) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
        )

    @app.exception_handler(BrokerAdminError)
    def broker_down(request: Request, exc: BrokerAdminError) -> JSONResponse:
        # a DisconnectError comes after the commit: the change stands, only the kick failed
        done = "" if isinstance(exc, DisconnectError) else "; nothing was changed"
        return JSONResponse(
            {"detail": f"{exc}{done}"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE
        )
