"""Browser tests (under integration: they share its services): Playwright driving Debian's Chromium, headless, against the real API serving
a scenario with known ground truth.

Chromium is installed by the suite itself (Debian package `chromium`) when missing; if it
cannot be, every browser test errors with the reason. Each test fails on any console error,
uncaught page error or failed request, and pages are saved as screenshots under
test-artifacts/screenshots/.
"""

from __future__ import annotations

import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Request, sync_playwright
from pydantic import SecretStr

from services.accounts import store as accounts
from services.accounts.roles import Role
from services.api.app import create_app
from services.core.settings import Settings
from services.infra.local import LocalServices
from services.infra.system import ensure_packages
from tests import PROJECT_ROOT
from tests.integration.conftest import api_client, mint_token, wait_for
from tests.integration.scenario_support import ANALYTICS_SCENARIO, Loaded, load_scenario

CHROMIUM = "/usr/bin/chromium"
# Flags this machine needs: no sandbox as root, and no calls home (the network is closed).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "screenshots"
PASSWORD = "browser tests password"
PAGE_TIMEOUT_MS = 20_000


@pytest.fixture(scope="session")
def chromium() -> str:
    ensure_packages(["chromium"], lambda message: print(f"[browser] {message}"))
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing after installing chromium"
    return CHROMIUM


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright, chromium: str) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
    yield launched
    launched.close()


@dataclass(frozen=True)
class Site:
    """The real API on a free port, serving the analytics scenario, with one user per role."""

    url: str
    loaded: Loaded
    settings: Settings
    users: dict[str, str]  # role -> username (password: PASSWORD)
    viewer_customer: int

    def api(self, role: Role = Role.ADMIN) -> Any:
        """A bearer-token client of the same API, to compare pages with."""
        customer = self.viewer_customer if role is Role.VIEWER else None
        return api_client(self.settings, mint_token(self.loaded.url, role, customer))


@pytest.fixture(scope="session")
def site(local_services: LocalServices, settings: Settings) -> Iterator[Site]:
    with load_scenario(
        local_services, settings, ANALYTICS_SCENARIO, "fieldtrack_browser"
    ) as loaded:
        site_settings = settings.model_copy(update={"database_url": SecretStr(loaded.url)})
        users = {}
        with psycopg.connect(loaded.url, autocommit=True) as conn:
            customer = conn.execute("SELECT id FROM customers ORDER BY name LIMIT 1").fetchone()
            assert customer
            for role in Role:
                name = f"{role.value}-{uuid.uuid4().hex[:6]}"
                accounts.create_user(
                    conn,
                    accounts.UserCreate(
                        username=name,
                        password=PASSWORD,
                        role=role,
                        customer_id=customer[0] if role is Role.VIEWER else None,
                    ),
                )
                users[role.value] = name
        with serve(site_settings) as url:
            yield Site(url, loaded, site_settings, users, customer[0])


class serve:
    """uvicorn in a thread on a free 127.0.0.1 port."""

    def __init__(self, settings: Settings) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> str:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), timeout=30)
        assert self.server.started, "the API server did not start"
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@dataclass
class Watch:
    """What went wrong in the page: console errors, page errors, failed requests."""

    problems: list[str] = field(default_factory=list)
    allowed_statuses: set[int] = field(default_factory=set)

    def console(self, message: ConsoleMessage) -> None:
        # The browser also logs every 4xx/5xx response; `response` judges those (with the
        # statuses a test expects), so they are not counted twice.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(f"console error: {message.text} at {message.location}")

    def page_error(self, error: Exception) -> None:
        self.problems.append(f"page error: {error}")

    def failed(self, request: Request) -> None:
        # ERR_ABORTED is the browser cancelling a request because the page moved on (a form
        # submitted while the favicon loads, a poll in flight when the test navigates): not
        # something the site did. Refused connections, empty replies … still count.
        if request.failure and "ERR_ABORTED" in request.failure:
            return
        self.problems.append(f"request failed: {request.method} {request.url} ({request.failure})")

    def response(self, response: Any) -> None:
        if response.status >= 400 and response.status not in self.allowed_statuses:
            self.problems.append(f"HTTP {response.status}: {response.url}")


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
def page(browser: Browser, site: Site, watch: Watch) -> Iterator[Page]:
    # A phone-sized viewport is tried by its own test; pages here are laptop-sized.
    context = browser.new_context(base_url=site.url, viewport={"width": 1366, "height": 900})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    tab = context.new_page()
    tab.on("console", watch.console)
    tab.on("pageerror", watch.page_error)
    tab.on("requestfailed", watch.failed)
    tab.on("response", watch.response)
    yield tab
    context.close()
    assert not watch.problems, "\n".join(watch.problems)


def log_in(page: Page, site: Site, role: str) -> None:
    page.goto("/")
    assert "/login" in page.url
    page.fill("input[name=username]", site.users[role])
    page.fill("input[name=password]", PASSWORD)
    # wait for the navigation the form starts: "networkidle" alone can be reached before it
    # begins, leaving the test on the login page
    with page.expect_navigation():
        page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert "/login" not in page.url, page.content()[:500]


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def chart_points(page: Page, element_id: str) -> int:
    """How many points a chart drew (charts.js records it once Plotly has drawn)."""
    page.wait_for_function(
        "id => document.getElementById(id) && document.getElementById(id).dataset.points",
        arg=element_id,
    )
    return int(page.get_attribute(f"#{element_id}", "data-points") or 0)


LogIn = Callable[[Page, Site, str], None]
