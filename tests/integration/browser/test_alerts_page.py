"""The Alerts page in a real browser: ops see a firing alert and the top bar's badge, press
Acknowledge, and see the alert move to acknowledged with their name; a customer viewer sees
its own project's alert without the button."""

from __future__ import annotations

import uuid

import psycopg
from playwright.sync_api import Page, expect

from services.alerts.notify import ALERTS_PAGE
from services.alerts.rules import RuleKind
from tests.integration.browser.conftest import Site, log_in, screenshot
from tests.integration.conftest import open_alert

PROJECT = "Smart Lockers"


def test_ops_acknowledge_a_firing_alert_and_see_it_move(page: Page, site: Site) -> None:
    summary = f"no message from the project's devices for 42 min ({uuid.uuid4().hex[:6]})"
    project = site.loaded.project_ids[PROJECT]
    with psycopg.connect(site.loaded.url, autocommit=True) as conn:
        alert = open_alert(
            conn, RuleKind.PROJECT_SILENT, project, f"project:{project}", summary, {}
        )
    log_in(page, site, "ops")
    badge = page.locator("#alerts-badge")
    expect(badge).to_be_visible()
    firing = int(badge.inner_text())
    assert firing >= 1
    with page.expect_navigation():
        page.click(f"nav a[href='{ALERTS_PAGE}']")
    row = page.locator(f"#firing #alert-{alert}")
    expect(row).to_contain_text(summary)
    expect(row).to_contain_text(PROJECT)
    expect(page.locator(f"#acknowledged #alert-{alert}")).to_have_count(0)
    screenshot(page, "alerts-firing")

    with page.expect_navigation():
        row.get_by_role("button", name="Acknowledge").click()
    moved = page.locator(f"#acknowledged #alert-{alert}")
    expect(moved).to_contain_text(f"by {site.users['ops']}")
    expect(page.locator(f"#firing #alert-{alert}")).to_have_count(0)
    if firing > 1:
        expect(page.locator("#alerts-badge")).to_have_text(str(firing - 1))
    else:
        expect(page.locator("#alerts-badge")).to_have_count(0)
    screenshot(page, "alerts-acknowledged")

    # its own page, from the summary's link: acknowledged, and no button any more
    with page.expect_navigation():
        moved.get_by_role("link", name=summary).click()
    assert page.url.endswith(f"{ALERTS_PAGE}/{alert}")
    expect(page.locator("[data-field='state']")).to_have_text("acknowledged")
    expect(page.get_by_role("button", name="Acknowledge")).to_have_count(0)


def test_a_viewer_sees_its_projects_alert_without_the_button(page: Page, site: Site) -> None:
    with psycopg.connect(site.loaded.url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT id, name FROM projects WHERE customer_id = %s ORDER BY id LIMIT 1",
            (site.viewer_customer,),
        ).fetchone()
        assert row
        alert = open_alert(
            conn, RuleKind.DEVICES_OFFLINE, row[0], f"project:{row[0]}", "3 of 4 offline", {}
        )
    log_in(page, site, "viewer")
    page.goto(ALERTS_PAGE)
    expect(page.locator(f"#firing #alert-{alert}")).to_contain_text(row[1])
    expect(page.get_by_role("button", name="Acknowledge")).to_have_count(0)
