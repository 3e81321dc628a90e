"""A small HTTP client for the fieldtrack API, with errors that say what went wrong.

Every failure becomes an `ApiError` whose text is meant for a person at a terminal: the
API's own message, the fields or CSV rows it refused, or how to start an API that is not
running. Nothing here prints; the commands decide how to show it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from services.client.settings import ClientSettings
from services.core.errors import FieldtrackError

USER_AGENT = "fieldtrack-cli/0.1.0"
# Where FastAPI puts a parameter; not worth repeating in front of every field name.
LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})
MAX_TEXT = 300  # characters of a non-JSON error body worth showing


class ApiError(FieldtrackError):
    """The API could not be reached or refused the request. `status` is None when no
    HTTP answer came back at all."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class NotFound(ApiError):
    """404: no such object."""


class Conflict(ApiError):
    """409: a duplicate, or the object still has data depending on it."""


class Unauthorized(ApiError):
    """401/403: the API wants a (different) token."""


class Unavailable(ApiError):
    """503, or no answer: the API (or the broker behind it) cannot serve the request now."""


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class RowError:
    row: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.row}, {self.field}" if self.field else f"line {self.row}"
        return f"{where}: {self.message}"


class Invalid(ApiError):
    """422: the request, or some rows of an imported file, were refused; nothing changed."""

    def __init__(
        self,
        status: int | None,
        summary: str,
        field_errors: list[FieldError] | None = None,
        row_errors: list[RowError] | None = None,
    ) -> None:
        self.summary = summary
        self.field_errors = field_errors or []
        self.row_errors = row_errors or []
        lines = [str(e) for e in (*self.field_errors, *self.row_errors)]
        super().__init__(status, "\n".join([summary, *(f"  {line}" for line in lines)]))


def _field_name(loc: object) -> str:
    if not isinstance(loc, list | tuple) or not loc:
        return "request"
    parts = [str(p) for p in loc]
    if parts[0] in LOCATIONS and len(parts) > 1:
        parts = parts[1:]
    return ".".join(parts)


def _parse_invalid(status: int, body: object) -> Invalid:
    """Both 422 shapes: FastAPI's {detail: [{loc, msg, type}]} and the importers'
    {detail: str, errors: [{row, field, message}]}."""
    if not isinstance(body, dict):
        return Invalid(status, "the API refused the request as invalid")
    detail, errors = body.get("detail"), body.get("errors")
    if isinstance(errors, list):
        rows = [
            RowError(
                row=int(e.get("row", 0)),
                field=str(e["field"]) if e.get("field") else None,
                message=str(e.get("message", "")),
            )
            for e in errors
            if isinstance(e, dict)
        ]
        summary = detail if isinstance(detail, str) else f"{len(rows)} row error(s)"
        return Invalid(status, summary, row_errors=rows)
    if isinstance(detail, list):
        fields = [
            FieldError(_field_name(e.get("loc")), str(e.get("msg", "invalid")))
            for e in detail
            if isinstance(e, dict)
        ]
        return Invalid(status, "invalid input; nothing was changed", field_errors=fields)
    if isinstance(detail, str):
        return Invalid(status, detail)
    return Invalid(status, "the API refused the request as invalid")


def error_from_response(response: httpx.Response) -> ApiError:
    """The ApiError that a non-2xx response means."""
    status = response.status_code
    try:
        body: object = response.json()
    except ValueError:
        body = None
    if status == 422:
        return _parse_invalid(status, body)
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str) and detail:
        message = detail
    else:
        text = response.text.strip()
        reason = response.reason_phrase or "error"
        message = f"HTTP {status} {reason} from {response.request.url}" + (
            f": {text[:MAX_TEXT]}" if text else ""
        )
    if status == 404:
        return NotFound(status, message)
    if status == 409:
        return Conflict(status, message)
    if status in {401, 403}:
        return Unauthorized(
            status,
            f"{message} (run `fieldtrack login`, or set FIELDTRACK_API_TOKEN to a token "
            "whose role may do this)",
        )
    if status == 503:
        return Unavailable(status, message)
    if 400 <= status < 500:
        return Invalid(status, message)
    return ApiError(status, message)


class FieldtrackClient:
    """`httpx.Client` bound to one API: base URL, timeout and bearer token."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport
        )

    @classmethod
    def from_settings(
        cls, settings: ClientSettings, transport: httpx.BaseTransport | None = None
    ) -> FieldtrackClient:
        token = settings.api_token.get_secret_value() if settings.api_token else None
        return cls(
            settings.api_url, token=token, timeout_s=settings.api_timeout_s, transport=transport
        )

    def __enter__(self) -> FieldtrackClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        csv: str | None = None,
        stream: Iterable[bytes] | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request; the parsed JSON, the text of any other body, or None.
        A `stream` body is uploaded chunk by chunk (large files never sit in memory)."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        content: bytes | Iterable[bytes] | None = None
        headers = None
        if csv is not None:
            content = csv.encode("utf-8")
            headers = {"Content-Type": "text/csv; charset=utf-8", "Accept": "text/csv"}
        elif stream is not None:
            content = stream
            headers = {"Content-Type": content_type or "application/octet-stream"}
        try:
            response = self._http.request(
                method,
                path,
                params=query,
                json=json,
                content=content,
                headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.ConnectError as exc:
            raise Unavailable(
                None,
                f"the API is not reachable at {self.base_url} ({exc}); start it with "
                "`fieldtrack api` or `make demo`, or set FIELDTRACK_API_URL",
            ) from exc
        except httpx.TimeoutException as exc:
            outcome = "" if method == "GET" else "; the change may or may not have been made"
            raise Unavailable(
                None,
                f"the API at {self.base_url} did not answer within {self.timeout_s:g}s "
                f"({type(exc).__name__}){outcome}",
            ) from exc
        except httpx.HTTPError as exc:
            raise Unavailable(None, f"request to the API at {self.base_url} failed: {exc}") from exc
        try:
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            raise error_from_response(exc.response) from exc
        if response.status_code == 204 or not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            try:
                return response.json()
            except ValueError as exc:
                raise ApiError(
                    response.status_code, f"the API at {self.base_url} sent malformed JSON"
                ) from exc
        return response.text

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, json: Any = None, *, csv: str | None = None) -> Any:
        return self.request("POST", path, json=json, csv=csv)

    def upload(self, path: str, chunks: Iterable[bytes], content_type: str, timeout: float) -> Any:
        return self.request("POST", path, stream=chunks, content_type=content_type, timeout=timeout)

    def patch(self, path: str, json: Any) -> Any:
        return self.request("PATCH", path, json=json)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
