from __future__ import annotations

from pathlib import Path

import pytest

from device_sim import scenario
from services.cli import DEMO_SCENARIO


def test_demo_scenario_matches_the_promised_demo() -> None:
    loaded = scenario.load(DEMO_SCENARIO)
    projects = [p for c in loaded.customers for p in c.projects]
    assert len(loaded.customers) == 2
    assert len(projects) == 3
    assert sum(p.fleet.count for p in projects) == 50
    serials = [s for p in projects for s in scenario.serials(p)]
    assert len(set(serials)) == 50


def test_unknown_feature_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "features: [{key: a, name: A}]\n"
        "customers:\n"
        "  - {name: C, tier: head, industry: x, lifecycle_stage: adoption, projects: [\n"
        "      {name: P, fleet: {count: 1, serial_prefix: p}, deliveries: [{feature: b}]}]}\n"
    )
    with pytest.raises(scenario.ScenarioError, match="unknown feature 'b'"):
        scenario.load(path)


def test_wrong_type_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "features: []\ncustomers: [{name: C, tier: giant, industry: x, lifecycle_stage: adoption}]\n"
    )
    with pytest.raises(scenario.ScenarioError, match=r"customers\.0\.tier"):
        scenario.load(path)
