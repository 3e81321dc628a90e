"""Ops use the fleet, device and ingest pages in a real browser, on the analytics scenario
plus a few messages received just now (the scenario is history: nothing in it arrived in the
last minutes); what the pages show must equal what the API answers, and it must change on
the page, without a reload, when new data arrives."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Page, expect

from services.accounts.roles import Role
from services.api.templates import utc
from tests.integration.browser.conftest import Site, Watch, chart_points, log_in, screenshot
from tests.integration.live_messages import ago, raw, status, store_live, telemetry

PROJECT = "Smart Lockers"
LIVE_REFRESH_S = 20  # the fleet page polls every 10 s, ingest every 5 s


@dataclass(frozen=True)
class Live:
    serials: list[str]  # sent a status and telemetry just now
    spare: str  # a device of the same project kept silent, for the live-refresh checks
    ids: dict[str, int]
    last_seq: dict[str, int]  # before the live messages


@pytest.fixture(scope="module")
def live(site: Site) -> Iterator[Live]:
    """Three devices come online and report now; one message is not JSON."""
    with site.api(Role.ADMIN) as api:
        project = site.loaded.project_ids[PROJECT]
        devices = api.get(
            "/devices", params={"project_id": project, "sort": "serial", "limit": 5}
        ).json()["items"]
    serials = [d["serial"] for d in devices[:3]]
    # go on numbering where each device stopped, so no sequence gap appears
    with psycopg.connect(site.loaded.url) as conn:
        last_seq: dict[str, int] = dict(
            conn.execute(
                "SELECT d.serial, coalesce(s.last_seq, 0) FROM devices d "
                "LEFT JOIN device_state s ON s.device_id = d.id WHERE d.serial = ANY(%s)",
                (serials,),
            ).fetchall()
        )
    now = datetime.now(UTC)
    messages = []
    for i, serial in enumerate(serials):
        messages += [
            status(serial, "online", ago(now, minutes=3), firmware="1.5.0"),
            telemetry(
                serial,
                last_seq[serial] + 1,
                ago(now, minutes=1 + i),
                lag_s=2 + i,
                battery=70 + i,
                rssi=-60 - i,
            ),
        ]
    messages.append(raw(serials[0], b"{this is not json", ago(now, minutes=2)))
    result = store_live(site.loaded.url, messages)
    assert result.metric_rows == 6 and dict(result.quarantined) == {"not_json": 1}
    yield Live(serials, devices[3]["serial"], {d["serial"]: d["id"] for d in devices}, last_seq)


def number(page: Page, field: str) -> str:
    return page.locator(f"[data-field='{field}']").first.inner_text()


def test_ops_fleet_page_matches_the_api_and_refreshes_itself(
    page: Page, site: Site, live: Live
) -> None:
    log_in(page, site, "ops")
    assert page.url.endswith("/dashboards/fleet"), "ops start at the fleet"
    page.wait_for_load_state("networkidle")
    with site.api(Role.OPS) as api:
        fleet = api.get("/fleet").json()
        for name in ("devices", "online", "offline", "never_seen"):
            assert number(page, f"totals.{name}") == str(fleet["totals"][name]), name
        # stale devices depend on the clock: the page agrees with the API a moment before or after
        assert int(number(page, "totals.stale")) in {
            fleet["totals"]["stale"],
            api.get("/fleet").json()["totals"]["stale"],
        }
        expect(page.locator("#projects tbody tr")).to_have_count(len(fleet["projects"]))
        for p in fleet["projects"]:
            row = page.locator(f"#projects tr[data-project='{p['project_id']}']")
            expect(row.locator("td").nth(2)).to_have_text(str(p["online"]))
        assert chart_points(page, "status-chart") == 3 * len(fleet["projects"])
        assert chart_points(page, "firmware-chart") == len(fleet["firmware"]) > 0
        assert chart_points(page, "battery-chart") == len(fleet["battery"]["values"]) > 0
        assert chart_points(page, "signal-chart") == len(fleet["signal"]["values"]) > 0
        assert "1.5.0" in [f["firmware"] for f in fleet["firmware"]]
        screenshot(page, "ops-fleet")

        # a device comes online: the number changes on the page, which is not reloaded
        page.evaluate("window.__notReloaded = true")
        before = fleet["totals"]["online"]
        store_live(site.loaded.url, [status(live.spare, "online", datetime.now(UTC))])
        after = api.get("/fleet").json()["totals"]["online"]
        assert after == before + 1
        expect(page.locator("[data-field='totals.online']").first).to_have_text(
            str(after), timeout=LIVE_REFRESH_S * 1000
        )
        assert page.evaluate("window.__notReloaded === true")
        expect(page.locator("#live")).not_to_have_class(re.compile(r"\bstale\b"))

    # the project filter
    project = site.loaded.project_ids[PROJECT]
    with page.expect_navigation():  # the select submits its form when changed
        page.select_option("select[name=project]", str(project))
    assert f"project={project}" in page.url
    expect(page.locator("#projects tbody tr")).to_have_count(1)
    screenshot(page, "ops-fleet-one-project")


def test_ops_device_page_shows_its_telemetry(page: Page, site: Site, live: Live) -> None:
    log_in(page, site, "ops")
    stale = page.locator("#stale-devices tbody tr a").first
    if stale.count():  # the scenario's devices are silent since midnight: usually stale
        serial = stale.inner_text()
        stale.click()
        page.wait_for_load_state("networkidle")
        expect(page.locator("h1")).to_contain_text(serial)
    serial = live.serials[0]
    device_id = live.ids[serial]
    page.goto(f"/dashboards/devices/{device_id}")
    page.wait_for_load_state("networkidle")
    expect(page.locator("h1")).to_contain_text(serial)
    window = page.get_attribute("a[href*='/telemetry?']", "href") or ""
    with site.api(Role.OPS) as api:
        got: dict[str, Any] = api.get(window).json()
    device = got["device"]
    expect(page.locator("#device-status")).to_have_text("online")
    last_seen = datetime.fromisoformat(device["last_seen"])
    expect(page.locator("[data-field='device.last_seen']")).to_have_text(utc(last_seen))
    expect(page.locator("[data-field='device.reported_firmware']")).to_have_text("1.5.0")
    messages = sum(h["messages"] for h in got["reporting"])
    expect(page.locator("#messages-total")).to_have_text(str(messages))
    assert messages > 1  # the scenario's last day, and the message just now
    missing = max(sum(h["missing"] for h in got["reporting"]), 0)
    expect(page.locator("#missing-total")).to_have_text(str(missing))
    charts = page.locator(".chart[data-metric]")
    expect(charts).to_have_count(len(got["metrics"]))
    for i, metric in enumerate(got["metrics"]):
        chart = charts.nth(i)
        assert chart.get_attribute("data-metric") == metric["name"]
        assert chart_points(page, chart.get_attribute("id") or "") == len(metric["points"]) > 0
    assert chart_points(page, "reporting-chart") == 2 * len(got["reporting"])
    history = page.locator("#status-history tbody tr")
    expect(history).to_have_count(len(got["status_history"]))
    for row, reported in zip(history.all(), got["status_history"], strict=True):
        expect(row).to_contain_text("online" if reported["online"] else "offline")
    screenshot(page, "ops-device")
    page.click("form.window a[data-days='7']")
    page.wait_for_load_state("networkidle")
    expect(page.locator("form.window a.chip.on")).to_have_text("7 days")
    screenshot(page, "ops-device-7-days")


def test_ops_ingest_page_matches_the_api_and_refreshes_itself(
    page: Page, site: Site, live: Live
) -> None:
    log_in(page, site, "ops")
    page.click("header nav a:text('Ingest')")
    page.wait_for_load_state("networkidle")
    assert page.url.endswith("/dashboards/ingest")
    with site.api(Role.OPS) as api:
        health = api.get("/ingest/health").json()
        recent = health["recent"]
        assert recent["messages"] >= 3
        assert number(page, "recent.messages") == str(recent["messages"])
        assert number(page, "recent.lag_p95_seconds") == f"{recent['lag_p95_seconds']:.2f}"
        assert number(page, "quarantine.total") == str(health["quarantine"]["total"])
        reasons = page.locator("#quarantine-reasons tbody tr")
        expect(reasons).to_have_count(len(health["quarantine"]["reasons"]))
        sample = next(r for r in health["quarantine"]["reasons"] if r["reason"] == "not_json")
        row = page.locator("#quarantine-reasons tr[data-reason='not_json']")
        expect(row.locator("code.payload")).to_contain_text(sample["sample"]["payload_preview"])
        expect(row.locator("a", has_text="raw payload")).to_have_attribute(
            "href", f"/quarantine/{sample['sample']['id']}/payload"
        )
        expect(page.locator("#completeness-table tbody tr")).to_have_count(
            len(health["completeness"])
        )
        assert chart_points(page, "rate-chart") == len(recent["per_minute"])
        assert chart_points(page, "quarantine-chart") == len(health["quarantine"]["reasons"])
        assert chart_points(page, "completeness-chart") > 0
        # the suite runs ingest without its metrics endpoint: the page says so and goes on
        expect(page.locator("#metrics-down")).to_be_visible()
        expect(page.locator("#metrics-down")).to_contain_text("ingest metrics not reachable")
        screenshot(page, "ops-ingest")

        page.evaluate("window.__notReloaded = true")
        store_live(
            site.loaded.url,
            [
                telemetry(
                    live.serials[1],
                    live.last_seq[live.serials[1]] + 2,
                    datetime.now(UTC) - timedelta(seconds=5),
                    battery=50,
                )
            ],
        )
        now = api.get("/ingest/health").json()["recent"]["messages"]
        assert now == recent["messages"] + 1
        expect(page.locator("[data-field='recent.messages']")).to_have_text(
            str(now), timeout=LIVE_REFRESH_S * 1000
        )
        assert page.evaluate("window.__notReloaded === true")


def test_viewer_sees_only_its_customers_fleet(
    page: Page, site: Site, live: Live, watch: Watch
) -> None:
    log_in(page, site, "viewer")
    expect(page.locator("header nav a", has_text="Fleet")).to_have_count(1)
    expect(page.locator("header nav a", has_text="Ingest")).to_have_count(0)
    page.goto("/dashboards/fleet")
    with site.api(Role.VIEWER) as viewer, site.api(Role.ADMIN) as admin:
        own = viewer.get("/fleet").json()
        everything = admin.get("/fleet").json()
        devices = admin.get("/devices", params={"limit": 500}).json()["items"]
    assert len(own["projects"]) < len(everything["projects"])
    expect(page.locator("#projects tbody tr")).to_have_count(len(own["projects"]))
    assert number(page, "totals.devices") == str(own["totals"]["devices"])
    screenshot(page, "viewer-fleet")
    own_projects = {p["project_id"] for p in own["projects"]}
    foreign = next(d for d in devices if d["project_id"] not in own_projects)
    watch.allowed_statuses.update({403, 404})
    response = page.goto(f"/dashboards/devices/{foreign['id']}")
    assert response is not None and response.status == 404
    response = page.goto("/dashboards/ingest")
    assert response is not None and response.status == 403


@pytest.mark.parametrize("path", ["/dashboards/fleet", "/dashboards/ingest", "device"])
def test_ops_pages_are_readable_on_a_phone(page: Page, site: Site, live: Live, path: str) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    log_in(page, site, "ops")
    page.goto(f"/dashboards/devices/{live.ids[live.serials[0]]}" if path == "device" else path)
    page.wait_for_load_state("networkidle")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 40, f"{path} is {overflow}px wider than a phone"
    screenshot(page, f"ops-phone-{path.rsplit('/', 1)[-1]}")
