"""A product manager and a customer viewer use the dashboards in a real browser, on the
analytics scenario; what the pages show must equal what the API answers."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

from playwright.sync_api import Page, expect

from services.accounts.roles import Role
from tests.integration.browser.conftest import (
    Site,
    Watch,
    chart_points,
    log_in,
    screenshot,
)

FULL_WINDOW_DAYS = 30  # the scenario's length: the default 30-day window covers it


def percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def test_pm_opens_every_page_and_numbers_match_the_api(page: Page, site: Site) -> None:
    log_in(page, site, "pm")
    assert page.url.endswith("/dashboards/customers")
    expect(page.locator("#customers tbody tr")).to_have_count(len(site.loaded.scenario.customers))
    screenshot(page, "pm-customers")

    with site.api(Role.PM) as api:
        labels = {r["recommendation"]: r["label"] for r in api.get("/analytics/rules").json()}
        for customer in api.get("/customers", params={"limit": 500}).json()["items"]:
            page.goto(f"/dashboards/customers/{customer['id']}")
            expect(page.locator("h1")).to_contain_text(customer["name"])
            projects = api.get("/projects", params={"customer_id": customer["id"]}).json()
            expect(page.locator("#projects tbody tr")).to_have_count(projects["total"])
            screenshot(page, f"pm-customer-{customer['name']}")

        for name, project_id in site.loaded.project_ids.items():
            page.goto(f"/dashboards/projects/{project_id}")
            page.wait_for_load_state("networkidle")
            since = page.get_attribute("input[name=since]", "value")
            expect(page.locator("h1")).to_contain_text(name)
            # the page's window is the last 30 days ending at render time: ask the API the same
            window = page.locator("a.button", has_text="Export CSV").get_attribute("href") or ""
            params = dict(re.findall(r"(since|until)=([^&]+)", window))
            params = {k: v.replace("%3A", ":").replace("%2B", "+") for k, v in params.items()}
            analytics = api.get(f"/projects/{project_id}/analytics", params=params).json()
            assert since and analytics["since"].startswith(since)
            rows = page.locator("#features tbody tr")
            expect(rows).to_have_count(len(analytics["features"]))
            for feature in analytics["features"]:
                row = page.locator(f"#features tr[data-feature='{feature['feature_key']}']")
                expect(row.locator("td.events")).to_have_text(str(feature["events"]))
                adoption = row.locator("td.adoption")
                expect(adoption).to_contain_text(percent(feature["adoption"]))
                # the interval, as the API gives it
                expect(adoption).to_contain_text(
                    f"{percent(feature['adoption_low'])}–{percent(feature['adoption_high'])}"
                )
                if feature["recommendation"]:
                    expect(row).to_contain_text(labels[feature["recommendation"]])
            expect(page.locator("#devices-reporting")).to_have_text(
                str(analytics["coverage"]["devices_reporting"])
            )
            judged = [f for f in analytics["features"] if f["recommendation"]]
            assert chart_points(page, "quadrant-chart") == len(judged)
            adoption = api.get(f"/projects/{project_id}/adoption", params=params).json()
            weeks = sum(len(f["weekly"]) for f in adoption["features"])
            assert chart_points(page, "weekly-chart") == weeks
            used = [
                f for f in analytics["features"] + analytics["undelivered_usage"] if f["events"]
            ]
            if used:
                assert chart_points(page, "usage-chart") > 0
            # the quadrant's regions carry the rule table's labels
            for rec in ("iterate_invest", "keep_prudently", "cut_candidate"):
                expect(page.locator("#quadrant-chart")).to_contain_text(labels[rec])
            screenshot(page, f"pm-project-{name}")

        page.goto("/dashboards/portfolio")
        whole = api.get("/portfolio").json()
        expect(page.locator("#portfolio-features tbody tr")).to_have_count(len(whole["features"]))
        expect(page.locator("#cut-candidates tbody tr")).to_have_count(len(whole["cut_candidates"]))
        expect(page.locator("#iterate-candidates tbody tr")).to_have_count(
            len(whole["iterate_candidates"])
        )
        assert chart_points(page, "tier-chart") > 0 and chart_points(page, "industry-chart") > 0
        screenshot(page, "pm-portfolio")


def test_pm_records_a_decision_through_the_form(page: Page, site: Site) -> None:
    log_in(page, site, "pm")
    project_id = site.loaded.project_ids["Smart Lockers"]
    page.goto(f"/dashboards/projects/{project_id}")
    rationale = f"nobody exports anything any more ({uuid.uuid4().hex[:6]})"
    feature = page.locator("#features tbody tr").first.get_attribute("data-feature")
    assert feature
    page.select_option("form.decision select[name=feature_key]", feature)
    page.select_option("form.decision select[name=decision]", "cut")
    page.fill("form.decision textarea[name=rationale]", rationale)
    page.click("form.decision button[type=submit]")
    page.wait_for_load_state("networkidle")
    row = page.locator("#decision-log tbody tr", has_text=rationale)
    expect(row).to_have_count(1)
    expect(row).to_contain_text("cut")
    expect(row).to_contain_text(site.users["pm"])
    with site.api(Role.PM) as api:
        logged = api.get("/decisions", params={"project_id": project_id, "q": rationale}).json()
    assert logged["total"] == 1
    decision = logged["items"][0]
    assert decision["decided_by"] == site.users["pm"] and decision["feature_key"] == feature
    screenshot(page, "pm-decision-recorded")


def test_time_window_switch_changes_every_number(page: Page, site: Site) -> None:
    log_in(page, site, "pm")
    project_id = site.loaded.project_ids["Smart Lockers"]
    page.goto(f"/dashboards/projects/{project_id}")
    page.click("form.window a[data-days='7']")
    page.wait_for_load_state("networkidle")
    assert "days=7" in page.url
    expect(page.locator("form.window a.chip.on")).to_have_text("7 days")
    seven = int(page.locator("#features tr[data-feature='remote_unlock'] td.events").inner_text())
    # a custom range: the first ten days of the scenario, by the date picker
    start = site.loaded.since.date()
    last_day = start + timedelta(days=9)  # the picker's end date is included
    page.fill("input[name=since]", start.isoformat())
    page.fill("input[name=until]", last_day.isoformat())
    page.click("form.window button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert "since=" in page.url and "until=" in page.url
    custom = int(page.locator("#features tr[data-feature='remote_unlock'] td.events").inner_text())
    with site.api(Role.PM) as api:
        expected = api.get(
            f"/projects/{project_id}/analytics",
            params={
                "since": f"{start.isoformat()}T00:00:00+00:00",
                "until": f"{(last_day + timedelta(days=1)).isoformat()}T00:00:00+00:00",
            },
        ).json()
    events = {f["feature_key"]: f["events"] for f in expected["features"]}
    assert custom == events["remote_unlock"] and custom != seven
    assert chart_points(page, "usage-chart") > 0
    screenshot(page, "pm-project-custom-window")


def test_viewer_sees_only_its_customer(page: Page, site: Site, watch: Watch) -> None:
    log_in(page, site, "viewer")
    assert page.url.endswith(f"/dashboards/customers/{site.viewer_customer}")
    screenshot(page, "viewer-customer")
    with site.api(Role.ADMIN) as api:
        projects = api.get("/projects", params={"limit": 500}).json()["items"]
    foreign = [p for p in projects if p["customer_id"] != site.viewer_customer]
    own = [p for p in projects if p["customer_id"] == site.viewer_customer]
    assert own and foreign
    page.goto(f"/dashboards/projects/{own[0]['id']}")
    expect(page.locator("h1")).to_contain_text(own[0]["name"])
    expect(page.locator("form.decision")).to_have_count(0)  # viewers do not decide
    # usage with its interval, never a verdict, business value or the quadrant
    expect(page.locator("#features td.adoption").first).to_contain_text("–")
    expect(page.locator("#quadrant-chart")).to_have_count(0)
    body = page.locator("body").inner_text().lower()
    for internal in ("cut candidate", "keep prudently", "iterate / invest", "business value"):
        assert internal not in body, internal
    screenshot(page, "viewer-project")
    watch.allowed_statuses.add(404)
    response = page.goto(f"/dashboards/projects/{foreign[0]['id']}")
    assert response is not None and response.status == 404
    page.goto("/dashboards/customers")
    expect(page.locator("#customers tbody tr")).to_have_count(1)


def test_pages_are_readable_on_a_phone(page: Page, site: Site) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    log_in(page, site, "pm")
    project_id = site.loaded.project_ids["Smart Lockers"]
    page.goto(f"/dashboards/projects/{project_id}")
    page.wait_for_load_state("networkidle")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 40, f"the page is {overflow}px wider than a phone"
    screenshot(page, "pm-project-phone")


def test_logout_ends_the_session(page: Page, site: Site) -> None:
    log_in(page, site, "pm")
    page.click("header form button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert "/login" in page.url
    page.goto("/dashboards/portfolio")
    assert "/login" in page.url
