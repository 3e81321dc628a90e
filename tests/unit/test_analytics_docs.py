"""docs/analytics.md says what the code does: its verdict table is the rule table the code
decides by, with the default thresholds, and it names every threshold setting."""

from __future__ import annotations

from pathlib import Path

from services.analytics.recommend import AnalyticsThresholds, rules

DOC = (Path(__file__).resolve().parents[2] / "docs" / "analytics.md").read_text()


def test_the_docs_verdict_table_is_the_codes_rule_table() -> None:
    for rule in rules(AnalyticsThresholds()):
        assert f"| **{rule.label}** | {rule.when} | {rule.advice} |" in DOC, rule.label


def test_the_docs_name_every_threshold_setting() -> None:
    for name in AnalyticsThresholds.model_fields:
        assert f"`{name.upper()}`" in DOC, name
