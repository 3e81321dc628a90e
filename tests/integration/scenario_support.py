"""A scenario with known ground truth, backfilled into a scratch database (for the analytics
tests and the browser tests)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from device_sim import runner, scenario as scenario_mod
from device_sim.generator import Generator, Truth
from device_sim.scenario import Customer, Project, Scenario
from device_sim.seed import seed
from services.core.migrate import migrate
from services.core.settings import Settings
from services.infra.local import LocalServices
from services.ingest.history import HistoryImporter, HistoryReport
from tests.integration.conftest import scratch_database

Json = dict[str, Any]
ANALYTICS_SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "analytics.yaml"


def backfill(generator: Generator, conn: psycopg.Connection) -> HistoryReport:
    """What `fieldtrack sim backfill` does: the generated history through the importer."""
    importer = HistoryImporter(conn)
    runner.backfill(generator, importer)
    return importer.finish()


@dataclass(frozen=True)
class Loaded:
    """The scratch database and what was generated into it."""

    url: str
    scenario: Scenario
    truth: Json  # Generator.truth.to_json()
    raw_truth: Truth  # the same truth, with device sets (for the firmware check)
    since: datetime
    until: datetime
    project_ids: dict[str, int]
    backfill_s: float

    @property
    def window(self) -> dict[str, str]:
        return {"since": self.since.isoformat(), "until": self.until.isoformat()}

    @property
    def days(self) -> float:
        return (self.until - self.since) / timedelta(days=1)

    def projects(self) -> list[tuple[Customer, Project]]:
        return self.scenario.projects()

    def truth_of(self, project: str) -> Json:
        return dict(self.truth["projects"][project])

    def feature_truth(self, project: str, feature: str) -> Json:
        """The truth for one feature; a feature nobody used has no entry: zeros."""
        found = self.truth_of(project)["features"].get(feature)
        return dict(found) if found else {"devices_using": 0, "events": 0, "messages": 0}

    def truth_adoption(self, project: str, feature: str) -> float:
        reporting = int(self.truth_of(project)["devices_reporting"])
        return int(self.feature_truth(project, feature)["devices_using"]) / reporting


@contextmanager
def load_scenario(
    local_services: LocalServices,
    settings: Settings,
    path: Path,
    prefix: str,
    *,
    clean: bool = False,
) -> Iterator[Loaded]:
    """Seed and backfill the scenario (ending at today's UTC midnight) into a fresh database;
    the database must then hold exactly the ground truth. *clean*: leave out the bad data
    the scenario injects (the shipped demo's, say)."""
    scenario = scenario_mod.load(path)
    if clean:
        scenario = scenario.model_copy(update={"inject": scenario_mod.Inject()})
    assert not any(scenario.inject.model_dump().values()), "no injected bad data here"
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=scenario.days)
    app_url = settings.database_url.get_secret_value()
    with scratch_database(local_services, app_url, prefix) as url:
        migrate(url)
        generator = Generator(scenario, start, end, inject=False)
        with psycopg.connect(url) as conn:
            seed(conn, None, scenario, end.date())
            started = time.monotonic()
            report = backfill(generator, conn)
            backfill_s = time.monotonic() - started
            rows = conn.execute("SELECT name, id FROM projects").fetchall()
            project_ids: dict[str, int] = dict(rows)
        truth = generator.truth.to_json()
        assert report.quarantined == {} and report.duplicates == 0, report
        assert report.messages == sum(
            p["usage_messages"] + p["telemetry_messages"] for p in truth["projects"].values()
        )
        yield Loaded(url, scenario, truth, generator.truth, start, end, project_ids, backfill_s)
