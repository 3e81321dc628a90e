"""`make capacity` in its smoke mode: the command runs end to end on services of its own and
reports every component with its figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import PROJECT_ROOT
from bench.procs import free_port

COMPONENTS = {"mosquitto", "ingest", "postgresql", "rollups", "swarm", "queries"}
# the fitted line's intercept may come out at or below zero on a busy machine
FITTED = {"provision_base"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_capacity_run_measures_every_component(tmp_path: Path) -> None:
    env = {
        **os.environ,
        # its own services beside the suite's: the suite's ports are taken
        "FIELDTRACK_CAPACITY_STATE_DIR": str(Path(os.environ["FIELDTRACK_STATE_DIR"]) / "capacity"),
        "FIELDTRACK_LOCAL_PG_PORT": str(free_port()),
        "FIELDTRACK_LOCAL_MQTT_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench.capacity", "--quick", "--out", str(tmp_path)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    report = json.loads((tmp_path / "capacity.json").read_text())
    assert report["meta"]["mode"] == "quick"
    components = report["components"]
    assert set(components) == COMPONENTS
    for component, figures in components.items():
        assert figures, component
        for name, found in figures.items():
            assert found["unit"] and found["how"], (component, name)
            if name not in FITTED:
                assert found["value"] > 0, (component, name, found)
    assert {"cpu_per_message", "memory_per_1k_connections", "provision_growth"} <= set(
        components["mosquitto"]
    )
    markdown = (tmp_path / "capacity.md").read_text()
    assert "## Projection" in markdown
    assert "| 1,000,000 |" in markdown
