"""/alerts through the real app: who sees which alerts, who may acknowledge and change rules,
and clear 4xx answers for bad requests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from services.accounts.roles import Role
from services.alerts.rules import RuleKind
from services.core.settings import Settings
from tests.integration.conftest import Project, api_client, mint_token


@pytest.fixture
def client_as(settings: Settings) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(role: Role, customer_id: int | None = None) -> TestClient:
        token = mint_token(settings.database_url.get_secret_value(), role, customer_id)
        client = api_client(settings, token)
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _seen(client: TestClient, tag: str) -> set[int]:
    response = client.get("/alerts", params={"limit": 500})
    assert response.status_code == 200, response.text
    return {a["id"] for a in response.json()["items"] if a["evidence"].get("tag") == tag}


def test_each_role_sees_the_alerts_of_its_audience_and_a_viewer_only_its_customers(
    project: Project,
    other_project: Project,
    alerts_of: Callable[[Project, str], dict[RuleKind, int]],
    client_as: Callable[..., TestClient],
    unique: str,
) -> None:
    mine, theirs = alerts_of(project, unique), alerts_of(other_project, unique)
    device_kinds = {
        RuleKind.DEVICE_SILENT,
        RuleKind.PROJECT_SILENT,
        RuleKind.DEVICES_OFFLINE,
        RuleKind.COMPLETENESS_LOW,
    }
    ops_kinds = {RuleKind.QUARANTINE_RATE, RuleKind.INGEST_LAG}

    def ids(made: dict[RuleKind, int], kinds: set[RuleKind]) -> set[int]:
        return {made[k] for k in kinds}

    everything = set(mine.values()) | set(theirs.values())
    assert _seen(client_as(Role.ADMIN), unique) == everything
    assert _seen(client_as(Role.OPS), unique) == ids(mine, device_kinds | ops_kinds) | ids(
        theirs, device_kinds | ops_kinds
    )
    assert _seen(client_as(Role.PM), unique) == ids(
        mine, device_kinds | {RuleKind.ADOPTION_DROP}
    ) | ids(theirs, device_kinds | {RuleKind.ADOPTION_DROP})
    viewer = client_as(Role.VIEWER, project.customer_id)
    # a customer's own staff: their projects' device alerts; never PM evidence, never ingest
    assert _seen(viewer, unique) == ids(mine, device_kinds)
    for kind, alert in theirs.items():
        assert viewer.get(f"/alerts/{alert}").status_code == 404, kind
    assert viewer.get(f"/alerts/{mine[RuleKind.ADOPTION_DROP]}").status_code == 404
    assert viewer.get(f"/alerts/{mine[RuleKind.QUARANTINE_RATE]}").status_code == 404
    assert viewer.get(f"/alerts/{mine[RuleKind.PROJECT_SILENT]}").status_code == 200
    assert viewer.get("/alerts/count").json()["open"] >= len(device_kinds)


def test_acknowledging_is_for_staff_who_see_the_alert_and_happens_once(
    project: Project,
    alerts_of: Callable[[Project, str], dict[RuleKind, int]],
    client_as: Callable[..., TestClient],
    unique: str,
) -> None:
    made = alerts_of(project, unique)
    viewer = client_as(Role.VIEWER, project.customer_id)
    assert viewer.post(f"/alerts/{made[RuleKind.PROJECT_SILENT]}/acknowledge").status_code == 403
    pm = client_as(Role.PM)
    # PMs do not see ingest alerts: acknowledging one is "not found", not a change
    assert pm.post(f"/alerts/{made[RuleKind.INGEST_LAG]}/acknowledge").status_code == 404
    ops = client_as(Role.OPS)
    response = ops.post(f"/alerts/{made[RuleKind.PROJECT_SILENT]}/acknowledge")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "acknowledged"
    assert body["acknowledged_by"] == "test"
    assert datetime.fromisoformat(body["acknowledged_at"]) <= datetime.now(UTC)
    again = ops.post(f"/alerts/{made[RuleKind.PROJECT_SILENT]}/acknowledge")
    assert again.status_code == 409
    assert "acknowledged, not firing" in again.json()["detail"]


def test_rules_and_channels_are_for_admins_and_ops_and_bad_ones_get_a_clear_4xx(
    project: Project, client_as: Callable[..., TestClient], unique: str
) -> None:
    pm = client_as(Role.PM)
    assert pm.get("/alerts/rules").status_code == 403
    body = {"kind": "project_silent", "project_id": project.id, "params": {"silent_s": 60}}
    assert pm.post("/alerts/rules", json=body).status_code == 403
    ops = client_as(Role.OPS)
    created = ops.post("/alerts/rules", json=body)
    assert created.status_code == 201, created.text
    rule = created.json()
    assert rule["effective_params"] == {"silent_s": 60}
    assert ops.post("/alerts/rules", json=body).status_code == 409  # one rule per kind × project
    bad = [
        ({**body, "params": {"silent_s": 1}}, "greater than or equal to 10"),
        ({**body, "params": {"silence": 60}}, "silence"),
        ({**body, "params": {"silent_s": "NaN"}}, "silent_s"),
        ({**body, "kind": "everything"}, "kind"),
        ({"kind": "ingest_lag", "project_id": project.id}, "no project rule"),
        ({**body, "channels": [2**62]}, "no such channel"),
        ({**body, "project_id": 2**62}, "project_id"),
    ]
    for request, why in bad:
        response = ops.post("/alerts/rules", json=request)
        assert 400 <= response.status_code < 500, (request, response.text)
        assert why in response.text, (request, response.text)
    patched = ops.patch(f"/alerts/rules/{rule['id']}", json={"params": {"silent_s": 5}})
    assert patched.status_code == 422, patched.text
    default = next(
        r
        for r in ops.get("/alerts/rules").json()
        if r["kind"] == "project_silent" and r["project_id"] is None
    )
    # a PM alert's evidence is not for ops: they cannot route or change its rules
    adoption = next(
        r
        for r in ops.get("/alerts/rules").json()
        if r["kind"] == "adoption_drop" and r["project_id"] is None
    )
    routed = ops.patch(f"/alerts/rules/{adoption['id']}", json={"channels": []})
    assert routed.status_code == 403
    assert "adoption_drop alerts are for pm staff" in routed.text
    own = {"kind": "adoption_drop", "project_id": project.id}
    assert ops.post("/alerts/rules", json=own).status_code == 403
    refused = ops.delete(f"/alerts/rules/{default['id']}")
    assert refused.status_code == 409
    assert "disable it instead" in refused.text
    assert ops.delete(f"/alerts/rules/{rule['id']}").status_code == 204

    channels = [
        ({"name": f"h-{unique}", "kind": "webhook", "target": "ftp://example.com/x"}, "URL"),
        ({"name": f"s-{unique}", "kind": "webhook", "target": "http://a\tb.com/"}, "control"),
        ({"name": f"i-{unique}", "kind": "email", "target": "ü@example.de"}, "not an email"),
        (
            {
                "name": f"z-{unique}",
                "kind": "email",
                "target": "a@b.de",
                "quiet_start": "22:00",
                "quiet_end": "22:00",
            },
            "the same time",
        ),
        ({"name": f"m-{unique}", "kind": "email", "target": "ops@x.org, nobody"}, "nobody"),
        (
            {"name": f"q-{unique}", "kind": "email", "target": "a@b.c", "quiet_start": "22:00"},
            "together",
        ),
        ({"name": "x\u0000", "kind": "webhook", "target": "http://127.0.0.1/"}, "name"),
    ]
    for channel, why in channels:
        response = ops.post("/alerts/channels", json=channel)
        assert response.status_code == 422, (channel, response.text)
        assert why in response.text, (channel, response.text)
    made = ops.post(
        "/alerts/channels",
        json={
            "name": f"ok-{unique}",
            "kind": "webhook",
            "target": "http://127.0.0.1:9/x",
            "secret": "s" * 32,
        },
    )
    assert made.status_code == 201, made.text
    assert made.json()["signed"] is True
    assert "secret" not in made.json()  # never read back
    assert client_as(Role.VIEWER, project.customer_id).get("/alerts/channels").status_code == 403
