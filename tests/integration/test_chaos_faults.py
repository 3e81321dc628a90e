"""The fault suite, short versions (issue #9): each fault under steady load, every message
accounted for. `make chaos` runs the same scenarios long (tests/integration/chaos.py) and
writes a report; tests/integration/test_ingest_faults.py keeps the single-fault basics.

Restarting or killing the broker and stalling PostgreSQL hit the whole test session's
services; everything in the session reconnects by itself, as in production.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.core.broker_admin import BrokerAdmin
from services.core.settings import Settings
from services.infra.local import LocalServices
from services.infra.mosquitto import DEVICE_BYTES_PER_S
from tests.integration.chaos import (
    HOSTILE,
    SCENARIOS,
    SHORT,
    FaultResult,
    hostile_line,
    report_dir,
    run_scenario,
    write_report,
)


def _run(name: str, services: LocalServices, settings: Settings, admin: BrokerAdmin) -> FaultResult:
    result = run_scenario(services, settings, admin, SCENARIOS[name], SHORT)
    print(f"\n{result.line()}")
    assert "publish_errors" not in result.notes, result.notes
    assert result.indeterminate == 0, result.line()
    assert result.handed >= SHORT.rate * SHORT.lead_s, "the stream barely ran"
    return result


def _assert_exact(result: FaultResult) -> None:
    assert (result.lost, result.duplicated, result.unexpected) == (0, 0, 0), result.line()
    assert result.rollups_match, result.line()
    assert result.stored == result.acked == result.handed, result.line()


@pytest.fixture
def run(local_services: LocalServices, settings: Settings, broker_admin: BrokerAdmin) -> object:
    return lambda name: _run(name, local_services, settings, broker_admin)


def test_ingest_sigkilled_five_times_under_load(run) -> None:  # type: ignore[no-untyped-def]
    result = run("ingest-sigkill")
    _assert_exact(result)
    assert result.notes["kills"] >= 5


def test_postgres_stopped_immediately_under_load(run) -> None:  # type: ignore[no-untyped-def]
    result = run("postgres-immediate-stop")
    _assert_exact(result)
    assert result.notes["ingest_survived_outage"]


def test_postgres_stall_does_not_starve_the_mqtt_network_thread(run) -> None:  # type: ignore[no-untyped-def]
    result = run("postgres-stall")
    _assert_exact(result)
    assert result.notes["stall_s"] > 2 * result.notes["keepalive_s"]
    # the stall was real: (almost) nothing committed while PostgreSQL was stopped
    assert result.notes["stored_during_stall"] < SHORT.rate * result.notes["stall_s"] / 4
    assert result.notes["broker_keepalive_timeouts"] == 0, result.notes
    assert result.notes["ingest_disconnects"] == 0, result.notes


def test_mosquitto_restarted_gracefully_keeps_sessions_and_queues(run) -> None:  # type: ignore[no-untyped-def]
    _assert_exact(run("mosquitto-restart"))


def test_one_of_two_shared_ingest_processes_killed_and_restarted(run) -> None:  # type: ignore[no-untyped-def]
    result = run("share-group-kill")
    _assert_exact(result)
    assert result.notes["survivor_alive"]


def test_burst_at_twice_the_sustained_rate(run) -> None:  # type: ignore[no-untyped-def]
    result = run("burst-2x")
    _assert_exact(result)
    assert result.notes["burst_rate"] == 2 * SHORT.rate


def test_mosquitto_sigkill_loses_at_most_what_it_held_unsaved(run) -> None:  # type: ignore[no-untyped-def]
    """Not zero by design (the broker saves every autosave_interval): the loss is measured and
    bounded by what the broker had acknowledged but not yet handed to a committed batch."""
    result = run("mosquitto-sigkill")
    assert (result.duplicated, result.unexpected) == (0, 0), result.line()
    assert result.rollups_match, result.line()
    held = sum(result.notes["held_by_broker_at_kill"])
    # a second of traffic acknowledged between the measurement and the kill
    assert result.lost <= held + SHORT.rate, result.line()


def test_a_hostile_device_flooding_while_ingest_is_down_costs_the_others_nothing(run) -> None:  # type: ignore[no-untyped-def]
    """Issue #22, finding 3: one device floods max-size messages at full speed for
    SHORT.hostile_down_s while ingest is away. Its excess over the per-device quota is
    refused; none of the other devices' acknowledged messages is lost."""
    result = run(HOSTILE)
    print(hostile_line(result))
    _assert_exact(result)
    notes = result.notes
    assert notes["hostile_refused"] > 0, "the flood never reached the device's quota"
    assert notes["hostile_stored"] == notes["hostile_accepted"], notes
    assert notes["ingest_down_s"] < notes["safe_down_s"], notes
    # the quota holds: after its burst the flooder gets no more than its rate into the queue
    assert notes["hostile_inflow_mib_s"] <= 1.1 * DEVICE_BYTES_PER_S / 2**20, notes


def test_a_run_of_chosen_scenarios_keeps_the_last_full_report(tmp_path: Path) -> None:
    """`make chaos CHAOS_ARGS="--only ..."` writes beside the full run's report, not over it."""
    full, _ = write_report([], SHORT, report_dir(tmp_path, None))
    before = full.read_text()
    partial, _ = write_report([], SHORT, report_dir(tmp_path, ["garbage-share"]))
    assert partial != full
    assert full.read_text() == before
