"""API abuse (issue #9): schemathesis against the OpenAPI schema with every role's token, and
hand-made hostile requests. Nothing a client sends may produce a 500; every refusal is a 4xx
that says what to fix. Roles × own / foreign ids are covered by test_access.py.

Schemathesis runs against a scratch database of its own (it creates, changes and deletes at
random), with bounded examples per operation so it stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from pydantic import SecretStr
from schemathesis.core.result import Err
from schemathesis.specs.openapi import checks as openapi_checks

from services.accounts.roles import Role
from services.api.app import create_app
from services.core.migrate import migrate
from services.core.settings import Settings
from services.infra.local import LocalServices
from services.registry import upserts as registry
from tests.integration.conftest import (
    api_client,
    forget_broker_identities,
    mint_token,
    scratch_database,
)

ROLES = (Role.ADMIN, Role.PM, Role.OPS, Role.VIEWER)
EXAMPLES_PER_OPERATION = 4
# Revoking tokens at random would revoke the run's own tokens: covered by test_auth.py.
SKIPPED = {("POST", "/tokens/{item_id}/revoke"), ("POST", "/auth/tokens/{item_id}/revoke")}
SQL_METACHARACTERS = (
    "'",
    "' OR '1'='1",
    "'; DROP TABLE customers; --",
    '"',
    "\\",
    "%",
    "_",
    "\x00",
    "$$",
    "/*",
    "); SELECT pg_sleep(5); --",
)


@dataclass(frozen=True)
class Scratch:
    settings: Settings
    url: str
    customer_id: int
    project_id: int


@pytest.fixture(scope="module")
def scratch(local_services: LocalServices, settings: Settings) -> Iterator[Scratch]:
    app_url = settings.database_url.get_secret_value()
    with scratch_database(local_services, app_url, "fieldtrack_abuse") as url:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            customer_id = registry.upsert_customer(conn, "Abuse Co", "tail", "retail", "adoption")
            project_id = registry.upsert_project(
                conn,
                customer_id,
                "Abuse project",
                contract_value=1,
                currency="EUR",
                go_live_date=None,
                status="live",
            )
        scoped = settings.model_copy(update={"database_url": SecretStr(url)})
        try:
            yield Scratch(scoped, url, customer_id, project_id)
        finally:
            forget_broker_identities(settings, url)


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
def test_schemathesis_no_server_errors_and_responses_match_the_schema(
    scratch: Scratch, role: Role
) -> None:
    customer = scratch.customer_id if role is Role.VIEWER else None
    token = mint_token(scratch.url, role, customer, name=f"schemathesis-{role.value}")
    app = create_app(scratch.settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = {"Authorization": f"Bearer {token}"}
    checks = [
        openapi_checks.response_schema_conformance,
        openapi_checks.content_type_conformance,
        openapi_checks.status_code_conformance,
    ]
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            failures.append(f"an operation the schema cannot describe: {result.err()}")
            continue
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue
        operations += 1

        @hypothesis_settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case[Any]) -> None:
            response = case.call(headers=headers)
            where = f"{case.method} {case.formatted_path} -> {response.status_code}"
            if response.status_code >= 500:
                failures.append(f"{where}: {response.text[:300]}")
                return
            try:
                case.validate_response(response, checks=checks, headers=headers)
            except BaseException as exc:  # a FailureGroup: collected, reported together
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures.append(f"{where}: {str(exc).strip()[:400]}")

        check()
    print(f"\n[schemathesis] {role.value}: {operations} operations, {len(failures)} failures")
    assert not failures, "\n".join(sorted(set(failures))[:30])


# --- hand-made hostile requests ---------------------------------------------------------------


@pytest.fixture(scope="module")
def admin(scratch: Scratch) -> Iterator[TestClient]:
    with api_client(scratch.settings, mint_token(scratch.url, name="abuse-admin")) as client:
        yield client


def _actionable(response: object, *statuses: int) -> dict[str, object]:
    status = response.status_code  # type: ignore[attr-defined]
    assert status in statuses, (status, response.text[:500])  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body.get("detail"), f"a {status} must say what to fix: {body}"
    return body  # type: ignore[no-any-return]


def test_oversized_bodies_are_refused(admin: TestClient) -> None:
    big = "x" * (5 * 1024 * 1024)
    _actionable(
        admin.post("/customers", json={"name": big, "tier": "tail", "industry": "retail"}), 413, 422
    )
    _actionable(
        admin.post(
            "/devices/batch", json={"devices": [{"serial": f"s{i}"} for i in range(200_000)]}
        ),
        413,
        422,
    )
    csv = b"name,tier,industry\n" + b"a,tail,retail\n" * 600_000
    _actionable(
        admin.post("/imports/customers", content=csv, headers={"Content-Type": "text/csv"}),
        413,
        422,
    )


def test_a_history_line_without_end_keeps_only_its_start(
    admin: TestClient, scratch: Scratch
) -> None:
    """A history import is streamed without a size limit; a line that never ends was once
    joined chunk by chunk (quadratic: 32 MiB took 14 s) and kept whole in memory. Now its
    start is quarantined with its whole size, and the lines around it are read as usual."""
    long_line = b"{" * (8 * 1024 * 1024)

    def body() -> Iterator[bytes]:
        yield b"not json\n"
        for at in range(0, len(long_line), 65536):
            yield long_line[at : at + 65536]
        yield b"\n{}\n"

    with psycopg.connect(scratch.url, autocommit=True) as conn:
        before = conn.execute("SELECT coalesce(max(id), 0) FROM quarantine").fetchone()
        response = admin.post(
            "/imports/history",
            content=body(),
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert response.status_code == 201, response.text
        assert response.json()["quarantined"] == {"invalid_payload": 2, "payload_too_large": 1}
        rows = conn.execute(
            "SELECT reason, payload_size, length(payload), detail FROM quarantine "
            "WHERE id > %s ORDER BY id",
            before,
        ).fetchall()
    assert [(reason, size) for reason, size, _, _ in rows] == [
        ("invalid_payload", 8),
        ("payload_too_large", len(long_line)),
        ("invalid_payload", 2),
    ]
    assert rows[1][2] == 64 * 1024  # the quarantine keeps the first 64 KiB
    assert rows[1][3].startswith(f"line 2: {len(long_line)} bytes, over the")


def test_deeply_nested_json_is_refused(admin: TestClient) -> None:
    for depth in (1000, 10_000):
        deep = "[" * depth + "]" * depth
        for path in ("/customers", "/decisions", "/devices/batch", "/auth/tokens"):
            response = admin.post(path, content=deep, headers={"Content-Type": "application/json"})
            _actionable(response, 400, 413, 422)
    deep_object = '{"a":' * 10_000 + "1" + "}" * 10_000
    _actionable(
        admin.post("/customers", content=deep_object, headers={"Content-Type": "application/json"}),
        400,
        413,
        422,
    )


@pytest.mark.parametrize(
    "query",
    [
        "limit=1000000000",
        "limit=-1",
        "offset=-5",
        "offset=99999999999999999999",
        "limit=abc",
    ],
)
def test_huge_or_invalid_pages_are_4xx(admin: TestClient, query: str) -> None:
    for path in ("/customers", "/projects", "/devices", "/quarantine", "/decisions"):
        _actionable(admin.get(f"{path}?{query}"), 400, 422)


@pytest.mark.parametrize("query", ["sort=-nonexistent", "sort=name;DROP TABLE customers"])
def test_unknown_sort_fields_never_500(admin: TestClient, query: str) -> None:
    for path in ("/customers", "/projects", "/devices", "/quarantine", "/decisions"):
        assert admin.get(f"{path}?{query}").status_code < 500, path


@pytest.mark.parametrize(
    "query",
    [
        "since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59Z",
        "since=9999-12-31T00:00:00Z&until=0001-01-01T00:00:00Z",
        "since=not-a-date",
        "since=0001-01-01T00:00:00%2B01:00",
        "since=1970-01-01T00:00:00Z&until=2200-01-01T00:00:00Z",
    ],
)
def test_huge_or_invalid_time_ranges_never_500(
    admin: TestClient, scratch: Scratch, query: str
) -> None:
    for path in (
        f"/projects/{scratch.project_id}/analytics",
        f"/projects/{scratch.project_id}/usage",
        "/portfolio",
        "/quarantine",
        "/quarantine/summary",
    ):
        response = admin.get(f"{path}?{query}")
        assert response.status_code < 500, (path, query, response.text[:500])
        if response.status_code >= 400:
            _actionable(response, response.status_code)


@given(text=st.sampled_from(SQL_METACHARACTERS) | st.text(max_size=40))
@hypothesis_settings(
    max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
def test_sql_metacharacters_in_every_text_field(admin: TestClient, text: str) -> None:
    """Text fields of writes, searches and filters: stored verbatim or refused, never a 500."""
    requests = [
        ("POST", "/customers", {"name": text, "tier": "tail", "industry": text}),
        ("POST", "/features", {"key": text, "name": text, "product_line": text}),
        ("POST", "/devices", {"serial": text, "project_id": 1, "model": text, "site": text}),
        ("POST", "/users", {"username": text, "role": "viewer"}),
        ("POST", "/auth/tokens", {"name": text}),
        (
            "POST",
            "/decisions",
            {"project_id": 1, "feature_key": text, "decision": "keep", "rationale": text},
        ),
    ]
    for method, path, body in requests:
        response = admin.request(method, path, json=body)
        assert response.status_code < 500, (path, text, response.text[:300])
    for path in (
        "/customers",
        "/projects",
        "/features",
        "/deliveries",
        "/devices",
        "/quarantine",
        "/decisions",
        "/users",
        "/tokens",
    ):
        for params in (
            {"q": text},
            {"sort": text},
            {"industry": text},
            {"tag": text},
            {"reason": text},
            {"feature_key": text},
        ):
            response = admin.get(path, params=params)
            assert response.status_code < 500, (path, params, response.text[:300])
    body = json.dumps({"name": text, "tier": "tail", "industry": "retail"})
    assert (
        admin.patch(
            "/customers/1", content=body, headers={"Content-Type": "application/json"}
        ).status_code
        < 500
    )


def test_wrong_content_types_and_methods_are_4xx(admin: TestClient) -> None:
    _actionable(
        admin.post("/customers", content=b"\xff\xfe", headers={"Content-Type": "application/json"}),
        400,
        415,
        422,
    )
    _actionable(
        admin.post(
            "/imports/customers", content=b"\x00\xff" * 100, headers={"Content-Type": "text/csv"}
        ),
        400,
        415,
        422,
    )
    # a broken history line is quarantined, not refused (as live ingest does)
    history = admin.post(
        "/imports/history",
        content=b"{" * 1000 + b"\n",
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert history.status_code == 201 and history.json()["quarantined"], history.text
    assert admin.put("/customers", json={}).status_code == 405
