from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from device_sim import scenario
from device_sim.cli import scenario_path
from device_sim.generator import Generator

END = datetime(2026, 11, 22, tzinfo=UTC)


def _load(name: str) -> scenario.Scenario:
    return scenario.load(scenario_path(name))


@pytest.mark.parametrize(
    ("name", "customers", "projects", "features", "devices"),
    [("demo", 2, 3, 4, 50), ("portfolio", 6, 12, 20, 3000), ("load", 1, 1, 2, 2000)],
)
def test_shipped_scenarios_have_the_promised_shape(
    name: str, customers: int, projects: int, features: int, devices: int
) -> None:
    loaded = _load(name)
    found = loaded.projects()
    assert len(loaded.customers) == customers
    assert len(found) == projects
    assert len(loaded.features) == features
    serials = [s for _, p in found for s in scenario.serials(p)]
    assert len(serials) == len(set(serials)) == devices


def test_portfolio_spans_tiers_and_industries() -> None:
    loaded = _load("portfolio")
    assert {c.tier for c in loaded.customers} == {"head", "waist", "tail"}
    assert len({c.industry for c in loaded.customers}) == 6
    assert loaded.days == 90


def test_unknown_feature_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nfeatures: [{key: a, name: A}]\n"
        "customers:\n"
        "  - {name: C, tier: head, industry: x, lifecycle_stage: adoption, projects: [\n"
        "      {name: P, fleet: {count: 1, serial_prefix: p}, deliveries: [{feature: b}]}]}\n"
    )
    with pytest.raises(scenario.ScenarioError, match="unknown feature 'b'"):
        scenario.load(path)


def test_wrong_value_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nfeatures: []\n"
        "customers: [{name: C, tier: giant, industry: x, lifecycle_stage: adoption}]\n"
    )
    with pytest.raises(scenario.ScenarioError, match=r"customers\.0\.tier"):
        scenario.load(path)


def test_bad_events_per_use_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nfeatures: [{key: a, name: A}]\n"
        "customers:\n"
        "  - {name: C, tier: head, industry: x, lifecycle_stage: adoption, projects: [\n"
        "      {name: P, fleet: {count: 1, serial_prefix: p},\n"
        "       deliveries: [{feature: a, usage: {events_per_use: [5, 2]}}]}]}\n"
    )
    with pytest.raises(scenario.ScenarioError, match="events_per_use"):
        scenario.load(path)


def _stream(step: timedelta, days: float = 2) -> list[tuple[str, bytes]]:
    generator = Generator(_load("demo"), END - timedelta(days=days), END, now=END)
    return [(o.serial, o.payload) for batch in generator.windows(step) for o in batch]


def test_generation_is_deterministic_and_independent_of_window_size() -> None:
    hourly = _stream(timedelta(hours=1))
    assert hourly == _stream(timedelta(hours=1))
    assert sorted(hourly) == sorted(_stream(timedelta(minutes=7)))
    assert len(hourly) > 1000


def test_ground_truth_counts_what_was_emitted() -> None:
    loaded = _load("demo")
    generator = Generator(loaded, END - timedelta(days=3), END, now=END)
    emitted = [o for batch in generator.windows(timedelta(hours=6)) for o in batch]
    stored_usage = [
        o for o in emitted if o.kind and o.kind.value == "usage" and o.expect == "stored"
    ]
    truth = generator.truth.to_json()
    in_truth = sum(
        f["messages"] for p in truth["projects"].values() for f in p["features"].values()
    )
    assert in_truth == len(stored_usage)
    injected = {k: sum(1 for o in emitted if o.expect == k) for k in truth["injected"]}
    assert injected == truth["injected"]
    # the demo's alarm never fires, and most lockers report it switched on
    lockers = truth["projects"]["Smart Lockers EU"]
    alarm = lockers["features"]["occupancy_alerts"]
    assert (alarm["devices_using"], alarm["events"]) == (0, 0)
    assert 0 < alarm["devices_enabled"] < lockers["devices_reporting_settings"] == 20
    assert lockers["features"]["remote_unlock"]["devices_using"] >= 15


def test_nothing_is_dated_after_the_run_ends() -> None:
    generator = Generator(_load("demo"), END - timedelta(days=1), END, now=END)
    for batch in generator.windows(timedelta(hours=1)):
        for item in batch:
            assert item.at < END
