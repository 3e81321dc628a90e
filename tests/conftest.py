"""Test-wide setup: the suite runs its own local services, apart from the demo's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Set before anything reads settings: tests get their own state folder and ports, never the
# demo's. FIELDTRACK_TEST_STATE_DIR (with other ports) lets two suites run side by side.
os.environ["FIELDTRACK_STATE_DIR"] = os.environ.get(
    "FIELDTRACK_TEST_STATE_DIR", str(PROJECT_ROOT / ".state" / "test")
)
os.environ.setdefault("FIELDTRACK_LOCAL_PG_PORT", "54339")
os.environ.setdefault("FIELDTRACK_LOCAL_MQTT_PORT", "18840")
# A developer's own `fieldtrack login` must never leak into the tests' CLI runs.
os.environ["FIELDTRACK_CLI_CONFIG"] = str(Path(os.environ["FIELDTRACK_STATE_DIR"]) / "cli.env")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
