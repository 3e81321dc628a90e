"""services/analytics/report.py renders the customer report from the analytics' models: the
dashboard page renders what it computed, `fieldtrack report` what the API answered, read
back into the same models, and both give the same page."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from services.accounts.roles import Audience
from services.analytics.portfolio import CustomerProjectAnalytics, ProjectAnalytics
from services.analytics.recommend import AnalyticsThresholds, rule_texts
from services.analytics.report import CustomerReport, render_html
from services.client.report import Collected, render_tables
from services.registry.models import Customer, CustomerView

SINCE, UNTIL = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 31, tzinfo=UTC)
NAME = "Müller & <Söhne>"


def _feature(key: str, status: str | None, internal: bool, rec: str | None) -> dict[str, Any]:
    f: dict[str, Any] = {
        "feature_key": key,
        "feature_name": key.title(),
        "kind": "interactive",
        "delivery_status": status,
        "delivered_on": "2026-09-01" if status else None,
        "live_since": "2026-10-10" if status == "delivered" else None,
        "days_live": 21.0,
        "measured_since": "2026-10-10T00:00:00Z",
        "measured_days": 21.0,
        "devices_reporting": 12,
        "device_days_reporting": 240,
        "devices_using": 6,
        "events": 40,
        "adoption": 0.5,
        "adoption_low": 0.25,
        "adoption_high": 0.75,
        "frequency": 1.0,
        "stickiness": 0.3,
        "enabled_reporting": 0,
        "devices_enabled": 0,
        "enabled_share": None,
        "enabled_low": None,
        "enabled_high": None,
        "adoption_previous": None,
        "trend": 0.05,
        "first_used": None,
        "days_to_first_use": None,
        "last_used": None,
        "confidence": "medium",
        "confidence_reason": "12 devices",
    }
    if internal and status is not None:
        f |= {
            "business_value": 0.7 if rec else None,
            "business_high": True,
            "user_value": "shown" if rec else None,
            "recommendation": rec,
            "explanation": "used by half the fleet" if rec else None,
            "peers": None,
        }
    return f


def _project(internal: bool) -> dict[str, Any]:
    context: dict[str, Any] = {
        "project_id": 1,
        "project_name": "Lockers EU",
        "customer_id": 1,
        "customer_name": NAME,
        "industry": "hospitality",
        "go_live_date": "2026-10-10",
        "devices_total": 12,
    }
    if internal:
        context |= {"tier": "tail", "lifecycle_stage": "adoption", "contract_value": 1000.0}
    project: dict[str, Any] = {
        "live_since": "2026-10-10",
        "since": SINCE.isoformat(),
        "until": UNTIL.isoformat(),
        "coverage": {
            "measured_since": "2026-10-10T00:00:00Z",
            "measured_days": 21.0,
            "devices_reporting": 11,
            "devices_silent": 1,
            "reporting_share": 11 / 12,
            "device_days_reporting": 230,
            "completeness": 0.97,
        },
        "confidence": "medium",
        "confidence_reason": "11 devices, 21 days",
        "project": context,
        "features": [
            _feature("remote_unlock", "delivered", internal, "iterate_invest"),
            _feature("dimming", "planned", internal, None),
        ],
    }
    if internal:
        project["undelivered_usage"] = [_feature("stray_feature", None, internal, None)]
    return project


def _answers(internal: bool) -> Collected:
    """What `fieldtrack report` collects from the API."""
    customer: dict[str, Any] = {
        "id": 1,
        "name": NAME,
        "industry": "hospitality",
        "created_at": "2026-01-01T00:00:00Z",
    }
    if internal:
        customer |= {"tier": "tail", "lifecycle_stage": "adoption"}
    rules = [r.model_dump(mode="json") for r in rule_texts(AnalyticsThresholds())]
    audience = Audience.INTERNAL if internal else Audience.CUSTOMER
    return Collected(
        customer, SINCE, UNTIL, 30, UNTIL, [_project(internal)], audience, rules if internal else []
    )


def _computed(internal: bool) -> CustomerReport:
    """What the dashboard page builds from the models it computed."""
    answers = _answers(internal)
    model = ProjectAnalytics if internal else CustomerProjectAnalytics
    return CustomerReport(
        customer=(Customer if internal else CustomerView).model_validate(answers.customer),
        since=SINCE,
        until=UNTIL,
        window_days=30,
        generated_at=UNTIL,
        projects=[model.model_validate(p) for p in answers.projects],
        internal=internal,
        rules=rule_texts(AnalyticsThresholds()) if internal else [],
    )


@pytest.mark.parametrize("internal", [True, False])
def test_page_and_cli_render_the_same_report(internal: bool) -> None:
    assert render_html(_answers(internal).typed()) == render_html(_computed(internal))


def test_the_internal_version_carries_verdicts_and_undelivered_use() -> None:
    page = render_html(_computed(True))
    assert "tail tier · hospitality · adoption" in page
    assert '<span class="badge rec-iterate_invest">' in page and "used by half the fleet" in page
    assert "stray_feature" in page and "never delivered here" in page
    assert "0.70" in page  # business value
    assert "Müller &amp; &lt;Söhne&gt;" in page and "<Söhne>" not in page


def test_the_customer_version_carries_no_verdict() -> None:
    page = render_html(_computed(False))
    assert "customer version" in page and "badge rec-" not in page
    assert "tail tier" not in page and "stray_feature" not in page and "0.70" not in page
    assert "11 of 12 devices reporting (92%)" in page


def test_the_terminal_table_reads_the_same_models() -> None:
    out = io.StringIO()
    render_tables(_answers(True).typed(), Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "tail tier" in text and "iterate / invest" in text and "stray_feature" in text
    assert "50% (25%–75%)" in text and "+5 pts" in text
