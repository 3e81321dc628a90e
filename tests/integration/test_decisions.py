"""The decision log against the real database: evidence frozen when a decision is recorded,
what usage did after it, and every refusal on purpose (never a 500)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from services.core.topics import MessageKind
from services.ingest.history import HistoryImporter
from services.registry import upserts as registry
from tests.integration.conftest import Project

RECOMMENDATIONS = {
    "iterate_invest",
    "keep_prudently",
    "cut_candidate",
    "insufficient_data",
    "too_early",
}


# --- helpers -------------------------------------------------------------------------------


def expect(response: httpx.Response, status: int) -> Any:
    assert response.status_code < 500, f"server error: {response.text}"
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: expected {status}, "
        f"got {response.status_code}: {response.text}"
    )
    return response.json() if response.content else None


class Fleet:
    """Devices of one project, fed through the history importer (the real ingest path)."""

    def __init__(self, conn: psycopg.Connection, project_id: int, prefix: str, count: int):
        self.conn = conn
        self.serials = [f"{prefix}-{i}" for i in range(count)]
        registry.provision_devices(conn, None, project_id, [(s, "m", "1.0") for s in self.serials])
        self.seq = dict.fromkeys(self.serials, 0)

    def send(self, items: list[tuple[int, datetime, str | None, int]]) -> None:
        """(device index, device time, feature used or None for a telemetry message, count)."""
        importer = HistoryImporter(self.conn)
        for index, ts, feature, count in items:
            serial = self.serials[index]
            self.seq[serial] += 1
            body: dict[str, Any] = {"v": 1, "seq": self.seq[serial], "ts": ts.isoformat()}
            if feature is None:
                body["metrics"] = [{"name": "battery", "value": 80.0, "unit": "%"}]
                kind = MessageKind.TELEMETRY
            else:
                body["events"] = [{"feature": feature, "count": count}]
                kind = MessageKind.USAGE
            importer.add(serial, kind, json.dumps(body).encode())
        report = importer.finish()
        assert report.quarantined == {}, report
        assert report.messages == len(items), report


def decide(api: TestClient, status: int = 201, **fields: Any) -> Any:
    body = {"decision": "cut", "rationale": "nobody uses it", **fields}
    return expect(api.post("/decisions", json=body), status)


def first_error(response: httpx.Response) -> dict[str, Any]:
    body = expect(response, 422)
    error: dict[str, Any] = body["detail"][0]
    return error


# --- evidence and what happened after -------------------------------------------------------


def test_evidence_is_frozen_and_after_shows_usage_since(
    api: TestClient, conn: psycopg.Connection, project: Project, unique: str
) -> None:
    key = project.feature_key
    fleet = Fleet(conn, project.id, f"dec-{unique}", 4)
    # At 06:00: the first report, 36 h before, falls on a day whose midnight (where a feature
    # with no go-live is live from) is before the 2-day window, whatever time the test runs.
    decided_at = (datetime.now(UTC) - timedelta(days=3)).replace(
        hour=6, minute=0, second=0, microsecond=0
    )
    # Before the decision (2-day evidence window): 4 devices report, 2 use the feature.
    fleet.send(
        [
            (0, decided_at - timedelta(hours=36), key, 1),
            (0, decided_at - timedelta(hours=12), key, 2),
            (1, decided_at - timedelta(hours=12), key, 1),
            (2, decided_at - timedelta(hours=12), None, 0),
            (3, decided_at - timedelta(hours=12), None, 0),
        ]
    )

    created = decide(
        api,
        project_id=project.id,
        feature_key=key,
        decision="cut",
        window_days=2,
        rationale="  half the fleet never touches it  ",
        decided_by="Dana (PM)",
        decided_at=decided_at.isoformat(),
    )
    assert created["scope"] == "project"
    assert created["project_id"] == project.id
    assert created["customer_name"] == f"Customer {unique}"
    assert created["feature_key"] == key
    assert created["rationale"] == "half the fleet never touches it"
    assert created["decided_by"] == "test-admin"  # the caller, not what the body claims
    assert datetime.fromisoformat(created["decided_at"]) == decided_at
    evidence = created["evidence"]
    measures = evidence["measures"]
    assert evidence["scope"] == "project"
    assert measures["project_ids"] == [project.id]
    assert (measures["devices_reporting"], measures["devices_using"]) == (4, 2)
    assert measures["adoption"] == pytest.approx(0.5)
    assert measures["events"] == 4
    assert measures["events_per_day"] == pytest.approx(2.0)
    assert measures["days"] == pytest.approx(2.0)
    assert evidence["delivery_status"] == "delivered"
    assert evidence["recommendation"] in RECOMMENDATIONS
    # no go-live date: live since the first report, a day and a half before the decision
    assert evidence["recommendation"] == "too_early"
    assert evidence["confidence"] == "low"  # 4 devices: below the medium threshold
    assert evidence["adoption_low"] <= measures["adoption"] <= evidence["adoption_high"]
    assert evidence["explanation"]
    assert evidence["analytics"]["feature_key"] == key

    # The evidence is what the analytics said for that window.
    window = {"since": measures["since"], "until": measures["until"]}
    analytics = expect(api.get(f"/projects/{project.id}/analytics", params=window), 200)
    [row] = [f for f in analytics["features"] if f["feature_key"] == key]
    assert row["adoption"] == pytest.approx(measures["adoption"])
    assert row["stickiness"] == pytest.approx(measures["stickiness"])
    assert row["events"] == measures["events"]
    assert row["recommendation"] == evidence["recommendation"]
    assert analytics["coverage"]["devices_reporting"] == measures["devices_reporting"]

    # The window after the decision is over (2 of the 3 days since) and had no data yet.
    after = created["after"]
    assert after is not None
    assert after["complete"] is True
    assert after["measures"]["devices_reporting"] == 0
    assert after["measures"]["events"] == 0
    assert after["change"]["adoption"] == pytest.approx(-0.5)
    assert after["change"]["events_per_day"] == pytest.approx(-2.0)
    assert after["change"]["events_per_day_ratio"] == pytest.approx(0.0)
    since = datetime.fromisoformat(after["measures"]["since"])
    assert since >= decided_at
    assert since - decided_at < timedelta(hours=1)
    assert datetime.fromisoformat(after["measures"]["until"]) - since == timedelta(days=2)

    # Late data inside the evidence window, and usage after the decision.
    fleet.send(
        [
            (2, decided_at - timedelta(hours=6), key, 5),
            (0, decided_at + timedelta(hours=5), key, 1),
            (1, decided_at + timedelta(hours=5), key, 1),
            (2, decided_at + timedelta(hours=5), key, 1),
            (3, decided_at + timedelta(hours=5), None, 0),
            (0, decided_at + timedelta(hours=30), key, 3),
            (1, decided_at + timedelta(days=2, hours=6), key, 9),  # after the 2-day window
        ]
    )

    # The analytics of the evidence window changed; the stored evidence did not.
    analytics = expect(api.get(f"/projects/{project.id}/analytics", params=window), 200)
    [row] = [f for f in analytics["features"] if f["feature_key"] == key]
    assert row["adoption"] == pytest.approx(0.75)
    again = expect(api.get(f"/decisions/{created['id']}"), 200)
    assert again["evidence"] == evidence

    after = again["after"]
    assert after["complete"] is True
    assert after["measures"]["devices_reporting"] == 4
    assert after["measures"]["devices_using"] == 3
    assert after["measures"]["adoption"] == pytest.approx(0.75)
    assert after["measures"]["events"] == 6
    assert after["measures"]["events_per_day"] == pytest.approx(3.0)
    assert after["change"]["adoption"] == pytest.approx(0.25)
    assert after["change"]["events_per_day"] == pytest.approx(1.0)
    assert after["change"]["events_per_day_ratio"] == pytest.approx(1.5)
    assert after["change"]["stickiness"] == pytest.approx(
        after["measures"]["stickiness"] - measures["stickiness"]
    )


def test_running_window_after_a_recent_decision(
    api: TestClient, conn: psycopg.Connection, project: Project, unique: str
) -> None:
    key = project.feature_key
    fleet = Fleet(conn, project.id, f"run-{unique}", 2)
    decided_at = datetime.now(UTC) - timedelta(days=1)
    fleet.send(
        [(0, decided_at - timedelta(hours=3), key, 1), (1, decided_at + timedelta(hours=3), key, 4)]
    )
    created = decide(
        api,
        project_id=project.id,
        feature_key=key,
        decision="iterate",
        decided_at=decided_at.isoformat(),
        rationale="usage is climbing",
    )
    assert created["window_days"] == 30
    # no go-live date: live since the day of the first report, and measured from there
    evidence = created["evidence"]
    first_day = (decided_at - timedelta(hours=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert evidence["measures"]["days"] == pytest.approx(
        (decided_at - first_day) / timedelta(days=1)
    )
    assert evidence["analytics"]["measured_days"] == pytest.approx(evidence["measures"]["days"])
    after = created["after"]
    assert after["complete"] is False  # one of 30 days has passed
    assert after["measures"]["days"] < 1
    assert after["measures"]["devices_using"] == 1
    assert after["measures"]["events"] == 4


def test_a_decision_made_now_has_no_after_yet(api: TestClient, project: Project) -> None:
    created = decide(
        api,
        project_id=project.id,
        feature_key=project.feature_key,
        decision="keep",
        rationale="wait and see",
    )
    assert created["after"] is None
    assert created["evidence"]["measures"]["devices_reporting"] == 0
    decided_at = datetime.fromisoformat(created["decided_at"])
    assert abs(datetime.now(UTC) - decided_at) < timedelta(minutes=1)


def test_portfolio_decision(
    api: TestClient, conn: psycopg.Connection, project: Project, unique: str
) -> None:
    key = project.feature_key
    fleet = Fleet(conn, project.id, f"pf-{unique}", 3)
    decided_at = datetime.now(UTC) - timedelta(days=2)
    fleet.send(
        [
            (0, decided_at - timedelta(hours=2), key, 2),
            (1, decided_at - timedelta(hours=2), None, 0),
            (2, decided_at + timedelta(hours=4), key, 1),
        ]
    )
    feature_id = expect(api.get("/features", params={"q": key}), 200)["items"][0]["id"]
    created = decide(
        api,
        feature_id=feature_id,
        decision="iterate",
        window_days=1,
        decided_at=decided_at.isoformat(),
        rationale="roll it out wider",
    )
    assert created["scope"] == "portfolio"
    assert created["project_id"] is None
    assert created["project_name"] is None
    assert created["feature_key"] == key
    evidence = created["evidence"]
    assert evidence["scope"] == "portfolio"
    assert evidence["measures"]["project_ids"] == [project.id]  # the only project with it
    assert evidence["measures"]["devices_reporting"] == 2
    assert evidence["measures"]["adoption"] == pytest.approx(0.5)
    assert evidence["analytics"]["feature_key"] == key
    assert evidence["analytics"]["projects_delivered"] == 1
    assert sum(evidence["recommendations"].values()) == 1
    after = created["after"]
    assert after["complete"] is True
    assert after["measures"]["devices_using"] == 1
    assert after["measures"]["adoption"] == pytest.approx(1.0)
    assert after["change"]["adoption"] == pytest.approx(0.5)


def test_list_filters_and_pages(api: TestClient, project: Project) -> None:
    key = project.feature_key
    keep = decide(api, project_id=project.id, feature_key=key, decision="keep", rationale="a")
    cut = decide(api, project_id=project.id, feature_key=key, decision="cut", rationale="zulu")
    portfolio = decide(api, feature_key=key, decision="iterate", rationale="c")

    page = expect(api.get("/decisions", params={"project_id": project.id}), 200)
    assert page["total"] == 2
    assert [d["id"] for d in page["items"]] == [cut["id"], keep["id"]]  # newest first
    assert all("after" in d and "evidence" in d for d in page["items"])

    page = expect(api.get("/decisions", params={"project_id": project.id, "decision": "keep"}), 200)
    assert [d["id"] for d in page["items"]] == [keep["id"]]

    page = expect(api.get("/decisions", params={"feature_key": key}), 200)
    assert {d["id"] for d in page["items"]} == {keep["id"], cut["id"], portfolio["id"]}

    page = expect(api.get("/decisions", params={"feature_key": key, "scope": "portfolio"}), 200)
    assert [d["id"] for d in page["items"]] == [portfolio["id"]]

    page = expect(
        api.get("/decisions", params={"feature_key": key, "limit": 1, "offset": 1, "sort": "id"}),
        200,
    )
    assert page["total"] == 3
    assert page["limit"] == 1
    assert page["offset"] == 1
    assert [d["id"] for d in page["items"]] == [cut["id"]]

    page = expect(api.get("/decisions", params={"feature_key": key, "q": "ZULU"}), 200)
    assert [d["id"] for d in page["items"]] == [cut["id"]]


# --- refusals ---------------------------------------------------------------------------------


def test_unknown_references_are_404(api: TestClient, project: Project, unique: str) -> None:
    body = expect(
        api.post(
            "/decisions",
            json={
                "project_id": 2**62,
                "feature_key": project.feature_key,
                "decision": "cut",
                "rationale": "x",
            },
        ),
        404,
    )
    assert body["detail"] == f"project {2**62} not found"
    body = expect(
        api.post(
            "/decisions",
            json={
                "project_id": project.id,
                "feature_key": f"nope_{unique}",
                "decision": "cut",
                "rationale": "x",
            },
        ),
        404,
    )
    assert f"nope_{unique}" in body["detail"]
    body = expect(
        api.post("/decisions", json={"feature_id": 2**62, "decision": "cut", "rationale": "x"}), 404
    )
    assert body["detail"] == f"feature {2**62} not found"
    expect(api.get(f"/decisions/{2**62}"), 404)


def test_a_feature_with_nothing_to_decide_on_is_422(
    api: TestClient, conn: psycopg.Connection, project: Project, unique: str
) -> None:
    other = f"other_{unique}"
    registry.upsert_feature(conn, other, "Other", None, None)  # in the catalog, not delivered
    error = first_error(
        api.post(
            "/decisions",
            json={
                "project_id": project.id,
                "feature_key": other,
                "decision": "keep",
                "rationale": "x",
            },
        )
    )
    assert error["loc"] == ["body", "feature_key"]
    assert "not delivered" in error["msg"]
    error = first_error(
        api.post("/decisions", json={"feature_key": other, "decision": "keep", "rationale": "x"})
    )
    assert "not delivered to any project" in error["msg"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"decision": "drop"}, "decision"),
        ({"decision": None}, "decision"),
        ({"rationale": ""}, "rationale"),
        ({"rationale": "   "}, "rationale"),
        ({"rationale": "a\u0000b"}, "rationale"),
        ({"rationale": "x" * 5001}, "rationale"),
        ({"decided_by": "a\u0000b"}, "decided_by"),
        ({"window_days": 0}, "window_days"),
        ({"window_days": 401}, "window_days"),
        ({"decided_at": "2026-01-01T00:00:00"}, "decided_at"),  # no time zone
        ({"decided_at": "2999-01-01T00:00:00Z"}, "decided_at"),
        ({"decided_at": "0001-01-01T00:00:00Z"}, "decided_at"),
        ({"project_id": 0}, "project_id"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_invalid_input_is_422(
    api: TestClient, project: Project, change: dict[str, Any], field: str
) -> None:
    body = {
        "project_id": project.id,
        "feature_key": project.feature_key,
        "decision": "cut",
        "rationale": "because",
        **change,
    }
    error = first_error(api.post("/decisions", json=body))
    assert error["loc"][:2] == ["body", field], error


def test_feature_named_once_and_only_once(api: TestClient, project: Project) -> None:
    base = {"project_id": project.id, "decision": "cut", "rationale": "x"}
    first_error(api.post("/decisions", json=base))
    first_error(
        api.post("/decisions", json={**base, "feature_key": project.feature_key, "feature_id": 1})
    )
    error = first_error(api.post("/decisions", json={**base, "feature_key": "Bad Key"}))
    assert error["loc"] == ["body", "feature_key"]


def test_list_refuses_bad_filters(api: TestClient) -> None:
    assert first_error(api.get("/decisions", params={"decision": "drop"}))["loc"] == [
        "query",
        "decision",
    ]
    assert first_error(api.get("/decisions", params={"sort": "rationale"}))["loc"] == [
        "query",
        "sort",
    ]
    expect(api.get("/decisions", params={"q": "a\u0000b"}), 422)
    expect(api.get("/decisions/0"), 422)
