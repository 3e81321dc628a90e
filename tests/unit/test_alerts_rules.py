"""The alerts' pure logic: parameters, which rule applies where, the schedule, quiet hours,
signatures; and docs/alerts.md names every kind and default."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from services.alerts.engine import Rule, effective_rules
from services.alerts.notify import quiet_until, signature
from services.alerts.rules import PARAMS, PER_PROJECT, RuleKind, catalog, parse_params
from services.alerts.runner import CADENCE, Schedule
from services.core.errors import InvalidInputError

DOC = Path(__file__).resolve().parents[2] / "docs" / "alerts.md"


def _rule(id_: int, kind: RuleKind, project: int | None, *, enabled: bool = True) -> Rule:
    return Rule(id_, kind, project, parse_params(kind, {}), enabled, [])


def test_parameters_are_checked_with_a_reason_a_person_can_act_on() -> None:
    assert parse_params(RuleKind.PROJECT_SILENT, {"silent_s": 60}).model_dump() == {"silent_s": 60}
    for params, why in (
        ({"silent_s": 5}, "greater than or equal to 10"),
        ({"silent_s": "soon"}, "silent_s"),
        ({"silent": 60}, "silent"),
        ({"silent_s": float("nan")}, "silent_s"),
    ):
        with pytest.raises(InvalidInputError, match=why):
            parse_params(RuleKind.PROJECT_SILENT, params)


def test_a_projects_own_rule_replaces_the_default_and_a_disabled_one_silences_it() -> None:
    rules = [
        _rule(1, RuleKind.PROJECT_SILENT, None),
        _rule(2, RuleKind.PROJECT_SILENT, 10),
        _rule(3, RuleKind.DEVICES_OFFLINE, None),
        _rule(4, RuleKind.DEVICES_OFFLINE, 11, enabled=False),
        _rule(5, RuleKind.INGEST_LAG, None),
        _rule(6, RuleKind.QUARANTINE_RATE, None, enabled=False),
    ]
    per_project, portfolio = effective_rules(rules, [10, 11, 12])
    assert {p: r.id for p, r in per_project[RuleKind.PROJECT_SILENT].items()} == {
        10: 2,
        11: 1,
        12: 1,
    }
    assert {p: r.id for p, r in per_project[RuleKind.DEVICES_OFFLINE].items()} == {10: 3, 12: 3}
    assert RuleKind.ADOPTION_DROP not in per_project  # no rule of that kind at all
    assert {k: r.id for k, r in portfolio.items()} == {RuleKind.INGEST_LAG: 5}
    only = effective_rules(rules, [10], frozenset({RuleKind.INGEST_LAG}))
    assert only == ({}, {RuleKind.INGEST_LAG: rules[4]})


def test_slow_kinds_run_on_the_first_pass_then_by_their_cadence() -> None:
    schedule = Schedule()
    now = datetime(2026, 12, 2, 10, tzinfo=UTC)
    assert schedule.due(now) == frozenset(RuleKind)
    schedule.done(schedule.due(now), now)
    soon = now + timedelta(minutes=1)
    assert schedule.due(soon) == frozenset(RuleKind) - CADENCE.keys()
    later = now + max(CADENCE.values())
    assert schedule.due(later) == frozenset(RuleKind)


@pytest.mark.parametrize(
    ("start", "end", "now", "until"),
    [
        (
            time(22),
            time(6),
            datetime(2026, 12, 2, 23, 30, tzinfo=UTC),
            datetime(2026, 12, 3, 6, tzinfo=UTC),
        ),
        (
            time(22),
            time(6),
            datetime(2026, 12, 2, 5, 59, tzinfo=UTC),
            datetime(2026, 12, 2, 6, tzinfo=UTC),
        ),
        (time(22), time(6), datetime(2026, 12, 2, 6, 0, tzinfo=UTC), None),
        (
            time(12),
            time(13),
            datetime(2026, 12, 2, 12, 30, tzinfo=UTC),
            datetime(2026, 12, 2, 13, tzinfo=UTC),
        ),
        (time(12), time(13), datetime(2026, 12, 2, 11, 59, tzinfo=UTC), None),
        (None, None, datetime(2026, 12, 2, 12, 30, tzinfo=UTC), None),
    ],
)
def test_quiet_hours_hold_a_notification_until_they_end(
    start: time | None, end: time | None, now: datetime, until: datetime | None
) -> None:
    assert quiet_until(start, end, now) == until


def test_the_signature_is_hmac_sha256_of_the_timestamp_and_the_body() -> None:
    body = b'{"event":"fired"}'
    expected = hmac.new(b"key", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("key", "1700000000", body) == f"sha256={expected}"
    assert signature("key", "1700000001", body) != f"sha256={expected}"


def test_every_kind_has_parameters_an_audience_and_a_place_in_the_docs() -> None:
    assert set(PARAMS) == set(RuleKind)
    text = DOC.read_text()
    for entry in catalog():
        assert f"`{entry['kind']}`" in text, entry["kind"]
        for name, spec in entry["params"].items():
            assert f"`{name}`" in text, (entry["kind"], name)
            assert f"{spec['default']:g}" in text, (entry["kind"], name, spec["default"])
    assert frozenset(RuleKind) - {RuleKind.QUARANTINE_RATE, RuleKind.INGEST_LAG} == PER_PROJECT
