"""`fieldtrack infra` against the suite's own local services."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.core.broker_admin import BrokerAdmin
from services.core.errors import InfraError
from services.infra.local import LocalServices
from services.infra.mosquitto import (
    LOAD_FACTOR,
    MOSQUITTO,
    QUOTA_MODES,
    QUOTA_SWITCH,
    SERVICE_USER,
    LocalMosquitto,
    quota_directives,
    quota_mode,
)
from services.infra.system import user_exists
from tests.integration.ingest_support import free_port


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**__import__("os").environ, "COLUMNS": "200"},
    )


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
    other = LocalServices(
        local_services.root.parent / "test-clash", local_services.pg_port, local_services.mqtt_port
    )
    try:
        other.up(lambda _: None)
    except Exception as exc:
        assert "is taken by another program" in str(exc)
    else:
        raise AssertionError("a second cluster started on a taken port")
    finally:
        shutil.rmtree(other.root, ignore_errors=True)


# --- issue #22, finding 9: the broker's secrets -------------------------------------------------


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_the_broker_store_and_log_are_readable_by_the_broker_only(
    local_services: LocalServices, broker_admin: BrokerAdmin, unique: str
) -> None:
    """The security store holds every password hash and is rewritten by the broker on every
    change (so the broker's own umask decides its mode); the log names every client."""
    serial = f"perm-{unique}"
    broker_admin.create_devices([(serial, secrets.token_urlsafe(16))])  # the broker saves
    try:
        broker = local_services.mosquitto
        for path in (broker.data, broker.dynsec_file, broker.logfile):
            assert _private(path), f"{path} is {oct(stat.S_IMODE(path.stat().st_mode))}"
        if os.geteuid() == 0 and user_exists(SERVICE_USER):
            owner = pwd.getpwnam(SERVICE_USER).pw_uid
            assert broker.dynsec_file.stat().st_uid == owner
            assert broker.logfile.stat().st_uid == owner
    finally:
        broker_admin.delete_device(serial)


def test_the_admin_password_is_never_on_a_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creating the security store: `ps` shows every argument to every user of the machine."""
    argvs: list[list[str]] = []
    real_run, real_popen = subprocess.run, subprocess.Popen

    def recording_run(args: Any, *rest: Any, **kwargs: Any) -> Any:
        argvs.append([str(a) for a in args])
        return real_run(args, *rest, **kwargs)

    def recording_popen(args: Any, *rest: Any, **kwargs: Any) -> Any:
        argvs.append([str(a) for a in args])
        return real_popen(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "run", recording_run)
    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    password = secrets.token_urlsafe(24)
    broker = LocalMosquitto(tmp_path / "mosquitto", 1)
    assert broker.configure("fieldtrack-admin", password, lambda _: None)
    assert broker.dynsec_file.exists()
    assert "fieldtrack-admin" in broker.dynsec_file.read_text()
    assert password not in broker.dynsec_file.read_text()  # a salted hash only
    assert any("dynsec" in argv for argv in argvs), argvs
    assert not [argv for argv in argvs if any(password in arg for arg in argv)]
    assert _private(broker.dynsec_file)


# --- the quota plugin's options -------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999", "0", "-5", "12abc"])
def test_the_broker_refuses_to_start_with_a_quota_that_is_no_number(
    local_services: LocalServices, tmp_path: Path, value: str
) -> None:
    """strtod reads `nan`, `inf` and overflows to infinity: a quota of NaN compares false
    against everything and refuses nothing. The plugin requires positive, finite numbers, and
    a broker it refuses does not start."""
    library = local_services.mosquitto.quota_library
    assert library.exists()
    lines = quota_directives(str(library)).splitlines()
    lines = [f"plugin_opt_bytes_per_s {value}" if "bytes_per_s" in line else line for line in lines]
    config = tmp_path / "mosquitto.conf"
    config.write_text(
        "\n".join(
            [
                f"listener {free_port()} 127.0.0.1",
                "allow_anonymous false",
                *lines,
                "log_dest stdout",
            ]
        )
        + "\n"
    )
    config.chmod(0o644)
    tmp_path.chmod(0o755)  # read by the broker's own user once it has dropped root
    try:
        done = subprocess.run(
            [str(MOSQUITTO), "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the broker started with plugin_opt_bytes_per_s {value}")
    assert done.returncode != 0
    assert "fieldtrack quota: topic_prefix, retain_suffix and positive" in done.stdout


def test_the_quota_switch_scales_or_drops_the_plugin_and_refuses_other_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`load` (what make bench uses) keeps the plugin with every limit × LOAD_FACTOR; `off`
    drops it; anything else is an error, not a silent default."""
    normal = dict(line.split() for line in quota_directives("q.so").splitlines())
    scaled = dict(line.split() for line in quota_directives("q.so", LOAD_FACTOR).splitlines())
    for option in ("msgs_per_s", "burst_msgs", "bytes_per_s", "burst_bytes"):
        key = f"plugin_opt_{option}"
        assert int(scaled[key]) == int(normal[key]) * LOAD_FACTOR
    assert quota_directives(None).startswith("#")
    for mode in QUOTA_MODES:
        monkeypatch.setenv(QUOTA_SWITCH, mode.upper())
        assert quota_mode() == mode
    monkeypatch.setenv(QUOTA_SWITCH, "no")
    with pytest.raises(InfraError, match="FIELDTRACK_BROKER_DEVICE_QUOTA"):
        quota_mode()
