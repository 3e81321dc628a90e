"""Verdicts a PM can defend, on a portfolio of traps (tests/scenarios/verdicts.yaml) backfilled
into a real database and read through the real API.

Every expectation is written from the simulator's ground truth (who reported, who used what,
who had what enabled) and the scenario's contract data; the test first checks that the
scenario really builds each trap, so a trap that stopped being one fails loudly.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.accounts.roles import Role
from services.analytics.recommend import AnalyticsThresholds
from services.core.settings import Settings
from services.core.topics import MessageKind
from services.infra.local import LocalServices
from services.ingest.history import HistoryImporter
from services.registry import upserts as registry
from tests.integration.conftest import api_client, keys_of, mint_token
from tests.integration.scenario_support import Loaded, load_scenario

SCENARIO_FILE = Path(__file__).resolve().parents[1] / "scenarios" / "verdicts.yaml"
T = AnalyticsThresholds()
Json = dict[str, Any]
# What a customer's own staff must never receive, in any form (JSON keys, CSV columns, page
# text): written here, apart from the code's models.
INTERNAL_KEYS = {
    "business_value",
    "business_high",
    "user_value",
    "recommendation",
    "explanation",
    "peers",
    "tier",
    "lifecycle_stage",
    "contract_value",
    "undelivered_usage",
}
INTERNAL_WORDS = (
    "cut candidate",
    "keep prudently",
    "iterate / invest",
    "business value",
    "insufficient data",
    "too early",
    "at_risk",
    "renewal",
)


@pytest.fixture(scope="module")
def loaded(local_services: LocalServices, settings: Settings) -> Iterator[Loaded]:
    with load_scenario(local_services, settings, SCENARIO_FILE, "fieldtrack_verdicts") as found:
        yield found


def _settings(settings: Settings, url: str) -> Settings:
    return settings.model_copy(update={"database_url": SecretStr(url)})


@pytest.fixture(scope="module")
def pm(loaded: Loaded, settings: Settings) -> Iterator[TestClient]:
    with api_client(_settings(settings, loaded.url), mint_token(loaded.url, Role.PM)) as c:
        yield c


def _analytics(client: TestClient, loaded: Loaded) -> dict[str, Json]:
    out = {}
    for _, project in loaded.projects():
        pid = loaded.project_ids[project.name]
        response = client.get(f"/projects/{pid}/analytics", params=loaded.window)
        assert response.status_code == 200, response.text
        out[project.name] = response.json()
    return out


@pytest.fixture(scope="module")
def observed(loaded: Loaded, pm: TestClient) -> dict[str, Json]:
    return _analytics(pm, loaded)


# --- the truth, as a PM would read it ------------------------------------------------------


@dataclass(frozen=True)
class Case:
    project: str
    feature: str
    row: Json  # the feature's row of GET /projects/{id}/analytics
    loaded: Loaded

    @property
    def delivery(self) -> Any:
        project = next(p for _, p in self.loaded.projects() if p.name == self.project)
        return next(d for d in project.deliveries if d.feature == self.feature)

    @property
    def provisioned(self) -> int:
        project = next(p for _, p in self.loaded.projects() if p.name == self.project)
        return project.fleet.count

    @property
    def reporting(self) -> int:
        return int(self.loaded.truth_of(self.project)["devices_reporting"])

    @property
    def truth(self) -> Json:
        return self.loaded.feature_truth(self.project, self.feature)

    @property
    def adoption(self) -> float:
        return self.truth["devices_using"] / self.reporting if self.reporting else 0.0


def heavy_and_valuable(c: Case) -> None:
    assert c.adoption >= 0.8 and c.delivery.strategic, "the trap: heavy use, strategic"
    assert c.row["recommendation"] == "iterate_invest"
    assert c.row["explanation"].endswith("invest")


def heavy_and_valued_by_its_score(c: Case) -> None:
    assert c.adoption >= 0.8 and c.delivery.business_score == 5 and not c.delivery.strategic
    assert c.row["recommendation"] == "iterate_invest"


def half_used_little_business_value(c: Case) -> None:
    assert 0.4 <= c.adoption <= 0.6, f"the trap: about half the fleet ({c.adoption:.0%})"
    assert c.delivery.business_score <= 2 and not c.delivery.strategic
    assert c.row["recommendation"] == "keep_prudently"


def clearly_unused(c: Case) -> None:
    assert c.truth["devices_using"] == 0 and c.reporting >= 50, "the trap: 0 of 50 or more"
    assert c.row["recommendation"] == "cut_candidate"
    assert c.row["adoption_high"] < T.cut_adoption
    assert f"0 of {c.reporting} devices used it" in c.row["explanation"]


def standing_enabled_never_fired(c: Case) -> None:
    settings = int(c.loaded.truth_of(c.project)["devices_reporting_settings"])
    assert c.truth["events"] == 0 and c.truth["devices_enabled"] == settings == c.reporting
    assert c.row["kind"] == "standing"
    assert (c.row["devices_enabled"], c.row["enabled_reporting"]) == (settings, settings)
    assert c.row["recommendation"] in {"iterate_invest", "keep_prudently"}
    assert f"enabled on {settings} of {settings} devices" in c.row["explanation"]


def delivered_ten_days_ago(c: Case) -> None:
    assert c.delivery.delivered_days_ago == 10 and c.adoption > 0.5
    assert c.row["recommendation"] == "too_early"
    assert c.row["measured_days"] == pytest.approx(10, abs=1)
    assert "live here for 10 days" in c.row["explanation"]


def zero_of_twelve(c: Case) -> None:
    assert c.truth["devices_using"] == 0 and c.reporting == 12
    assert c.row["recommendation"] == "insufficient_data"
    assert "0 of 12 devices used it" in c.row["explanation"]
    assert "up to 24%" in c.row["explanation"]


def live_five_days(c: Case) -> None:
    assert c.row["recommendation"] == "too_early"
    assert c.row["measured_days"] == pytest.approx(5, abs=0.01)
    assert "live here for 5 days" in c.row["explanation"]


def mostly_dead_fleet(c: Case) -> None:
    assert c.reporting <= c.provisioned / 2 and c.adoption >= 0.8, "the trap: a dead fleet"
    assert c.row["recommendation"] in {"iterate_invest", "keep_prudently"}
    assert c.row["devices_reporting"] == c.reporting


def standing_without_settings(c: Case) -> None:
    assert c.truth["events"] == 0 and c.row["enabled_reporting"] == 0
    assert c.row["recommendation"] == "insufficient_data"
    assert "judged by being enabled" in c.row["explanation"]


def tiny_pilot(c: Case) -> None:
    assert c.reporting < T.medium_confidence_devices and c.adoption >= 0.8
    assert c.row["recommendation"] == "insufficient_data"
    assert f"only {c.reporting} devices" in c.row["explanation"]


TRAPS: dict[tuple[str, str], Callable[[Case], None]] = {
    ("Smart Docks", "dock_booking"): heavy_and_valuable,
    ("Smart Docks", "energy_report"): half_used_little_business_value,
    ("Smart Docks", "legacy_export"): clearly_unused,
    ("Smart Docks", "tamper_alerts"): standing_enabled_never_fired,
    ("Smart Docks", "route_planner"): delivered_ten_days_ago,
    ("Lobby Kiosks", "guest_checkin"): heavy_and_valued_by_its_score,
    ("Lobby Kiosks", "loyalty_points"): zero_of_twelve,
    ("New Wing", "guest_checkin"): live_five_days,
    ("New Wing", "loyalty_points"): live_five_days,
    ("Barn Sensors", "climate_control"): mostly_dead_fleet,
    ("Barn Sensors", "leak_alerts"): standing_without_settings,
    ("Pilot Drones", "drone_survey"): tiny_pilot,
}


def _rows(data: Json) -> dict[str, Json]:
    return {f["feature_key"]: f for f in data["features"]}


def test_every_delivered_feature_is_a_trap_here(loaded: Loaded) -> None:
    delivered = {(p.name, d.feature) for _, p in loaded.projects() for d in p.deliveries}
    assert delivered == set(TRAPS)


@pytest.mark.parametrize(("project", "feature"), sorted(TRAPS), ids=str)
def test_each_trap_gets_the_verdict_its_truth_calls_for(
    loaded: Loaded, observed: dict[str, Json], project: str, feature: str
) -> None:
    row = _rows(observed[project])[feature]
    TRAPS[(project, feature)](Case(project, feature, row, loaded))


def test_every_measure_equals_the_truth_over_the_part_each_feature_was_live(
    loaded: Loaded, observed: dict[str, Json]
) -> None:
    truth = loaded.raw_truth
    for (project, feature), _ in TRAPS.items():
        row = _rows(observed[project])[feature]
        since = datetime.fromisoformat(row["measured_since"]).date()
        days = truth.reporting_days[project]
        reporting = {s for s, d in days.items() if any(day >= since for day in d)}
        used = truth.features.get((project, feature))
        users = (
            {s for s, d in used.days.items() if any(day >= since for day in d)} if used else set()
        )
        where = (project, feature)
        assert row["devices_reporting"] == len(reporting), where
        assert row["devices_using"] == len(users), where
        assert row["adoption_low"] <= row["adoption"] <= row["adoption_high"], where
        if reporting:
            assert math.isclose(row["adoption"], len(users) / len(reporting)), where


def test_no_cut_where_a_fifth_of_the_reporting_devices_use_it(observed: dict[str, Json]) -> None:
    rows = [f for data in observed.values() for f in data["features"]]
    assert any(f["recommendation"] == "cut_candidate" for f in rows)
    for f in rows:
        if f["adoption"] > 0.2:
            assert f["recommendation"] != "cut_candidate", f


def test_a_project_live_five_days_is_measured_over_five_days_and_says_so(
    loaded: Loaded, observed: dict[str, Json], pm: TestClient
) -> None:
    data = observed["New Wing"]
    assert data["coverage"]["measured_days"] == pytest.approx(5, abs=0.01)
    assert data["confidence"] == "low" or data["coverage"]["measured_days"] < 14
    page = pm.get(f"/dashboards/projects/{loaded.project_ids['New Wing']}", params=loaded.window)
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert "measured from go-live, not the window's start" in text
    assert "live here for 5 days" in text


def test_undelivered_use_is_flagged_with_the_truths_numbers(
    loaded: Loaded, observed: dict[str, Json]
) -> None:
    undelivered = {f["feature_key"]: f for f in observed["Barn Sensors"]["undelivered_usage"]}
    truth = loaded.feature_truth("Barn Sensors", "energy_report")
    assert set(undelivered) == {"energy_report"} and truth["events"] > 0
    assert (
        undelivered["energy_report"]["events"],
        undelivered["energy_report"]["devices_using"],
    ) == (
        truth["events"],
        truth["devices_using"],
    )
    assert "recommendation" not in undelivered["energy_report"]


# --- other projects never move a verdict -------------------------------------------------------


def test_verdicts_do_not_move_when_another_project_changes(
    loaded: Loaded, observed: dict[str, Json], pm: TestClient
) -> None:
    """Double one project's use and change its contract: every other project's verdicts and
    measures stay exactly as they were (only the peer view may move)."""
    changed = "Barn Sensors"
    serials = sorted(loaded.raw_truth.reporting_days[changed])
    with psycopg.connect(loaded.url, autocommit=True) as conn:
        importer = HistoryImporter(conn)
        at = loaded.until - timedelta(hours=3)
        for n, serial in enumerate(serials):
            body = {
                "v": 1,
                "seq": 10_000_000 + n,
                "ts": at.isoformat(),
                "events": [{"feature": "leak_alerts", "count": 40}],
            }
            importer.add(serial, MessageKind.USAGE, json.dumps(body).encode())
        assert importer.finish().usage_rows == len(serials)
        conn.execute(
            "UPDATE deliveries SET business_score = 5, strategic = true WHERE project_id = %s",
            (loaded.project_ids[changed],),
        )
    after = _analytics(pm, loaded)
    assert (
        _rows(after[changed])["leak_alerts"]["recommendation"]
        != _rows(observed[changed])["leak_alerts"]["recommendation"]
    )
    for name, data in observed.items():
        if name == changed:
            continue
        for key, row in _rows(data).items():
            now = {k: v for k, v in _rows(after[name])[key].items() if k != "peers"}
            assert now == {k: v for k, v in row.items() if k != "peers"}, (name, key)


# --- what the customer's own staff see ------------------------------------------------------------


@pytest.fixture(scope="module")
def viewer(loaded: Loaded, settings: Settings) -> Iterator[TestClient]:
    with psycopg.connect(loaded.url) as conn:
        row = conn.execute("SELECT id FROM customers WHERE name = 'Harbour Logistics'").fetchone()
    assert row is not None
    token = mint_token(loaded.url, Role.VIEWER, customer_id=row[0], name="harbour-viewer")
    with api_client(_settings(settings, loaded.url), token) as c:
        yield c


def test_a_viewer_gets_usage_and_never_internal_fields_anywhere(
    loaded: Loaded, viewer: TestClient, pm: TestClient
) -> None:
    pid = loaded.project_ids["Smart Docks"]
    body = viewer.get(f"/projects/{pid}/analytics", params=loaded.window)
    assert body.status_code == 200, body.text
    assert not keys_of(body.json()) & INTERNAL_KEYS, keys_of(body.json()) & INTERNAL_KEYS
    assert {"adoption", "adoption_low", "adoption_high", "completeness"} <= keys_of(body.json())
    staff = pm.get(f"/projects/{pid}/analytics", params=loaded.window).json()
    assert {"recommendation", "business_value", "tier"} <= keys_of(staff)
    # asking for the internal version is refused, with the reason
    refused = viewer.get(f"/projects/{pid}/analytics", params={"audience": "internal"})
    assert refused.status_code == 403 and "customer version" in refused.json()["detail"]
    # CSV: no internal column, no undelivered rows
    exported = viewer.get(f"/projects/{pid}/analytics", params={**loaded.window, "format": "csv"})
    header = next(csv.reader(io.StringIO(exported.text)))
    assert not set(header) & INTERNAL_KEYS and "adoption_high" in header
    adoption = viewer.get(f"/projects/{pid}/adoption", params=loaded.window)
    assert adoption.status_code == 200 and not keys_of(adoption.json()) & INTERNAL_KEYS
    # pages and the printable report
    customer = loaded_customer_id(loaded, "Harbour Logistics")
    for path in (
        f"/dashboards/projects/{pid}",
        f"/dashboards/customers/{customer}",
        "/dashboards/customers",
        f"/dashboards/customers/{customer}/report",
    ):
        page = viewer.get(path, params={"days": 30})
        assert page.status_code == 200, (path, page.text[:300])
        lowered = page.text.lower()
        leaked = [w for w in INTERNAL_WORDS if w in lowered]
        assert not leaked, (path, leaked)
    internal = viewer.get(
        f"/dashboards/customers/{customer}/report", params={"audience": "internal"}
    )
    assert internal.status_code == 403
    # the portfolio, the cut impact and the rules are for staff only
    for path in ("/portfolio", "/portfolio/impact", "/analytics/rules"):
        assert viewer.get(path, params={"feature": "energy_report"}).status_code == 403


def test_staff_print_a_customer_version_by_default_and_an_internal_one_on_request(
    loaded: Loaded, pm: TestClient
) -> None:
    customer = loaded_customer_id(loaded, "Harbour Logistics")
    default = pm.get(f"/dashboards/customers/{customer}/report", params={"days": 30})
    assert default.status_code == 200 and "customer version" in default.text
    assert not [w for w in INTERNAL_WORDS if w in default.text.lower()]
    internal = pm.get(
        f"/dashboards/customers/{customer}/report", params={"days": 30, "audience": "internal"}
    )
    assert internal.status_code == 200 and "internal version" in internal.text
    rules = pm.get("/analytics/rules").json()
    # the footer prints the rule table the code decides by
    text = html.unescape(internal.text)
    for rule in rules:
        assert rule["label"] in text and rule["when"] in text


def loaded_customer_id(loaded: Loaded, name: str) -> int:
    with psycopg.connect(loaded.url) as conn:
        row = conn.execute("SELECT id FROM customers WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return int(row[0])


# --- over time, peers and cut impact ------------------------------------------------------


def _monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def test_weekly_adoption_equals_the_truth_week_by_week(loaded: Loaded, pm: TestClient) -> None:
    pid = loaded.project_ids["Smart Docks"]
    body = pm.get(f"/projects/{pid}/adoption", params=loaded.window).json()
    weekly = {f["feature_key"]: f["weekly"] for f in body["features"]}
    days = loaded.raw_truth.reporting_days["Smart Docks"]
    for feature in ("dock_booking", "energy_report", "route_planner"):
        truth = loaded.raw_truth.features[("Smart Docks", feature)]
        assert weekly[feature], feature
        for point in weekly[feature]:
            week = date.fromisoformat(point["week"])
            span = {week + timedelta(days=n) for n in range(7)}
            reporting = {s for s, d in days.items() if d & span}
            users = {s for s, d in truth.days.items() if d & span}
            if feature == "route_planner":  # measured only from its delivery on
                start = loaded.until.date() - timedelta(days=10)
                reporting = {s for s, d in days.items() if {x for x in d & span if x >= start}}
                users = {s for s, d in truth.days.items() if {x for x in d & span if x >= start}}
            assert (point["devices_reporting"], point["devices_using"]) == (
                len(reporting),
                len(users),
            ), (feature, week)
            assert point["adoption_low"] <= point["adoption"] <= point["adoption_high"]
    # route_planner's series starts the week it was delivered
    delivered = loaded.until.date() - timedelta(days=10)
    assert weekly["route_planner"][0]["week"] == _monday(delivered).isoformat()


def test_cohorts_of_a_new_project_start_at_its_first_week(loaded: Loaded, pm: TestClient) -> None:
    pid = loaded.project_ids["New Wing"]
    body = pm.get(f"/projects/{pid}/adoption", params=loaded.window).json()
    # every device of New Wing reported for the whole run, before go-live too: the cohort of
    # each device is the week of its first report, inside the window's first week
    start = _monday(loaded.since.date())
    for feature in body["features"]:
        for cohort in feature["cohorts"]:
            assert date.fromisoformat(cohort["cohort"]) >= start
            assert cohort["cells"][0]["weeks_since"] == 0


def test_cut_impact_names_the_users_their_devices_and_their_worth(
    loaded: Loaded, pm: TestClient
) -> None:
    body = pm.get("/portfolio/impact", params={**loaded.window, "feature": "energy_report"})
    assert body.status_code == 200, body.text
    impact = body.json()
    using = {c["customer_name"]: c for c in impact["customers"] if c["devices_using"]}
    assert set(using) == {"Harbour Logistics", "Field Farms"}
    devices = sum(
        loaded.feature_truth(p, "energy_report")["devices_using"]
        for p in ("Smart Docks", "Barn Sensors")
    )
    assert impact["devices_using"] == devices
    assert impact["contract_value_at_risk"] == 500_000 + 60_000 + 25_000
    assert impact["customers_in_renewal_or_at_risk"] == 2
    farms = using["Field Farms"]["projects"]
    assert [p["delivery_status"] for p in farms] == [None]  # used without being delivered
    missing = pm.get("/portfolio/impact", params={"feature": "no_such_feature"})
    assert missing.status_code == 404


def test_the_portfolio_page_shows_a_features_cut_impact(loaded: Loaded, pm: TestClient) -> None:
    page = pm.get("/dashboards/portfolio", params={"days": 30, "impact": "energy_report"})
    assert page.status_code == 200
    assert 'id="impact"' in page.text and "Harbour Logistics" in page.text
    assert "585,000" in page.text or "585000" in page.text


def test_the_demo_cuts_nothing_a_fifth_of_its_devices_use(
    local_services: LocalServices, settings: Settings
) -> None:
    """`make demo`'s own portfolio, over the pages' default 30 days: no feature used by more
    than 20 % of the reporting devices is a cut candidate; the two features the old relative
    scale called cut candidates (used by about half their fleets) are kept."""
    demo = Path(__file__).resolve().parents[2] / "device_sim" / "scenarios" / "demo.yaml"
    with (
        load_scenario(local_services, settings, demo, "fieldtrack_demo", clean=True) as found,
        api_client(_settings(settings, found.url), mint_token(found.url, Role.PM)) as pm,
    ):
        body = pm.get("/portfolio").json()
    rows = {
        (p["project"]["project_name"], f["feature_key"]): f
        for p in body["projects"]
        for f in p["features"]
    }
    assert rows
    for key, f in rows.items():
        if f["adoption"] > 0.2:
            assert f["recommendation"] != "cut_candidate", key
    for key in (("Smart Lockers EU", "energy_report"), ("Guest Room Control", "scheduled_dimming")):
        assert 0.2 < rows[key]["adoption"] < 0.8, (key, rows[key]["adoption"])
        assert rows[key]["recommendation"] in {"keep_prudently", "iterate_invest"}, key


# --- found in review: inputs that once broke or bent the verdicts ----------------------------


def test_a_window_ending_in_the_future_makes_nothing_mature_sooner(
    loaded: Loaded, pm: TestClient
) -> None:
    pid = loaded.project_ids["New Wing"]
    ahead = {
        "since": loaded.since.isoformat(),
        "until": (loaded.until + timedelta(days=20)).isoformat(),
    }
    data = pm.get(f"/projects/{pid}/analytics", params=ahead).json()
    for f in data["features"]:
        assert f["recommendation"] == "too_early", f
        assert f["days_live"] < 7 and f["measured_days"] < 7, f


def test_a_reading_timed_across_a_go_live_never_breaks_the_analytics(
    loaded: Loaded, pm: TestClient
) -> None:
    """Device B stores a reading and sends it in a message dated the evening before the
    project went live: it used the feature in the measured part without a message there,
    while device A reported and used it. The analytics still answer, and never count more
    users than reporting devices (two users of one reporting device once made a 500)."""
    live = loaded.until.date() - timedelta(days=25)
    evening = datetime.combine(live, datetime.min.time(), tzinfo=UTC) - timedelta(minutes=10)
    with psycopg.connect(loaded.url, autocommit=True) as conn:
        customer = registry.upsert_customer(conn, "Stored Readings", "tail", "retail", "adoption")
        pid = registry.upsert_project(
            conn,
            customer,
            "Stored Readings",
            contract_value=None,
            currency="EUR",
            go_live_date=live,
            status="live",
        )
        feature = conn.execute("SELECT id FROM features WHERE key = 'drone_survey'").fetchone()
        assert feature is not None
        registry.upsert_delivery(
            conn,
            pid,
            feature[0],
            status="delivered",
            delivered_on=None,
            cost_person_days=None,
            contract_line_value=None,
            business_score=None,
            strategic=False,
        )
        registry.provision_devices(
            conn, None, pid, [("vd-stored-a", "m", "1"), ("vd-stored-b", "m", "1")]
        )
        importer = HistoryImporter(conn)
        used = {"feature": "drone_survey"}
        noon = evening + timedelta(hours=12)
        a = {"v": 1, "seq": 1, "ts": noon.isoformat(), "events": [used]}
        # the message counts in the hour of its first reading; its second one is timed after
        crossed = {**used, "ts": (evening + timedelta(minutes=20)).isoformat()}
        b = {
            "v": 1,
            "seq": 1,
            "ts": evening.isoformat(),
            "events": [{"feature": "dock_booking"}, crossed],
        }
        importer.add("vd-stored-a", MessageKind.USAGE, json.dumps(a).encode())
        importer.add("vd-stored-b", MessageKind.USAGE, json.dumps(b).encode())
        assert importer.finish().usage_rows == 3
    window = {
        "since": (evening - timedelta(days=1)).isoformat(),
        "until": (evening + timedelta(days=2)).isoformat(),
    }
    response = pm.get(f"/projects/{pid}/analytics", params=window)
    assert response.status_code == 200, response.text
    [row] = response.json()["features"]
    assert (row["devices_using"], row["devices_reporting"]) == (1, 1)  # B's use: not counted
    assert row["adoption"] == row["adoption_high"] == 1.0


def test_no_viewer_response_carries_the_use_of_an_undelivered_feature(
    loaded: Loaded, viewer: TestClient, pm: TestClient
) -> None:
    """Plant use of a feature Harbour Logistics never bought: staff see it as undelivered
    usage; the customer's own staff find its key nowhere — API, CSV, pages, report."""
    pid = loaded.project_ids["Smart Docks"]
    planted = "upsell_signal"
    serial = sorted(loaded.raw_truth.reporting_days["Smart Docks"])[0]
    with psycopg.connect(loaded.url, autocommit=True) as conn:
        importer = HistoryImporter(conn)
        at = loaded.until - timedelta(hours=5)
        body = {"v": 1, "seq": 20_000_000, "ts": at.isoformat(), "events": [{"feature": planted}]}
        importer.add(serial, MessageKind.USAGE, json.dumps(body).encode())
        assert importer.finish().usage_rows == 1
    staff = pm.get(f"/projects/{pid}/analytics", params=loaded.window).json()
    assert planted in {f["feature_key"] for f in staff["undelivered_usage"]}
    customer = loaded_customer_id(loaded, "Harbour Logistics")
    reads = [
        (f"/projects/{pid}/analytics", loaded.window),
        (f"/projects/{pid}/analytics", {**loaded.window, "format": "csv"}),
        (f"/projects/{pid}/usage", loaded.window),
        (f"/projects/{pid}/usage/daily", loaded.window),
        (f"/projects/{pid}/adoption", loaded.window),
        (f"/dashboards/projects/{pid}", loaded.window),
        (f"/dashboards/customers/{customer}/report", loaded.window),
        (f"/dashboards/customers/{customer}", loaded.window),
    ]
    for path, params in reads:
        response = viewer.get(path, params=params)
        assert response.status_code == 200, (path, response.text[:200])
        assert planted not in response.text, path
    firmware = viewer.get(f"/projects/{pid}/firmware", params={**loaded.window, "feature": planted})
    assert firmware.status_code == 404 and planted in firmware.json()["detail"]
    assert (
        pm.get(
            f"/projects/{pid}/firmware", params={**loaded.window, "feature": planted}
        ).status_code
        == 200
    )
