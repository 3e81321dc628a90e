"""Logging in, sessions, CSRF, tokens, role escalation and the login throttle, against the
real app and database."""

from __future__ import annotations

import itertools
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from services.accounts import store as accounts
from services.accounts.cli import ensure_first_admin
from services.accounts.roles import Role
from services.accounts.throttle import (
    FORGET_AFTER_S,
    FREE_FAILURES_PER_ACCOUNT,
    FREE_FAILURES_PER_ADDRESS,
    LoginThrottle,
    backoff_s,
)
from services.api.auth import CSRF_HEADER
from services.api.background import serve_in_thread
from services.api.deps import SESSION_COOKIE
from services.cli import app as cli_app
from services.core.errors import AuthenticationError
from services.core.migrate import migrate
from services.core.settings import Settings, get_settings
from services.infra.local import LocalServices
from services.registry import upserts as registry
from tests.integration.conftest import Project, api_client, scratch_database

PASSWORD = "correct horse battery"


@pytest.fixture
def user(conn: psycopg.Connection) -> Iterator[accounts.User]:
    made = accounts.create_user(
        conn,
        accounts.UserCreate(username=f"pm-{uuid.uuid4().hex[:8]}", password=PASSWORD, role=Role.PM),
    )
    yield made


@pytest.fixture
def browser(settings: Settings) -> Iterator[TestClient]:
    """A client without a token, keeping cookies like a browser."""
    with api_client(settings, None) as client:
        client.follow_redirects = False
        yield client


def login_form_token(client: TestClient) -> str:
    page = client.get("/login")
    assert page.status_code == 200
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def log_in(client: TestClient, username: str, password: str, next_path: str = "/") -> int:
    token = login_form_token(client)
    response: httpx.Response = client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token, "next": next_path},
    )
    return response.status_code


def page_csrf(client: TestClient) -> str:
    match = re.search(
        r'name="csrf-token" content="([^"]+)"', client.get("/dashboards/customers").text
    )
    assert match
    return match.group(1)


def test_a_page_sends_the_browser_to_login_and_back(
    browser: TestClient, user: accounts.User
) -> None:
    first = browser.get("/dashboards/projects/1?since=2026-01-01T00:00:00Z")
    assert first.status_code == 303
    assert first.headers["location"].startswith("/login?next=%2Fdashboards%2Fprojects%2F1")
    token = login_form_token(browser)
    done = browser.post(
        "/login",
        data={
            "username": user.username,
            "password": PASSWORD,
            "csrf_token": token,
            "next": "/dashboards/projects/1",
        },
    )
    assert done.status_code == 303 and done.headers["location"] == "/dashboards/projects/1"
    cookie = done.headers["set-cookie"]
    assert SESSION_COOKIE in cookie
    for attribute in ("HttpOnly", "SameSite=lax", "Secure", "Path=/"):
        assert attribute.lower() in cookie.lower(), cookie
    home = browser.get("/")
    assert home.status_code == 303 and home.headers["location"] == "/dashboards/customers"
    page = browser.get(home.headers["location"])
    assert page.status_code == 200 and user.username in page.text


def test_open_redirects_are_refused(browser: TestClient, user: accounts.User) -> None:
    for target in ("https://evil.example", "//evil.example", "/\\evil.example"):
        token = login_form_token(browser)
        done = browser.post(
            "/login",
            data={
                "username": user.username,
                "password": PASSWORD,
                "csrf_token": token,
                "next": target,
            },
        )
        assert done.headers["location"] == "/"


def test_login_form_needs_its_csrf_token(browser: TestClient, user: accounts.User) -> None:
    login_form_token(browser)
    forged = browser.post(
        "/login", data={"username": user.username, "password": PASSWORD, "csrf_token": "forged"}
    )
    assert forged.status_code == 403 and SESSION_COOKIE not in forged.headers.get("set-cookie", "")


def test_wrong_password_and_unknown_user_read_the_same(
    browser: TestClient, user: accounts.User
) -> None:
    wrong = log_in(browser, user.username, "not the password")
    unknown = log_in(browser, f"nobody-{uuid.uuid4().hex[:6]}", "not the password")
    assert wrong == unknown == 401


def test_session_writes_need_the_csrf_header(
    browser: TestClient, user: accounts.User, project: object
) -> None:
    assert log_in(browser, user.username, PASSWORD) == 303
    body = {"name": "x"}
    refused = browser.post("/auth/tokens", json=body)
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    wrong = browser.post("/auth/tokens", json=body, headers={CSRF_HEADER: "nope"})
    assert wrong.status_code == 403
    made = browser.post("/auth/tokens", json=body, headers={CSRF_HEADER: page_csrf(browser)})
    assert made.status_code == 201 and made.json()["role"] == "pm"


def test_logout_ends_the_session_for_good(browser: TestClient, user: accounts.User) -> None:
    assert log_in(browser, user.username, PASSWORD) == 303
    stolen = browser.cookies.get(SESSION_COOKIE)
    csrf = page_csrf(browser)
    assert browser.post("/logout", data={"csrf_token": "wrong"}).status_code == 403
    out = browser.post("/logout", data={"csrf_token": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    # replaying the old cookie does not bring the session back
    browser.cookies.clear()
    browser.cookies.set(SESSION_COOKIE, stolen or "")
    assert browser.get("/").status_code == 303


def test_a_tampered_cookie_is_no_session(browser: TestClient, user: accounts.User) -> None:
    assert log_in(browser, user.username, PASSWORD) == 303
    cookie = browser.cookies.get(SESSION_COOKIE) or ""
    browser.cookies.clear()
    browser.cookies.set(SESSION_COOKIE, cookie[:-4] + ("AAAA" if cookie[-4:] != "AAAA" else "BBBB"))
    assert browser.get("/").status_code == 303


def test_disabling_a_user_ends_sessions_and_personal_tokens(
    api: TestClient, settings: Settings, browser: TestClient, user: accounts.User
) -> None:
    made = api.post(
        "/auth/token", json={"username": user.username, "password": PASSWORD, "name": "cli"}
    )
    assert made.status_code == 201 and made.headers["cache-control"] == "no-store"
    token = made.json()["token"]
    assert log_in(browser, user.username, PASSWORD) == 303
    with api_client(settings, token) as personal:
        assert personal.get("/auth/me").json()["name"] == user.username
        assert api.patch(f"/users/{user.id}", json={"disabled": True}).status_code == 200
        assert personal.get("/auth/me").status_code == 401
    assert browser.get("/").status_code == 303


def test_tokens_stop_when_revoked_or_expired(
    api: TestClient, settings: Settings, conn: psycopg.Connection
) -> None:
    made = api.post("/tokens", json={"name": "ci", "role": "ops", "expires_in_days": 1}).json()
    with api_client(settings, made["token"]) as ci:
        assert ci.get("/devices", params={"limit": 1}).status_code == 200
        conn.execute(
            "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = %s",
            (made["id"],),
        )
        expired = ci.get("/devices", params={"limit": 1})
        assert expired.status_code == 401 and expired.headers["www-authenticate"] == "Bearer"
    again = api.post("/tokens", json={"name": "ci2", "role": "ops"}).json()
    with api_client(settings, again["token"]) as ci:
        assert ci.get("/auth/me").status_code == 200
        assert api.post(f"/tokens/{again['id']}/revoke").status_code == 200
        assert ci.get("/auth/me").status_code == 401
    # garbage of every kind is a 401, never a 500
    for junk in ("", "ft_", "x" * 5000, "ft_%00'; DROP TABLE users; --"):
        with api_client(settings, None) as anonymous:
            response = anonymous.get("/auth/me", headers={"Authorization": f"Bearer {junk}"})
            assert response.status_code in {401, 403}, (junk[:10], response.status_code)


def test_secrets_are_stored_only_as_hashes(
    api: TestClient, conn: psycopg.Connection, user: accounts.User
) -> None:
    token = api.post("/tokens", json={"name": "hash-check", "role": "pm"}).json()["token"]
    row = conn.execute("SELECT password_hash FROM users WHERE id = %s", (user.id,)).fetchone()
    assert row and row[0].startswith("$argon2id$") and PASSWORD not in row[0]
    dump = conn.execute(
        "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM api_tokens) t"
    ).fetchone()
    assert dump and token not in dump[0] and token[3:20] not in dump[0]
    listed = api.get("/tokens").json()
    assert all("token" not in item for item in listed)


def test_no_role_escalation(
    api: TestClient, settings: Settings, conn: psycopg.Connection, project: object
) -> None:
    customer = conn.execute("SELECT id FROM customers LIMIT 1").fetchone()
    assert customer
    viewer = accounts.create_user(
        conn,
        accounts.UserCreate(
            username=f"viewer-{uuid.uuid4().hex[:6]}",
            password=PASSWORD,
            role=Role.VIEWER,
            customer_id=customer[0],
        ),
    )
    token = accounts.create_token(
        conn,
        accounts.TokenCreate(name="v", role=Role.VIEWER, customer_id=customer[0]),
        user_id=viewer.id,
    ).token
    with api_client(settings, token) as client:
        # a personal token takes the user's role; asking for another is refused
        for extra in ({"role": "admin"}, {"customer_id": 1}):
            asked = client.post("/auth/tokens", json={"name": "up", **extra})
            assert asked.status_code == 422, asked.text
        mine = client.post("/auth/tokens", json={"name": "same"}).json()
        assert mine["role"] == "viewer" and mine["customer_id"] == customer[0]
        assert client.patch(f"/users/{viewer.id}", json={"role": "admin"}).status_code == 403
        assert client.post("/tokens", json={"name": "x", "role": "admin"}).status_code == 403
    # credentials and ownership are not fields a client sets on a device
    bad = api.patch("/devices/1", json={"password": "x"})
    assert bad.status_code in {404, 422}
    project_id = conn.execute("SELECT id FROM projects LIMIT 1").fetchone()
    assert project_id
    forged = api.post(
        "/devices",
        json={
            "serial": f"esc-{uuid.uuid4().hex[:6]}",
            "project_id": project_id[0],
            "password": "chosen-by-me",
        },
    )
    assert forged.status_code == 422


def test_the_last_admin_cannot_be_removed(api: TestClient, conn: psycopg.Connection) -> None:
    admins = conn.execute(
        "SELECT id FROM users WHERE role = 'admin' AND disabled_at IS NULL"
    ).fetchall()
    if not admins:
        made = api.post(
            "/users",
            json={
                "username": f"root-{uuid.uuid4().hex[:6]}",
                "password": PASSWORD,
                "role": "admin",
            },
        )
        admins = [(made.json()["id"],)]
    # demote every admin but the last, then the last one is refused
    for (admin_id,) in admins[:-1]:
        assert api.patch(f"/users/{admin_id}", json={"disabled": True}).status_code == 200
    last = admins[-1][0]
    refused = api.patch(f"/users/{last}", json={"role": "pm"})
    assert refused.status_code == 409 and "no enabled admin" in refused.json()["detail"]
    assert api.delete(f"/users/{last}").status_code == 409
    assert api.get(f"/users/{last}").json()["role"] == "admin"
    for (admin_id,) in admins[:-1]:
        api.patch(f"/users/{admin_id}", json={"disabled": False})


def test_brute_force_is_slowed_down(
    api: TestClient, settings: Settings, user: accounts.User
) -> None:
    """An attacker hammering one account gets a handful of guesses, then waits that double."""
    with api_client(settings, None) as attacker:
        started = time.monotonic()
        statuses = []
        for _ in range(30):
            response = attacker.post(
                "/auth/token", json={"username": user.username, "password": "guess"}
            )
            statuses.append(response.status_code)
        elapsed = time.monotonic() - started
        guesses_checked = statuses.count(401)
        assert guesses_checked == FREE_FAILURES_PER_ACCOUNT + 1, statuses
        blocked = [s for s in statuses if s == 429]
        assert len(blocked) == 30 - guesses_checked
        limited = attacker.post("/auth/token", json={"username": user.username, "password": "x"})
        assert int(limited.headers["retry-after"]) >= 1
        # even the right password waits out the block (no oracle while blocked)
        right = attacker.post("/auth/token", json={"username": user.username, "password": PASSWORD})
        assert right.status_code == 429
    print(
        f"\nlogin throttle: {guesses_checked} of 30 guesses were checked in {elapsed:.2f}s; "
        f"the rest got 429 (Retry-After {limited.headers['retry-after']} s)"
    )


def test_cli_users_add_and_login(
    settings: Settings, api_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIELDTRACK_DATABASE_URL", settings.database_url.get_secret_value())
    monkeypatch.setenv("FIELDTRACK_CLI_CONFIG", str(tmp_path / "cli.env"))
    monkeypatch.delenv("FIELDTRACK_API_TOKEN", raising=False)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        name = f"ops-{uuid.uuid4().hex[:6]}"
        added = runner.invoke(cli_app, ["users", "add", name, "--role", "ops"])
        assert added.exit_code == 0, added.output
        password = re.search(r"password \(shown once\): (\S+)", added.output)
        assert password, added.output
        refused = runner.invoke(cli_app, ["users", "add", "x-viewer", "--role", "viewer"])
        assert refused.exit_code == 1 and "viewer needs customer_id" in refused.output, (
            refused.output
        )
        login = runner.invoke(
            cli_app,
            ["login", "--url", api_url, "--username", name, "--password", password.group(1)],
        )
        assert login.exit_code == 0, login.output
        saved = (tmp_path / "cli.env").read_text()
        assert "FIELDTRACK_API_TOKEN=ft_" in saved
        assert (tmp_path / "cli.env").stat().st_mode & 0o777 == 0o600
        listed = runner.invoke(cli_app, ["devices", "list", "--limit", "1"], env={"COLUMNS": "200"})
        assert listed.exit_code == 0, listed.output
        # ops may not write customers: the CLI says so in words
        denied = runner.invoke(
            cli_app, ["customers", "add", "--name", "Nope Ltd", "--tier", "tail", "--industry", "x"]
        )
        assert denied.exit_code == 1 and "may not do this" in denied.output
        out = runner.invoke(cli_app, ["logout"])
        assert out.exit_code == 0 and not (tmp_path / "cli.env").exists()
    finally:
        get_settings.cache_clear()


def test_first_admin_is_made_once(local_services: LocalServices, settings: Settings) -> None:
    """What `make demo` does on a fresh database: one admin, password shown once."""
    url = settings.database_url.get_secret_value()
    with scratch_database(local_services, url, "first_admin") as fresh:
        migrate(fresh)
        with psycopg.connect(fresh, autocommit=True) as conn:
            made = ensure_first_admin(conn)
            assert made is not None
            name, password = made
            assert len(password) >= 20
            assert accounts.authenticate(conn, name, password) is not None
            assert ensure_first_admin(conn) is None  # a second demo prints no password
            assert [u.role for u in accounts.list_users(conn)] == [Role.ADMIN]


# --- personal tokens follow their user (issue 22, finding 2) ------------------------------


def add_user(api: TestClient, role: str, customer_id: int | None = None) -> dict[str, Any]:
    """A user made through the API, as an admin would."""
    username = f"{role}-{uuid.uuid4().hex[:8]}"
    body = {"username": username, "password": PASSWORD, "role": role, "customer_id": customer_id}
    made = api.post("/users", json=body)
    assert made.status_code == 201, made.text
    user: dict[str, Any] = made.json()
    return user


def personal_token(api: TestClient, username: str, password: str = PASSWORD) -> dict[str, Any]:
    made = api.post("/auth/token", json={"username": username, "password": password})
    assert made.status_code == 201, made.text
    token: dict[str, Any] = made.json()
    return token


def test_a_demoted_admin_keeps_no_admin_and_cannot_promote_back(
    api: TestClient, settings: Settings, project: Project
) -> None:
    admin = add_user(api, "admin")
    old = personal_token(api, admin["username"])
    with api_client(settings, old["token"]) as before:
        assert before.get("/auth/me").json()["role"] == "admin"
        demoted = api.patch(
            f"/users/{admin['id']}", json={"role": "viewer", "customer_id": project.customer_id}
        )
        assert demoted.status_code == 200, demoted.text
        assert before.get("/auth/me").status_code == 401
        assert before.get("/users").status_code == 401
        assert before.patch(f"/users/{admin['id']}", json={"role": "admin"}).status_code == 401
        assert before.post("/tokens", json={"name": "x", "role": "admin"}).status_code == 401
    listed = {t["id"]: t for t in api.get("/tokens").json()}
    assert listed[old["id"]]["revoked_at"] is not None
    # logging in again gives a viewer of that customer, who may not promote themselves
    with api_client(settings, personal_token(api, admin["username"])["token"]) as now:
        me = now.get("/auth/me").json()
        assert (me["role"], me["customer_id"]) == ("viewer", project.customer_id)
        assert now.patch(f"/users/{admin['id']}", json={"role": "admin"}).status_code == 403
    assert api.get(f"/users/{admin['id']}").json()["role"] == "viewer"


def test_a_viewer_moved_to_another_customer_loses_the_old_customer(
    api: TestClient, settings: Settings, conn: psycopg.Connection, project: Project
) -> None:
    other = registry.upsert_customer(
        conn, f"Moved-to {uuid.uuid4().hex[:6]}", "tail", "retail", "adoption"
    )
    viewer = add_user(api, "viewer", project.customer_id)
    old = personal_token(api, viewer["username"])["token"]
    with api_client(settings, old) as before:
        assert before.get(f"/customers/{project.customer_id}").status_code == 200
        assert api.patch(f"/users/{viewer['id']}", json={"customer_id": other}).status_code == 200
        assert before.get(f"/customers/{project.customer_id}").status_code == 401
        assert before.get(f"/projects/{project.id}").status_code == 401
    with api_client(settings, personal_token(api, viewer["username"])["token"]) as now:
        assert now.get(f"/customers/{project.customer_id}").status_code == 404
        assert now.get(f"/customers/{other}").status_code == 200


def test_a_password_reset_revokes_personal_tokens(api: TestClient, settings: Settings) -> None:
    user = add_user(api, "pm")
    old = personal_token(api, user["username"])["token"]
    with api_client(settings, old) as before:
        assert before.get("/auth/me").status_code == 200
        new_password = "a brand new password"
        assert api.patch(f"/users/{user['id']}", json={"password": new_password}).status_code == 200
        assert before.get("/auth/me").status_code == 401
    assert personal_token(api, user["username"], new_password)["role"] == "pm"


def test_re_enabling_a_user_does_not_revive_old_tokens(api: TestClient, settings: Settings) -> None:
    user = add_user(api, "ops")
    old = personal_token(api, user["username"])["token"]
    with api_client(settings, old) as before:
        assert api.patch(f"/users/{user['id']}", json={"disabled": True}).status_code == 200
        assert before.get("/auth/me").status_code == 401
        assert api.patch(f"/users/{user['id']}", json={"disabled": False}).status_code == 200
        assert before.get("/auth/me").status_code == 401
    with api_client(settings, personal_token(api, user["username"])["token"]) as now:
        assert now.get("/auth/me").json()["role"] == "ops"


def test_personal_tokens_always_expire(api: TestClient, settings: Settings) -> None:
    user = add_user(api, "pm")
    login = {"username": user["username"], "password": PASSWORD}
    never = api.post("/auth/token", json={**login, "expires_in_days": None})
    assert never.status_code == 422, never.text
    assert "personal tokens always expire" in never.json()["detail"][0]["msg"]
    too_long = api.post("/auth/token", json={**login, "expires_in_days": 366})
    assert too_long.status_code == 422, too_long.text
    default = personal_token(api, user["username"])
    expires = datetime.fromisoformat(default["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=89) < expires <= timedelta(days=90)
    with api_client(settings, default["token"]) as mine:
        asked = mine.post("/auth/tokens", json={"name": "forever", "expires_in_days": None})
        assert asked.status_code == 422, asked.text
        longest = mine.post("/auth/tokens", json={"name": "year", "expires_in_days": 365})
        assert longest.status_code == 201, longest.text
    # a password may ask for the full term
    year = api.post("/auth/token", json={**login, "expires_in_days": 365})
    assert year.status_code == 201, year.text
    lasts = datetime.fromisoformat(year.json()["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=364) < lasts <= timedelta(days=365)


def test_a_personal_token_cannot_mint_a_longer_lived_successor(
    api: TestClient, settings: Settings
) -> None:
    """Tokens minted with a token expire no later than it: a token renewing itself for ever
    (each one minting the next before it expires) is not a token that expires."""
    user = add_user(api, "pm")
    short = api.post(
        "/auth/token",
        json={"username": user["username"], "password": PASSWORD, "expires_in_days": 1},
    ).json()
    ends = datetime.fromisoformat(short["expires_at"])
    with api_client(settings, short["token"]) as mine:
        child = mine.post("/auth/tokens", json={"name": "next", "expires_in_days": 365})
        assert child.status_code == 201, child.text
        assert datetime.fromisoformat(child.json()["expires_at"]) <= ends
        with api_client(settings, child.json()["token"]) as next_one:
            grandchild = next_one.post(
                "/auth/tokens", json={"name": "after", "expires_in_days": 90}
            )
            assert grandchild.status_code == 201, grandchild.text
            assert datetime.fromisoformat(grandchild.json()["expires_at"]) <= ends


def test_revoking_a_token_ends_the_tokens_made_with_it(api: TestClient, settings: Settings) -> None:
    """A stolen token cannot leave a successor behind: revoking it revokes what it made, and
    what that made, personal and service tokens alike."""
    user = add_user(api, "pm")
    login = {"username": user["username"], "password": PASSWORD}
    stolen = api.post("/auth/token", json=login).json()
    with api_client(settings, stolen["token"]) as thief:
        child = thief.post("/auth/tokens", json={"name": "kept"}).json()
    with api_client(settings, child["token"]) as thief:
        grandchild = thief.post("/auth/tokens", json={"name": "kept too"}).json()
    mine = api.post("/auth/token", json=login).json()  # made with the password: no parent
    admin = api.post("/tokens", json={"name": "ci", "role": "admin"}).json()
    with api_client(settings, admin["token"]) as ci:
        made_by_ci = ci.post("/tokens", json={"name": "ci child", "role": "ops"}).json()

    with api_client(settings, mine["token"]) as me:
        revoked = me.post(f"/auth/tokens/{stolen['id']}/revoke")
        assert revoked.status_code == 200, revoked.text
        for token in (stolen, child, grandchild):
            with api_client(settings, token["token"]) as gone:
                assert gone.get("/auth/me").status_code == 401, token["name"]
        assert me.get("/auth/me").status_code == 200
        listed = {t["id"]: t for t in me.get("/auth/tokens").json()}
    assert all(listed[t["id"]]["revoked_at"] for t in (stolen, child, grandchild))
    assert listed[mine["id"]]["revoked_at"] is None

    assert api.post(f"/tokens/{admin['id']}/revoke").status_code == 200
    with api_client(settings, made_by_ci["token"]) as orphan:
        assert orphan.get("/auth/me").status_code == 401


# --- service tokens end with their creator's admin role ------------------------------------


def test_service_tokens_always_expire(api: TestClient) -> None:
    never = api.post("/tokens", json={"name": "svc", "role": "ops", "expires_in_days": None})
    assert never.status_code == 422, never.text
    assert "service tokens always expire" in never.json()["detail"][0]["msg"]
    too_long = api.post("/tokens", json={"name": "svc", "role": "ops", "expires_in_days": 366})
    assert too_long.status_code == 422, too_long.text
    service = api.post("/tokens", json={"name": "svc", "role": "ops"}).json()
    expires = datetime.fromisoformat(service["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=89) < expires <= timedelta(days=90)
    # keeps its own role and customer; made with a token from the database, it has no creator
    assert (service["role"], service["user_id"], service["created_by"]) == ("ops", None, None)
    listed = {t["id"]: t for t in api.get("/tokens").json()}
    assert listed[service["id"]]["created_by"] is None


def bearer(token: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['token']}"}


# What an admin does to another admin, as (method, body); any of them ends the service
# tokens the other made.
CREATOR_CHANGES: dict[str, tuple[str, dict[str, Any] | None]] = {
    "demoted": ("PATCH", {"role": "pm"}),
    "disabled": ("PATCH", {"disabled": True}),
    "deleted": ("DELETE", None),
}


@pytest.mark.parametrize("change", list(CREATOR_CHANGES))
def test_service_tokens_end_when_their_creator_stops_being_an_admin(
    api: TestClient, change: str
) -> None:
    add_user(api, "admin")  # another enabled admin: the last one cannot be demoted
    admin = add_user(api, "admin")
    theirs = bearer(personal_token(api, admin["username"]))
    made: dict[str, dict[str, Any]] = {}
    for role in ("admin", "ops"):
        answer = api.post("/tokens", json={"name": f"by-{role}", "role": role}, headers=theirs)
        assert answer.status_code == 201, answer.text
        made[role] = answer.json()
    # a service token's own service tokens answer to the same admin, and do not outlive it
    chained = api.post(
        "/tokens",
        json={"name": "chained", "role": "pm", "expires_in_days": 365},
        headers=bearer(made["admin"]),
    )
    assert chained.status_code == 201, chained.text
    made["chained"] = chained.json()
    expiry = {name: datetime.fromisoformat(t["expires_at"]) for name, t in made.items()}
    assert expiry["chained"] <= expiry["admin"]
    listed = {t["id"]: t for t in api.get("/tokens").json()}
    assert {listed[t["id"]]["created_by"] for t in made.values()} == {admin["id"]}
    for token in made.values():
        assert api.get("/auth/me", headers=bearer(token)).status_code == 200
    method, body = CREATOR_CHANGES[change]
    answer = api.request(method, f"/users/{admin['id']}", json=body)
    assert answer.status_code in {200, 204}, answer.text
    for name, token in made.items():
        assert api.get("/auth/me", headers=bearer(token)).status_code == 401, name
        assert api.get("/users", headers=bearer(token)).status_code == 401, name
    listed = {t["id"]: t for t in api.get("/tokens").json()}
    assert all(listed[t["id"]]["revoked_at"] is not None for t in made.values())
    if change != "deleted":  # an admin again: the old tokens stay revoked
        again = api.patch(f"/users/{admin['id']}", json={"role": "admin", "disabled": False})
        assert again.status_code == 200, again.text
        for token in made.values():
            assert api.get("/auth/me", headers=bearer(token)).status_code == 401


def test_a_password_reset_ends_the_service_tokens_made_with_the_old_credentials(
    api: TestClient,
) -> None:
    """A phished admin's first response is a password reset: the personal token it ends
    takes the service tokens made with it along. A token made by an operator with database
    access (this suite's own admin token) is nobody's credential and stays."""
    admin = add_user(api, "admin")
    theirs = bearer(personal_token(api, admin["username"]))
    made = api.post("/tokens", json={"name": "ci", "role": "ops"}, headers=theirs).json()
    assert api.get("/auth/me", headers=bearer(made)).status_code == 200
    reset = api.patch(f"/users/{admin['id']}", json={"password": "another long password"})
    assert reset.status_code == 200, reset.text
    assert api.get("/auth/me", headers=bearer(made)).status_code == 401
    assert api.get("/auth/me").status_code == 200


def test_no_service_token_is_made_for_an_admin_demoted_while_asking(
    conn: psycopg.Connection, api: TestClient
) -> None:
    """The race of a slow request: the admin is demoted after authenticating but before the
    token is stored. No token is made under the old role."""
    add_user(api, "admin")  # another enabled admin: the last one cannot be demoted
    admin = add_user(api, "admin")
    checked = accounts.authenticate(conn, admin["username"], PASSWORD)
    assert checked is not None
    accounts.update_user(conn, admin["id"], accounts.UserUpdate(role=Role.OPS))
    with pytest.raises(AuthenticationError):
        accounts.create_token(
            conn, accounts.TokenCreate(name="late", role=Role.ADMIN), caller=checked
        )


def test_no_token_is_made_for_a_user_changed_while_logging_in(
    conn: psycopg.Connection, user: accounts.User
) -> None:
    """The race a slow password check opens: the password is reset after it was checked but
    before the token is stored. The token is refused, not made under the old password."""
    checked = accounts.authenticate(conn, user.username, PASSWORD)
    assert checked is not None and checked.epoch is not None
    accounts.update_user(conn, user.id, accounts.UserUpdate(password="reset by an admin"))
    with pytest.raises(AuthenticationError):
        accounts.create_personal_token(conn, user.id, checked.epoch, "cli", 90)
    with pytest.raises(AuthenticationError):
        accounts.start_session(conn, checked)


# --- the login throttle (issue 22, finding 8) ---------------------------------------------

_addresses = itertools.count(1)


def fresh_address() -> str:
    """A loopback source address no other test uses: the throttle counts per address."""
    n = next(_addresses)
    return f"127.0.{n // 250 + 1}.{n % 250 + 1}"


def client_from(url: str, address: str) -> httpx.Client:
    """An HTTP client of the real server whose connections come from `address`."""
    return httpx.Client(
        base_url=url, timeout=120, transport=httpx.HTTPTransport(local_address=address)
    )


WRONG_GUESS = "a wrong guess"


def guess(client: httpx.Client, username: str, password: str = WRONG_GUESS) -> int:
    answer = client.post("/auth/token", json={"username": username, "password": password})
    return answer.status_code


def test_failing_from_one_address_does_not_lock_the_account_out_elsewhere(
    api_url: str, api: TestClient
) -> None:
    victim = add_user(api, "admin")["username"]
    with client_from(api_url, fresh_address()) as attacker:
        statuses = [guess(attacker, victim) for _ in range(FREE_FAILURES_PER_ACCOUNT + 3)]
        assert statuses.count(401) == FREE_FAILURES_PER_ACCOUNT + 1, statuses
        assert statuses[-1] == 429
        # from the attacker's address even the right password waits: no oracle
        assert guess(attacker, victim, PASSWORD) == 429
    with client_from(api_url, fresh_address()) as elsewhere:
        assert guess(elsewhere, victim, PASSWORD) == 201


def test_one_address_trying_many_accounts_is_slowed(api_url: str) -> None:
    with client_from(api_url, fresh_address()) as sprayer:
        statuses = [
            guess(sprayer, f"nobody-{uuid.uuid4().hex[:8]}")
            for _ in range(FREE_FAILURES_PER_ADDRESS + 2)
        ]
    assert statuses.count(401) == FREE_FAILURES_PER_ADDRESS + 1, statuses
    assert statuses[-1] == 429


# 60,000 failure records: more than the in-memory table the throttle had before issue 22
# held (50,000, oldest evicted first), which a flood of invented usernames emptied.
FLOOD_ATTEMPTS = 30_000
FLOOD_CONNECTIONS = 4


def test_invented_usernames_do_not_evict_a_victims_record(
    api_url: str, api: TestClient, settings: Settings
) -> None:
    victim = add_user(api, "pm")["username"]
    address = fresh_address()
    with client_from(api_url, address) as attacker:
        for _ in range(FREE_FAILURES_PER_ACCOUNT + 1):
            assert guess(attacker, victim) == 401
    # The flood, through the same throttle the login routes use, from a botnet: each invented
    # username from an address of its own (over HTTP each would cost a ~0.1 s password check).
    throttle = LoginThrottle()

    def flood(first: int) -> None:
        with psycopg.connect(settings.database_url.get_secret_value()) as conn:
            for i in range(first, FLOOD_ATTEMPTS, FLOOD_CONNECTIONS):
                throttle.begin(conn, f"invented-{i}", f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")

    with ThreadPoolExecutor(FLOOD_CONNECTIONS) as pool:
        list(pool.map(flood, range(FLOOD_CONNECTIONS)))
    # The victim's count went on: the next failure is the 7th and blocks; had the record
    # been evicted it would be the 1st of 5 free ones.
    with client_from(api_url, address) as attacker:
        time.sleep(backoff_s(1))  # the block of the 6th failure has passed
        assert guess(attacker, victim) == 401
        assert guess(attacker, victim, PASSWORD) == 429


def test_failures_are_forgotten_after_an_hour_and_purged(
    api_url: str, api: TestClient, conn: psycopg.Connection
) -> None:
    victim = add_user(api, "pm")["username"]
    address = fresh_address()
    with client_from(api_url, address) as attacker:
        for _ in range(FREE_FAILURES_PER_ACCOUNT + 1):
            guess(attacker, victim)
        # an hour and more later, from the database's point of view
        conn.execute(
            "UPDATE login_failures SET last_failure = last_failure - %s, "
            "blocked_until = blocked_until - %s WHERE key LIKE %s",
            (timedelta(seconds=FORGET_AFTER_S + 1),) * 2 + (f"%{address}",),
        )
        conn.execute(
            "INSERT INTO login_failures VALUES (%s, 1, '-infinity', now() - %s)",
            (f"pair:long-gone|{address}", timedelta(seconds=FORGET_AFTER_S + 1)),
        )
        statuses = [guess(attacker, victim) for _ in range(FREE_FAILURES_PER_ACCOUNT + 2)]
    assert statuses.count(401) == FREE_FAILURES_PER_ACCOUNT + 1, statuses  # counting anew
    gone = conn.execute(
        "SELECT count(*) FROM login_failures WHERE key = %s", (f"pair:long-gone|{address}",)
    ).fetchone()
    assert gone == (0,)


# --- a login flood leaves the connection pool to everyone else -----------------------------

FLOOD_LOGINS = 32  # well past the 4 password-check slots, within uvicorn's 40 threads
FLOOD_S = 4.0
SMALL_POOL = 4
# An authenticated read needs one pooled connection for a few milliseconds. While logins held
# connections as they waited for a password-check slot it queued behind them: over 4 s
# (median) on the 2-core test machine; now 0.05-0.3 s, sharing the CPU with the hashes.
PROMPT_S = 1.0


@pytest.fixture(scope="module")
def small_pool_api_url(settings: Settings) -> Iterator[str]:
    """The real API with a small pool of its own (no other test's requests in it), as a
    small deployment would set it: the fewer connections, the plainer a hold on them."""
    with serve_in_thread(settings.model_copy(update={"db_pool_max": SMALL_POOL})) as url:
        yield url


def test_a_login_flood_does_not_starve_other_requests(
    small_pool_api_url: str, api: TestClient, admin_token: str
) -> None:
    user = add_user(api, "pm")
    stop = threading.Event()
    statuses: list[int] = []

    def log_in_again_and_again(_: int) -> None:
        with client_from(small_pool_api_url, fresh_address()) as client:
            while not stop.is_set():
                statuses.append(guess(client, user["username"], PASSWORD))

    waits: list[float] = []
    headers = {"Authorization": f"Bearer {admin_token}"}
    with (
        ThreadPoolExecutor(FLOOD_LOGINS) as pool,
        httpx.Client(base_url=small_pool_api_url, headers=headers, timeout=60) as reader,
    ):
        flood = [pool.submit(log_in_again_and_again, i) for i in range(FLOOD_LOGINS)]
        try:
            time.sleep(0.5)  # the flood is under way
            deadline = time.monotonic() + FLOOD_S
            while time.monotonic() < deadline:
                started = time.monotonic()
                assert reader.get("/auth/me").status_code == 200
                waits.append(time.monotonic() - started)
                time.sleep(0.05)
        finally:
            stop.set()
        for done in flood:
            done.result()
    waits.sort()
    print(
        f"\n{FLOOD_LOGINS} logins at a time ({statuses.count(201)} made, {statuses.count(503)} "
        f"told 503): GET /auth/me took {waits[len(waits) // 2] * 1000:.0f} ms median, "
        f"{waits[-1] * 1000:.0f} ms at most"
    )
    assert statuses.count(201) > 0 and set(statuses) <= {201, 503}, set(statuses)
    assert waits[len(waits) // 2] < PROMPT_S, waits
