"""Every route × every role × own and foreign customer ids, generated from the app's routes.

The expectations below are written here, apart from the code's permission table, so a change
to either one shows up as a failure. A route missing from RULES fails the suite: a new route
cannot ship without someone deciding who may call it.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.routing import BaseRoute, Mount, Route

from services.accounts import store as accounts
from services.accounts.roles import Role
from services.accounts.store import PASSWORD_MEMORY_KIB
from services.accounts.throttle import (
    BUSY_RETRY_AFTER_S,
    CONCURRENT_VERIFICATIONS,
    FREE_FAILURES_PER_ACCOUNT,
    FREE_FAILURES_PER_ADDRESS,
    MAX_WAIT_S,
    address_key,
)
from services.alerts.rules import RuleKind
from services.analytics.decisions import DecisionCreate, record_decision
from services.analytics.recommend import AnalyticsThresholds
from services.api.app import create_app
from services.api.background import serve_in_thread
from services.core.settings import Settings
from services.registry import models, upserts as registry
from tests.integration.conftest import api_client, keys_of, open_alert
from tests.integration.test_auth import WRONG_GUESS, client_from, fresh_address, guess

ADMIN, PM, OPS, VIEWER = "admin", "pm", "ops", "viewer"
EVERYONE = frozenset({ADMIN, PM, OPS, VIEWER})
PUBLIC = "public"


@dataclass(frozen=True)
class Rule:
    allowed: frozenset[str] | str  # roles, or PUBLIC
    scoped: bool = False  # a viewer gets 404 for another customer's id


def roles(*names: str) -> frozenset[str]:
    return frozenset(names)


READ_ALL = Rule(EVERYONE, scoped=True)
RULES: dict[tuple[str, str], Rule] = {
    # public: health, login, API docs (static assets are mounts, checked apart)
    ("GET", "/health"): Rule(PUBLIC),
    ("GET", "/favicon.ico"): Rule(PUBLIC),
    ("GET", "/login"): Rule(PUBLIC),
    ("POST", "/login"): Rule(PUBLIC),
    ("POST", "/auth/token"): Rule(PUBLIC),
    ("GET", "/docs"): Rule(PUBLIC),
    ("GET", "/docs/oauth2-redirect"): Rule(PUBLIC),
    ("GET", "/redoc"): Rule(PUBLIC),
    # any logged-in caller
    ("POST", "/logout"): Rule(EVERYONE),
    ("GET", "/auth/me"): Rule(EVERYONE),
    ("GET", "/auth/tokens"): Rule(EVERYONE),
    ("POST", "/auth/tokens"): Rule(EVERYONE),
    ("POST", "/auth/tokens/{item_id}/revoke"): Rule(EVERYONE),
    ("GET", "/schemas/payloads"): Rule(EVERYONE),
    ("GET", "/schemas/payloads/{kind}"): Rule(EVERYONE),
    # registry: everyone reads (viewers their own customer); admins write
    ("GET", "/customers"): READ_ALL,
    ("GET", "/customers/{item_id}"): READ_ALL,
    ("POST", "/customers"): Rule(roles(ADMIN)),
    ("PATCH", "/customers/{item_id}"): Rule(roles(ADMIN)),
    ("DELETE", "/customers/{item_id}"): Rule(roles(ADMIN)),
    ("GET", "/projects"): READ_ALL,
    ("GET", "/projects/{item_id}"): READ_ALL,
    ("POST", "/projects"): Rule(roles(ADMIN)),
    ("PATCH", "/projects/{item_id}"): Rule(roles(ADMIN)),
    ("DELETE", "/projects/{item_id}"): Rule(roles(ADMIN)),
    ("GET", "/features"): Rule(EVERYONE),
    ("GET", "/features/{item_id}"): Rule(EVERYONE),
    ("POST", "/features"): Rule(roles(ADMIN)),
    ("PATCH", "/features/{item_id}"): Rule(roles(ADMIN)),
    ("DELETE", "/features/{item_id}"): Rule(roles(ADMIN)),
    ("GET", "/deliveries"): READ_ALL,
    ("GET", "/deliveries/{item_id}"): READ_ALL,
    ("POST", "/deliveries"): Rule(roles(ADMIN, PM)),
    ("PATCH", "/deliveries/{item_id}"): Rule(roles(ADMIN, PM)),
    ("DELETE", "/deliveries/{item_id}"): Rule(roles(ADMIN, PM)),
    ("POST", "/imports/{kind}"): Rule(roles(ADMIN)),
    ("POST", "/imports/deliveries"): Rule(roles(ADMIN, PM)),
    # fleet: read by all (viewers their own); provisioning by ops and admins
    ("GET", "/devices"): READ_ALL,
    ("GET", "/devices/{item_id}"): READ_ALL,
    ("POST", "/devices"): Rule(roles(ADMIN, OPS)),
    ("POST", "/devices/batch"): Rule(roles(ADMIN, OPS)),
    ("POST", "/devices/import"): Rule(roles(ADMIN, OPS)),
    ("PATCH", "/devices/{item_id}"): Rule(roles(ADMIN, OPS)),
    ("POST", "/devices/{item_id}/revoke"): Rule(roles(ADMIN, OPS)),
    ("POST", "/devices/{item_id}/credentials"): Rule(roles(ADMIN, OPS)),
    ("DELETE", "/devices/{item_id}"): Rule(roles(ADMIN, OPS)),
    ("POST", "/imports/history"): Rule(roles(ADMIN, OPS)),
    ("GET", "/fleet"): Rule(EVERYONE),
    ("GET", "/devices/{item_id}/telemetry"): READ_ALL,
    # usage and analytics: PMs and the customer's own viewers; the portfolio is internal
    ("GET", "/projects/{item_id}/usage"): Rule(roles(ADMIN, PM, VIEWER), scoped=True),
    ("GET", "/projects/{item_id}/usage/daily"): Rule(roles(ADMIN, PM, VIEWER), scoped=True),
    ("GET", "/projects/{item_id}/analytics"): Rule(roles(ADMIN, PM, VIEWER), scoped=True),
    ("GET", "/projects/{item_id}/firmware"): Rule(roles(ADMIN, PM, VIEWER), scoped=True),
    ("GET", "/projects/{item_id}/adoption"): Rule(roles(ADMIN, PM, VIEWER), scoped=True),
    ("GET", "/portfolio/impact"): Rule(roles(ADMIN, PM)),
    ("GET", "/analytics/rules"): Rule(roles(ADMIN, PM)),
    ("GET", "/portfolio"): Rule(roles(ADMIN, PM)),
    ("GET", "/decisions"): Rule(roles(ADMIN, PM)),
    ("GET", "/decisions/{item_id}"): Rule(roles(ADMIN, PM)),
    ("POST", "/decisions"): Rule(roles(ADMIN, PM)),
    # ingest health
    ("GET", "/quarantine"): Rule(roles(ADMIN, OPS)),
    ("GET", "/quarantine/summary"): Rule(roles(ADMIN, OPS)),
    ("GET", "/quarantine/{item_id}"): Rule(roles(ADMIN, OPS)),
    ("GET", "/quarantine/{item_id}/payload"): Rule(roles(ADMIN, OPS)),
    ("GET", "/ingest/health"): Rule(roles(ADMIN, OPS)),
    ("GET", "/metrics"): Rule(roles(ADMIN, OPS)),
    # alerts: each role reads the kinds of its audience (viewers their own projects' device
    # alerts); staff acknowledge; admins and ops manage rules, channels and the outbox
    ("GET", "/alerts"): Rule(EVERYONE),
    ("GET", "/alerts/count"): Rule(EVERYONE),
    ("GET", "/alerts/kinds"): Rule(EVERYONE),
    ("GET", "/alerts/{item_id}"): Rule(EVERYONE, scoped=True),
    ("POST", "/alerts/{item_id}/acknowledge"): Rule(roles(ADMIN, PM, OPS)),
    ("GET", "/alerts/rules"): Rule(roles(ADMIN, OPS)),
    ("POST", "/alerts/rules"): Rule(roles(ADMIN, OPS)),
    ("PATCH", "/alerts/rules/{item_id}"): Rule(roles(ADMIN, OPS)),
    ("DELETE", "/alerts/rules/{item_id}"): Rule(roles(ADMIN, OPS)),
    ("GET", "/alerts/channels"): Rule(roles(ADMIN, OPS)),
    ("POST", "/alerts/channels"): Rule(roles(ADMIN, OPS)),
    ("DELETE", "/alerts/channels/{item_id}"): Rule(roles(ADMIN, OPS)),
    ("GET", "/alerts/notifications"): Rule(roles(ADMIN, OPS)),
    ("POST", "/alerts/notifications/{item_id}/retry"): Rule(roles(ADMIN, OPS)),
    # accounts
    ("GET", "/users"): Rule(roles(ADMIN)),
    ("POST", "/users"): Rule(roles(ADMIN)),
    ("GET", "/users/{item_id}"): Rule(roles(ADMIN)),
    ("PATCH", "/users/{item_id}"): Rule(roles(ADMIN)),
    ("DELETE", "/users/{item_id}"): Rule(roles(ADMIN)),
    ("GET", "/tokens"): Rule(roles(ADMIN)),
    ("POST", "/tokens"): Rule(roles(ADMIN)),
    ("POST", "/tokens/{item_id}/revoke"): Rule(roles(ADMIN)),
    # dashboard pages
    ("GET", "/"): Rule(EVERYONE),
    ("GET", "/dashboards/customers"): Rule(EVERYONE),
    ("GET", "/dashboards/customers/{customer_id}"): Rule(EVERYONE, scoped=True),
    ("GET", "/dashboards/customers/{customer_id}/report"): Rule(
        roles(ADMIN, PM, VIEWER), scoped=True
    ),
    ("GET", "/dashboards/projects/{project_id}"): Rule(roles(ADMIN, PM, VIEWER), scoped=True),
    ("POST", "/dashboards/projects/{project_id}/decisions"): Rule(roles(ADMIN, PM)),
    ("GET", "/dashboards/portfolio"): Rule(roles(ADMIN, PM)),
    ("GET", "/dashboards/fleet"): Rule(EVERYONE),
    ("GET", "/dashboards/devices/{device_id}"): Rule(EVERYONE, scoped=True),
    ("GET", "/dashboards/ingest"): Rule(roles(ADMIN, OPS)),
    ("GET", "/dashboards/alerts"): Rule(EVERYONE),
    ("GET", "/dashboards/alerts/{item_id}"): Rule(EVERYONE, scoped=True),
    ("POST", "/dashboards/alerts/{item_id}/acknowledge"): Rule(roles(ADMIN, PM, OPS)),
}
PAGES = {path for _, path in RULES if path == "/" or path.startswith(("/dashboards", "/logout"))}
REDIRECTS = {"/"}  # the home page sends each role to its own start page
PUBLIC_MOUNTS = {"/static", "/static-offline-docs", "/vendor/plotly"}
PUBLIC_ROUTES = {"/openapi.json"}
MISSING = 999_999_999  # an id nothing has: writes by allowed roles change nothing


def walk(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route of the app, inside included routers too."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from walk(inner.routes)
        else:
            yield route


def api_routes() -> list[tuple[str, str]]:
    app = create_app(_offline_settings())
    found = []
    for route in walk(app.router.routes):
        if isinstance(route, APIRoute):
            found += [(method, route.path) for method in sorted(route.methods or ())]
    return found


def _offline_settings() -> Settings:
    from pydantic import SecretStr

    return Settings(
        database_url=SecretStr("postgresql://nobody@127.0.0.1:1/none"),
        mqtt_admin_password=SecretStr("not-used-here-1"),
        mqtt_ingest_password=SecretStr("not-used-here-2"),
        session_secret=SecretStr("s" * 40),
    )


def test_every_route_has_a_rule_here() -> None:
    """A new route fails this until it has an access rule in the code and an entry here."""
    routes = api_routes()
    missing = [f"{m} {p}" for m, p in routes if (m, p) not in RULES]
    assert not missing, f"routes without an expected access rule: {missing}"
    stale = [f"{m} {p}" for m, p in RULES if (m, p) not in routes]
    assert not stale, f"rules for routes that no longer exist: {stale}"


def test_only_allow_listed_mounts_and_plain_routes() -> None:
    app = create_app(_offline_settings())
    others = [r for r in walk(app.router.routes) if not isinstance(r, APIRoute)]
    for route in others:
        if isinstance(route, Mount):
            assert route.path in PUBLIC_MOUNTS, route.path
        else:
            assert isinstance(route, Route) and route.path in PUBLIC_ROUTES, route


# --- the world the matrix runs in ---------------------------------------------------------


@dataclass(frozen=True)
class Side:
    customer: int
    project: int
    delivery: int
    device: int
    feature: int
    feature_key: str
    alert: int  # firing, about the project: every role sees it (a viewer its own side's)


@dataclass(frozen=True)
class World:
    own: Side
    foreign: Side
    decision: int
    quarantined: int
    user: int
    token: int
    tokens: dict[str, str]  # role -> personal token of a user with that role


def _side(conn: psycopg.Connection, tag: str) -> Side:
    customer = registry.upsert_customer(conn, f"Access {tag}", "tail", "retail", "adoption")
    project = registry.upsert_project(
        conn,
        customer,
        f"Access {tag} project",
        contract_value=100,
        currency="EUR",
        go_live_date=None,
        status="live",
    )
    key = f"access_{tag}"
    feature = registry.upsert_feature(conn, key, f"Access {tag}", "test", None)
    registry.upsert_delivery(
        conn,
        project,
        feature,
        status="delivered",
        delivered_on=None,
        cost_person_days=1,
        contract_line_value=10,
        business_score=3,
        strategic=False,
    )
    delivery = conn.execute(
        "SELECT id FROM deliveries WHERE project_id = %s", (project,)
    ).fetchone()
    # A registry row is enough here: no route below reaches the broker for it.
    device = conn.execute(
        "INSERT INTO devices (serial, project_id) VALUES (%s, %s) RETURNING id",
        (f"access-{tag}", project),
    ).fetchone()
    assert delivery and device
    alert = open_alert(conn, RuleKind.PROJECT_SILENT, project, f"access:{tag}", "quiet", {})
    return Side(customer, project, delivery[0], device[0], feature, key, alert)


@pytest.fixture(scope="module")
def world(settings: Settings, unique_module: str) -> World:
    url = settings.database_url.get_secret_value()
    with psycopg.connect(url, autocommit=True) as conn:
        own, foreign = _side(conn, f"{unique_module}a"), _side(conn, f"{unique_module}b")
        decision = record_decision(
            conn,
            DecisionCreate(
                project_id=own.project,
                feature_key=own.feature_key,
                decision="keep",
                rationale="access test",
            ),
            AnalyticsThresholds(),
        ).id
        quarantined = conn.execute(
            """INSERT INTO quarantine (received_at, topic, reason, payload, payload_size)
               VALUES (now(), 'x', 'not_json', '\\x00', 1) RETURNING id"""
        ).fetchone()
        tokens = {}
        for role in Role:
            user = accounts.create_user(
                conn,
                accounts.UserCreate(
                    username=f"{role.value}-{unique_module}",
                    password="a long password 1",
                    role=role,
                    customer_id=own.customer if role is Role.VIEWER else None,
                ),
            )
            body = accounts.TokenCreate(name="matrix", role=role, customer_id=user.customer_id)
            tokens[role.value] = accounts.create_token(conn, body, user_id=user.id).token
        other_user = accounts.create_user(
            conn,
            accounts.UserCreate(
                username=f"other-{unique_module}", password="a long password 2", role=Role.PM
            ),
        )
        service = accounts.create_token(conn, accounts.TokenCreate(name="svc", role=Role.OPS))
    assert quarantined
    return World(own, foreign, decision, quarantined[0], other_user.id, service.id, tokens)


@pytest.fixture(scope="module")
def unique_module() -> str:
    import uuid

    return uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def clients(settings: Settings, world: World) -> Iterator[dict[str, TestClient]]:
    made = {role: api_client(settings, token) for role, token in world.tokens.items()}
    made["anonymous"] = api_client(settings, None)
    yield from opened(made)


def opened(made: dict[str, TestClient]) -> Iterator[dict[str, TestClient]]:
    """The clients started (their app's lifespan), not following redirects; stopped after."""
    with ExitStack() as stack:
        for client in made.values():
            stack.enter_context(client).follow_redirects = False
        yield made


def fill(path: str, world: World, side: Side, existing: bool) -> str:
    """The path with ids of `side` (or an id nothing has, for writes that must not land)."""
    ids = {
        "customers": side.customer,
        "projects": side.project,
        "deliveries": side.delivery,
        "devices": side.device,
        "decisions": world.decision,
        "quarantine": world.quarantined,
        "users": world.user,
        "tokens": world.token,
        "auth": MISSING,
        "features": side.feature,
        "alerts": side.alert,
    }
    parts = path.strip("/").split("/")
    resource = parts[1] if parts[0] == "dashboards" and len(parts) > 1 else parts[0]

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "kind":
            return "usage" if resource == "schemas" else "customers"
        return str(ids[resource] if existing else MISSING)

    return re.sub(r"\{(\w+)\}", value, path)


def query_for(path: str, side: Side) -> dict[str, str]:
    if path.endswith(("/firmware", "/portfolio/impact")):
        return {"feature": side.feature_key}
    return {}


def call(client: TestClient, method: str, path: str, params: dict[str, str]) -> int:
    if method in {"GET", "DELETE"}:
        response: httpx.Response = client.request(method, path, params=params)
    else:
        response = client.request(method, path, params=params, json={})
    return response.status_code


CASES = sorted(RULES)


@pytest.mark.parametrize(("method", "path"), CASES, ids=[f"{m} {p}" for m, p in CASES])
def test_route_for_every_role(
    clients: dict[str, TestClient], world: World, method: str, path: str
) -> None:
    rule = RULES[(method, path)]
    safe = method == "GET"
    own_path = fill(path, world, world.own, existing=safe)
    params = query_for(path, world.own)

    anonymous = call(clients["anonymous"], method, own_path, params)
    if rule.allowed == PUBLIC:
        assert anonymous not in {401, 403}, f"public route refused anonymous: {anonymous}"
        return
    expected_anonymous = 303 if path in PAGES else 401
    assert anonymous == expected_anonymous, f"anonymous got {anonymous}"

    for role in (ADMIN, PM, OPS, VIEWER):
        status = call(clients[role], method, own_path, params)
        if role not in rule.allowed:
            assert status == 403, f"{role} got {status}, expected 403"
            continue
        assert status not in {401, 403}, f"{role} was refused ({status})"
        if safe:
            expected = 303 if path in REDIRECTS else 200
            assert status == expected, f"{role} reading its own data got {status}"
        elif not safe:
            # writes by allowed roles use ids nothing has or an empty body: refused as
            # input, never as access, and nothing changes
            assert status in {303, 404, 409, 415, 422}, f"{role} got {status}"

    if rule.scoped and "{" in path:
        foreign_path = fill(path, world, world.foreign, existing=True)
        status = call(clients[VIEWER], method, foreign_path, query_for(path, world.foreign))
        assert status == 404, f"viewer asking for another customer's id got {status}"
        # the same id is fine for roles that see every customer
        assert call(clients[PM], method, foreign_path, query_for(path, world.foreign)) == 200


@pytest.mark.parametrize("plural", ["customers", "projects", "deliveries", "devices"])
def test_viewer_lists_only_its_customer(
    clients: dict[str, TestClient], world: World, plural: str
) -> None:
    items = clients[VIEWER].get(f"/{plural}", params={"limit": 500}).json()["items"]
    key, own, foreign = {
        "customers": ("id", world.own.customer, world.foreign.customer),
        "projects": ("customer_id", world.own.customer, world.foreign.customer),
    }.get(plural, ("project_id", world.own.project, world.foreign.project))
    assert items and {item[key] for item in items} == {own}
    # asking for the other customer by filter returns nothing, where a PM sees its rows
    if plural != "customers":
        scope = (
            {"customer_id": world.foreign.customer}
            if plural == "projects"
            else {"project_id": world.foreign.project}
        )
        hidden = clients[VIEWER].get(f"/{plural}", params=scope)
        assert hidden.status_code == 200 and hidden.json()["items"] == []
        shown = clients[PM].get(f"/{plural}", params=scope).json()["items"]
        assert shown and {item[key] for item in shown} == {foreign}


# --- what a customer viewer must not learn about how we see them ---------------------------

# Written here, apart from the resource declarations, so a change to either shows up.
INTERNAL = {
    "customers": frozenset({"tier", "lifecycle_stage"}),
    "projects": frozenset({"contract_value"}),
    "deliveries": frozenset(
        {"cost_person_days", "contract_line_value", "business_score", "strategic", "notes"}
    ),
}
VIEWER_MODELS: dict[str, type[BaseModel]] = {
    "customers": models.CustomerView,
    "projects": models.ProjectView,
    "deliveries": models.DeliveryView,
}
STAFF_SORTS = {  # the internal fields staff may sort by (the others no one may)
    "customers": {"tier", "lifecycle_stage"},
    "projects": {"contract_value"},
    "deliveries": {"cost_person_days", "contract_line_value", "business_score"},
}
INTERNAL_FILTERS = [
    ("customers", "tier", "tail"),
    ("customers", "lifecycle_stage", "at_risk"),
    ("deliveries", "strategic", "true"),
]
REGISTRY_READS = [
    path
    for method, path in CASES
    if method == "GET" and path.split("/")[1] in INTERNAL and path.count("/") <= 2
]


def test_registry_reads_are_the_list_and_one_item_routes() -> None:
    assert len(REGISTRY_READS) == 2 * len(INTERNAL), REGISTRY_READS


@pytest.mark.parametrize("path", REGISTRY_READS)
def test_viewer_never_receives_internal_fields(
    clients: dict[str, TestClient], world: World, path: str
) -> None:
    plural, one = path.split("/")[1], "{" in path
    url = fill(path, world, world.own, existing=True)

    def items(role: str) -> list[dict[str, object]]:
        response = clients[role].get(url, params={} if one else {"limit": 500})
        assert response.status_code == 200, response.text
        found: list[dict[str, object]] = [response.json()] if one else response.json()["items"]
        assert found
        return found

    shown = set(VIEWER_MODELS[plural].model_fields)
    for item in items(VIEWER):
        assert not INTERNAL[plural] & item.keys(), f"{url} gave a viewer {item}"
        assert item.keys() == shown
    for item in items(PM):
        assert item.keys() == shown | INTERNAL[plural]


@pytest.mark.parametrize(
    ("plural", "field"), sorted((p, f) for p, fields in INTERNAL.items() for f in fields)
)
def test_viewer_cannot_sort_by_internal_fields(
    clients: dict[str, TestClient], plural: str, field: str
) -> None:
    for sort in (field, f"-{field}"):
        refused = clients[VIEWER].get(f"/{plural}", params={"sort": sort})
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"] == [
            {
                "loc": ["query", "sort"],
                "type": "invalid_input",
                "msg": f"sorting by {field} is not available to customer viewers",
            },
        ]
        if field in STAFF_SORTS[plural]:
            assert clients[PM].get(f"/{plural}", params={"sort": sort}).status_code == 200


@pytest.mark.parametrize(("plural", "field", "value"), INTERNAL_FILTERS)
def test_viewer_cannot_filter_by_internal_fields(
    clients: dict[str, TestClient], plural: str, field: str, value: str
) -> None:
    refused = clients[VIEWER].get(f"/{plural}", params={field: value})
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"] == [
        {
            "loc": ["query", field],
            "type": "invalid_input",
            "msg": f"filtering by {field} is not available to customer viewers",
        },
    ]
    assert clients[PM].get(f"/{plural}", params={field: value}).status_code == 200


def test_viewer_search_does_not_look_at_notes(
    settings: Settings, clients: dict[str, TestClient], world: World, unique_module: str
) -> None:
    def found(role: str, q: str) -> list[object]:
        response = clients[role].get("/deliveries", params={"q": q})
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    key, word = f"notes_{unique_module}", f"zebra{unique_module}"
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        feature = registry.upsert_feature(conn, key, "Notes probe", "test", None)
    created = clients[ADMIN].post(
        "/deliveries",
        json={"project_id": world.own.project, "feature_id": feature, "notes": f"ask {word}"},
    )
    assert created.status_code == 201, created.text
    delivery = created.json()["id"]
    try:
        assert found(PM, word) == [delivery]
        assert found(VIEWER, word) == []
        # the viewer's search still finds the delivery by what it may see
        assert found(VIEWER, key) == [delivery]
    finally:
        assert clients[ADMIN].delete(f"/deliveries/{delivery}").status_code == 204


def test_api_docs_describe_both_shapes(clients: dict[str, TestClient]) -> None:
    spec = clients[PM].get("/openapi.json").json()
    for plural, view in VIEWER_MODELS.items():
        staff = view.__name__.removesuffix("View")
        for path, shape in ((f"/{plural}/{{item_id}}", "{}"), (f"/{plural}", "Page_{}_")):
            schema = spec["paths"][path]["get"]["responses"]["200"]["content"]
            refs = {
                s["$ref"].rsplit("/", 1)[1] for s in schema["application/json"]["schema"]["anyOf"]
            }
            assert refs == {shape.format(staff), shape.format(view.__name__)}, (path, refs)


def test_viewer_home_page_lists_only_its_projects(
    clients: dict[str, TestClient], world: World
) -> None:
    home = clients[VIEWER].get("/")
    assert home.status_code == 303
    assert home.headers["location"] == f"/dashboards/customers/{world.own.customer}"
    page = clients[VIEWER].get(home.headers["location"])
    assert page.status_code == 200
    assert f"/dashboards/projects/{world.own.project}" in page.text
    assert f"/dashboards/projects/{world.foreign.project}" not in page.text


def test_viewer_export_of_another_customer_is_not_found(
    clients: dict[str, TestClient], world: World
) -> None:
    own = clients[VIEWER].get(f"/projects/{world.own.project}/analytics", params={"format": "csv"})
    assert own.status_code == 200 and own.headers["content-type"].startswith("text/csv")
    foreign = clients[VIEWER].get(
        f"/projects/{world.foreign.project}/analytics", params={"format": "csv"}
    )
    assert foreign.status_code == 404
    # a project that does not exist reads the same: ids are not confirmed
    missing = clients[VIEWER].get(f"/projects/{MISSING}/analytics", params={"format": "csv"})
    assert missing.status_code == 404 and missing.json() == {
        "detail": f"project {MISSING} not found"
    }
    assert foreign.json() == {"detail": f"project {world.foreign.project} not found"}


# --- nothing internal reaches a customer's own staff, on any route they may read ---------------

# Keys of business value, contract values, verdicts, their explanations, peers, undelivered use
# and the solution company's view of the customer: written here, apart from the code.
INTERNAL_KEYS = frozenset(
    {
        "business_value",
        "business_high",
        "user_value",
        "recommendation",
        "recommendations",
        "explanation",
        "peers",
        "undelivered_usage",
        "cut_candidates",
        "iterate_candidates",
        "contract_value",
        "contract_line_value",
        "business_score",
        "strategic",
        "cost_person_days",
        "notes",
        "tier",
        "lifecycle_stage",
        "rules",
    }
)
INTERNAL_WORDS = (
    "cut candidate",
    "keep prudently",
    "iterate / invest",
    "business value",
    "insufficient data",
    "too early",
)
VIEWER_READS = [
    path
    for method, path in CASES
    if method == "GET"
    and isinstance(RULES[(method, path)].allowed, frozenset)
    and VIEWER in RULES[(method, path)].allowed
]


@pytest.mark.parametrize("path", VIEWER_READS)
@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_nothing_internal_reaches_a_viewer_on_any_route(
    clients: dict[str, TestClient], world: World, path: str, fmt: str
) -> None:
    """Every route a viewer may read, with their own ids: no internal key in JSON, no internal
    column in CSV, no verdict or business value in a page."""
    params = {**query_for(path, world.own), "format": fmt}
    response = clients[VIEWER].get(fill(path, world, world.own, existing=True), params=params)
    if response.status_code in {303, 422}:  # a redirect, or a route without a CSV form
        return
    assert response.status_code == 200, response.text
    kind = response.headers.get("content-type", "")
    if "json" in kind:
        assert not keys_of(response.json()) & INTERNAL_KEYS, (
            keys_of(response.json()) & INTERNAL_KEYS
        )
    elif "csv" in kind:
        header = set(response.text.splitlines()[0].split(","))
        assert not header & INTERNAL_KEYS, header & INTERNAL_KEYS
    else:
        text = response.text.lower()
        assert not [w for w in INTERNAL_WORDS if w in text], path


# --- tokens minted before their user changed (issue 22, finding 2) --------------------------

STALE_PASSWORD = "a long password 3"
PROTECTED = [case for case in CASES if RULES[case].allowed != PUBLIC]


def changes(world: World) -> dict[str, tuple[Role, list[dict[str, object]]]]:
    """Each kind of change: the user's role before it, and the PATCHes an admin sends."""
    return {
        "demoted": (Role.ADMIN, [{"role": "viewer", "customer_id": world.own.customer}]),
        "moved": (Role.VIEWER, [{"customer_id": world.foreign.customer}]),
        "password reset": (Role.PM, [{"password": "a new long password"}]),
        "disabled then enabled": (Role.OPS, [{"disabled": True}, {"disabled": False}]),
    }


@pytest.fixture(scope="module")
def stale_clients(
    settings: Settings, clients: dict[str, TestClient], world: World, unique_module: str
) -> Iterator[dict[str, TestClient]]:
    """For each kind of change, a client with a personal token its user got by password over
    HTTP before an admin changed the user over HTTP."""
    admin, anonymous = clients[ADMIN], clients["anonymous"]
    made = {}
    for change, (role, patches) in changes(world).items():
        username = f"stale-{role.value}-{unique_module}"
        customer = world.own.customer if role is Role.VIEWER else None
        body = {"username": username, "password": STALE_PASSWORD, "role": role.value}
        user = admin.post("/users", json={**body, "customer_id": customer})
        assert user.status_code == 201, user.text
        login = {"username": username, "password": STALE_PASSWORD}
        token = anonymous.post("/auth/token", json=login).json()["token"]
        for patch in patches:
            changed = admin.patch(f"/users/{user.json()['id']}", json=patch)
            assert changed.status_code == 200, changed.text
        made[change] = api_client(settings, token)
    yield from opened(made)


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
def test_route_refuses_tokens_minted_before_a_change(
    stale_clients: dict[str, TestClient], world: World, method: str, path: str
) -> None:
    """A demoted admin, a viewer moved to another customer, a reset password, a disabled and
    re-enabled user: the personal token from before is refused on every route (401), so it
    acts neither with the old role or customer nor with the new ones."""
    own_path = fill(path, world, world.own, existing=method == "GET")
    params = query_for(path, world.own)
    got = {
        change: call(client, method, own_path, params) for change, client in stale_clients.items()
    }
    assert got == dict.fromkeys(stale_clients, 401), got


# --- the login routes under concurrent attempts (issue 22, finding 8) -----------------------

LOGIN_ROUTES = ["POST /auth/token", "POST /login"]
# uvicorn runs up to 40 sync routes at once (AnyIO's default thread limit)
CONCURRENT_LOGINS = 40
# A 503 (every password-check slot busy) is retried, sooner than its Retry-After asks.
BUSY_RETRIES, BUSY_PAUSE_S = 500, 0.02
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def wide_api_url(settings: Settings) -> Iterator[str]:
    """The real API with a connection pool as wide as uvicorn's thread pool, so only
    fieldtrack's own limits bound concurrent logins; session cookies over plain HTTP."""
    wide = settings.model_copy(
        update={"db_pool_max": CONCURRENT_LOGINS + 8, "session_cookie_secure": False}
    )
    with serve_in_thread(wide) as url:
        yield url


def login_sender(client: httpx.Client, route: str) -> Callable[[str, str], int]:
    """A function sending one login by `route`; the form's CSRF token is read from the
    page, and again from each answer (every login page sets a new one)."""
    if route == "POST /auth/token":
        return lambda username, password: (
            client.post(
                "/auth/token", json={"username": username, "password": password}
            ).status_code
        )
    page = [client.get("/login").text]

    def send(username: str, password: str) -> int:
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page[0])
        assert csrf, page[0]
        form = {"username": username, "password": password, "csrf_token": csrf[1]}
        answer = client.post("/login", data=form)
        page[0] = answer.text
        return answer.status_code

    return send


def at_once(count: int, attempt: Callable[[int, threading.Barrier], int]) -> list[int]:
    """Run `count` attempts in threads released together by a barrier."""
    barrier = threading.Barrier(count)
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda i: attempt(i, barrier), range(count)))


@pytest.mark.parametrize("route", LOGIN_ROUTES)
def test_concurrent_wrong_guesses_cannot_pass_the_limit(
    wide_api_url: str, clients: dict[str, TestClient], unique_module: str, route: str
) -> None:
    username = f"guessed-{route[6:10]}-{unique_module}"
    body = {"username": username, "password": STALE_PASSWORD, "role": "pm"}
    assert clients[ADMIN].post("/users", json=body).status_code == 201
    address = fresh_address()

    def attempt(_: int, barrier: threading.Barrier) -> int:
        with client_from(wide_api_url, address) as client:
            send = login_sender(client, route)
            barrier.wait()
            for _ in range(BUSY_RETRIES):
                status = send(username, WRONG_GUESS)
                if status != 503:
                    return status
                time.sleep(BUSY_PAUSE_S)
        return 503

    statuses = at_once(CONCURRENT_LOGINS, attempt)
    checked = statuses.count(401)
    print(f"\n{route}: {checked} of {CONCURRENT_LOGINS} concurrent wrong guesses were checked")
    assert checked == FREE_FAILURES_PER_ACCOUNT + 1, statuses
    assert statuses.count(429) == CONCURRENT_LOGINS - checked, statuses


def test_password_checks_at_once_are_bounded(wide_api_url: str) -> None:
    """Logins from as many addresses (nothing throttled) at once: one process checks at most
    CONCURRENT_VERIFICATIONS passwords (64 MiB each) at a time; the others are told 503 with
    Retry-After instead of each holding a hash's memory."""
    addresses = [fresh_address() for _ in range(CONCURRENT_LOGINS)]
    retry_after: list[str | None] = []

    def attempt(i: int, barrier: threading.Barrier) -> int:
        with client_from(wide_api_url, addresses[i]) as client:
            barrier.wait()
            answer = client.post(
                "/auth/token", json={"username": f"nobody-{i}", "password": WRONG_GUESS}
            )
        if answer.status_code == 503:
            retry_after.append(answer.headers.get("retry-after"))
        return answer.status_code

    baseline, peak = resident_bytes(), [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], resident_bytes())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        statuses = at_once(CONCURRENT_LOGINS, attempt)
    finally:
        done.set()
        sampler.join()
    grew = max(0, peak[0] - baseline)
    print(
        f"\n{CONCURRENT_LOGINS} logins at once: {statuses.count(401)} checked, "
        f"{statuses.count(503)} told 503; the process grew by {grew / MIB:.0f} MiB at most"
    )
    assert set(statuses) <= {401, 503}, statuses
    assert statuses.count(401) >= CONCURRENT_VERIFICATIONS and 503 in statuses
    assert retry_after == [str(BUSY_RETRY_AFTER_S)] * statuses.count(503)
    assert grew < (CONCURRENT_VERIFICATIONS + 2) * PASSWORD_MEMORY_KIB * 1024, grew / MIB


# --- the address a throttle counts, and people behind a sprayed address ---------------------


def retrying(send: Callable[[], int]) -> int:
    """`send` until it is not told 503 (every password-check slot busy)."""
    for _ in range(BUSY_RETRIES):
        status = send()
        if status != 503:
            return status
        time.sleep(BUSY_PAUSE_S)
    return 503


def test_ipv6_clients_count_by_their_56(wide_api_url: str) -> None:
    """One subscriber's /56 holds 256 /64s: wrong guesses from as many of them as there are
    attempts, at once, share one address allowance. (Through a trusted proxy: uvicorn takes
    the client address from X-Forwarded-For sent by 127.0.0.1, as it would from a proxy.)"""
    subscriber = f"2001:db8:{uuid.uuid4().int & 0xFFFF:x}:{uuid.uuid4().int & 0xFF:02x}"

    def attempt(i: int, barrier: threading.Barrier) -> int:
        headers = {"X-Forwarded-For": f"{subscriber}{i:02x}::1"}  # a /64 of its own
        with httpx.Client(base_url=wide_api_url, headers=headers, timeout=120) as client:
            barrier.wait()
            return retrying(lambda: guess(client, f"nobody-{uuid.uuid4().hex[:8]}"))

    statuses = at_once(CONCURRENT_LOGINS, attempt)
    assert statuses.count(401) == FREE_FAILURES_PER_ADDRESS + 1, statuses
    assert statuses.count(429) == CONCURRENT_LOGINS - statuses.count(401), statuses


def test_people_who_logged_in_from_an_address_get_in_while_it_is_sprayed(
    wide_api_url: str,
    clients: dict[str, TestClient],
    unique_module: str,
    conn: psycopg.Connection,
) -> None:
    """Someone behind the office NAT sprays guesses at many accounts and the address is
    blocked. A colleague who logged in from there lately still gets in with the right
    password while the spray goes on; an account never used from there does not, and the
    colleague's own failures still block them."""
    known, stranger = f"known-{unique_module}", f"stranger-{unique_module}"
    for username in (known, stranger):
        body = {"username": username, "password": STALE_PASSWORD, "role": "pm"}
        assert clients[ADMIN].post("/users", json=body).status_code == 201
    address = fresh_address()
    with client_from(wide_api_url, address) as client:
        assert retrying(lambda: guess(client, known, STALE_PASSWORD)) == 201

    def spray(_: int, barrier: threading.Barrier) -> int:
        with client_from(wide_api_url, address) as client:
            barrier.wait()
            return retrying(lambda: guess(client, f"nobody-{uuid.uuid4().hex[:8]}"))

    first = at_once(CONCURRENT_LOGINS, spray)
    assert first.count(401) <= FREE_FAILURES_PER_ADDRESS + 1, first
    assert first.count(429) == CONCURRENT_LOGINS - first.count(401), first
    # as after an hour of spraying: the address's wait has doubled up to its cap
    conn.execute(
        "UPDATE login_failures SET blocked_until = now() + %s WHERE key = %s",
        (timedelta(seconds=MAX_WAIT_S), address_key(address)),
    )
    colleagues = 4

    def go_on(i: int, barrier: threading.Barrier) -> int:
        if i >= colleagues:
            return spray(i, barrier)
        with client_from(wide_api_url, address) as client:
            barrier.wait()
            return retrying(lambda: guess(client, known, STALE_PASSWORD))

    during = at_once(CONCURRENT_LOGINS, go_on)
    assert during == [201] * colleagues + [429] * (CONCURRENT_LOGINS - colleagues), during
    with client_from(wide_api_url, address) as client:
        assert guess(client, stranger, STALE_PASSWORD) == 429  # never logged in from here
        own = [retrying(lambda: guess(client, known)) for _ in range(FREE_FAILURES_PER_ACCOUNT + 2)]
        assert own == [401] * (FREE_FAILURES_PER_ACCOUNT + 1) + [429], own
        assert guess(client, known, STALE_PASSWORD) == 429  # their own block holds


def test_logging_in_between_guesses_does_not_keep_an_address_under_its_limit(
    wide_api_url: str, clients: dict[str, TestClient], unique_module: str, conn: psycopg.Connection
) -> None:
    """An attacker with an account of their own alternates a guess at someone else with a
    right login to it. The right logins neither add to the address's count nor take from it
    (only a pair's first right password gives back what it counted), so the count is the
    guesses checked and goes over the free allowance. Asserted on the count, not on a 429:
    the waits past the allowance are seconds, and a slow machine's logins outlast them."""
    own = f"own-{unique_module}"
    body = {"username": own, "password": STALE_PASSWORD, "role": "pm"}
    created = clients[ADMIN].post("/users", json=body)
    assert created.status_code == 201, created.text
    address = fresh_address()
    outcomes = []
    with client_from(wide_api_url, address) as client:
        for i in range(FREE_FAILURES_PER_ADDRESS + 5):
            assert retrying(lambda: guess(client, own, STALE_PASSWORD)) == 201
            outcomes.append(retrying(partial(guess, client, f"victim{i}-{unique_module}")))
    assert outcomes[:FREE_FAILURES_PER_ADDRESS] == [401] * FREE_FAILURES_PER_ADDRESS, outcomes
    row = conn.execute(
        "SELECT failures FROM login_failures WHERE key = %s", (address_key(address),)
    ).fetchone()
    assert row is not None
    assert row[0] == outcomes.count(401) > FREE_FAILURES_PER_ADDRESS, (row, outcomes)


def resident_bytes() -> int:
    """This process's resident memory (the API under test runs in it, in a thread)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")
