"""`fieldtrack report`, run in-process against a real API server (uvicorn in a thread) with
usage imported through the real ingest path."""

from __future__ import annotations

import csv
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner, Result

from services.cli import app
from services.core.topics import MessageKind
from services.ingest.history import HistoryImporter
from services.registry import upserts as registry
from tests.integration.conftest import Project, keys_of

LABELS = ("iterate / invest", "keep prudently", "cut candidate", "insufficient data", "too early")


@pytest.fixture
def cli(api_url: str, admin_token: str) -> Any:
    runner = CliRunner()

    def run(*args: str) -> Result:
        result = runner.invoke(
            app,
            ["report", *args],
            env={
                "FIELDTRACK_API_URL": api_url,
                "FIELDTRACK_API_TOKEN": admin_token,
                "COLUMNS": "200",
            },
        )
        assert "Traceback" not in result.output, result.output
        if result.exception is not None:
            assert isinstance(result.exception, SystemExit), repr(result.exception)
        return result

    return run


@pytest.fixture
def customer(conn: psycopg.Connection, project: Project, unique: str) -> dict[str, Any]:
    """The `project` fixture's customer with a second project, two more features (one
    planned, one used but never delivered) and a dozen devices reporting for four days."""
    key, planned, stray = project.feature_key, f"planned_{unique}", f"stray_{unique}"
    planned_id = registry.upsert_feature(conn, planned, f"Planned {unique}", "test", None)
    registry.upsert_delivery(
        conn,
        project.id,
        planned_id,
        status="planned",
        delivered_on=None,
        cost_person_days=1,
        contract_line_value=100,
        business_score=2,
        strategic=False,
    )
    second = registry.upsert_project(
        conn,
        project.customer_id,
        f"Second {unique}",
        contract_value=500,
        currency="EUR",
        go_live_date=None,
        status="live",
    )
    feature_id = conn.execute("SELECT id FROM features WHERE key = %s", (key,)).fetchone()
    assert feature_id is not None
    registry.upsert_delivery(
        conn,
        second,
        feature_id[0],
        status="delivered",
        delivered_on=None,
        cost_person_days=2,
        contract_line_value=300,
        business_score=4,
        strategic=True,
    )

    serials = [f"rep-{unique}-{i}" for i in range(12)]
    registry.provision_devices(conn, None, project.id, [(s, "m", "1.0") for s in serials])
    importer = HistoryImporter(conn)
    start = datetime.now(UTC) - timedelta(days=4)
    for i, serial in enumerate(serials):
        for hour in range(0, 96, 6):
            ts = (start + timedelta(hours=hour)).isoformat()
            events: list[dict[str, Any]] = (
                [{"feature": key, "count": 1 + hour % 3}] if i < 9 else []
            )
            if i == 0:
                events.append({"feature": stray, "count": 1})
            body: dict[str, Any] = {"v": 1, "seq": hour // 6, "ts": ts}  # consecutive
            if events:  # the others report telemetry only: reporting, not using
                body["events"] = events
            else:
                body["metrics"] = [{"name": "battery", "value": 90.0}]
            kind = MessageKind.USAGE if events else MessageKind.TELEMETRY
            importer.add(serial, kind, json.dumps(body).encode())
    assert importer.finish().quarantined == {}
    return {
        "name": f"Customer {unique}",
        "projects": [f"Project {unique}", f"Second {unique}"],
        "features": [key, planned, stray],
    }


def test_table_per_project(cli: Any, customer: dict[str, Any]) -> None:
    result = cli("--customer", customer["name"], "--window", "7d", "--audience", "internal")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert customer["name"] in out
    for project in customer["projects"]:
        assert project in out
    for key in customer["features"]:
        assert key in out
    assert any(label in out for label in LABELS), out
    assert "not delivered" in out  # the stray feature
    assert "planned" in out
    assert "confidence: medium" in out  # 12 devices over 7 days, every message received
    assert "12 of 12 devices reporting" in out
    assert "9/12 devices" in out  # adoption of the delivered feature
    assert "75%" in out


def test_case_of_the_name_may_differ(cli: Any, customer: dict[str, Any]) -> None:
    result = cli("--customer", customer["name"].upper())
    assert result.exit_code == 0, result.output
    assert customer["name"] in result.stdout


def test_csv_json_and_html_files(cli: Any, customer: dict[str, Any], tmp_path: Path) -> None:
    name = customer["name"]

    result = cli(
        "--customer",
        name,
        "--window",
        "30d",
        "--format",
        "csv",
        "--audience",
        "internal",
        "--out",
        str(tmp_path / "report.csv"),
    )
    assert result.exit_code == 0, result.output
    assert "report.csv" in result.stderr
    with (tmp_path / "report.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["customer"] for r in rows} == {name}
    assert {r["project"] for r in rows} == set(customer["projects"])
    assert {r["feature"] for r in rows} == set(customer["features"])
    assert all(r["since"] and r["until"] for r in rows)
    delivered = [r for r in rows if r["delivery_status"] == "delivered"]
    assert len(delivered) == 2
    assert all(r["recommendation"] for r in delivered)

    result = cli(
        "--customer",
        name,
        "--window",
        "90d",
        "--format",
        "json",
        "--audience",
        "internal",
        "--out",
        str(tmp_path / "report.json"),
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert data["customer"]["name"] == name
    assert data["window_days"] == 90
    since, until = datetime.fromisoformat(data["since"]), datetime.fromisoformat(data["until"])
    assert until - since == timedelta(days=90)
    assert [p["project"]["project_name"] for p in data["projects"]] == customer["projects"]
    first = data["projects"][0]
    assert first["coverage"]["devices_reporting"] == 12
    assert {f["feature_key"] for f in first["undelivered_usage"]} == {customer["features"][2]}

    result = cli(
        "--customer",
        name,
        "--format",
        "html",
        "--audience",
        "internal",
        "--out",
        str(tmp_path / "r.html"),
    )
    assert result.exit_code == 0, result.output
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert html.startswith("<!doctype html>")
    assert name in html
    for project in customer["projects"]:
        assert project in html
    for key in customer["features"]:
        assert key in html
    assert "<style>" in html
    assert not re.search(r"https?:", html, re.IGNORECASE), "the page refers to the network"
    assert not re.search(r"""(?:src|href)\s*=|@import|url\(|<link|<script""", html, re.I)


# What the customer's version must not say: written here, apart from the code.
INTERNAL_KEYS = {
    "recommendation",
    "explanation",
    "business_value",
    "user_value",
    "peers",
    "undelivered_usage",
    "tier",
    "lifecycle_stage",
    "contract_value",
    "rules",
}


def test_the_default_report_is_the_customer_version(
    cli: Any, customer: dict[str, Any], tmp_path: Path
) -> None:
    """Safe to send as it comes: no verdict, business value, tier, stage or undelivered use."""
    name, stray = customer["name"], customer["features"][2]
    table = cli("--customer", name, "--window", "7d")
    assert table.exit_code == 0, table.output
    assert "customer version" in table.stdout and "9/12 devices" in table.stdout
    assert not any(label in table.stdout for label in LABELS), table.stdout
    assert stray not in table.stdout and "tail tier" not in table.stdout

    result = cli("--customer", name, "--format", "csv", "--out", str(tmp_path / "c.csv"))
    assert result.exit_code == 0, result.output
    with (tmp_path / "c.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and not set(rows[0]) & INTERNAL_KEYS and "adoption_high" in rows[0]
    assert stray not in {r["feature"] for r in rows}

    data = json.loads(cli("--customer", name, "--format", "json").stdout)
    assert data["audience"] == "customer" and not keys_of(data) & INTERNAL_KEYS

    result = cli("--customer", name, "--format", "html", "--out", str(tmp_path / "c.html"))
    page = (tmp_path / "c.html").read_text(encoding="utf-8")
    assert "customer version" in page and stray not in page
    assert not any(label in page for label in LABELS)


def test_json_to_standard_output(cli: Any, customer: dict[str, Any]) -> None:
    result = cli("--customer", customer["name"], "--format", "json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["projects"]) == 2


def test_html_escapes_what_it_shows(
    cli: Any, conn: psycopg.Connection, unique: str, tmp_path: Path
) -> None:
    name = f"Müller & <Söhne> {unique}"
    registry.upsert_customer(conn, name, "tail", "retail", "onboarding")
    result = cli("--customer", name, "--format", "html", "--out", str(tmp_path / "r.html"))
    assert result.exit_code == 0, result.output
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert f"Müller &amp; &lt;Söhne&gt; {unique}" in html
    assert "<Söhne>" not in html
    assert "no projects yet" in html


def test_unknown_customer_is_a_clear_error(cli: Any, unique: str) -> None:
    result = cli("--customer", f"Nobody {unique}")
    assert result.exit_code == 1
    assert f"error: no customer is named 'Nobody {unique}'" in result.stderr
    assert result.stdout == ""


def test_similar_names_are_suggested(cli: Any, customer: dict[str, Any]) -> None:
    result = cli("--customer", customer["name"][:-2])
    assert result.exit_code == 1
    assert "did you mean" in result.stderr
    assert customer["name"] in result.stderr


def test_several_matches_are_an_error(cli: Any, conn: psycopg.Connection, unique: str) -> None:
    registry.upsert_customer(conn, f"Twin {unique}", "tail", "retail", "onboarding")
    registry.upsert_customer(conn, f"TWIN {unique}", "tail", "retail", "onboarding")
    result = cli("--customer", f"twin {unique}")
    assert result.exit_code == 1
    assert "several customers are named" in result.stderr
    assert f"Twin {unique}" in result.stderr
    assert f"TWIN {unique}" in result.stderr
    exact = cli("--customer", f"Twin {unique}")  # the exact name settles it
    assert exact.exit_code == 0, exact.output


@pytest.mark.parametrize("window", ["3w", "0d", "401d", "d", "-5d", "30"])
def test_bad_window_is_an_error(cli: Any, window: str) -> None:
    result = cli("--customer", "whoever", "--window", window)
    assert result.exit_code == 1
    assert "error: --window" in result.stderr


def test_unreachable_api_is_an_error(unique: str) -> None:
    result = CliRunner().invoke(
        app,
        ["report", "--customer", f"Anyone {unique}"],
        env={"FIELDTRACK_API_URL": "http://127.0.0.1:9", "FIELDTRACK_API_TOKEN": None},
    )
    assert result.exit_code == 1
    assert "error: the API is not reachable" in result.stderr
