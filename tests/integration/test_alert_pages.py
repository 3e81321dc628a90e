"""The Alerts page, one alert's page and the top bar's badge, through the real app with
dashboard sessions: what each role sees, acknowledging with the form (and a forged one
refused), links to the project, customer and devices, and the links notifications carry."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from urllib.parse import urlsplit

import psycopg
import pytest
from fastapi.testclient import TestClient

from services.accounts import store as accounts
from services.accounts.roles import Role
from services.alerts.notify import ALERTS_PAGE, Due, payload
from services.alerts.rules import RuleKind
from services.core.settings import Settings
from services.registry import upserts as registry
from tests.integration.conftest import Project, api_client, open_alert
from tests.integration.test_auth import PASSWORD, log_in

DEVICE_KINDS = {
    RuleKind.DEVICE_SILENT,
    RuleKind.PROJECT_SILENT,
    RuleKind.DEVICES_OFFLINE,
    RuleKind.COMPLETENESS_LOW,
}


class Session:
    """A logged-in browser: its client, its user's name and the session's CSRF token."""

    def __init__(self, client: TestClient, username: str) -> None:
        self.client, self.username = client, username

    def page(self, path: str = ALERTS_PAGE) -> str:
        response = self.client.get(path)
        assert response.status_code == 200, response.text
        html: str = response.text
        return html

    @property
    def csrf(self) -> str:
        match = re.search(r'name="csrf-token" content="([^"]+)"', self.page())
        assert match
        return match[1]

    def acknowledge(self, alert_id: int, csrf: str | None, back: str = "list") -> str:
        """Press Acknowledge: where the answer sends the browser (or the refusal's status)."""
        form = {"back": back} if csrf is None else {"back": back, "csrf_token": csrf}
        response = self.client.post(f"{ALERTS_PAGE}/{alert_id}/acknowledge", data=form)
        if response.status_code != 303:
            return str(response.status_code)
        location: str = response.headers["location"]
        return location

    def firing_count(self) -> int:
        count: int = self.client.get("/alerts/count").json()["firing"]
        return count


@pytest.fixture
def session_as(conn: psycopg.Connection, settings: Settings) -> Iterator[Callable[..., Session]]:
    clients: list[TestClient] = []

    def make(role: Role, customer_id: int | None = None) -> Session:
        name = f"{role.value}-{uuid.uuid4().hex[:8]}"
        body = accounts.UserCreate(
            username=name, password=PASSWORD, role=role, customer_id=customer_id
        )
        accounts.create_user(conn, body)
        client = api_client(settings, None).__enter__()
        clients.append(client)
        client.follow_redirects = False
        assert log_in(client, name, PASSWORD) == 303
        return Session(client, name)

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def section(html: str, name: str) -> str:
    match = re.search(rf'<section id="{name}">(.*?)</section>', html, re.S)
    assert match, f"no section {name}"
    return match[1]


def row(html: str, alert_id: int) -> str | None:
    match = re.search(rf'<tr id="alert-{alert_id}"[^>]*>(.*?)</tr>', html, re.S)
    return match[1] if match else None


def badge(html: str) -> int:
    match = re.search(r'<span class="badge" id="alerts-badge"[^>]*>(\d+)</span>', html)
    return int(match[1]) if match else 0


def test_acknowledging_moves_an_alert_and_the_page_links_its_project_and_devices(
    conn: psycopg.Connection,
    project: Project,
    session_as: Callable[..., Session],
    unique: str,
) -> None:
    [credential] = registry.provision_devices(conn, None, project.id, [(f"al-{unique}", "T1", "1")])
    device_id = conn.execute(
        "SELECT id FROM devices WHERE serial = %s", (credential.serial,)
    ).fetchone()
    assert device_id
    evidence = {
        "devices": 2,
        "silent": [{"serial": credential.serial}, {"serial": f"gone-{unique}"}],
    }
    alert = open_alert(
        conn, RuleKind.DEVICE_SILENT, project.id, f"project:{project.id}", "2 silent", evidence
    )
    ops = session_as(Role.OPS)
    page = ops.page()
    firing = row(section(page, "firing"), alert)
    assert firing is not None
    assert f'href="/dashboards/customers/{project.customer_id}"' in firing
    # ops may not read usage: the project links to its fleet
    assert f'href="/dashboards/fleet?project={project.id}"' in firing
    assert f'<a href="/dashboards/devices/{device_id[0]}" data-device' in firing
    assert f"gone-{unique}" in firing and f">gone-{unique}</a>" not in firing  # no such device
    assert "Acknowledge</button>" in firing
    assert badge(page) == ops.firing_count() >= 1
    pm_page = session_as(Role.PM).page()
    assert f'href="/dashboards/projects/{project.id}"' in (row(pm_page, alert) or "")

    before = ops.firing_count()
    assert ops.acknowledge(alert, ops.csrf) == f"{ALERTS_PAGE}#alert-{alert}"
    page = ops.page()
    assert row(section(page, "firing"), alert) is None
    acknowledged = row(section(page, "acknowledged"), alert)
    assert acknowledged is not None and f"by {ops.username}" in acknowledged
    assert "Acknowledge</button>" not in acknowledged
    assert badge(page) == ops.firing_count() == before - 1
    # the badge is in every page's top bar
    assert badge(ops.page("/dashboards/fleet")) == before - 1

    # someone else got there first: back to the page, which says so
    again = ops.acknowledge(alert, ops.csrf, back="alert")
    assert again.startswith(f"{ALERTS_PAGE}/{alert}?error=")
    assert "acknowledged, not firing" in ops.page(again)

    conn.execute(
        "UPDATE alerts SET state = 'resolved', resolved_at = now() WHERE id = %s", (alert,)
    )
    page = ops.page()
    resolved = row(section(page, "history"), alert)
    assert resolved is not None and f"by {ops.username}" in resolved
    assert row(section(page, "acknowledged"), alert) is None


def test_a_viewer_sees_its_customers_device_alerts_only_and_cannot_acknowledge(
    project: Project,
    other_project: Project,
    alerts_of: Callable[[Project, str], dict[RuleKind, int]],
    session_as: Callable[..., Session],
    unique: str,
) -> None:
    mine, theirs = alerts_of(project, unique), alerts_of(other_project, unique)
    viewer = session_as(Role.VIEWER, project.customer_id)
    page = viewer.page()
    shown = {int(i) for i in re.findall(r'<tr id="alert-(\d+)"', page)}
    assert shown == {mine[k] for k in DEVICE_KINDS}
    assert "Acknowledge</button>" not in page
    assert badge(page) == viewer.firing_count() == len(DEVICE_KINDS)
    for kind, alert in theirs.items():
        assert viewer.client.get(f"{ALERTS_PAGE}/{alert}").status_code == 404, kind
    for kind in set(RuleKind) - DEVICE_KINDS:  # PM and ops alerts about its own project too
        assert viewer.client.get(f"{ALERTS_PAGE}/{mine[kind]}").status_code == 404, kind
    own = viewer.page(f"{ALERTS_PAGE}/{mine[RuleKind.PROJECT_SILENT]}")
    assert f"project_silent {unique}" in own and "Acknowledge</button>" not in own
    # the form, sent anyway with the session's own token: the role may not
    assert viewer.acknowledge(mine[RuleKind.PROJECT_SILENT], viewer.csrf) == "403"


def test_a_forged_acknowledge_is_refused(
    conn: psycopg.Connection, project: Project, session_as: Callable[..., Session]
) -> None:
    alert = open_alert(conn, RuleKind.PROJECT_SILENT, project.id, "forged", "quiet", {})
    ops = session_as(Role.OPS)
    assert ops.acknowledge(alert, None) == "403"
    assert ops.acknowledge(alert, "forged") == "403"
    assert row(section(ops.page(), "firing"), alert) is not None


def test_a_notifications_link_opens_the_alert_after_logging_in(
    conn: psycopg.Connection,
    project: Project,
    settings: Settings,
    session_as: Callable[..., Session],
    unique: str,
) -> None:
    alert = open_alert(
        conn, RuleKind.PROJECT_SILENT, project.id, "link", f"quiet {unique}", {"silent_s": 1}
    )
    now = datetime.now(UTC)
    due = Due(
        **dict.fromkeys(("id", "attempts", "channel_id"), 1),
        event="fired",
        channel="hook",
        kind="webhook",
        target="http://127.0.0.1:9/",
        secret=None,
        quiet_start=None,
        quiet_end=None,
        alert_id=alert,
        alert_kind="project_silent",
        subject="link",
        state="firing",
        summary=f"quiet {unique}",
        evidence={"silent_s": 1},
        project_id=project.id,
        project_name="p",
        customer_name="c",
        fired_at=now,
        resolved_at=None,
        resolution=None,
    )
    link = urlsplit(payload(due, settings.alerts)["alert"]["url"]).path
    assert link == f"{ALERTS_PAGE}/{alert}"
    with api_client(settings, None) as anonymous:
        first = anonymous.get(link, follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"].startswith("/login?next=")
    page = session_as(Role.OPS).page(link)
    assert f"quiet {unique}" in page and '"silent_s": 1' in page
    assert "Acknowledge</button>" in page
