"""The simulator's ground truth goes to the state folder (or a path given), never into the
source tree beside the shipped scenarios; and it records the timeline a --resume continues."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from device_sim import scenario
from device_sim.cli import resume_timeline, scenario_path, sim_app, truth_path
from services.core.errors import FieldtrackError
from tests import PROJECT_ROOT, source_changes

# The shipped scenarios' folder in this checkout: no truth file may appear beside them.
SCENARIOS_DIR = PROJECT_ROOT / "device_sim" / "scenarios"


def test_the_default_truth_file_is_in_the_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIELDTRACK_STATE_DIR", str(tmp_path / "state"))
    assert truth_path("demo", None) == tmp_path / "state" / "sim" / "demo.truth.json"
    assert truth_path("demo", tmp_path / "t.json") == tmp_path / "t.json"


def test_export_writes_its_truth_outside_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIELDTRACK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    before = source_changes()
    # git ignores *.truth.json, so an old checkout's leftover is compared by time, not listed
    truths = {p: p.stat().st_mtime_ns for p in SCENARIOS_DIR.glob("*.truth.json*")}
    result = CliRunner().invoke(
        sim_app, ["export", "--scenario", "demo", "--days", "0.1", "--out", str(tmp_path / "h.nd")]
    )
    assert result.exit_code == 0, result.output
    truth = tmp_path / "state" / "sim" / "demo.truth.json"
    body = json.loads(truth.read_text())
    assert body["scenario"] == "demo" and body["anchor"] and body["start"] and body["end"]
    assert {p: p.stat().st_mtime_ns for p in SCENARIOS_DIR.glob("*.truth.json*")} == truths
    assert source_changes() == before


def test_resume_reads_the_timeline_and_refuses_another_scenario(tmp_path: Path) -> None:
    demo = scenario.load(scenario_path("demo"))
    end = datetime(2026, 11, 22, 10, tzinfo=UTC)
    body = {
        "scenario": "demo",
        "seed": demo.seed,
        "start": (end - timedelta(days=14)).isoformat(),
        "end": end.isoformat(),
        "anchor": "2026-11-22",
        "projects": {},
    }
    path = tmp_path / "demo.truth.json"
    path.write_text(json.dumps(body))
    timeline = resume_timeline(demo, path)
    assert (timeline.origin, timeline.end) == (end - timedelta(days=14), end)
    path.write_text(json.dumps({**body, "seed": demo.seed + 1}))
    with pytest.raises(FieldtrackError, match="seed"):
        resume_timeline(demo, path)
    path.write_text(json.dumps({**body, "anchor": None}))
    with pytest.raises(FieldtrackError, match="no timeline"):
        resume_timeline(demo, path)
    with pytest.raises(FieldtrackError, match="nothing to resume"):
        resume_timeline(demo, tmp_path / "absent.json")
