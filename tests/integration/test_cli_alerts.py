"""`fieldtrack alerts …` against the real API: rules, channels, alerts, acknowledgement, and
errors as one line, never a traceback."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from services.accounts.roles import Role
from tests.integration.conftest import Project, mint_token
from tests.integration.test_cli_registry import cli_as


@pytest.fixture
def cli(api_url: str, admin_token: str) -> Any:
    return cli_as(api_url, admin_token)


def test_rules_channels_and_alerts_from_the_command_line(
    cli: Any, api_url: str, settings: Any, conn: psycopg.Connection, project: Project, unique: str
) -> None:
    added = cli("alerts", "channels", "add", f"cli-{unique}", "email", f"ops-{unique}@example.com")
    assert added.exit_code == 0, added.output
    [channel_id] = conn.execute(
        "SELECT id FROM alert_channels WHERE name = %s", (f"cli-{unique}",)
    ).fetchone() or (None,)
    rule = cli(
        "alerts",
        "rules",
        "add",
        "project_silent",
        "--project",
        str(project.id),
        "--set",
        "silent_s=600",
        "--channel",
        str(channel_id),
    )
    assert rule.exit_code == 0, rule.output
    assert "600" in rule.output
    listed = cli("alerts", "rules", "list")
    assert "project_silent" in listed.output
    bad = cli(
        "alerts", "rules", "add", "project_silent", "--project", str(project.id), "--set", "x"
    )
    assert bad.exit_code == 1
    assert "expected NAME=VALUE" in bad.output
    refused = cli(
        "alerts",
        "rules",
        "add",
        "project_silent",
        "--project",
        str(project.id),
        "--set",
        "silent_s=1",
    )
    assert refused.exit_code == 1
    assert "greater than or equal to 10" in refused.output

    [alert_id] = conn.execute(
        "INSERT INTO alerts (rule_id, kind, project_id, subject, state, summary, evidence, "
        "fired_at, updated_at) SELECT id, kind, %s, %s, 'firing', %s, %s, now(), now() "
        "FROM alert_rules WHERE kind = 'project_silent' AND project_id IS NULL RETURNING id",
        (project.id, f"cli:{unique}", f"silent {unique}", Jsonb({})),
    ).fetchone() or (None,)
    shown = cli("alerts", "list")
    assert f"silent {unique}" in shown.output
    acked = cli("alerts", "ack", str(alert_id))
    assert acked.exit_code == 0, acked.output
    assert "acknowledged" in acked.output
    twice = cli("alerts", "ack", str(alert_id))
    assert twice.exit_code == 1
    assert "not firing" in twice.output
    # a customer's viewer neither sees rules nor acknowledges
    viewer = cli_as(
        api_url,
        mint_token(settings.database_url.get_secret_value(), Role.VIEWER, project.customer_id),
    )
    assert viewer("alerts", "rules", "list").exit_code == 1
    assert viewer("alerts", "ack", str(alert_id)).exit_code == 1
    assert f"silent {unique}" in viewer("alerts", "list", "--all").output
    kinds = cli("alerts", "kinds")
    assert "adoption_drop (pm)" in kinds.output
