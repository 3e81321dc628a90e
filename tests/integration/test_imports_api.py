"""CSV imports through the API: every row lands, or none does. History imports: every line
reported, no input a 500."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.api.background import serve_in_thread
from services.core.migrate import migrate
from services.core.settings import Settings
from services.infra.local import LocalServices
from services.ingest.history import HISTORY_BATCH
from services.registry import upserts as registry
from tests.integration.conftest import mint_token, scratch_database, wait_for

CSV = {"content-type": "text/csv"}
MAX_BIGINT = 2**63 - 1


def expect(response: httpx.Response, status: int) -> Any:
    assert response.status_code < 500, f"server error: {response.text}"
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: expected {status}, "
        f"got {response.status_code}: {response.text}"
    )
    return response.json() if "json" in response.headers.get("content-type", "") else None


def post_csv(api: TestClient, url: str, text: str) -> httpx.Response:
    response: httpx.Response = api.post(url, content=text.encode(), headers=CSV)
    return response


def rejected(response: httpx.Response) -> list[tuple[int, str | None]]:
    """(row, field) of each error of a refused import."""
    body = expect(response, 422)
    assert "nothing was imported" in body["detail"], body
    assert body["errors"], body
    return [(e["row"], e["field"]) for e in body["errors"]]


def count(conn: psycopg.Connection, query: str, *params: Any) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def create(api: TestClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post(url, json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def fetch(api: TestClient, url: str) -> dict[str, Any]:
    response = api.get(url)
    assert response.status_code == 200, response.text
    item: dict[str, Any] = response.json()
    return item


# --- customers --------------------------------------------------------------------------------


def test_customers_import_creates_every_row(
    api: TestClient, conn: psycopg.Connection, unique: str
) -> None:
    text = (
        "name,tier,industry,lifecycle_stage\r\n"
        f"imp {unique} a,head,retail,\r\n"
        f'"imp {unique} b, Inc.",tail,energy,renewal\r\n'
    )
    report = expect(post_csv(api, "/imports/customers", text), 201)
    assert report["created"] == 2 and len(report["ids"]) == 2
    a, b = (fetch(api, f"/customers/{i}") for i in report["ids"])
    assert (a["name"], a["tier"], a["industry"], a["lifecycle_stage"]) == (
        f"imp {unique} a",
        "head",
        "retail",
        "onboarding",
    )
    assert (b["name"], b["tier"], b["industry"], b["lifecycle_stage"]) == (
        f"imp {unique} b, Inc.",
        "tail",
        "energy",
        "renewal",
    )
    assert count(conn, "SELECT count(*) FROM customers WHERE name LIKE %s", f"imp {unique} %") == 2


def test_customers_import_with_one_invalid_row_imports_nothing(
    api: TestClient, conn: psycopg.Connection, unique: str
) -> None:
    text = (
        "name,tier,industry\n"
        f"bad {unique} 1,head,retail\n"
        f"bad {unique} 2,gold,retail\n"
        f"bad {unique} 3,tail,retail\n"
    )
    errors = rejected(post_csv(api, "/imports/customers", text))
    assert count(conn, "SELECT count(*) FROM customers WHERE name LIKE %s", f"bad {unique} %") == 0
    # the refused row is named, with the field to fix
    assert errors == [(3, "tier")]


def test_customers_import_reports_every_bad_row_and_field(
    api: TestClient, conn: psycopg.Connection, unique: str
) -> None:
    long_name = "n" * 201
    text = (
        "name,tier,industry,lifecycle_stage\n"
        f"many {unique} 1,head,retail,adoption\n"
        f"{long_name},head,retail,\n"
        f"many {unique} 3,head,,\n"
        f"many {unique} 4,head,retail,churned\n"
        f"many {unique} 5,waist,retail,\n"
    )
    errors = rejected(post_csv(api, "/imports/customers", text))
    assert sorted(errors) == [(3, "name"), (4, "industry"), (5, "lifecycle_stage")]
    assert count(conn, "SELECT count(*) FROM customers WHERE name LIKE %s", f"many {unique} %") == 0


def test_customers_import_is_all_or_nothing_when_the_database_refuses_a_row(
    api: TestClient, conn: psycopg.Connection, unique: str
) -> None:
    """Rows 2 and 3 are inserted before row 4 repeats row 2's name: all are rolled back."""
    text = (
        "name,tier,industry\n"
        f"atom {unique} 1,head,retail\n"
        f"atom {unique} 2,head,retail\n"
        f"atom {unique} 1,tail,energy\n"
    )
    errors = rejected(post_csv(api, "/imports/customers", text))
    assert count(conn, "SELECT count(*) FROM customers WHERE name LIKE %s", f"atom {unique} %") == 0
    # the refused row is named, with the field to fix
    assert errors == [(4, "name")]


def test_customers_import_clashing_with_an_existing_customer_imports_nothing(
    api: TestClient, conn: psycopg.Connection, unique: str
) -> None:
    create(api, "/customers", {"name": f"exists {unique}", "tier": "head", "industry": "x"})
    text = f"name,tier,industry\nnew {unique},head,retail\nexists {unique},head,retail\n"
    errors = rejected(post_csv(api, "/imports/customers", text))
    assert count(conn, "SELECT count(*) FROM customers WHERE name = %s", f"new {unique}") == 0
    # the refused row is named, with the field to fix
    assert errors == [(3, "name")]


@pytest.mark.parametrize(
    "text",
    [
        "\n",
        "name,tier,industry\n",  # a header and no rows
        "name,tier,industry,colour\nx,head,retail,red\n",  # unknown column
        "name,tier,industy\nx,head,retail\n",  # a typo is an unknown column too
        "id,name,tier,industry\n1,x,head,retail\n",  # ids are not imported
        "\r0",  # a lone CR: once a 500 (csv.Error), found by schemathesis
    ],
    ids=["blank-line", "header-only", "unknown-column", "typo", "id-column", "lone-cr"],
)
def test_unusable_files_are_422_at_line_1(api: TestClient, text: str) -> None:
    errors = rejected(post_csv(api, "/imports/customers", text))
    assert errors[0][0] == 1


def test_a_file_the_csv_module_cannot_read_is_422(api: TestClient) -> None:
    text = "name,tier,industry\n" + "x" * 200_000 + ",head,retail\n"  # a cell over csv's limit
    body = expect(post_csv(api, "/imports/customers", text), 422)
    assert "not readable as CSV" in body["errors"][0]["message"], body


def test_old_mac_line_endings_import(api: TestClient, unique: str) -> None:
    text = f"name,tier,industry\rcr {unique},head,retail\r"
    assert expect(post_csv(api, "/imports/customers", text), 201)["created"] == 1


@pytest.mark.parametrize("url", ["/imports/customers", "/imports/projects", "/devices/import"])
def test_empty_file_is_422(api: TestClient, url: str) -> None:
    expect(post_csv(api, url, ""), 422)


def test_unknown_column_is_named(api: TestClient, unique: str) -> None:
    text = f"name,tier,industry,colour\nuc {unique},head,retail,red\n"
    body = expect(post_csv(api, "/imports/customers", text), 422)
    assert "colour" in body["errors"][0]["message"]
    assert expect(api.get("/customers", params={"q": f"uc {unique}"}), 200)["total"] == 0


def test_row_with_too_many_cells_is_named(
    api: TestClient, conn: psycopg.Connection, unique: str
) -> None:
    text = f"name,tier,industry\ncells {unique} 1,head,retail\ncells {unique} 2,head,retail,extra\n"
    assert rejected(post_csv(api, "/imports/customers", text)) == [(3, None)]
    assert (
        count(conn, "SELECT count(*) FROM customers WHERE name LIKE %s", f"cells {unique} %") == 0
    )


def test_unknown_import_kind_is_422(api: TestClient) -> None:
    for kind in ("widgets", "devices"):
        expect(post_csv(api, f"/imports/{kind}", "name\nx\n"), 422)


# --- projects --------------------------------------------------------------------------------


def test_projects_import_by_customer_name_or_id(
    api: TestClient, conn: psycopg.Connection, unique: str
) -> None:
    named = create(api, "/customers", {"name": f"Acme, {unique}", "tier": "head", "industry": "x"})
    other = create(api, "/customers", {"name": f"other {unique}", "tier": "tail", "industry": "x"})
    text = (
        "customer,customer_id,name,contract_value,currency,go_live_date,status,retention_days\n"
        f'"Acme, {unique}",,p {unique} 1,1000.50,USD,2026-05-01,live,90\n'
        f",{other['id']},p {unique} 2,,,,,\n"
    )
    report = expect(post_csv(api, "/imports/projects", text), 201)
    assert report["created"] == 2
    first, second = (fetch(api, f"/projects/{i}") for i in report["ids"])
    assert (first["customer_id"], first["name"]) == (named["id"], f"p {unique} 1")
    assert Decimal(str(first["contract_value"])) == Decimal("1000.50")
    assert (first["currency"], first["go_live_date"], first["status"]) == (
        "USD",
        "2026-05-01",
        "live",
    )
    assert first["retention_days"] == 90
    assert (second["customer_id"], second["currency"], second["status"]) == (
        other["id"],
        "EUR",
        "delivering",
    )
    assert second["contract_value"] is None


def test_projects_import_with_an_unknown_customer_imports_nothing(
    api: TestClient, conn: psycopg.Connection, unique: str
) -> None:
    create(api, "/customers", {"name": f"known {unique}", "tier": "head", "industry": "x"})
    text = (
        "customer,name\n"
        f"known {unique},pu {unique} 1\n"
        f"unknown {unique},pu {unique} 2\n"
        f"known {unique},pu {unique} 3\n"
    )
    errors = rejected(post_csv(api, "/imports/projects", text))
    assert count(conn, "SELECT count(*) FROM projects WHERE name LIKE %s", f"pu {unique} %") == 0
    # the refused row is named, with the field to fix
    assert errors == [(3, "customer")]


def test_projects_import_with_an_unknown_customer_id_imports_nothing(
    api: TestClient, conn: psycopg.Connection, unique: str
) -> None:
    known = create(api, "/customers", {"name": f"kid {unique}", "tier": "head", "industry": "x"})
    text = f"customer_id,name\n{known['id']},pi {unique} 1\n{MAX_BIGINT},pi {unique} 2\n"
    errors = rejected(post_csv(api, "/imports/projects", text))
    assert count(conn, "SELECT count(*) FROM projects WHERE name LIKE %s", f"pi {unique} %") == 0
    # the refused row is named, with the field to fix
    assert errors == [(3, "customer_id")]


def test_projects_import_is_all_or_nothing_on_a_duplicate(
    api: TestClient, conn: psycopg.Connection, unique: str
) -> None:
    create(api, "/customers", {"name": f"dupc {unique}", "tier": "head", "industry": "x"})
    text = (
        "customer,name,contract_value\n"
        f"dupc {unique},pd {unique} 1,10\n"
        f"dupc {unique},pd {unique} 2,-5\n"
        f"dupc {unique},pd {unique} 3,1.234\n"
    )
    assert rejected(post_csv(api, "/imports/projects", text)) == [
        (3, "contract_value"),
        (4, "contract_value"),
    ]
    text = f"customer,name\ndupc {unique},pd {unique} 1\ndupc {unique},pd {unique} 1\n"
    assert [row for row, _ in rejected(post_csv(api, "/imports/projects", text))] == [3]
    assert count(conn, "SELECT count(*) FROM projects WHERE name LIKE %s", f"pd {unique} %") == 0


# --- features ---------------------------------------------------------------------------------


def test_features_import_takes_each_column(api: TestClient, unique: str) -> None:
    text = (
        "key,name,product_line,description,kind\n"
        f'fi_{unique}_a,Remote unlock,locks,"opens, remotely",interactive\n'
        f"fi_{unique}_b,Energy report,energy,,\n"
        f"fi_{unique}_c,Tamper alerts,security,,standing\n"
    )
    report = expect(post_csv(api, "/imports/features", text), 201)
    assert report["created"] == 3
    a, b, c = (fetch(api, f"/features/{i}") for i in report["ids"])
    assert (a["key"], a["name"], a["product_line"], a["description"], a["kind"]) == (
        f"fi_{unique}_a",
        "Remote unlock",
        "locks",
        "opens, remotely",
        "interactive",
    )
    assert (b["key"], b["description"], b["kind"]) == (f"fi_{unique}_b", None, "interactive")
    assert c["kind"] == "standing"


def test_features_import_with_a_bad_key_or_usage_definitions_imports_nothing(
    api: TestClient, conn: psycopg.Connection, unique: str
) -> None:
    """Usage definitions were accepted and never applied: a file that still has them is
    refused, naming the column, rather than imported with them ignored."""
    text = f"key,name,usage_events\nfb_{unique}_a,A,\nFb {unique},B,\nfb_{unique}_c,C,ok;other\n"
    errors = rejected(post_csv(api, "/imports/features", text))
    assert errors[0] == (3, "key")
    assert errors[1][0] == 4 and (errors[1][1] or "").startswith("usage_events")
    assert count(conn, "SELECT count(*) FROM features WHERE key LIKE %s", f"fb\\_{unique}%") == 0


def test_features_import_with_an_existing_key_imports_nothing(
    api: TestClient, conn: psycopg.Connection, unique: str
) -> None:
    create(api, "/features", {"key": f"fe_{unique}_old", "name": "Old"})
    text = f"key,name\nfe_{unique}_new,New\nfe_{unique}_old,Again\n"
    errors = rejected(post_csv(api, "/imports/features", text))
    assert count(conn, "SELECT count(*) FROM features WHERE key = %s", f"fe_{unique}_new") == 0
    # the refused row is named, with the field to fix
    assert errors == [(3, "key")]


# --- deliveries -------------------------------------------------------------------------------


@pytest.fixture
def catalog(api: TestClient, unique: str) -> dict[str, Any]:
    """A customer's project and three features to deliver to it."""
    customer = create(api, "/customers", {"name": f"cat {unique}", "tier": "head", "industry": "x"})
    project = create(api, "/projects", {"customer_id": customer["id"], "name": f"cat {unique}"})
    features = [
        create(api, "/features", {"key": f"cat_{unique}_{i}", "name": f"F{i}"}) for i in range(3)
    ]
    return {"project": project, "features": features}


def test_deliveries_import_by_feature_key_or_id(api: TestClient, catalog: dict[str, Any]) -> None:
    pid = catalog["project"]["id"]
    f0, f1, _ = catalog["features"]
    text = (
        "project_id,feature_key,feature_id,status,delivered_on,cost_person_days,"
        "contract_line_value,business_score,strategic,notes\n"
        f'{pid},{f0["key"]},,planned,2026-04-01,2.5,1200,4,true,"pilot; then roll-out"\n'
        f"{pid},,{f1['id']},,,,,,,\n"
    )
    report = expect(post_csv(api, "/imports/deliveries", text), 201)
    assert report["created"] == 2
    first, second = (fetch(api, f"/deliveries/{i}") for i in report["ids"])
    assert (first["project_id"], first["feature_id"], first["feature_key"]) == (
        pid,
        f0["id"],
        f0["key"],
    )
    assert (first["status"], first["delivered_on"], first["business_score"]) == (
        "planned",
        "2026-04-01",
        4,
    )
    assert Decimal(str(first["cost_person_days"])) == Decimal("2.5")
    assert Decimal(str(first["contract_line_value"])) == Decimal(1200)
    assert (first["strategic"], first["notes"]) == (True, "pilot; then roll-out")
    assert (second["feature_id"], second["status"], second["strategic"]) == (
        f1["id"],
        "delivered",
        False,
    )
    listed = expect(api.get("/deliveries", params={"project_id": pid}), 200)
    assert listed["total"] == 2


def test_deliveries_import_with_an_unknown_feature_key_imports_nothing(
    api: TestClient, conn: psycopg.Connection, catalog: dict[str, Any], unique: str
) -> None:
    pid = catalog["project"]["id"]
    text = (
        f"project_id,feature_key\n{pid},{catalog['features'][0]['key']}\n{pid},missing_{unique}\n"
    )
    errors = rejected(post_csv(api, "/imports/deliveries", text))
    assert count(conn, "SELECT count(*) FROM deliveries WHERE project_id = %s", pid) == 0
    # the refused row is named, with the field to fix
    assert errors == [(3, "feature_key")]


@pytest.mark.parametrize(
    ("cells", "field"),
    [
        ("business_score=6", "business_score"),
        ("strategic=perhaps", "strategic"),
        ("status=shipped", "status"),
        ("project_id=0", "project_id"),
        (f"project_id={MAX_BIGINT}", "project_id"),
    ],
)
def test_deliveries_import_with_one_bad_row_imports_nothing(
    api: TestClient, conn: psycopg.Connection, catalog: dict[str, Any], cells: str, field: str
) -> None:
    pid = catalog["project"]["id"]
    keys = [f["key"] for f in catalog["features"]]
    column, value = cells.split("=")
    rows = [{column: "", "project_id": str(pid), "feature_key": k} for k in keys]
    rows[1][column] = value
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    assert rejected(post_csv(api, "/imports/deliveries", out.getvalue())) == [(3, field)]
    assert count(conn, "SELECT count(*) FROM deliveries WHERE project_id = %s", pid) == 0


def test_deliveries_import_repeating_a_delivery_imports_nothing(
    api: TestClient, conn: psycopg.Connection, catalog: dict[str, Any]
) -> None:
    pid = catalog["project"]["id"]
    f0, f1, _ = (f["key"] for f in catalog["features"])
    text = f"project_id,feature_key\n{pid},{f0}\n{pid},{f1}\n{pid},{f0}\n"
    assert [row for row, _ in rejected(post_csv(api, "/imports/deliveries", text))] == [4]
    assert count(conn, "SELECT count(*) FROM deliveries WHERE project_id = %s", pid) == 0


# --- devices ----------------------------------------------------------------------------------


def read_credentials(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code < 500, response.text
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers.get("cache-control") == "no-store"
    reader = csv.DictReader(io.StringIO(response.text))
    assert reader.fieldnames == ["serial", "password", "project_id", "device_id"]
    return list(reader)


def serials_in_db(conn: psycopg.Connection, serials: list[str]) -> list[str]:
    rows = conn.execute("SELECT serial FROM devices WHERE serial = ANY(%s)", (serials,))
    return sorted(r[0] for r in rows)


def test_devices_import_returns_credentials_once(
    api: TestClient,
    conn: psycopg.Connection,
    catalog: dict[str, Any],
    mqtt_login: Callable[[str, str], bool],
    unique: str,
) -> None:
    pid = catalog["project"]["id"]
    serials = [f"di-{unique}-{i}" for i in range(3)]
    text = (
        "serial,project_id,model,firmware,site,tags\n"
        f'{serials[0]},{pid},LCK-2,1.0,"Dock 1, north",eu;pilot\n'
        f"{serials[1]},{pid},,,,\n"
        f"{serials[2]},{pid},LCK-3,2.0,,eu\n"
    )
    credentials = read_credentials(post_csv(api, "/devices/import", text))
    assert [c["serial"] for c in credentials] == serials
    assert all(c["project_id"] == str(pid) for c in credentials)
    assert len({c["password"] for c in credentials}) == 3
    assert serials_in_db(conn, serials) == sorted(serials)

    devices = [fetch(api, f"/devices/{c['device_id']}") for c in credentials]
    assert [d["serial"] for d in devices] == serials
    assert (devices[0]["model"], devices[0]["site"], devices[0]["tags"]) == (
        "LCK-2",
        "Dock 1, north",
        ["eu", "pilot"],
    )
    assert (devices[1]["model"], devices[1]["tags"], devices[1]["status"]) == (None, [], "active")
    assert devices[2]["tags"] == ["eu"]
    for device, credential in zip(devices, credentials, strict=True):
        assert credential["password"] not in str(device)
    assert mqtt_login(serials[0], credentials[0]["password"])
    assert not mqtt_login(serials[0], credentials[1]["password"])


def test_devices_import_with_a_repeated_serial_creates_nothing(
    api: TestClient, conn: psycopg.Connection, catalog: dict[str, Any], unique: str
) -> None:
    pid = catalog["project"]["id"]
    serials = [f"dd-{unique}-1", f"dd-{unique}-2", f"dd-{unique}-1"]
    text = "serial,project_id\n" + "".join(f"{s},{pid}\n" for s in serials)
    assert rejected(post_csv(api, "/devices/import", text)) == [(4, "serial")]
    assert serials_in_db(conn, serials) == []


def test_devices_import_with_an_existing_serial_creates_nothing(
    api: TestClient, conn: psycopg.Connection, catalog: dict[str, Any], unique: str
) -> None:
    pid = catalog["project"]["id"]
    create(api, "/devices", {"serial": f"dx-{unique}-old", "project_id": pid})
    text = f"serial,project_id\ndx-{unique}-new,{pid}\ndx-{unique}-old,{pid}\n"
    assert rejected(post_csv(api, "/devices/import", text)) == [(3, "serial")]
    assert serials_in_db(conn, [f"dx-{unique}-new"]) == []


def test_devices_import_with_bad_rows_names_each_and_creates_nothing(
    api: TestClient, conn: psycopg.Connection, catalog: dict[str, Any], unique: str
) -> None:
    pid = catalog["project"]["id"]
    text = (
        "serial,project_id,tags\n"
        f"db-{unique}-1,{pid},\n"
        f"db-{unique}-2,{MAX_BIGINT},\n"
        f"bad serial {unique},{pid},\n"
        f"db-{unique}-4,{pid},{'t' * 65}\n"
    )
    errors = rejected(post_csv(api, "/devices/import", text))
    assert errors[0] == (3, "project_id")
    assert errors[1] == (4, "serial")
    assert errors[2][0] == 5 and (errors[2][1] or "").startswith("tags")
    assert serials_in_db(conn, [f"db-{unique}-{i}" for i in (1, 2, 4)]) == []


@pytest.mark.parametrize(
    "text", ["\n", "serial,project_id\n", "serial,project_id,password\nx,1,secret\n"]
)
def test_devices_import_of_an_unusable_file_is_422(api: TestClient, text: str) -> None:
    assert rejected(post_csv(api, "/devices/import", text))[0][0] == 1


def test_file_that_is_not_utf8_is_422(
    api: TestClient, conn: psycopg.Connection, unique: str
) -> None:
    """A spreadsheet saved as Latin-1 is refused as such, not with a server error."""
    text = f"name,tier,industry\ncaf\xe9 {unique},head,retail\n".encode("latin-1")
    expect(api.post("/imports/customers", content=text, headers=CSV), 422)
    assert count(conn, "SELECT count(*) FROM customers WHERE name LIKE %s", f"caf% {unique}") == 0


def test_nul_character_in_a_cell_is_422_naming_the_field(
    api: TestClient, conn: psycopg.Connection, unique: str
) -> None:
    text = f"name,tier,industry\nnul {unique} 1,head,retail\nnul {unique} 2,head,re\x00tail\n"
    assert rejected(post_csv(api, "/imports/customers", text)) == [(3, "industry")]
    assert count(conn, "SELECT count(*) FROM customers WHERE name LIKE %s", f"nul {unique} %") == 0


# --- history (issue 22, finding 6) ---------------------------------------------------------

NDJSON = {"content-type": "application/x-ndjson"}
Ranges = list[tuple[int, int, str, str | None]]


def history_device(conn: psycopg.Connection, name: str) -> tuple[int, str]:
    """A project with one device in the registry (history needs no broker account)."""
    customer = registry.upsert_customer(conn, name, "tail", "retail", "adoption")
    terms: dict[str, Any] = {"contract_value": None, "currency": "EUR", "status": "live"}
    project = registry.upsert_project(conn, customer, name, go_live_date=None, **terms)
    serial = name.replace(" ", "-")
    registry.provision_devices(conn, None, project, [(serial, "T1", "1.0")])
    return project, serial


@pytest.fixture
def history_project(conn: psycopg.Connection, unique: str) -> tuple[int, str]:
    return history_device(conn, f"hist {unique}")


def ranges(report: dict[str, Any]) -> Ranges:
    """(first, last, outcome, reason) of each range of lines the report lists."""
    return [(r["first"], r["last"], r["outcome"], r["reason"]) for r in report["lines"]]


def stored_readings(conn: psycopg.Connection, serial: str) -> list[tuple[Any, ...]]:
    """(kind, seq, name, amount) of a device's stored readings, by seq and reading index."""
    return [
        tuple(row)
        for row in conn.execute(
            """SELECT 'usage', u.seq, u.feature_key, u.count::float8, u.item FROM usage_events u
               JOIN devices d ON d.id = u.device_id WHERE d.serial = %(s)s
               UNION ALL
               SELECT 'telemetry', m.seq, m.name, m.value, m.item FROM metric_samples m
               JOIN devices d ON d.id = m.device_id WHERE d.serial = %(s)s
               ORDER BY 2, 5""",
            {"s": serial},
        )
    ]


def history_ts(minutes: int = 0) -> str:
    moment = (
        datetime.now(UTC).replace(microsecond=0) - timedelta(days=2) + timedelta(minutes=minutes)
    )
    return moment.isoformat().replace("+00:00", "Z")


def test_history_csv_rows_of_one_message_need_not_be_consecutive(
    api: TestClient, conn: psycopg.Connection, history_project: tuple[int, str]
) -> None:
    """A file sorted by feature once made one message of each run of consecutive rows: the
    second part of a message then collided with the first and its readings were dropped as
    duplicates. The rows of a message are its rows wherever they are; every line is
    reported."""
    _, serial = history_project
    t1, t2, t3 = history_ts(1), history_ts(2), history_ts(3)
    text = (
        "device,kind,seq,ts,feature,count,duration_ms,metric,value,unit\n"  # 1
        f"{serial},usage,1,{t1},alpha,1,,,,\n"  # 2
        f"{serial},usage,2,{t2},alpha,2,,,,\n"  # 3
        f"{serial},telemetry,3,{t3},,,,battery,80,%\n"  # 4
        f"{serial},usage,1,{t1},beta,3,,,,\n"  # 5
        "\n"  # 6
        f"{serial},usage,2,{t2},beta,4,,,,\n"  # 7
        f"{serial},telemetry,3,{t3},,,,rssi,-70,dBm\n"  # 8
        f"{serial},usage,x,{t3},gamma,1,,,,\n"  # 9: not a number
    )
    # each message's readings in the order of their lines
    readings = [
        ("usage", 1, "alpha", 1.0, 0),
        ("usage", 1, "beta", 3.0, 1),
        ("usage", 2, "alpha", 2.0, 0),
        ("usage", 2, "beta", 4.0, 1),
        ("telemetry", 3, "battery", 80.0, 0),
        ("telemetry", 3, "rssi", -70.0, 1),
    ]
    report = expect(post_csv(api, "/imports/history", text), 201)
    assert stored_readings(conn, serial) == readings
    assert (report["messages"], report["usage_rows"], report["metric_rows"]) == (4, 4, 2)
    assert report["duplicates"] == 0
    assert report["complete"] is True and report["lines_read"] == 9
    assert ranges(report) == [
        (1, 1, "header", None),
        (2, 5, "stored", None),
        (6, 6, "blank", None),
        (7, 8, "stored", None),
        (9, 9, "quarantined", "invalid_payload"),
    ]
    assert "seq" in report["lines"][-1]["detail"]

    again = expect(post_csv(api, "/imports/history", text), 201)
    assert stored_readings(conn, serial) == readings
    assert (again["usage_rows"], again["metric_rows"], again["duplicates"]) == (0, 0, 6)
    assert ranges(again) == [
        (1, 1, "header", None),
        (2, 5, "duplicate", None),
        (6, 6, "blank", None),
        (7, 8, "duplicate", None),
        (9, 9, "quarantined", "invalid_payload"),
    ]
    # the refused message, quarantined by both imports: one row, counted twice
    quarantined = conn.execute(
        "SELECT count(*), sum(copies), min(detail) FROM quarantine WHERE device_serial = %s",
        (serial,),
    ).fetchone()
    assert quarantined is not None and quarantined[:2] == (1, 2)
    assert quarantined[2].startswith("line 9: ")


def test_history_csv_rows_of_one_message_group_by_value_not_spelling(
    api: TestClient, conn: psycopg.Connection, history_project: tuple[int, str]
) -> None:
    """seq `7` and `07`, ts in `Z` and in `+00:00`: the same message, one of each reading (not
    a second message whose readings are dropped as duplicates)."""
    _, serial = history_project
    z = history_ts(7)
    offset = z.replace("Z", "+00:00")
    local = (datetime.fromisoformat(offset).astimezone(timezone(timedelta(hours=2)))).isoformat()
    text = (
        "device,kind,seq,ts,feature,count,duration_ms,metric,value,unit\n"
        f"{serial},usage,7,{z},alpha,1,,,,\n"
        f"{serial},usage,07,{offset},beta,2,,,,\n"
        f"{serial},usage,7,{local},gamma,3,,,,\n"
    )
    report = expect(post_csv(api, "/imports/history", text), 201)
    assert (report["messages"], report["usage_rows"], report["duplicates"]) == (1, 3, 0)
    assert stored_readings(conn, serial) == [
        ("usage", 7, "alpha", 1.0, 0),
        ("usage", 7, "beta", 2.0, 1),
        ("usage", 7, "gamma", 3.0, 2),
    ]


def test_history_ndjson_reports_every_line_and_deep_nesting_is_no_500(
    api: TestClient, conn: psycopg.Connection, history_project: tuple[int, str]
) -> None:
    """A line of 100,000 `[` raised RecursionError: a 500 after the batches before it were
    committed. Now it is a quarantined line like any other, and the report says what became
    of each line."""
    _, serial = history_project

    def message(seq: int, **extra: object) -> str:
        body = {
            "device": serial,
            "kind": "usage",
            "seq": seq,
            "ts": history_ts(seq),
            "events": [{"feature": "alpha", "count": seq}],
            **extra,
        }
        return json.dumps(body)

    future = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    lines = [
        message(1),
        message(2),
        "",
        message(1),
        "[" * 100_000,
        message(3),
        message(5, ts=future),
        "not json",
        message(4),
        "{" * 100_000,
    ]
    response = api.post("/imports/history", content="\n".join(lines) + "\n", headers=NDJSON)
    report = expect(response, 201)
    assert ranges(report) == [
        (1, 2, "stored", None),
        (3, 3, "blank", None),
        (4, 4, "duplicate", None),
        (5, 5, "quarantined", "invalid_payload"),
        (6, 6, "stored", None),
        (7, 7, "quarantined", "future_timestamp"),
        (8, 8, "quarantined", "invalid_payload"),
        (9, 9, "stored", None),
        (10, 10, "quarantined", "invalid_payload"),
    ]
    assert "nested too deeply" in report["lines"][3]["detail"]
    assert report["complete"] is True and report["lines_read"] == 10
    assert report["quarantined"] == {"invalid_payload": 3, "future_timestamp": 1}
    assert [seq for _, seq, *_ in stored_readings(conn, serial)] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("csv", b"device,kind,seq,ts\n" + b"\x00,\xff\xfe,\r,\r\n" * 3),
        ("csv", b'device,kind,seq,ts,boot\nd,usage,1,2026-01-01T00:00:00Z,"\n\n"\n,,,,\n'),
        ("csv", b"device,kind,seq,ts\r\n" + b",".join([b"9" * 5000] * 4) + b"\n"),
        ("ndjson", b'{"device":"d","kind":"usage","seq":' + b"9" * 5000 + b"}\n"),
        ("ndjson", b'\n\n{"device":"\\u0000","kind":"usage"}\r\n[]\n{"kind":{}}\n\x00\xff'),
        ("ndjson", b'{"device":"d","kind":"usage","events":' + b"[" * 990 + b"]" * 990 + b"}"),
        # json.loads lets lone surrogates through; PostgreSQL text cannot hold them
        (
            "ndjson",
            b'{"device":"\\ud800","kind":"usage","seq":1,"ts":"2026-01-01T00:00:00Z",'
            b'"events":[{"feature":"a"}]}\n{"device":"d","kind":"usage","seq":"\\udfff"}',
        ),
    ],
    ids=[
        "nul-and-binary",
        "quoted-newlines",
        "huge-numbers",
        "huge-seq",
        "odd-lines",
        "deep",
        "lone-surrogates",
    ],
)
def test_no_history_input_makes_a_500_and_every_line_is_reported(
    api: TestClient, kind: str, body: bytes
) -> None:
    headers = CSV if kind == "csv" else NDJSON
    report = expect(api.post("/imports/history", content=body, headers=headers), 201)
    covered = [line for r in report["lines"] for line in range(r["first"], r["last"] + 1)]
    assert covered == list(range(1, report["lines_read"] + 1)), report["lines"]
    assert "not_imported" not in {r["outcome"] for r in report["lines"]}


def test_a_history_import_the_database_stops_says_what_it_committed(
    local_services: LocalServices, settings: Settings, unique: str
) -> None:
    """Messages are committed batch by batch: when the database goes away in the middle of an
    import, the answer is the report of what was committed, line by line (not a bare 500),
    and importing the file again stores the rest and nothing twice."""
    app_url = settings.database_url.get_secret_value()
    with scratch_database(local_services, app_url, "fieldtrack_import_stop") as url:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            _, serial = history_device(conn, f"stop {unique}")
        scratch = settings.model_copy(update={"database_url": SecretStr(url)})
        headers = {**NDJSON, "Authorization": f"Bearer {mint_token(url)}"}
        total = HISTORY_BATCH + 10
        lines = [
            json.dumps(
                {
                    "device": serial,
                    "kind": "usage",
                    "seq": seq,
                    "ts": history_ts(),
                    "events": [{"feature": "alpha"}],
                }
            )
            + "\n"
            for seq in range(total)
        ]

        def stored(watcher: psycopg.Connection) -> int:
            row = watcher.execute("SELECT count(*) FROM usage_events").fetchone()
            return int(row[0]) if row else 0

        with serve_in_thread(scratch) as base, psycopg.connect(url, autocommit=True) as watcher:

            def body() -> Iterator[bytes]:
                yield "".join(lines[:HISTORY_BATCH]).encode()
                wait_for(lambda: stored(watcher) >= HISTORY_BATCH, timeout=60)
                watcher.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND usename = current_user AND backend_type = 'client backend'"
                )
                yield "".join(lines[HISTORY_BATCH:]).encode()

            response = httpx.post(
                f"{base}/imports/history", content=body(), headers=headers, timeout=120
            )
            assert response.status_code == 503, response.text
            report = response.json()
            assert stored(watcher) == HISTORY_BATCH
            again = httpx.post(
                f"{base}/imports/history", content="".join(lines), headers=headers, timeout=120
            )
            assert again.status_code == 201, again.text
            assert stored(watcher) == total
    print(f"\n[import stopped] {report['error']}")
    assert report["complete"] is False and "stopped after line" in report["error"]
    assert (report["messages"], report["usage_rows"]) == (HISTORY_BATCH, HISTORY_BATCH)
    assert ranges(report) == [
        (1, HISTORY_BATCH, "stored", None),
        (HISTORY_BATCH + 1, total, "not_imported", None),
    ]
    assert ranges(again.json()) == [
        (1, HISTORY_BATCH, "duplicate", None),
        (HISTORY_BATCH + 1, total, "stored", None),
    ]
