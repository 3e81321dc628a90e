"""The analytics against a real database, through the real API.

A scratch database is migrated, seeded from `tests/scenarios/analytics.yaml` and backfilled
with exactly [end − days, end) of generated history. Every expectation comes from the
generator's ground truth or from the scenario file, never from hand-typed numbers.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from device_sim.generator import firmware_of
from device_sim.scenario import Customer, Project
from services.analytics.recommend import AnalyticsThresholds
from services.core.settings import Settings
from services.infra.local import LocalServices
from tests.integration.conftest import api_client, mint_token
from tests.integration.scenario_support import Loaded, load_scenario

SCENARIO_FILE = Path(__file__).resolve().parents[1] / "scenarios" / "analytics.yaml"
# "Heavily used", read from the truth: at least this share of the reporting fleet used it.
HEAVY_ADOPTION = 0.8
HIGH_BUSINESS_SCORE = 4  # business_score at or above this in the scenario: valued
LOW_BUSINESS_SCORE = 2  # at or below this, not strategic and a small line: little value
SMALL_LINE_SHARE = 0.05  # of the project's contract
# 0 users of this many devices or more puts the 95 % interval's upper bound under the default
# cut line of 10 % (3.84 / (n + 3.84) < 0.1): docs/analytics.md.
UNUSED_DECIDED_AT = 35
MAX_WINDOW_DAYS = 400  # the API's documented limit (docs/analytics.md)

Json = dict[str, Any]


@pytest.fixture(scope="module")
def loaded(local_services: LocalServices, settings: Settings) -> Iterator[Loaded]:
    with load_scenario(local_services, settings, SCENARIO_FILE, "fieldtrack_analytics") as found:
        yield found


def _client(settings: Settings, url: str, **update: Any) -> TestClient:
    return api_client(
        settings.model_copy(update={"database_url": SecretStr(url), **update}), mint_token(url)
    )


@pytest.fixture(scope="module")
def client(loaded: Loaded, settings: Settings) -> Iterator[TestClient]:
    with _client(settings, loaded.url) as c:
        yield c


@dataclass(frozen=True)
class Observed:
    by_project: dict[str, Json]  # project name -> GET /projects/{id}/analytics
    latencies_ms: list[float]


@pytest.fixture(scope="module")
def observed(loaded: Loaded, client: TestClient) -> Observed:
    by_project: dict[str, Json] = {}
    latencies: list[float] = []
    for _, project in loaded.projects():
        pid = loaded.project_ids[project.name]
        started = time.perf_counter()
        response = client.get(f"/projects/{pid}/analytics", params=loaded.window)
        latencies.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
        by_project[project.name] = response.json()
    return Observed(by_project, latencies)


def _rows(analytics: Json) -> dict[str, Json]:
    return {f["feature_key"]: f for f in analytics["features"]}


def _thresholds(settings: Settings) -> AnalyticsThresholds:
    return settings.analytics


def _enough_devices(loaded: Loaded, project: str, t: AnalyticsThresholds) -> bool:
    return int(loaded.truth_of(project)["devices_reporting"]) >= t.medium_confidence_devices


def test_project_measures_equal_the_ground_truth(loaded: Loaded, observed: Observed) -> None:
    for _, project in loaded.projects():
        data = observed.by_project[project.name]
        truth = loaded.truth_of(project.name)
        coverage = data["coverage"]
        reporting = truth["devices_reporting"]
        assert coverage["devices_reporting"] == reporting, project.name
        assert data["project"]["devices_total"] == project.fleet.count
        assert coverage["devices_silent"] == project.fleet.count - reporting
        rows = _rows(data)
        assert set(rows) == {d.feature for d in project.deliveries}, project.name
        for delivery in project.deliveries:
            row = rows[delivery.feature]
            where = f"{project.name}/{delivery.feature}"
            assert row["delivery_status"] == delivery.status, where
            expected = loaded.feature_truth(project.name, delivery.feature)
            assert row["devices_using"] == expected["devices_using"], where
            assert row["events"] == expected["events"], where
            assert math.isclose(row["adoption"], expected["devices_using"] / reporting), where
            # One usage message per device-day with use: the truth's messages are use-days.
            assert math.isclose(
                row["stickiness"], expected["messages"] / coverage["device_days_reporting"]
            ), where
            using = expected["devices_using"]
            assert math.isclose(
                row["frequency"], expected["events"] / (using * loaded.days) if using else 0.0
            ), where


def _valuable(delivery: Any, project: Project) -> bool:
    return bool(delivery.strategic or (delivery.business_score or 0) >= HIGH_BUSINESS_SCORE)


def _little_value(delivery: Any, project: Project) -> bool:
    line = (delivery.contract_line_value or 0) / (project.contract_value or 1)
    return (
        not delivery.strategic
        and (delivery.business_score or 0) <= LOW_BUSINESS_SCORE
        and line < SMALL_LINE_SHARE
    )


def test_recommendations_follow_the_archetypes(
    loaded: Loaded, observed: Observed, settings: Settings
) -> None:
    t = _thresholds(settings)
    seen: Counter[str] = Counter()
    for _, project in loaded.projects():
        data = observed.by_project[project.name]
        rows = _rows(data)
        enough = _enough_devices(loaded, project.name, t)
        if not enough:
            assert data["confidence"] == "low", project.name
            reporting = loaded.truth_of(project.name)["devices_reporting"]
            assert f"only {reporting} devices" in data["confidence_reason"]
        for delivery in project.deliveries:
            row = rows[delivery.feature]
            where = f"{project.name}/{delivery.feature}: {row['explanation']}"
            if delivery.status != "delivered":
                assert row["recommendation"] is None and row["explanation"] is None, where
                assert row["devices_using"] == 0, where
                seen["not delivered"] += 1
                continue
            truth = loaded.feature_truth(project.name, delivery.feature)
            reporting = loaded.truth_of(project.name)["devices_reporting"]
            adoption = loaded.truth_adoption(project.name, delivery.feature)
            if not enough:
                assert row["recommendation"] == "insufficient_data", where
                assert f"only {reporting} devices" in row["explanation"], where
                seen["small project"] += 1
                continue
            assert f"{truth['devices_using']} of {reporting} devices used it" in row["explanation"]
            if truth["events"] == 0 and reporting >= UNUSED_DECIDED_AT:
                assert row["recommendation"] == "cut_candidate", where
                seen["unused"] += 1
                if delivery.strategic and (delivery.business_score or 0) >= HIGH_BUSINESS_SCORE:
                    seen["unused, strategic and valuable"] += 1
            elif truth["events"] == 0:
                # 0 users of a few dozen devices: the true share could still be over the line
                assert row["recommendation"] == "insufficient_data", where
                seen["unused, too few devices to tell"] += 1
            elif adoption >= HEAVY_ADOPTION and _valuable(delivery, project):
                assert row["recommendation"] == "iterate_invest", where
                seen["heavy, valuable"] += 1
            elif adoption >= HEAVY_ADOPTION and _little_value(delivery, project):
                assert row["recommendation"] == "keep_prudently", where
                seen["heavy, little business value"] += 1
            assert row["recommendation"] != "cut_candidate" or adoption < t.cut_adoption, where
    # The scenario really exercises every archetype.
    assert set(seen) == {
        "not delivered",
        "small project",
        "unused",
        "unused, strategic and valuable",
        "unused, too few devices to tell",
        "heavy, valuable",
        "heavy, little business value",
    }, seen


def test_undelivered_usage_is_listed_with_the_truths_events(
    loaded: Loaded, observed: Observed
) -> None:
    listed = 0
    for _, project in loaded.projects():
        data = observed.by_project[project.name]
        undelivered = {f["feature_key"]: f for f in data["undelivered_usage"]}
        expected = {
            u.feature
            for u in project.undelivered_use
            if loaded.feature_truth(project.name, u.feature)["events"] > 0
        }
        assert set(undelivered) == expected, project.name
        for key, row in undelivered.items():
            truth = loaded.feature_truth(project.name, key)
            assert row["delivery_status"] is None and "recommendation" not in row
            assert (row["events"], row["devices_using"]) == (
                truth["events"],
                truth["devices_using"],
            )
            assert math.isclose(row["adoption"], loaded.truth_adoption(project.name, key))
            assert key not in _rows(data)
            listed += 1
    assert listed > 0, "the scenario must have undelivered use"


def test_portfolio_agrees_with_the_projects_and_the_truth(
    loaded: Loaded, observed: Observed, client: TestClient
) -> None:
    started = time.perf_counter()
    response = client.get("/portfolio", params=loaded.window)
    portfolio_ms = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.text
    body = response.json()
    print(f"\n[analytics] GET /portfolio: {portfolio_ms:.0f} ms")

    # The same projects, measures and recommendations as project by project.
    by_name = {p["project"]["project_name"]: p for p in body["projects"]}
    assert set(by_name) == {p.name for _, p in loaded.projects()}
    for name, data in observed.by_project.items():
        assert by_name[name]["features"] == data["features"]
        assert by_name[name]["undelivered_usage"] == data["undelivered_usage"]

    def pairs(recommendation: str) -> set[tuple[int, str]]:
        return {
            (data["project"]["project_id"], f["feature_key"])
            for data in observed.by_project.values()
            for f in data["features"]
            if f["recommendation"] == recommendation
        }

    cut = [(a["project_id"], a["feature_key"]) for a in body["cut_candidates"]]
    assert len(cut) == len(set(cut))
    assert set(cut) == pairs("cut_candidate") != set()
    iterate = {(a["project_id"], a["feature_key"]) for a in body["iterate_candidates"]}
    assert iterate == pairs("iterate_invest") != set()

    # Per feature: totals from the truth over the projects it was delivered to.
    delivered: dict[str, list[tuple[Customer, Project]]] = {}
    for customer, project in loaded.projects():
        for d in project.deliveries:
            if d.status == "delivered":
                delivered.setdefault(d.feature, []).append((customer, project))
    features = {f["feature_key"]: f for f in body["features"]}
    assert set(features) == set(delivered)
    for key, feature in features.items():
        where = delivered[key]
        reporting = sum(loaded.truth_of(p.name)["devices_reporting"] for _, p in where)
        using = sum(loaded.feature_truth(p.name, key)["devices_using"] for _, p in where)
        assert feature["projects_delivered"] == len(where), key
        assert (feature["devices_reporting"], feature["devices_using"]) == (reporting, using), key
        assert math.isclose(feature["adoption"], using / reporting), key
        assert sum(feature["recommendations"].values()) == len(where), key
        for axis, attr in (
            ("by_tier", "tier"),
            ("by_industry", "industry"),
            ("by_lifecycle_stage", "lifecycle_stage"),
        ):
            groups = feature[axis]
            assert {g["group"] for g in groups} == {getattr(c, attr) for c, _ in where}, key
            assert sum(g["projects"] for g in groups) == len(where), (key, axis)
            assert sum(g["devices_reporting"] for g in groups) == reporting, (key, axis)
            assert sum(g["devices_using"] for g in groups) == using, (key, axis)
            for g in groups:
                assert math.isclose(g["adoption"], g["devices_using"] / g["devices_reporting"])


def test_firmware_groups_add_up_to_the_project(loaded: Loaded, client: TestClient) -> None:
    checked_multi = False
    for _, project in loaded.projects():
        pid = loaded.project_ids[project.name]
        reporting = loaded.raw_truth.devices_reporting[project.name]
        versions = {f.version for f in project.fleet.firmware}
        keys = [d.feature for d in project.deliveries]
        keys += [u.feature for u in project.undelivered_use]
        for key in keys:
            response = client.get(
                f"/projects/{pid}/firmware", params={**loaded.window, "feature": key}
            )
            assert response.status_code == 200, response.text
            groups = {g["firmware"]: g for g in response.json()}
            assert set(groups) <= versions, (project.name, key)
            truth = loaded.feature_truth(project.name, key)
            assert sum(g["devices_reporting"] for g in groups.values()) == len(reporting)
            assert sum(g["devices_using"] for g in groups.values()) == truth["devices_using"]
            # Each version's share, from the firmware the generator gave each device.
            found = loaded.raw_truth.features.get((project.name, key))
            users = found.devices if found else set()
            for version, group in groups.items():
                fleet = {
                    s for s in reporting if firmware_of(loaded.scenario, project, s) == version
                }
                assert group["devices_reporting"] == len(fleet), (project.name, key, version)
                assert group["devices_using"] == len(fleet & users), (project.name, key, version)
            if len(groups) > 1:
                checked_multi = True
    assert checked_multi, "the scenario must have a fleet on two firmware versions"


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_has_one_row_per_project_and_feature_with_the_json_values(
    loaded: Loaded, observed: Observed, client: TestClient
) -> None:
    response = client.get("/portfolio", params={**loaded.window, "format": "csv"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    rows = _csv_rows(response.text)
    keys = [(r["project"], r["feature"]) for r in rows]
    assert len(keys) == len(set(keys)), "one row per project × feature"
    expected = {
        (name, f["feature_key"]): f
        for name, data in observed.by_project.items()
        for f in [*data["features"], *data["undelivered_usage"]]
    }
    assert set(keys) == set(expected)
    for row in rows:
        json_row = expected[(row["project"], row["feature"])]
        assert row["adoption"] == f"{json_row['adoption']:.4f}", row
        truth = loaded.truth_adoption(row["project"], row["feature"])
        assert row["adoption"] == f"{truth:.4f}", row
        assert row["recommendation"] == (json_row.get("recommendation") or ""), row
    # A single project's CSV holds that project's rows, with the same values.
    name = next(iter(observed.by_project))
    single = client.get(
        f"/projects/{loaded.project_ids[name]}/analytics",
        params={**loaded.window, "format": "csv"},
    )
    assert single.status_code == 200, single.text
    assert _csv_rows(single.text) == [r for r in rows if r["project"] == name]


def test_window_errors_and_unknown_project(loaded: Loaded, client: TestClient) -> None:
    pid = next(iter(loaded.project_ids.values()))
    unknown = max(loaded.project_ids.values()) + 1000
    backwards = {"since": loaded.until.isoformat(), "until": loaded.since.isoformat()}
    too_long = {
        "since": (loaded.until - timedelta(days=MAX_WINDOW_DAYS + 1)).isoformat(),
        "until": loaded.until.isoformat(),
    }
    longest = {
        "since": (loaded.until - timedelta(days=MAX_WINDOW_DAYS)).isoformat(),
        "until": loaded.until.isoformat(),
    }
    naive = {"since": loaded.since.replace(tzinfo=None).isoformat()}
    routes = [
        (f"/projects/{pid}/analytics", {}),
        ("/portfolio", {}),
        (f"/projects/{pid}/firmware", {"feature": "remote_unlock"}),
    ]
    for path, extra in routes:
        for params in (backwards, too_long, naive):
            response = client.get(path, params={**params, **extra})
            assert response.status_code == 422, (path, params, response.text)
            assert isinstance(response.json()["detail"], list)
        assert client.get(path, params={**longest, **extra}).status_code == 200, path
    for path, extra in [
        (f"/projects/{unknown}/analytics", {}),
        (f"/projects/{unknown}/firmware", {"feature": "remote_unlock"}),
    ]:
        response = client.get(path, params={**loaded.window, **extra})
        assert response.status_code == 404, (path, response.text)


def test_cut_line_is_a_setting(loaded: Loaded, observed: Observed, settings: Settings) -> None:
    """Raising cut_adoption above a used feature's whole interval makes it a cut candidate."""
    t = _thresholds(settings)
    candidates = []
    for _, project in loaded.projects():
        if not _enough_devices(loaded, project.name, t):
            continue
        rows = _rows(observed.by_project[project.name])
        for d in project.deliveries:
            row = rows[d.feature]
            if (
                d.status == "delivered"
                and loaded.feature_truth(project.name, d.feature)["events"] > 0
                and row["recommendation"] != "cut_candidate"
                # Cutting needs low stickiness as well (docs/analytics.md): only such a
                # feature can be made a cut candidate by the adoption line alone.
                and row["stickiness"] < t.cut_stickiness
            ):
                candidates.append((row["adoption_high"], project.name, d.feature))
    assert candidates, "the scenario must have a rarely used feature that is not cut"
    high, name, key = min(candidates)
    raised = min(0.99, high + 0.01)
    thresholds = AnalyticsThresholds(**{**t.model_dump(), "cut_adoption": raised})
    with _client(settings, loaded.url, analytics=thresholds) as strict:
        pid = loaded.project_ids[name]
        response = strict.get(f"/projects/{pid}/analytics", params=loaded.window)
        assert response.status_code == 200, response.text
        row = _rows(response.json())[key]
        assert row["recommendation"] == "cut_candidate", row
        portfolio = strict.get("/portfolio", params=loaded.window).json()
        cut = {(a["project_id"], a["feature_key"]) for a in portfolio["cut_candidates"]}
        assert (pid, key) in cut
        # Features whose whole interval stays above the new line keep their verdict.
        for p in portfolio["projects"]:
            before = _rows(observed.by_project[p["project"]["project_name"]])
            for f in p["features"]:
                if f["adoption_low"] >= raised:
                    assert f["recommendation"] == before[f["feature_key"]]["recommendation"]
    # The default app is unaffected.
    assert _rows(observed.by_project[name])[key]["recommendation"] != "cut_candidate"


def test_report_latency(
    loaded: Loaded, observed: Observed, capsys: pytest.CaptureFixture[str]
) -> None:
    """For information: how long project analytics took here (not a pass/fail criterion)."""
    ms = observed.latencies_ms
    with capsys.disabled():
        print(
            f"\n[analytics] backfill of {loaded.days:g} days "
            f"({sum(p.fleet.count for _, p in loaded.projects())} devices): "
            f"{loaded.backfill_s:.1f}s; GET /projects/{{id}}/analytics over "
            f"{len(ms)} projects: min {min(ms):.0f} ms, median {statistics.median(ms):.0f} ms, "
            f"max {max(ms):.0f} ms"
        )
    assert len(ms) == len(loaded.projects())
