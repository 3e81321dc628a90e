"""The registry CRUD API against the real database: customers, projects, features, deliveries
and devices. Every request here must be answered on purpose: never with a 500."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

MAX_BIGINT = 2**63 - 1
RESOURCES = ("customers", "projects", "features", "deliveries", "devices")


# --- helpers -------------------------------------------------------------------------------


def expect(response: httpx.Response, status: int) -> Any:
    """The response's JSON (None when empty), after checking its status."""
    assert response.status_code < 500, f"server error: {response.text}"
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: expected {status}, "
        f"got {response.status_code}: {response.text}"
    )
    return response.json() if response.content else None


def created(response: httpx.Response) -> dict[str, Any]:
    """The JSON object a 201 answered with."""
    body = expect(response, 201)
    assert isinstance(body, dict), body
    return body


def error_loc(response: httpx.Response, location: str = "body") -> list[Any]:
    """The `loc` of the first 422 error, checked to start at `location`."""
    body = expect(response, 422)
    loc: list[Any] = body["detail"][0]["loc"]
    assert loc[0] == location, body
    assert len(loc) > 1 or location != "body", f"the error names no field: {body}"
    return loc


def raw_post(api: TestClient, url: str, text: str) -> httpx.Response:
    """POST a JSON text as it is (for bodies httpx would refuse to encode)."""
    response: httpx.Response = api.post(
        url,
        content=text.encode("utf-8", "surrogatepass"),
        headers={"content-type": "application/json"},
    )
    return response


def make_customer(api: TestClient, name: str, **fields: Any) -> dict[str, Any]:
    body = {"name": name, "tier": "waist", "industry": "retail", **fields}
    return created(api.post("/customers", json=body))


def make_project(api: TestClient, customer_id: int, name: str, **fields: Any) -> dict[str, Any]:
    body = {"customer_id": customer_id, "name": name, **fields}
    return created(api.post("/projects", json=body))


def make_feature(api: TestClient, key: str, **fields: Any) -> dict[str, Any]:
    body = {"key": key, "name": f"Feature {key}", **fields}
    return created(api.post("/features", json=body))


def make_delivery(
    api: TestClient, project_id: int, feature_id: int, **fields: Any
) -> dict[str, Any]:
    body = {"project_id": project_id, "feature_id": feature_id, **fields}
    return created(api.post("/deliveries", json=body))


def make_device(api: TestClient, project_id: int, serial: str, **fields: Any) -> dict[str, Any]:
    body = {"serial": serial, "project_id": project_id, **fields}
    provisioned = expect(api.post("/devices", json=body), 201)
    assert isinstance(provisioned["password"], str) and len(provisioned["password"]) >= 24
    device: dict[str, Any] = provisioned["device"]
    return device


def ids(api: TestClient, url: str, **params: Any) -> list[int]:
    page = expect(api.get(url, params=params), 200)
    return [item["id"] for item in page["items"]]


def page_of(api: TestClient, url: str, **params: Any) -> dict[str, Any]:
    page: dict[str, Any] = expect(api.get(url, params=params), 200)
    return page


@pytest.fixture
def customer(api: TestClient, unique: str) -> dict[str, Any]:
    return make_customer(api, f"base customer {unique}")


@pytest.fixture
def project(api: TestClient, customer: dict[str, Any], unique: str) -> dict[str, Any]:
    return make_project(api, customer["id"], f"base project {unique}")


@pytest.fixture
def feature(api: TestClient, unique: str) -> dict[str, Any]:
    return make_feature(api, f"base_{unique}")


# --- customers -------------------------------------------------------------------------------


def test_customer_create_get_patch_delete(api: TestClient, unique: str) -> None:
    created = make_customer(
        api, f"  acme {unique}  ", tier="head", industry="logistics", lifecycle_stage="expansion"
    )
    assert isinstance(created["id"], int) and created["id"] >= 1
    assert created["name"] == f"acme {unique}"  # surrounding blanks are trimmed
    assert (created["tier"], created["industry"], created["lifecycle_stage"]) == (
        "head",
        "logistics",
        "expansion",
    )
    assert created["created_at"]

    defaulted = make_customer(api, f"plain {unique}")
    assert defaulted["lifecycle_stage"] == "onboarding"

    url = f"/customers/{created['id']}"
    assert expect(api.get(url), 200) == created

    patched = expect(api.patch(url, json={"industry": "energy"}), 200)
    assert patched == {**created, "industry": "energy"}
    assert expect(api.get(url), 200) == patched
    assert expect(api.patch(url, json={}), 200) == patched

    assert expect(api.delete(url), 204) is None
    expect(api.get(url), 404)
    expect(api.patch(url, json={"industry": "x"}), 404)
    expect(api.delete(url), 404)


def test_customer_list_filters_search_sort_and_pages(api: TestClient, unique: str) -> None:
    industry = f"ind-{unique}"
    b = make_customer(
        api, f"zeta-{unique}-b", tier="head", industry=industry, lifecycle_stage="renewal"
    )
    c = make_customer(
        api, f"zeta-{unique}-c", tier="tail", industry=industry, lifecycle_stage="renewal"
    )
    a = make_customer(
        api, f"zeta-{unique}-a", tier="head", industry=industry, lifecycle_stage="at_risk"
    )
    make_customer(api, f"other-{unique}", tier="head", industry=f"other-{unique}")

    page = page_of(api, "/customers", industry=industry)
    assert page["total"] == 3
    assert [i["id"] for i in page["items"]] == [a["id"], b["id"], c["id"]]  # default: by name
    assert ids(api, "/customers", industry=industry, tier="head") == [a["id"], b["id"]]
    assert ids(api, "/customers", industry=industry, tier="tail") == [c["id"]]
    assert ids(api, "/customers", industry=industry, lifecycle_stage="renewal") == [
        b["id"],
        c["id"],
    ]
    assert ids(api, "/customers", industry=industry, tier="waist") == []

    # q: case-insensitive, over name and industry
    assert ids(api, "/customers", q=f"ZETA-{unique}") == [a["id"], b["id"], c["id"]]
    assert ids(api, "/customers", q=f"zeta-{unique}-c") == [c["id"]]
    assert ids(api, "/customers", q=industry.upper()) == [a["id"], b["id"], c["id"]]
    assert ids(api, "/customers", q=f"nothing-{unique}") == []

    assert ids(api, "/customers", industry=industry, sort="name") == [a["id"], b["id"], c["id"]]
    assert ids(api, "/customers", industry=industry, sort="-name") == [c["id"], b["id"], a["id"]]
    assert ids(api, "/customers", industry=industry, sort="id") == [b["id"], c["id"], a["id"]]
    assert ids(api, "/customers", industry=industry, sort="-created_at") == [
        a["id"],
        c["id"],
        b["id"],
    ]
    assert ids(api, "/customers", industry=industry, sort="tier") == [b["id"], a["id"], c["id"]]
    assert ids(api, "/customers", industry=industry, sort="-lifecycle_stage") == [
        b["id"],
        c["id"],
        a["id"],
    ]

    first = page_of(api, "/customers", industry=industry, limit=2)
    assert ([i["id"] for i in first["items"]], first["total"], first["limit"], first["offset"]) == (
        [a["id"], b["id"]],
        3,
        2,
        0,
    )
    second = page_of(api, "/customers", industry=industry, limit=2, offset=2)
    assert ([i["id"] for i in second["items"]], second["total"], second["offset"]) == (
        [c["id"]],
        3,
        2,
    )
    beyond = page_of(api, "/customers", industry=industry, limit=2, offset=3)
    assert (beyond["items"], beyond["total"]) == ([], 3)
    assert page_of(api, "/customers", industry=industry, limit=500)["total"] == 3


def test_customer_duplicate_name_is_409(api: TestClient, unique: str) -> None:
    first = make_customer(api, f"dup {unique}")
    expect(
        api.post("/customers", json={"name": f"dup {unique}", "tier": "tail", "industry": "x"}), 409
    )
    # trimmed before comparing: the same name with blanks is the same customer
    expect(
        api.post("/customers", json={"name": f" dup {unique} ", "tier": "tail", "industry": "x"}),
        409,
    )
    other = make_customer(api, f"dup2 {unique}")
    expect(api.patch(f"/customers/{other['id']}", json={"name": first["name"]}), 409)
    assert expect(api.get(f"/customers/{other['id']}"), 200)["name"] == f"dup2 {unique}"
    assert page_of(api, "/customers", q=f"dup {unique}")["total"] == 1


def test_customer_with_projects_cannot_be_deleted(
    api: TestClient, customer: dict[str, Any], project: dict[str, Any]
) -> None:
    url = f"/customers/{customer['id']}"
    body = expect(api.delete(url), 409)
    assert "project" in body["detail"]
    expect(api.get(url), 200)
    expect(api.delete(f"/projects/{project['id']}"), 204)
    expect(api.delete(url), 204)
    expect(api.get(url), 404)


# --- projects --------------------------------------------------------------------------------


def test_project_create_get_patch_delete(
    api: TestClient, customer: dict[str, Any], unique: str
) -> None:
    created = make_project(
        api,
        customer["id"],
        f"lockers {unique}",
        contract_value="480000.50",
        currency="USD",
        go_live_date="2026-03-01",
        status="live",
        retention_days=90,
    )
    assert created["customer_id"] == customer["id"]
    assert created["customer_name"] == customer["name"]
    assert created["name"] == f"lockers {unique}"
    assert Decimal(str(created["contract_value"])) == Decimal("480000.50")
    assert (created["currency"], created["go_live_date"], created["status"]) == (
        "USD",
        "2026-03-01",
        "live",
    )
    assert (created["retention_days"], created["devices"]) == (90, 0)

    defaulted = make_project(api, customer["id"], f"plain {unique}")
    assert (defaulted["currency"], defaulted["status"]) == ("EUR", "delivering")
    assert (defaulted["contract_value"], defaulted["go_live_date"]) == (None, None)
    assert defaulted["retention_days"] is None

    url = f"/projects/{created['id']}"
    assert expect(api.get(url), 200) == created
    patched = expect(api.patch(url, json={"status": "ended"}), 200)
    assert patched == {**created, "status": "ended"}
    patched = expect(api.patch(url, json={"contract_value": None, "retention_days": 30}), 200)
    assert patched == {**created, "status": "ended", "contract_value": None, "retention_days": 30}
    assert expect(api.get(url), 200) == patched

    expect(api.delete(url), 204)
    expect(api.get(url), 404)
    expect(api.delete(url), 404)


def test_project_list_filters_search_sort_and_pages(
    api: TestClient, customer: dict[str, Any], unique: str
) -> None:
    other = make_customer(api, f"other customer {unique}")
    cid = customer["id"]
    p2 = make_project(
        api, cid, f"proj-{unique}-2", contract_value="30", status="live", go_live_date="2026-01-02"
    )
    p1 = make_project(api, cid, f"proj-{unique}-1", contract_value="10", status="live")
    p3 = make_project(api, cid, f"proj-{unique}-3", status="ended", go_live_date="2025-01-01")
    p4 = make_project(api, cid, f"proj-{unique}-4", contract_value="20")
    elsewhere = make_project(api, other["id"], f"proj-{unique}-5")

    page = page_of(api, "/projects", customer_id=cid)
    assert page["total"] == 4
    assert [i["id"] for i in page["items"]] == [p1["id"], p2["id"], p3["id"], p4["id"]]
    assert ids(api, "/projects", customer_id=cid, status="live") == [p1["id"], p2["id"]]
    assert ids(api, "/projects", customer_id=cid, status="ended") == [p3["id"]]
    assert ids(api, "/projects", customer_id=cid, status="delivering") == [p4["id"]]
    assert ids(api, "/projects", customer_id=other["id"]) == [elsewhere["id"]]

    # q covers the project name and the customer's name
    assert ids(api, "/projects", q=f"PROJ-{unique}-") == [
        p1["id"],
        p2["id"],
        p3["id"],
        p4["id"],
        elsewhere["id"],
    ]
    assert ids(api, "/projects", q=f"other customer {unique}") == [elsewhere["id"]]

    # money sorts numerically, and projects without a value come last both ways
    assert ids(api, "/projects", customer_id=cid, sort="contract_value") == [
        p1["id"],
        p4["id"],
        p2["id"],
        p3["id"],
    ]
    assert ids(api, "/projects", customer_id=cid, sort="-contract_value") == [
        p2["id"],
        p4["id"],
        p1["id"],
        p3["id"],
    ]
    assert ids(api, "/projects", customer_id=cid, sort="go_live_date") == [
        p3["id"],
        p2["id"],
        p1["id"],
        p4["id"],
    ]
    assert ids(api, "/projects", customer_id=cid, sort="-name") == [
        p4["id"],
        p3["id"],
        p2["id"],
        p1["id"],
    ]
    assert ids(api, "/projects", customer_id=cid, sort="-id")[0] == p4["id"]
    assert ids(api, "/projects", q=f"proj-{unique}-", sort="-customer_name")[0] == elsewhere["id"]

    second = page_of(api, "/projects", customer_id=cid, limit=3, offset=3)
    assert ([i["id"] for i in second["items"]], second["total"]) == ([p4["id"]], 4)
    first = page_of(api, "/projects", customer_id=cid, limit=1, sort="-contract_value")
    assert ([i["id"] for i in first["items"]], first["total"]) == ([p2["id"]], 4)


def test_project_counts_active_devices_and_sorts_by_them(
    api: TestClient, customer: dict[str, Any], unique: str
) -> None:
    busy = make_project(api, customer["id"], f"busy {unique}")
    idle = make_project(api, customer["id"], f"idle {unique}")
    make_device(api, busy["id"], f"cnt-{unique}-1")
    make_device(api, busy["id"], f"cnt-{unique}-2")
    assert expect(api.get(f"/projects/{busy['id']}"), 200)["devices"] == 2
    assert expect(api.get(f"/projects/{idle['id']}"), 200)["devices"] == 0
    assert ids(api, "/projects", customer_id=customer["id"], sort="-devices") == [
        busy["id"],
        idle["id"],
    ]
    assert ids(api, "/projects", customer_id=customer["id"], sort="devices") == [
        idle["id"],
        busy["id"],
    ]


def test_project_with_unknown_customer_is_422_naming_customer_id(
    api: TestClient, conn: psycopg.Connection, unique: str
) -> None:
    response = api.post("/projects", json={"customer_id": MAX_BIGINT, "name": f"orphan {unique}"})
    assert error_loc(response)[-1] == "customer_id"
    assert conn.execute(
        "SELECT count(*) FROM projects WHERE name = %s", (f"orphan {unique}",)
    ).fetchone() == (0,)


def test_project_duplicate_name_within_a_customer_is_409(
    api: TestClient, customer: dict[str, Any], unique: str
) -> None:
    make_project(api, customer["id"], f"twin {unique}")
    expect(
        api.post("/projects", json={"customer_id": customer["id"], "name": f"twin {unique}"}), 409
    )
    other = make_customer(api, f"twin owner {unique}")
    make_project(api, other["id"], f"twin {unique}")  # another customer may use the name


def test_project_with_devices_or_deliveries_cannot_be_deleted(
    api: TestClient, customer: dict[str, Any], feature: dict[str, Any], unique: str
) -> None:
    with_device = make_project(api, customer["id"], f"with device {unique}")
    device = make_device(api, with_device["id"], f"pd-{unique}")
    body = expect(api.delete(f"/projects/{with_device['id']}"), 409)
    assert "device" in body["detail"]
    expect(api.get(f"/projects/{with_device['id']}"), 200)

    with_delivery = make_project(api, customer["id"], f"with delivery {unique}")
    delivery = make_delivery(api, with_delivery["id"], feature["id"])
    body = expect(api.delete(f"/projects/{with_delivery['id']}"), 409)
    assert "deliver" in body["detail"]
    expect(api.get(f"/projects/{with_delivery['id']}"), 200)

    # once what depends on them is gone, they can go
    expect(api.delete(f"/devices/{device['id']}"), 204)
    expect(api.delete(f"/projects/{with_device['id']}"), 204)
    expect(api.delete(f"/deliveries/{delivery['id']}"), 204)
    expect(api.delete(f"/projects/{with_delivery['id']}"), 204)


# --- features --------------------------------------------------------------------------------


def test_feature_create_get_patch_delete(api: TestClient, unique: str) -> None:
    created = make_feature(
        api,
        f"dim_{unique}",
        name=f"Scheduled dimming {unique}",
        product_line="lighting",
        description="dims at night",
        kind="standing",
    )
    assert created["key"] == f"dim_{unique}"
    assert (created["name"], created["product_line"], created["description"]) == (
        f"Scheduled dimming {unique}",
        "lighting",
        "dims at night",
    )
    assert created["kind"] == "standing"
    assert "usage_events" not in created and "usage_metrics" not in created

    defaulted = make_feature(api, f"bare_{unique}")
    assert (defaulted["product_line"], defaulted["description"]) == (None, None)
    assert defaulted["kind"] == "interactive"

    url = f"/features/{created['id']}"
    assert expect(api.get(url), 200) == created
    patched = expect(api.patch(url, json={"name": "Dimming"}), 200)
    assert patched == {**created, "name": "Dimming"}
    patched = expect(api.patch(url, json={"kind": "interactive"}), 200)
    assert patched == {**created, "name": "Dimming", "kind": "interactive"}
    listed = expect(api.get("/features", params={"kind": "interactive", "q": unique}), 200)
    assert {f["id"] for f in listed["items"]} == {created["id"], defaulted["id"]}
    # the key is the devices' contract: it cannot be changed
    assert error_loc(api.patch(url, json={"key": "other"}))[-1] == "key"

    expect(api.delete(url), 204)
    expect(api.get(url), 404)
    expect(api.delete(url), 404)


def test_feature_list_filters_search_sort_and_pages(api: TestClient, unique: str) -> None:
    line = f"line-{unique}"
    f2 = make_feature(api, f"k{unique}_b", name="Bravo", product_line=line)
    f1 = make_feature(
        api,
        f"k{unique}_a",
        name="Charlie",
        product_line=line,
        description=f"needle {unique} inside",
    )
    f3 = make_feature(api, f"k{unique}_c", name="Alpha", product_line=line)
    make_feature(api, f"k{unique}_d", name="Delta", product_line=f"other-{unique}")

    page = page_of(api, "/features", product_line=line)
    assert page["total"] == 3
    assert [i["id"] for i in page["items"]] == [f1["id"], f2["id"], f3["id"]]  # default: key
    assert ids(api, "/features", product_line=line, sort="-key") == [f3["id"], f2["id"], f1["id"]]
    assert ids(api, "/features", product_line=line, sort="name") == [f3["id"], f2["id"], f1["id"]]
    assert ids(api, "/features", product_line=line, sort="-name") == [f1["id"], f2["id"], f3["id"]]
    assert ids(api, "/features", product_line=line, sort="id") == [f2["id"], f1["id"], f3["id"]]

    # q covers key, name and description
    assert len(ids(api, "/features", q=f"K{unique}_")) == 4
    assert ids(api, "/features", q=f"NEEDLE {unique}") == [f1["id"]]
    assert ids(api, "/features", q=f"k{unique}_c") == [f3["id"]]

    paged = page_of(api, "/features", product_line=line, limit=1, offset=1)
    assert ([i["id"] for i in paged["items"]], paged["total"]) == ([f2["id"]], 3)


def test_feature_duplicate_key_is_409(api: TestClient, unique: str) -> None:
    make_feature(api, f"once_{unique}")
    body = expect(api.post("/features", json={"key": f"once_{unique}", "name": "again"}), 409)
    assert f"once_{unique}" in body["detail"]
    assert page_of(api, "/features", q=f"once_{unique}")["total"] == 1


def test_feature_with_deliveries_cannot_be_deleted(
    api: TestClient, project: dict[str, Any], feature: dict[str, Any]
) -> None:
    delivery = make_delivery(api, project["id"], feature["id"])
    body = expect(api.delete(f"/features/{feature['id']}"), 409)
    assert "deliver" in body["detail"]
    expect(api.get(f"/features/{feature['id']}"), 200)
    expect(api.delete(f"/deliveries/{delivery['id']}"), 204)
    expect(api.delete(f"/features/{feature['id']}"), 204)


# --- deliveries ------------------------------------------------------------------------------


def test_delivery_create_get_patch_delete(
    api: TestClient, project: dict[str, Any], feature: dict[str, Any]
) -> None:
    created = make_delivery(
        api,
        project["id"],
        feature["id"],
        status="planned",
        delivered_on="2026-02-03",
        cost_person_days="12.50",
        contract_line_value="9999.99",
        business_score=4,
        strategic=True,
        notes="pilot first",
    )
    assert (created["project_id"], created["feature_id"]) == (project["id"], feature["id"])
    assert (created["feature_key"], created["feature_name"]) == (feature["key"], feature["name"])
    assert (created["status"], created["delivered_on"]) == ("planned", "2026-02-03")
    assert Decimal(str(created["cost_person_days"])) == Decimal("12.50")
    assert Decimal(str(created["contract_line_value"])) == Decimal("9999.99")
    assert (created["business_score"], created["strategic"], created["notes"]) == (
        4,
        True,
        "pilot first",
    )

    url = f"/deliveries/{created['id']}"
    assert expect(api.get(url), 200) == created
    patched = expect(api.patch(url, json={"notes": "rolled out"}), 200)
    assert patched == {**created, "notes": "rolled out"}
    patched = expect(api.patch(url, json={"status": "cut", "business_score": None}), 200)
    assert patched == {**created, "notes": "rolled out", "status": "cut", "business_score": None}
    assert expect(api.get(url), 200) == patched

    expect(api.delete(url), 204)
    expect(api.get(url), 404)
    expect(api.delete(url), 404)


def test_delivery_defaults(
    api: TestClient, project: dict[str, Any], feature: dict[str, Any]
) -> None:
    created = make_delivery(api, project["id"], feature["id"])
    assert (created["status"], created["strategic"]) == ("delivered", False)
    for name in (
        "delivered_on",
        "cost_person_days",
        "contract_line_value",
        "business_score",
        "notes",
    ):
        assert created[name] is None, name


def test_delivery_list_filters_search_sort_and_pages(
    api: TestClient, customer: dict[str, Any], unique: str
) -> None:
    p = make_project(api, customer["id"], f"dl {unique}")
    q = make_project(api, customer["id"], f"dl other {unique}")
    fa = make_feature(api, f"dl_{unique}_a", name="Alpha")
    fb = make_feature(api, f"dl_{unique}_b", name="Bravo")
    fc = make_feature(api, f"dl_{unique}_c", name="Charlie")
    db = make_delivery(
        api,
        p["id"],
        fb["id"],
        business_score=5,
        strategic=True,
        delivered_on="2026-01-01",
        cost_person_days="3",
    )
    dc = make_delivery(
        api,
        p["id"],
        fc["id"],
        status="planned",
        business_score=1,
        notes=f"needle {unique}",
        cost_person_days="1",
    )
    da = make_delivery(
        api, p["id"], fa["id"], status="cut", delivered_on="2025-06-01", cost_person_days="2"
    )
    elsewhere = make_delivery(api, q["id"], fa["id"])

    page = page_of(api, "/deliveries", project_id=p["id"])
    assert page["total"] == 3
    assert [i["id"] for i in page["items"]] == [da["id"], db["id"], dc["id"]]  # by feature_key
    assert ids(api, "/deliveries", feature_id=fa["id"]) == sorted([da["id"], elsewhere["id"]])
    assert ids(api, "/deliveries", project_id=p["id"], status="planned") == [dc["id"]]
    assert ids(api, "/deliveries", project_id=p["id"], status="cut") == [da["id"]]
    assert ids(api, "/deliveries", project_id=p["id"], strategic="true") == [db["id"]]
    assert ids(api, "/deliveries", project_id=p["id"], strategic="false") == [da["id"], dc["id"]]
    assert ids(api, "/deliveries", project_id=q["id"], feature_id=fa["id"]) == [elsewhere["id"]]

    # q covers feature key, feature name and notes
    assert ids(api, "/deliveries", q=f"NEEDLE {unique}") == [dc["id"]]
    assert ids(api, "/deliveries", project_id=p["id"], q=f"dl_{unique}_b") == [db["id"]]
    assert ids(api, "/deliveries", project_id=p["id"], q="charlie") == [dc["id"]]

    assert ids(api, "/deliveries", project_id=p["id"], sort="-feature_key") == [
        dc["id"],
        db["id"],
        da["id"],
    ]
    assert ids(api, "/deliveries", project_id=p["id"], sort="business_score") == [
        dc["id"],
        db["id"],
        da["id"],
    ]
    assert ids(api, "/deliveries", project_id=p["id"], sort="-business_score") == [
        db["id"],
        dc["id"],
        da["id"],
    ]
    assert ids(api, "/deliveries", project_id=p["id"], sort="delivered_on") == [
        da["id"],
        db["id"],
        dc["id"],
    ]
    assert ids(api, "/deliveries", project_id=p["id"], sort="-cost_person_days") == [
        db["id"],
        da["id"],
        dc["id"],
    ]

    paged = page_of(
        api, "/deliveries", project_id=p["id"], sort="cost_person_days", limit=2, offset=1
    )
    assert ([i["id"] for i in paged["items"]], paged["total"]) == ([da["id"], db["id"]], 3)


def test_duplicate_delivery_is_409(
    api: TestClient, project: dict[str, Any], feature: dict[str, Any]
) -> None:
    make_delivery(api, project["id"], feature["id"])
    body = {"project_id": project["id"], "feature_id": feature["id"], "status": "planned"}
    expect(api.post("/deliveries", json=body), 409)
    assert page_of(api, "/deliveries", project_id=project["id"])["total"] == 1


@pytest.mark.parametrize("missing", ["project_id", "feature_id"])
def test_delivery_with_unknown_reference_is_422_naming_it(
    api: TestClient, project: dict[str, Any], feature: dict[str, Any], missing: str
) -> None:
    body = {"project_id": project["id"], "feature_id": feature["id"], missing: MAX_BIGINT}
    assert error_loc(api.post("/deliveries", json=body))[-1] == missing
    assert page_of(api, "/deliveries", project_id=project["id"])["total"] == 0


# --- devices ---------------------------------------------------------------------------------


def test_device_create_get_patch_delete(
    api: TestClient, project: dict[str, Any], unique: str
) -> None:
    response = api.post(
        "/devices",
        json={
            "serial": f"Dev-{unique}.1",
            "project_id": project["id"],
            "model": "LCK-2",
            "firmware": "1.4.2",
            "site": "Dock 4",
            "tags": ["eu", "pilot"],
        },
    )
    provisioned = expect(response, 201)
    created = provisioned["device"]
    assert set(provisioned) == {"device", "password"}
    assert (created["serial"], created["project_id"]) == (f"Dev-{unique}.1", project["id"])
    assert (created["model"], created["firmware"], created["site"]) == ("LCK-2", "1.4.2", "Dock 4")
    assert (created["tags"], created["status"]) == (["eu", "pilot"], "active")
    assert (created["online"], created["last_seen"], created["revoked_at"]) == (None, None, None)

    url = f"/devices/{created['id']}"
    fetched = expect(api.get(url), 200)
    assert fetched == created
    assert "password" not in fetched

    patched = expect(api.patch(url, json={"site": "Dock 5"}), 200)
    assert patched == {**created, "site": "Dock 5"}
    patched = expect(api.patch(url, json={"tags": [], "model": None}), 200)
    assert patched == {**created, "site": "Dock 5", "tags": [], "model": None}
    assert expect(api.get(url), 200) == patched
    # serial and project are the device's identity: not changed by PATCH
    assert error_loc(api.patch(url, json={"serial": f"x-{unique}"}))[-1] == "serial"
    assert error_loc(api.patch(url, json={"project_id": 1}))[-1] == "project_id"

    expect(api.delete(url), 204)
    expect(api.get(url), 404)
    expect(api.delete(url), 404)
    expect(api.patch(url, json={"site": "x"}), 404)


def test_device_list_filters_search_sort_and_pages(
    api: TestClient, customer: dict[str, Any], unique: str
) -> None:
    p = make_project(api, customer["id"], f"fleet {unique}")
    other = make_project(api, customer["id"], f"fleet other {unique}")
    d2 = make_device(
        api,
        p["id"],
        f"fl-{unique}-2",
        model="M1",
        firmware="2.0",
        site=f"site {unique} north",
        tags=["a", "b"],
    )
    d3 = make_device(
        api,
        p["id"],
        f"fl-{unique}-3",
        model="M2",
        firmware="1.0",
        site=f"site {unique} south",
        tags=["b"],
    )
    d1 = make_device(api, p["id"], f"fl-{unique}-1", model="M1", firmware="1.0")
    elsewhere = make_device(api, other["id"], f"fl-{unique}-4", model="M1")
    expect(api.post(f"/devices/{d3['id']}/revoke"), 200)

    page = page_of(api, "/devices", project_id=p["id"])
    assert page["total"] == 3
    assert [i["id"] for i in page["items"]] == [d1["id"], d2["id"], d3["id"]]  # by serial
    assert ids(api, "/devices", project_id=p["id"], status="active") == [d1["id"], d2["id"]]
    assert ids(api, "/devices", project_id=p["id"], status="revoked") == [d3["id"]]
    assert ids(api, "/devices", project_id=p["id"], model="M1") == [d1["id"], d2["id"]]
    assert ids(api, "/devices", project_id=p["id"], firmware="1.0") == [d1["id"], d3["id"]]
    assert ids(api, "/devices", site=f"site {unique} north") == [d2["id"]]
    assert ids(api, "/devices", project_id=p["id"], tag="b") == [d2["id"], d3["id"]]
    assert ids(api, "/devices", project_id=p["id"], tag="a") == [d2["id"]]
    assert ids(api, "/devices", project_id=p["id"], tag="zzz") == []
    assert ids(api, "/devices", project_id=other["id"]) == [elsewhere["id"]]

    # q covers serial and site
    assert ids(api, "/devices", q=f"FL-{unique}-") == [
        d1["id"],
        d2["id"],
        d3["id"],
        elsewhere["id"],
    ]
    assert ids(api, "/devices", q=f"{unique} SOUTH") == [d3["id"]]

    assert ids(api, "/devices", project_id=p["id"], sort="-serial") == [
        d3["id"],
        d2["id"],
        d1["id"],
    ]
    assert ids(api, "/devices", project_id=p["id"], sort="-firmware") == [
        d2["id"],
        d3["id"],
        d1["id"],
    ]
    assert ids(api, "/devices", project_id=p["id"], sort="site") == [d2["id"], d3["id"], d1["id"]]
    assert ids(api, "/devices", project_id=p["id"], sort="-status") == [
        d3["id"],
        d2["id"],
        d1["id"],
    ]

    paged = page_of(api, "/devices", project_id=p["id"], limit=2, offset=2)
    assert ([i["id"] for i in paged["items"]], paged["total"], paged["limit"]) == (
        [d3["id"]],
        3,
        2,
    )


def test_duplicate_serial_is_409(
    api: TestClient, project: dict[str, Any], conn: psycopg.Connection, unique: str
) -> None:
    make_device(api, project["id"], f"twin-{unique}")
    response = api.post("/devices", json={"serial": f"twin-{unique}", "project_id": project["id"]})
    expect(response, 409)
    count = conn.execute(
        "SELECT count(*) FROM devices WHERE serial = %s", (f"twin-{unique}",)
    ).fetchone()
    assert count == (1,)


# --- validation: 422 names the field ------------------------------------------------------


def _valid_bodies(api: TestClient, unique: str) -> dict[str, dict[str, Any]]:
    """A valid create body per resource (references created for the purpose)."""
    customer = make_customer(api, f"v customer {unique}")
    project = make_project(api, customer["id"], f"v project {unique}")
    feature = make_feature(api, f"v_{unique}")
    return {
        "customers": {"name": f"v2 customer {unique}", "tier": "tail", "industry": "x"},
        "projects": {"customer_id": customer["id"], "name": f"v2 project {unique}"},
        "features": {"key": f"v2_{unique}", "name": "V"},
        "deliveries": {"project_id": project["id"], "feature_id": feature["id"]},
        "devices": {"serial": f"v-{unique}", "project_id": project["id"]},
    }


@pytest.fixture
def valid_bodies(api: TestClient, unique: str) -> dict[str, dict[str, Any]]:
    return _valid_bodies(api, unique)


NUL = "a\u0000b"
INVALID = [
    # bad enums
    ("customers", "tier", "gold"),
    ("customers", "lifecycle_stage", "churned"),
    ("projects", "status", "done"),
    ("deliveries", "status", "shipped"),
    # too long text
    ("customers", "name", "n" * 201),
    ("customers", "industry", "i" * 101),
    ("projects", "name", "p" * 201),
    ("features", "name", "f" * 201),
    ("features", "product_line", "l" * 101),
    ("features", "description", "d" * 5001),
    ("deliveries", "notes", "n" * 5001),
    ("devices", "model", "m" * 101),
    ("devices", "site", "s" * 201),
    ("devices", "serial", "s" * 65),
    ("features", "key", "k" * 65),
    # empty or blank where a value is needed
    ("customers", "name", "   "),
    ("customers", "industry", ""),
    # NUL characters
    ("customers", "name", NUL),
    ("customers", "industry", NUL),
    ("projects", "name", NUL),
    ("features", "name", NUL),
    ("features", "description", NUL),
    ("deliveries", "notes", NUL),
    ("devices", "model", NUL),
    ("devices", "firmware", NUL),
    ("devices", "site", NUL),
    # money and amounts
    ("projects", "contract_value", "-1"),
    ("projects", "contract_value", -0.01),
    ("projects", "contract_value", "1000000000000.00"),
    ("projects", "contract_value", 1e15),
    ("projects", "contract_value", "1.005"),
    ("projects", "contract_value", "Infinity"),
    ("deliveries", "contract_line_value", "-5"),
    ("deliveries", "contract_line_value", "1000000000000"),
    ("deliveries", "cost_person_days", "-1"),
    ("deliveries", "cost_person_days", "1000000"),
    ("deliveries", "business_score", 6),
    ("deliveries", "business_score", 0),
    ("projects", "retention_days", 0),
    ("projects", "retention_days", 36501),
    ("projects", "currency", "eur"),
    ("projects", "currency", "EURO"),
    ("projects", "go_live_date", "2026-13-01"),
    ("deliveries", "delivered_on", "yesterday"),
    # keys and serials with characters they may not carry
    ("features", "key", "Remote Unlock"),
    ("features", "key", "1st"),
    ("devices", "serial", "has space"),
    ("devices", "serial", "a/b"),
    ("devices", "serial", "wild+card"),
    ("devices", "serial", "-leading"),
    # wrong types
    ("customers", "name", 123),
    ("customers", "tier", ["head"]),
    ("projects", "customer_id", "abc"),
    ("projects", "customer_id", 1.5),
    ("projects", "name", {"x": 1}),
    # usage definitions were accepted and never applied: now refused, naming the field
    ("features", "usage_events", ["remote_unlock"]),
    ("features", "usage_events", []),
    ("features", "usage_metrics", [{"metric": "x", "op": ">", "value": 1}]),
    ("features", "kind", "alarm"),
    ("deliveries", "strategic", "maybe"),
    ("deliveries", "business_score", "high"),
    ("deliveries", "feature_id", None),
    ("devices", "tags", "eu"),
    ("devices", "project_id", "one"),
    # ids out of range
    ("projects", "customer_id", 0),
    ("projects", "customer_id", 2**63),
    ("deliveries", "project_id", -1),
    ("devices", "project_id", 2**64),
    # unknown fields
    ("customers", "colour", "red"),
    ("projects", "id", 5),
    ("features", "created_at", "2026-01-01T00:00:00Z"),
    ("deliveries", "feature_key", "x"),
    ("devices", "password", "secret"),
]


@pytest.mark.parametrize(
    ("plural", "field", "value"), INVALID, ids=[f"{p}.{f}={v!r:.20}" for p, f, v in INVALID]
)
def test_invalid_create_is_422_naming_the_field(
    api: TestClient,
    valid_bodies: dict[str, dict[str, Any]],
    conn: psycopg.Connection,
    plural: str,
    field: str,
    value: Any,
) -> None:
    body = {**valid_bodies[plural], field: value}
    assert error_loc(api.post(f"/{plural}", json=body))[-1] == field
    # nothing was created: look the valid body's natural key (or its project) up
    column = {
        "customers": "name",
        "projects": "name",
        "features": "key",
        "deliveries": "project_id",
        "devices": "serial",
    }[plural]
    count = conn.execute(
        f"SELECT count(*) FROM {plural} WHERE {column} = %s", (valid_bodies[plural][column],)
    ).fetchone()
    assert count == (0,), "a refused request creates nothing"


@pytest.mark.parametrize(
    ("plural", "field", "loc_end"),
    [
        ("devices", "tags", 0),  # a list item is named by its position
    ],
)
def test_invalid_list_items_are_named_by_position(
    api: TestClient,
    valid_bodies: dict[str, dict[str, Any]],
    plural: str,
    field: str,
    loc_end: Any,
) -> None:
    bad: dict[str, Any] = {"tags": [NUL]}
    loc = error_loc(api.post(f"/{plural}", json={**valid_bodies[plural], field: bad[field]}))
    assert loc[1] == field
    assert loc[-1] == loc_end


def test_too_many_list_items_are_422(
    api: TestClient, valid_bodies: dict[str, dict[str, Any]]
) -> None:
    body = {**valid_bodies["devices"], "tags": [f"t{i}" for i in range(21)]}
    assert error_loc(api.post("/devices", json=body))[-1] == "tags"


@pytest.mark.parametrize(
    ("plural", "field"),
    [
        ("customers", "name"),
        ("features", "description"),
        ("deliveries", "notes"),
        ("devices", "site"),
    ],
)
def test_unencodable_text_is_422_not_500(
    api: TestClient, valid_bodies: dict[str, dict[str, Any]], plural: str, field: str
) -> None:
    """A lone surrogate is valid JSON but no valid text: PostgreSQL cannot store it."""
    body = json.dumps({**valid_bodies[plural], field: "x"}).replace('"x"', '"bad \\ud800 text"')
    assert error_loc(raw_post(api, f"/{plural}", body))[-1] == field


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_money_is_422(
    api: TestClient, valid_bodies: dict[str, dict[str, Any]], number: str
) -> None:
    body = json.dumps(valid_bodies["projects"])[:-1] + f', "contract_value": {number}}}'
    assert error_loc(raw_post(api, "/projects", body))[-1] == "contract_value"


def test_money_at_its_limits_is_accepted(
    api: TestClient, valid_bodies: dict[str, dict[str, Any]], unique: str
) -> None:
    project = expect(
        api.post(
            "/projects",
            json={
                **valid_bodies["projects"],
                "contract_value": "999999999999.99",
                "retention_days": 36500,
            },
        ),
        201,
    )
    assert Decimal(str(project["contract_value"])) == Decimal("999999999999.99")
    delivery = expect(
        api.post(
            "/deliveries",
            json={
                **valid_bodies["deliveries"],
                "cost_person_days": "999999.99",
                "contract_line_value": 0,
                "business_score": 5,
            },
        ),
        201,
    )
    assert Decimal(str(delivery["cost_person_days"])) == Decimal("999999.99")
    assert Decimal(str(delivery["contract_line_value"])) == 0


@pytest.mark.parametrize("plural", RESOURCES)
def test_body_that_is_not_an_object_is_422(api: TestClient, plural: str) -> None:
    expect(api.post(f"/{plural}", json=[1, 2]), 422)
    expect(
        api.post(f"/{plural}", content=b"{not json", headers={"content-type": "application/json"}),
        422,
    )
    expect(api.post(f"/{plural}", json={}), 422)


INVALID_PATCH = [
    ("customers", "tier", "gold"),
    ("customers", "name", NUL),
    ("customers", "name", None),  # required column: cannot be cleared
    ("customers", "industry", None),
    ("customers", "customer_id", 1),
    ("projects", "currency", "usd"),
    ("projects", "currency", None),
    ("projects", "status", None),
    ("projects", "contract_value", "-3"),
    ("projects", "customer_id", 1),
    ("features", "name", "x" * 201),
    ("features", "name", None),
    ("features", "kind", None),
    ("features", "usage_events", ["dim_on"]),
    ("deliveries", "business_score", 6),
    ("deliveries", "status", None),
    ("deliveries", "strategic", None),
    ("deliveries", "project_id", 1),
    ("devices", "tags", None),
    ("devices", "site", NUL),
    ("devices", "status", "revoked"),
]


@pytest.mark.parametrize(
    ("plural", "field", "value"),
    INVALID_PATCH,
    ids=[f"{p}.{f}={v!r:.20}" for p, f, v in INVALID_PATCH],
)
def test_invalid_patch_is_422_naming_the_field_and_changes_nothing(
    api: TestClient,
    valid_bodies: dict[str, dict[str, Any]],
    plural: str,
    field: str,
    value: Any,
) -> None:
    response = api.post(f"/{plural}", json=valid_bodies[plural])
    created = expect(response, 201)
    item = created["device"] if plural == "devices" else created
    url = f"/{plural}/{item['id']}"
    assert error_loc(api.patch(url, json={field: value}))[-1] == field
    assert expect(api.get(url), 200) == item


# --- ids, unknown items, sort and paging parameters ---------------------------------------


@pytest.mark.parametrize("plural", RESOURCES)
def test_unknown_id_is_404(api: TestClient, plural: str) -> None:
    url = f"/{plural}/{MAX_BIGINT}"
    assert str(MAX_BIGINT) in expect(api.get(url), 404)["detail"]
    expect(api.patch(url, json={}), 404)
    expect(api.delete(url), 404)


@pytest.mark.parametrize("plural", RESOURCES)
@pytest.mark.parametrize("bad_id", ["0", "-1", str(2**63), str(2**70), "abc", "1.5"])
def test_out_of_range_id_is_422(api: TestClient, plural: str, bad_id: str) -> None:
    url = f"/{plural}/{bad_id}"
    for response in (api.get(url), api.patch(url, json={}), api.delete(url)):
        assert error_loc(response, "path") == ["path", "item_id"]


@pytest.mark.parametrize("plural", RESOURCES)
def test_paging_parameters_are_checked(api: TestClient, plural: str) -> None:
    assert error_loc(api.get(f"/{plural}", params={"limit": 501}), "query") == ["query", "limit"]
    assert error_loc(api.get(f"/{plural}", params={"limit": 0}), "query") == ["query", "limit"]
    assert error_loc(api.get(f"/{plural}", params={"offset": -1}), "query") == ["query", "offset"]
    assert error_loc(api.get(f"/{plural}", params={"limit": "x"}), "query") == ["query", "limit"]
    assert error_loc(api.get(f"/{plural}", params={"q": ""}), "query") == ["query", "q"]
    assert error_loc(api.get(f"/{plural}", params={"q": "a\u0000"}), "query") == ["query", "q"]
    page = page_of(api, f"/{plural}", limit=500, offset=0)
    assert (page["limit"], page["offset"]) == (500, 0)
    assert len(page["items"]) == min(page["total"], 500)
    assert page_of(api, f"/{plural}", offset=1_000_000)["items"] == []


@pytest.mark.parametrize("plural", RESOURCES)
@pytest.mark.parametrize(
    "sort", ["colour", "-colour", "password", "-", "name;drop", "--id", "name desc"]
)
def test_sort_by_unknown_field_is_422(api: TestClient, plural: str, sort: str) -> None:
    response = api.get(f"/{plural}", params={"sort": sort})
    assert error_loc(response, "query") == ["query", "sort"]


@pytest.mark.parametrize(
    ("plural", "sort"),
    [
        ("projects", "currency"),
        ("features", "description"),
        ("deliveries", "notes"),
        ("devices", "tags"),
        ("customers", "customer_name"),
    ],
)
def test_sort_by_a_field_that_is_not_sortable_is_422(
    api: TestClient, plural: str, sort: str
) -> None:
    assert error_loc(api.get(f"/{plural}", params={"sort": sort}), "query") == ["query", "sort"]


@pytest.mark.parametrize(
    ("plural", "name", "value"),
    [
        ("customers", "tier", "gold"),
        ("customers", "lifecycle_stage", "x"),
        ("projects", "status", "x"),
        ("projects", "customer_id", "0"),
        ("deliveries", "strategic", "maybe"),
        ("deliveries", "project_id", str(2**63)),
        ("devices", "status", "gone"),
        ("devices", "tag", "t" * 65),
        ("features", "product_line", "l" * 101),
    ],
)
def test_bad_filter_is_422_naming_it(api: TestClient, plural: str, name: str, value: str) -> None:
    assert error_loc(api.get(f"/{plural}", params={name: value}), "query") == ["query", name]


# --- names with SQL metacharacters ------------------------------------------------------------


def test_sql_metacharacters_are_stored_verbatim(
    api: TestClient, conn: psycopg.Connection, unique: str
) -> None:
    names = [
        f"'; DROP TABLE customers; -- {unique}",
        f"Robert'); DELETE FROM projects;-- {unique}",
        f"100% {unique}",
        f"under_score {unique}",
        f"back\\slash {unique}",
        f'"quoted" {unique}',
        f"$1 %s %(x)s {{}} {unique}",
    ]
    created = [make_customer(api, name, industry=name[:100]) for name in names]
    for customer, name in zip(created, names, strict=True):
        assert customer["name"] == name
        assert expect(api.get(f"/customers/{customer['id']}"), 200)["name"] == name
        assert ids(api, "/customers", q=name) == [customer["id"]]
        assert ids(api, "/customers", industry=name[:100]) == [customer["id"]]
        stored = conn.execute("SELECT name FROM customers WHERE id = %s", (customer["id"],))
        assert stored.fetchone() == (name,)
    assert conn.execute("SELECT to_regclass('customers') IS NOT NULL").fetchone() == (True,)
    project = make_project(api, created[0]["id"], names[1])
    assert project["name"] == names[1] and project["customer_name"] == names[0]
    feature = make_feature(api, f"meta_{unique}", name=names[0], description=names[4])
    assert (feature["name"], feature["description"]) == (names[0], names[4])
    patched = expect(api.patch(f"/features/{feature['id']}", json={"name": names[2]}), 200)
    assert patched["name"] == names[2]


def test_search_treats_wildcards_literally(api: TestClient, unique: str) -> None:
    percent = make_customer(api, f"lit {unique} 100% sure")
    make_customer(api, f"lit {unique} 1000 sure")
    underscore = make_customer(api, f"lit {unique} a_b")
    make_customer(api, f"lit {unique} axb")
    backslash = make_customer(api, f"lit {unique} c\\d")
    make_customer(api, f"lit {unique} cd")
    make_customer(api, f"lit {unique} c\\\\d")  # two backslashes: contains c\ but not c\d

    assert ids(api, "/customers", q=f"{unique} 100%") == [percent["id"]]
    assert ids(api, "/customers", q=f"{unique} a_b") == [underscore["id"]]
    assert ids(api, "/customers", q=f"{unique} c\\d") == [backslash["id"]]
    assert page_of(api, "/customers", q=f"lit {unique}")["total"] == 7
    assert page_of(api, "/customers", q="%")["total"] >= 1
    # a lone wildcard is a character to find, not "anything"
    everything = page_of(api, "/customers")["total"]
    assert page_of(api, "/customers", q="_")["total"] < everything
    assert ids(api, "/customers", q=f"{unique}%") == []
    assert ids(api, "/customers", q=f"lit_{unique}") == []
