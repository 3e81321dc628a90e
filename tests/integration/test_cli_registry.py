"""The registry commands of `fieldtrack`, run in-process against a real API server.

The API runs under uvicorn on a free local port (the suite's database and broker behind
it); the CLI reaches it only through FIELDTRACK_API_URL, as it would on another machine.
"""

from __future__ import annotations

import csv
import re
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner, Result

from services.accounts.roles import Role
from services.cli import app
from services.core.broker_admin import BrokerAdmin
from services.core.settings import Settings
from tests.integration.conftest import Project, mint_token

PROVISION_BUDGET_S = 60.0


@pytest.fixture
def cli(api_url: str, admin_token: str) -> Any:
    return cli_as(api_url, admin_token)


def cli_as(api_url: str, token: str) -> Any:
    """`fieldtrack …` run with this token, checked to fail only as a message."""
    runner = CliRunner()

    def run(*args: str) -> Result:
        result = runner.invoke(
            app,
            list(args),
            env={"FIELDTRACK_API_URL": api_url, "FIELDTRACK_API_TOKEN": token, "COLUMNS": "200"},
        )
        # An API error is a message and exit 1, never a traceback.
        assert "Traceback" not in result.output, result.output
        if result.exception is not None:
            assert isinstance(result.exception, SystemExit), repr(result.exception)
        return result

    return run


def created_id(result: Result, label: str) -> int:
    assert result.exit_code == 0, result.output
    match = re.search(rf"created {label} (\d+)", result.output)
    assert match, result.output
    return int(match[1])


def test_customer_round_trip(cli: Any, unique: str) -> None:
    name = f"CLI Customer {unique}"
    customer = created_id(
        cli("customers", "add", "--name", name, "--tier", "waist", "--industry", "retail"),
        "customer",
    )

    listed = cli("customers", "list", "--q", unique, "--tier", "waist")
    assert listed.exit_code == 0, listed.output
    assert name in listed.output
    assert "total: 1" in listed.output

    shown = cli("customers", "show", str(customer))
    assert shown.exit_code == 0, shown.output
    assert name in shown.output
    assert "onboarding" in shown.output

    updated = cli(
        "customers", "update", str(customer), "--stage", "adoption", "--name", f"{name} renamed"
    )
    assert updated.exit_code == 0, updated.output
    shown = cli("customers", "show", str(customer))
    assert f"{name} renamed" in shown.output
    assert "adoption" in shown.output

    deleted = cli("customers", "delete", str(customer))
    assert deleted.exit_code == 0, deleted.output
    assert f"deleted customer {customer}" in deleted.output

    gone = cli("customers", "show", str(customer))
    assert gone.exit_code == 1
    assert f"error: customer {customer} not found" in gone.stderr


def test_projects_features_and_deliveries(cli: Any, unique: str) -> None:
    customer = created_id(
        cli(
            "customers",
            "add",
            "--name",
            f"Chain {unique}",
            "--tier",
            "head",
            "--industry",
            "energy",
        ),
        "customer",
    )
    project = created_id(
        cli(
            "projects",
            "add",
            "--customer",
            str(customer),
            "--name",
            f"P {unique}",
            "--value",
            "1234.50",
            "--go-live",
            "2026-03-01",
            "--status",
            "live",
        ),
        "project",
    )
    feature = created_id(
        cli("features", "add", "--key", f"dim_{unique}", "--name", "Dimming", "--kind", "standing"),
        "feature",
    )
    delivery = created_id(
        cli(
            "deliveries",
            "add",
            "--project",
            str(project),
            "--feature",
            str(feature),
            "--cost-days",
            "3.5",
            "--score",
            "4",
            "--strategic",
        ),
        "delivery",
    )

    shown = cli("projects", "show", str(project))
    assert "1234.50" in shown.output
    assert "2026-03-01" in shown.output
    assert "standing" in cli("features", "show", str(feature)).output
    listed = cli("deliveries", "list", "--project", str(project), "--strategic")
    assert f"dim_{unique}" in listed.output
    assert "total: 1" in listed.output
    assert cli("deliveries", "update", str(delivery), "--status", "cut").exit_code == 0
    assert "cut" in cli("deliveries", "show", str(delivery)).output

    still_used = cli("projects", "delete", str(project))
    assert still_used.exit_code == 1
    assert "delivery(ies)" in still_used.stderr


@pytest.mark.parametrize(
    ("plural", "internal_headers"),
    [
        ("customers", ["tier", "stage"]),
        ("projects", ["value"]),
        ("deliveries", ["days", "line value", "score", "strategic"]),
    ],
)
def test_viewer_lists_leave_out_internal_columns(
    cli: Any,
    api_url: str,
    settings: Settings,
    project: Project,
    unique: str,
    plural: str,
    internal_headers: list[str],
) -> None:
    """A customer viewer's rows lack the internal fields: the table drops those columns."""
    url = settings.database_url.get_secret_value()
    viewer = mint_token(url, Role.VIEWER, project.customer_id, "cli-viewer")
    for run, shown in ((cli_as(api_url, viewer), False), (cli, True)):
        listed = run(plural, "list", "--q", unique)
        assert listed.exit_code == 0, listed.output
        assert unique in listed.output and "total: 1" in listed.output, listed.output
        header = listed.output.splitlines()[0]
        assert [name in header for name in internal_headers] == [shown] * len(internal_headers)


def test_conflict_and_invalid_input_are_readable(cli: Any, unique: str) -> None:
    name = f"Twice {unique}"
    args = ("customers", "add", "--name", name, "--tier", "tail", "--industry", "retail")
    created_id(cli(*args), "customer")

    again = cli(*args)
    assert again.exit_code == 1
    assert again.stderr.startswith("error: a customer with name")
    assert "exists already" in again.stderr

    blank = cli("customers", "add", "--name", "   ", "--tier", "tail", "--industry", "retail")
    assert blank.exit_code == 1
    assert "error: invalid input; nothing was changed" in blank.stderr
    assert re.search(r"^  name: .*must not be blank", blank.stderr, re.MULTILINE), blank.stderr

    orphan = cli("projects", "add", "--customer", "999999999", "--name", "Nobody's")
    assert orphan.exit_code == 1
    assert "customer_id" in orphan.stderr
    assert "999999999" in orphan.stderr

    nothing = cli("customers", "update", "1")
    assert nothing.exit_code == 1
    assert "nothing to change" in nothing.stderr


def test_unreachable_api_says_how_to_start_it(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    result = CliRunner().invoke(app, ["customers", "list"], env={"FIELDTRACK_API_URL": url})
    assert result.exit_code == 1
    assert f"not reachable at {url}" in result.stderr
    assert "fieldtrack api" in result.stderr
    assert "Traceback" not in result.output


def test_import_with_a_bad_row_creates_nothing(
    cli: Any, unique: str, tmp_path: Path, conn: psycopg.Connection
) -> None:
    path = tmp_path / "customers.csv"
    path.write_text(
        "name,tier,industry\n"
        f"Import A {unique},head,retail\n"
        f"Import B {unique},platinum,retail\n"
        f"Import C {unique},tail,retail\n"
    )
    result = cli("import", "customers", str(path))
    assert result.exit_code == 1
    assert "nothing was imported" in result.stderr
    assert "line 3, tier:" in result.stderr
    count = conn.execute(
        "SELECT count(*) FROM customers WHERE name LIKE %s", (f"Import % {unique}",)
    ).fetchone()
    assert count == (0,)

    path.write_text(path.read_text().replace("platinum", "waist"), encoding="utf-8-sig")
    result = cli("import", "customers", str(path))  # with a BOM, as spreadsheets write it
    assert result.exit_code == 0, result.output
    assert "created 3 customers" in result.output


def connack(settings: Settings, serial: str, password: str) -> int:
    """The CONNACK reason code the broker gives these credentials."""
    codes: list[int] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=serial, protocol=mqtt.MQTTv311)
    client.username_pw_set(serial, password)

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        codes.append(reason.value)
        done.set()

    client.on_connect = on_connect
    client.connect(settings.mqtt_host, settings.mqtt_port)
    client.loop_start()
    try:
        assert done.wait(10), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return codes[0]


@pytest.mark.slow
def test_provision_1000_devices(
    cli: Any,
    project: Project,
    unique: str,
    tmp_path: Path,
    conn: psycopg.Connection,
    settings: Settings,
    broker_admin: BrokerAdmin,
) -> None:
    out = tmp_path / "creds.csv"
    prefix = f"cli{unique}"
    started = time.perf_counter()
    result = cli(
        "devices",
        "provision",
        "--project",
        str(project.id),
        "--count",
        "1000",
        "--prefix",
        prefix,
        "--model",
        "L1",
        "--out",
        str(out),
    )
    elapsed = time.perf_counter() - started
    print(f"\nprovisioned 1000 devices through CLI and API in {elapsed:.1f}s")
    serials: list[str] = []
    try:
        assert result.exit_code == 0, result.output
        assert "provisioned 1000 devices" in result.output
        assert elapsed < PROVISION_BUDGET_S

        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        with out.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        serials = [row["serial"] for row in rows]
        assert len(rows) == 1000
        assert len(set(serials)) == 1000
        assert all(re.fullmatch(rf"{prefix}-[0-9a-f]{{10}}", s) for s in serials)
        assert {row["project_id"] for row in rows} == {str(project.id)}
        assert len({row["device_id"] for row in rows}) == 1000
        registered = conn.execute(
            "SELECT count(*) FROM devices WHERE project_id = %s AND model = 'L1'", (project.id,)
        ).fetchone()
        assert registered == (1000,)

        assert connack(settings, rows[500]["serial"], rows[500]["password"]) == 0
        assert connack(settings, rows[500]["serial"], "not-the-password") != 0

        again = cli(
            "devices", "provision", "--project", str(project.id), "--count", "1", "--out", str(out)
        )
        assert again.exit_code == 1
        assert "exists already" in again.stderr
        assert "--force" in again.stderr
        with out.open(newline="") as handle:
            assert len(list(csv.DictReader(handle))) == 1000  # untouched
    finally:
        # The suite's broker outlives this test's database: remove the identities.
        broker_admin.delete_devices(serials)


def test_device_lifecycle(
    cli: Any, project: Project, unique: str, tmp_path: Path, settings: Settings
) -> None:
    out = tmp_path / "one.csv"
    out.write_text("old content\n")
    out.chmod(0o644)
    result = cli(
        "devices",
        "provision",
        "--project",
        str(project.id),
        "--count",
        "2",
        "--prefix",
        f"life{unique}",
        "--out",
        str(out),
        "--force",
    )
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with out.open(newline="") as handle:
        first, _ = list(csv.DictReader(handle))

    listed = cli("devices", "list", "--project", str(project.id), "--q", f"life{unique}")
    assert first["serial"] in listed.output
    assert "total: 2" in listed.output

    rotated = cli("devices", "rotate", first["device_id"])
    assert rotated.exit_code == 0, rotated.output
    password = rotated.stdout.strip().splitlines()[-1]
    assert password != first["password"]
    assert connack(settings, first["serial"], password) == 0
    assert connack(settings, first["serial"], first["password"]) != 0

    revoked = cli("devices", "revoke", first["device_id"])
    assert revoked.exit_code == 0, revoked.output
    assert connack(settings, first["serial"], password) != 0
    rotated_again = cli("devices", "rotate", first["device_id"])
    assert rotated_again.exit_code == 1
    assert "revoked" in rotated_again.stderr

    missing = cli(
        "devices",
        "provision",
        "--project",
        "999999999",
        "--count",
        "1",
        "--out",
        str(tmp_path / "none.csv"),
    )
    assert missing.exit_code == 1
    assert "project 999999999 not found" in missing.stderr
    assert not (tmp_path / "none.csv").exists()


def test_devices_import_writes_the_credentials(
    cli: Any, project: Project, unique: str, tmp_path: Path, settings: Settings
) -> None:
    source = tmp_path / "devices.csv"
    source.write_text(
        f"serial,project_id,model\nimp-{unique}-1,{project.id},X\nimp-{unique}-2,{project.id},X\n"
    )
    out = tmp_path / "imported.csv"
    result = cli("devices", "import", str(source), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "provisioned 2 devices" in result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["serial"] for r in rows] == [f"imp-{unique}-1", f"imp-{unique}-2"]
    assert connack(settings, rows[0]["serial"], rows[0]["password"]) == 0

    again = cli("devices", "import", str(source), "--out", str(tmp_path / "again.csv"))
    assert again.exit_code == 1
    assert "line 2, serial:" in again.stderr
    assert not (tmp_path / "again.csv").exists()
