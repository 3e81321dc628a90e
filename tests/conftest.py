"""Test-wide setup: the suite runs its own local services, apart from the demo's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import PROJECT_ROOT

# Set before anything reads settings: tests get their own state folder and ports, never the
# demo's. FIELDTRACK_TEST_STATE_DIR (with other ports) lets two suites run side by side.
os.environ["FIELDTRACK_STATE_DIR"] = os.environ.get(
    "FIELDTRACK_TEST_STATE_DIR", str(PROJECT_ROOT / ".state" / "test")
)
os.environ.setdefault("FIELDTRACK_LOCAL_PG_PORT", "54339")
os.environ.setdefault("FIELDTRACK_LOCAL_MQTT_PORT", "18840")
# The NATS cluster's nodes (NATS 14240-14242, routes +2000, monitor +4000; MQTT 18871-18873).
os.environ.setdefault("FIELDTRACK_LOCAL_NATS_PORT", "14240")
os.environ.setdefault("FIELDTRACK_LOCAL_NATS_MQTT_PORT", "18871")
# A developer's own `fieldtrack login` must never leak into the tests' CLI runs.
os.environ["FIELDTRACK_CLI_CONFIG"] = str(Path(os.environ["FIELDTRACK_STATE_DIR"]) / "cli.env")


TESTS_ROOT = Path(__file__).resolve().parent
# The tiers, by folder: every test is `unit`, `integration` or `docker`; the browser tests
# are both `integration` and `browser`. `slow` is marked on the tests themselves.
TIER_BY_FOLDER = {
    "unit": pytest.mark.unit,
    "integration": pytest.mark.integration,
    "browser": pytest.mark.browser,
    "docker": pytest.mark.docker,
}
# Whole modules of injected faults (killed or stopped services under load); single fault
# tests elsewhere carry `@pytest.mark.chaos` themselves.
CHAOS_MODULES = {"test_chaos_faults.py", "test_ingest_faults.py", "test_cluster_faults.py"}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path.resolve()
        folders = path.relative_to(TESTS_ROOT).parts[:-1] if path.is_relative_to(TESTS_ROOT) else ()
        tiers = [TIER_BY_FOLDER[folder] for folder in folders if folder in TIER_BY_FOLDER]
        if not tiers:
            raise pytest.UsageError(
                f"{item.nodeid}: every test lives under tests/unit, tests/integration or "
                "tests/docker"
            )
        for tier in tiers:
            item.add_marker(tier)
        if item.path.name in CHAOS_MODULES:
            item.add_marker(pytest.mark.chaos)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Install what the selected tests need before any of them starts, so the one-time
    installs of a fresh machine (Debian packages, the TimescaleDB build, Chromium: minutes)
    do not count against the first test's timeout (the Docker engine's packages too; the
    stack test starts its daemon and builds its images itself). A failure here is only printed: the
    fixtures try again, and every test that needs them errors with the reason."""
    if session.config.option.collectonly or not session.items:
        return
    from services.infra.local import LocalServices
    from services.infra.system import ensure_packages

    terminal = session.config.pluginmanager.get_plugin("terminalreporter")

    def report(message: str) -> None:
        line = f"[install] {message}"
        if terminal is None:
            print(line)
        else:
            terminal.write_line(line)

    def selected(marker: str) -> bool:
        return any(item.get_closest_marker(marker) for item in session.items)

    try:
        if selected("integration"):
            LocalServices.from_env().install(report)
        if selected("browser"):
            ensure_packages(["chromium"], report)
        if selected("docker"):
            from tests.docker.engine import PACKAGES as DOCKER_PACKAGES

            ensure_packages(DOCKER_PACKAGES, report)
    except Exception as exc:
        report(f"failed, the tests that need it will say why: {exc}")
