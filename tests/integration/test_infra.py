"""`fieldtrack infra` against the suite's own local services."""

from __future__ import annotations

import shutil
import subprocess
import sys

from services.infra.local import LocalServices


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services", *args],
        capture_output=True, text=True, timeout=300, check=False,
        env={**__import__("os").environ, "COLUMNS": "200"},
    )  # fmt: skip


def test_second_up_changes_nothing_and_reports_it(local_services: LocalServices) -> None:
    done = _cli("infra", "up")
    assert done.returncode == 0, done.stderr
    assert "already installed" in done.stdout
    assert "PostgreSQL: already running" in done.stdout
    assert "Mosquitto: already running" in done.stdout


def test_status_says_what_runs_where(local_services: LocalServices) -> None:
    done = _cli("infra", "status")
    assert done.returncode == 0, done.stderr
    assert f"127.0.0.1:{local_services.pg_port}" in done.stdout
    assert f"127.0.0.1:{local_services.mqtt_port}" in done.stdout
    assert done.stdout.count("running, pid") == 2


def test_port_taken_by_another_program_is_a_readable_error(local_services: LocalServices) -> None:
    # A second set of services on the ports the first one holds must refuse to start.
    other = LocalServices(local_services.root.parent / "test-clash", local_services.pg_port,
                          local_services.mqtt_port)  # fmt: skip
    try:
        other.up(lambda _: None)
    except Exception as exc:
        assert "is taken by another program" in str(exc)
    else:
        raise AssertionError("a second cluster started on a taken port")
    finally:
        shutil.rmtree(other.root, ignore_errors=True)
