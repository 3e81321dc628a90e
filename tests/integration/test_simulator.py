"""The simulator against real services: what it says it generated is exactly what lands.

Expectations come from the generator's ground-truth file, never from hand-typed numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from device_sim import runner, scenario as scenario_mod
from device_sim.cli import scenario_path
from device_sim.generator import Generator, firmware_of
from device_sim.scenario import Inject
from device_sim.seed import seed, write_credentials
from device_sim.swarm import Swarm
from device_sim.verify import mismatches
from services.core.broker_admin import BrokerAdmin
from services.core.migrate import migrate
from services.core.settings import Settings
from services.infra.local import LocalServices
from services.ingest.service import IngestService, discard_session
from tests.integration.conftest import scratch_database
from tests.integration.scenario_support import backfill

PORTFOLIO_BACKFILL_LIMIT_S = 600  # a hang guard, not a speed target
PORTFOLIO_TEST_DAYS = 14


@pytest.fixture
def sim_database(local_services: LocalServices, settings: Settings) -> Iterator[str]:
    """A database of the simulator's own: scenario names are fixed, so runs must not mix."""
    app_url = settings.database_url.get_secret_value()
    with scratch_database(local_services, app_url, "fieldtrack_sim") as url:
        migrate(url)
        yield url


@pytest.fixture
def sim_ingest(sim_database: str, settings: Settings) -> Iterator[IngestService]:
    """A real ingest service writing into the simulator's database, with its own session."""
    ingest_settings = settings.model_copy(
        update={
            "database_url": type(settings.database_url)(sim_database),
            "ingest_client_id": f"fieldtrack-ingest-sim-{os.getpid()}",
            "ingest_share_group": f"sim-{os.getpid()}",
        }
    )
    service = IngestService(ingest_settings)
    service.start()
    assert service.wait_connected(15)
    yield service
    service.stop()
    discard_session(settings, ingest_settings.ingest_client_id)


def _await_truth(
    truth: dict[str, object], database: str, since: datetime | None = None
) -> list[str]:
    """What still differs from the truth once ingest has caught up (at most 60 s)."""
    deadline = time.monotonic() + 60
    with psycopg.connect(database, autocommit=True) as conn:
        while (problems := mismatches(truth, conn, quarantined_since=since)) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.5)
    return problems


def _demo(**inject: float) -> scenario_mod.Scenario:
    loaded = scenario_mod.load(scenario_path("demo"))
    return loaded.model_copy(update={"inject": Inject(**inject)}) if inject else loaded


def test_backfill_lands_exactly_the_ground_truth(sim_database: str) -> None:
    demo = _demo(malformed=0.01, duplicate=0.02)
    end = datetime.now(UTC).replace(microsecond=0)
    generator = Generator(demo, end - timedelta(days=3), end, inject_late=False)
    started = datetime.now(UTC)
    with psycopg.connect(sim_database) as conn:
        seed(conn, None, demo, end.date())
        report = backfill(generator, conn)
        truth = generator.truth.to_json()
        assert mismatches(truth, conn, quarantined_since=started) == []
    # Generation is deterministic: regenerate to count the readings the duplicates carried.
    again = Generator(demo, end - timedelta(days=3), end, inject_late=False)
    duplicated_readings = sum(
        _readings(item.payload)
        for batch in again.windows(runner.BACKFILL_WINDOW)
        for item in batch
        if item.expect == "duplicate"
    )
    assert report.duplicates == duplicated_readings > 0
    injected = truth["injected"]
    assert injected.get("duplicate", 0) > 0 and injected.get("not_json", 0) > 0
    assert report.quarantined == {k: v for k, v in injected.items() if k != "duplicate"}
    assert report.messages == sum(
        p["usage_messages"] + p["telemetry_messages"] for p in truth["projects"].values()
    ) + sum(injected.values())


def _readings(payload: bytes) -> int:
    body = json.loads(payload)
    return len(body.get("events") or body.get("metrics") or [])


def test_backfill_twice_adds_nothing(sim_database: str) -> None:
    demo = _demo()
    end = datetime.now(UTC).replace(microsecond=0)
    with psycopg.connect(sim_database) as conn:
        seed(conn, None, demo, end.date())
        first = backfill(Generator(demo, end - timedelta(days=1), end), conn)
        again = backfill(Generator(demo, end - timedelta(days=1), end), conn)
    assert first.usage_rows > 0 and first.metric_rows > 0
    assert (again.usage_rows, again.metric_rows) == (0, 0)
    # every reading comes again: those stored the first time, and the injected duplicates
    assert again.duplicates == first.usage_rows + first.metric_rows + first.duplicates


def test_live_fleet_over_mqtt_lands_the_ground_truth_and_injected_bad_data(
    sim_database: str, sim_ingest: IngestService, settings: Settings, broker_admin: BrokerAdmin
) -> None:
    """Every demo device connects with its own credentials and publishes six simulated hours
    as fast as the broker takes them, with malformed, duplicated, late and future copies
    mixed in; the database must hold exactly the truth and the quarantine the injections."""
    demo = _demo(malformed=0.02, duplicate=0.02, late=0.01, future=0.01)
    end = datetime.now(UTC).replace(microsecond=0)
    with psycopg.connect(sim_database) as conn:
        credentials = seed(conn, broker_admin, demo, end.date())
    started = datetime.now(UTC)
    generator = Generator(demo, end - timedelta(hours=6), end, now=datetime.now(UTC))
    firmware = {d.serial: firmware_of(demo, d.project, d.serial) for d in generator.devices}
    swarm = Swarm(
        settings.broker_nodes(),
        [(c.serial, c.password) for c in credentials],
        firmware=firmware,
    )
    try:
        assert swarm.start() == len(credentials)
        counts = runner.run_load(generator, swarm, rate=None, stop=threading.Event())
        assert swarm.wait_acked(60)
        stats = swarm.stats
        assert stats.consistent and stats.failed_total == 0
        truth = generator.truth.to_json()
        assert _await_truth(truth, sim_database, since=started) == []
        print(
            f"\n[sim] {counts.published} messages in {counts.elapsed_s:.1f}s "
            f"({counts.rate:,.0f}/s); injected {truth['injected']}"
        )
        assert all(truth["injected"].get(k, 0) > 0 for k in ("not_json", "duplicate"))
    finally:
        swarm.stop()
        broker_admin.delete_devices([c.serial for c in credentials])


def test_history_import_over_http_is_idempotent_and_quarantines_bad_records(
    api: TestClient, conn: psycopg.Connection, tmp_path: Path
) -> None:
    demo = _demo()
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(days=40)  # older than 30 days
    seed(conn, None, demo, end.date())
    generator = Generator(demo, end - timedelta(hours=12), end, inject=False)
    path = tmp_path / "history.ndjson"
    written = runner.export_ndjson(generator, path)
    with path.open("ab") as handle:
        handle.write(b"not json\n")
        handle.write(json.dumps({"device": "acme-lck-001", "kind": "usage"}).encode() + b"\n")

    def upload() -> dict[str, object]:
        response = api.post(
            "/imports/history",
            content=path.read_bytes(),
            headers={"content-type": "application/x-ndjson"},
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    first = upload()
    assert first["messages"] == written + 2
    assert first["quarantined"] == {"invalid_payload": 2}
    truth = generator.truth.to_json()
    assert mismatches(truth, conn) == []  # old history is accepted: no late-data window
    again = upload()
    assert (again["usage_rows"], again["metric_rows"]) == (0, 0)
    assert again["duplicates"] == int(first["usage_rows"]) + int(first["metric_rows"])  # type: ignore[call-overload]


def test_history_import_csv_and_wrong_type(api: TestClient, conn: psycopg.Connection) -> None:
    demo = _demo()
    seed(conn, None, demo, datetime.now(UTC).date())
    ts = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    body = (
        "device,kind,seq,ts,feature,count,duration_ms,metric,value,unit\n"
        f"nlh-room-001,usage,900001,{ts},remote_unlock,2,,,,\n"
        f"nlh-room-001,usage,900001,{ts},guest_extra,1,,,,\n"
        f"nlh-room-001,telemetry,900002,{ts},,,,battery,88.5,%\n"
        f"nlh-room-001,telemetry,900002,{ts},,,,rssi,-70,dBm\n"
        f"nlh-room-001,usage,900003,{ts},remote_unlock,lots,,,,\n"
    )
    response = api.post("/imports/history", content=body, headers={"content-type": "text/csv"})
    assert response.status_code == 201, response.text
    report = response.json()
    assert (report["messages"], report["usage_rows"], report["metric_rows"]) == (3, 2, 2)
    assert report["quarantined"] == {"invalid_payload": 1}
    refused = api.post("/imports/history", content=b"x", headers={"content-type": "text/plain"})
    assert refused.status_code == 415


def _import_csv(
    api: TestClient, conn: psycopg.Connection, body: str
) -> tuple[dict[str, Any], list[tuple[str, int, str]]]:
    """Import *body* as CSV history: the report, and (reason, payload_size, detail) of each
    message it quarantined."""
    before = conn.execute("SELECT coalesce(max(id), 0) FROM quarantine").fetchone()
    response = api.post("/imports/history", content=body, headers={"content-type": "text/csv"})
    assert response.status_code == 201, response.text
    rows = conn.execute(
        "SELECT reason, payload_size, detail FROM quarantine WHERE id > %s ORDER BY id", before
    ).fetchall()
    return response.json(), rows


def test_history_csv_lines_the_csv_module_cannot_read_are_quarantined(
    api: TestClient, conn: psycopg.Connection
) -> None:
    """A stray carriage return or a cell over the csv module's 128 KiB limit once escaped as
    a 500; now each such record is quarantined and the rows around it are stored."""
    demo = _demo()
    seed(conn, None, demo, datetime.now(UTC).date())
    ts = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    huge = "x" * (200 * 1024)
    body = (
        "device,kind,seq,ts,feature,count,duration_ms,metric,value,unit\n"
        f"nlh-room-001,usage,910001,{ts},remote_unlock,1,,,,\n"
        f"nlh-room-001,usage,910002,{ts},remote\runlock,1,,,,\n"
        f'nlh-room-001,usage,910003,{ts},"{huge}",1,,,,\n'
        f"nlh-room-001,usage,910004,{ts},remote_unlock,1,,,,\n"
    )
    report, quarantined = _import_csv(api, conn, body)
    assert (report["messages"], report["usage_rows"]) == (4, 2)
    assert report["quarantined"] == {"invalid_payload": 2}
    rows = [(detail, size) for _, size, detail in quarantined]
    assert [detail.split(": unreadable CSV: ")[1][:20] for detail, _ in rows] == [
        "new-line character s",
        "field larger than fi",
    ]
    assert rows[1][1] > len(huge)  # the whole raw record is measured, 64 KiB of it kept

    header = api.post(
        "/imports/history", content=b"device,ki\rnd,seq,ts\n", headers={"content-type": "text/csv"}
    )
    assert header.status_code == 422, header.text
    assert "header" in header.text


def test_history_csv_line_over_the_limit_is_quarantined_and_the_rest_read(
    api: TestClient, conn: psycopg.Connection
) -> None:
    """A CSV line over 512 KiB is refused whole, with its size: cut and handed to the csv
    module, its open quote once swallowed the two rows after it (neither stored nor
    quarantined; found in review)."""
    demo = _demo()
    seed(conn, None, demo, datetime.now(UTC).date())
    ts = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    long_row = f'nlh-room-001,usage,920001,{ts},{"," * (600 * 1024)}"yyy",1\n'
    body = (
        "device,kind,seq,ts,feature,count,duration_ms,metric,value,unit\n"
        + long_row
        + f"nlh-room-001,usage,920002,{ts},remote_unlock,1,,,,\n"
        + f"nlh-room-001,usage,920003,{ts},remote_unlock,1,,,,\n"
    )
    report, rows = _import_csv(api, conn, body)
    assert (report["messages"], report["usage_rows"]) == (3, 2)
    assert report["quarantined"] == {"payload_too_large": 1}
    assert [(reason, size) for reason, size, _ in rows] == [
        ("payload_too_large", len(long_row) - 1)  # the line, without its newline
    ]
    assert rows[0][2].startswith("line 2: ")


@pytest.mark.slow
def test_portfolio_backfill_lands_the_ground_truth(sim_database: str, tmp_path: Path) -> None:
    """The 3,000-device portfolio through the CLI, over PORTFOLIO_TEST_DAYS of its 90 days: the
    whole 90 days take about 6 minutes here, too long for every CI run (its speed is a
    benchmark figure, not a test)."""
    env = {**os.environ, "FIELDTRACK_DATABASE_URL": sim_database}
    truth = tmp_path / "portfolio.truth.json"
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services",
            "sim",
            "backfill",
            "--scenario",
            "portfolio",
            "--days",
            str(PORTFOLIO_TEST_DAYS),
            "--truth",
            str(truth),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=PORTFOLIO_BACKFILL_LIMIT_S,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    print(
        f"\n[sim] portfolio {PORTFOLIO_TEST_DAYS}-day backfill: {elapsed:.0f}s\n{done.stderr[-400:]}"
    )
    verified = subprocess.run(
        [
            sys.executable,
            "-m",
            "services",
            "sim",
            "verify",
            "--scenario",
            "portfolio",
            "--truth",
            str(truth),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr[-3000:]


def test_paced_run_replays_the_recent_past_and_lands_the_ground_truth(
    sim_database: str, sim_ingest: IngestService, settings: Settings, broker_admin: BrokerAdmin
) -> None:
    """The accelerated live mode: ten simulated minutes at 600x, never ahead of real time."""
    demo = _demo()
    end = datetime.now(UTC).replace(microsecond=0)
    with psycopg.connect(sim_database) as conn:
        credentials = seed(conn, broker_admin, demo, end.date())
    generator = Generator(demo, end - timedelta(minutes=10), end, inject=False)
    swarm = Swarm(settings.broker_nodes(), [(c.serial, c.password) for c in credentials])
    try:
        assert swarm.start() == len(credentials)
        started = time.monotonic()
        counts = runner.run_paced(generator, swarm, speed=600, stop=threading.Event())
        elapsed = time.monotonic() - started
        assert swarm.wait_acked(30)
        assert counts.published > 0
        assert 0.5 < elapsed < 30  # paced: not instant, and far faster than real time
        assert _await_truth(generator.truth.to_json(), sim_database) == []
    finally:
        swarm.stop()
        broker_admin.delete_devices([c.serial for c in credentials])


def _restless_demo(tmp_path: Path) -> Path:
    """The demo with rooms that reboot several times a day: the seam between backfill and
    live run crosses reboots."""
    text = (
        scenario_path("demo")
        .read_text()
        .replace("reboots_per_device_month: 2", "reboots_per_device_month: 90")
    )
    assert "reboots_per_device_month: 90" in text
    path = tmp_path / "demo.yaml"  # same name: the registry rows and truth file are the demo's
    path.write_text(text)
    return path


def test_live_fleet_resumes_the_backfill_without_a_missing_message(
    sim_database: str, sim_ingest: IngestService, broker_admin: BrokerAdmin, tmp_path: Path
) -> None:
    """`make demo` in short: backfill history up to a few minutes ago, then the live fleet
    resumes it (`sim run --resume`) and catches up. Every device continues its boot counter
    and sequence numbers across the seam and its reboots: ingest counts nothing missing, and
    `sim verify` finds history and live traffic exactly as generated."""
    scenario_file = _restless_demo(tmp_path)
    demo = scenario_mod.load(scenario_file)
    truth = tmp_path / "truth.json"
    credentials_csv = tmp_path / "devices.csv"
    with psycopg.connect(sim_database) as conn:
        credentials = seed(conn, broker_admin, demo, datetime.now(UTC).date())
    write_credentials(credentials_csv, credentials)
    env = {**os.environ, "FIELDTRACK_DATABASE_URL": sim_database}
    common = ["--scenario", str(scenario_file), "--truth", str(truth)]

    def fieldtrack(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "services", "sim", *args, *common],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return done

    try:
        fieldtrack("backfill", "--days", "1", "--gap-hours", "0.1", "--no-seed")
        backfilled = json.loads(truth.read_text())
        assert backfilled["reboots"] > 0
        # ~6 simulated minutes to catch up at 120x, then a few seconds of real time
        fieldtrack(
            "run",
            "--resume",
            "--credentials",
            str(credentials_csv),
            "--speed",
            "120",
            "--duration",
            "12",
        )
        resumed = json.loads(truth.read_text())
        assert resumed["start"] == backfilled["start"] and resumed["end"] > backfilled["end"]
        live = sum(p["telemetry_messages"] for p in resumed["projects"].values()) - sum(
            p["telemetry_messages"] for p in backfilled["projects"].values()
        )
        assert live > 0
        assert _await_truth(resumed, sim_database) == []
        fieldtrack("verify")
        with psycopg.connect(sim_database) as conn:
            missing, jumps, devices = conn.execute(
                "SELECT sum(missing), sum(seq_jumps), count(DISTINCT device_id) FROM device_hourly"
            ).fetchone() or (None, None, None)
        assert (missing, jumps) == (0, 0) and devices > 0
    finally:
        broker_admin.delete_devices([c.serial for c in credentials])
