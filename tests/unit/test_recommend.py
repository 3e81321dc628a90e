"""The verdict's pure functions: the Wilson interval, confidence, business value, the rule
table and `judge`, with properties checked by hypothesis."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import date

import pytest
from hypothesis import given, settings, strategies as st

from services.analytics.recommend import (
    CUT_RANK,
    LABELS,
    AnalyticsThresholds,
    Business,
    Confidence,
    Evidence,
    Recommendation,
    UserValue,
    confidence,
    judge,
    rule_for,
    rules,
    wilson,
)
from services.registry.enums import FeatureKind

T = AnalyticsThresholds()
LIVE = date(2026, 1, 1)
MODEST = Business(business_score=3, contract_line_value=5_000, contract_value=100_000)
VALUABLE = Business(business_score=5, contract_line_value=50_000, contract_value=100_000)


def _evidence(**changes: object) -> Evidence:
    base = Evidence(
        kind=FeatureKind.INTERACTIVE,
        devices_reporting=100,
        devices_using=50,
        stickiness=0.3,
        measured_days=30,
        completeness=0.98,
        live_since=LIVE,
        days_live=90,
        business=MODEST,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# wilson()


@pytest.mark.parametrize(
    ("part", "whole", "low", "high"),
    [
        (0, 12, 0.0, 0.2425),  # the example: 0 of 12 could still be 24 %
        (0, 50, 0.0, 0.0713),
        (12, 12, 0.7575, 1.0),
        (5, 100, 0.0215, 0.1118),
        (50, 100, 0.4038, 0.5962),
    ],
)
def test_wilson_known_values(part: int, whole: int, low: float, high: float) -> None:
    got = wilson(part, whole)
    assert math.isclose(got.low, low, abs_tol=5e-4) and math.isclose(got.high, high, abs_tol=5e-4)


def test_wilson_without_devices_says_nothing_and_refuses_nonsense() -> None:
    assert (wilson(0, 0).low, wilson(0, 0).high) == (0.0, 1.0)
    with pytest.raises(ValueError, match="not a share"):
        wilson(5, 3)


@given(st.integers(1, 5000), st.data())
def test_wilson_holds_the_share_and_grows_with_it(whole: int, data: st.DataObject) -> None:
    part = data.draw(st.integers(0, whole))
    got = wilson(part, whole)
    assert 0.0 <= got.low <= got.share <= got.high <= 1.0
    if part < whole:
        more = wilson(part + 1, whole)
        assert more.low >= got.low and more.high >= got.high


@pytest.mark.parametrize("p", [0.02, 0.1, 0.3, 0.5])
@pytest.mark.parametrize("n", [12, 40, 200])
def test_wilson_covers_the_true_share_about_95_percent_of_the_time(p: float, n: int) -> None:
    """Exact coverage from the binomial distribution: what 95 % promises, give or take the
    discreteness of small counts."""
    coverage = sum(
        math.comb(n, k) * p**k * (1 - p) ** (n - k)
        for k in range(n + 1)
        if wilson(k, n).low <= p <= wilson(k, n).high
    )
    assert coverage >= 0.90, coverage


# confidence()


def test_confidence_high_at_every_high_line() -> None:
    level, why = confidence(
        T.high_confidence_devices, T.high_confidence_days, T.high_confidence_completeness, T
    )
    assert level is Confidence.HIGH
    assert str(T.high_confidence_devices) in why


@pytest.mark.parametrize(
    ("devices", "days", "completeness", "reason"),
    [
        (T.medium_confidence_devices - 1, 30, 1.0, f"only {T.medium_confidence_devices - 1} "),
        (1000, T.medium_confidence_days - 1, 1.0, "days measured"),
        (1000, 30, T.medium_confidence_completeness - 0.01, "of expected messages"),
        (1000, 30, None, "0% of expected messages"),  # no sequence data: not trusted
        (0, 0.5, 0.0, "only 0 devices"),
    ],
)
def test_confidence_low_below_any_medium_line_and_says_why(
    devices: int, days: float, completeness: float | None, reason: str
) -> None:
    level, why = confidence(devices, days, completeness, T)
    assert level is Confidence.LOW
    assert reason in why


def test_thresholds_fail_fast() -> None:
    with pytest.raises(ValueError, match="must not exceed"):
        AnalyticsThresholds(medium_confidence_devices=50, high_confidence_devices=30)
    with pytest.raises(ValueError, match="Extra inputs"):
        AnalyticsThresholds.model_validate({"high_user_value": 0.5})  # a setting that is gone


# business value


def test_business_value_is_absolute_and_its_strongest_signal() -> None:
    assert Business().value() == 0.0
    assert Business(business_score=5).value() == 1.0
    assert Business(business_score=3).value() == 0.5
    assert Business(strategic=True).value() == 1.0
    assert Business(contract_line_value=10, contract_value=100).value() == pytest.approx(0.5)
    assert Business(contract_line_value=50, contract_value=100).value() == 1.0
    # no contract value: the line's share is unknown and counts for nothing
    assert Business(contract_line_value=50).value() == 0.0
    assert "strategic" in Business(strategic=True, business_score=2).describe()


@given(st.integers(1, 5), st.floats(0, 1e6), st.floats(1, 1e7), st.booleans(), st.integers(1, 5))
def test_business_value_never_falls_when_a_signal_rises(
    score: int, line: float, contract: float, strategic: bool, more: int
) -> None:
    before = Business(score, line, contract, strategic).value()
    assert 0.0 <= before <= 1.0
    assert Business(max(score, more), line, contract, strategic).value() >= before
    assert Business(score, line * 2, contract, strategic).value() >= before
    assert Business(score, line, contract, True).value() >= before


# the rule table


def test_every_user_value_and_business_level_has_exactly_one_rule() -> None:
    for user in UserValue:
        for high in (True, False):
            matching = [r for r in rules(T) if user in r.user_values and high in r.business_high]
            assert len(matching) == 1, (user, high)
            assert rule_for(T, user, high) is not None


def test_rules_name_every_verdict_once_with_its_label_and_thresholds() -> None:
    table = rules(T)
    assert [r.recommendation for r in table] == list(dict.fromkeys(r.recommendation for r in table))
    assert {r.recommendation for r in table} == set(Recommendation)
    for r in table:
        assert r.label == LABELS[r.recommendation]
    cut = next(r for r in table if r.recommendation is Recommendation.CUT_CANDIDATE)
    assert "10%" in cut.when and "whatever the business value" in cut.when
    assert any("15%" in r.when for r in rules(AnalyticsThresholds(cut_adoption=0.15)))


# judge(): the awkward cases by hand


def test_no_user_among_fifty_healthy_devices_is_a_cut_candidate_even_if_valuable() -> None:
    got = judge(
        _evidence(devices_using=0, devices_reporting=50, stickiness=0.0, business=VALUABLE), T
    )
    assert got.recommendation is Recommendation.CUT_CANDIDATE
    assert got.user_value is UserValue.NONE
    assert "at most 7.1%" in got.explanation and "does not make up for that" in got.explanation


def test_no_user_among_twelve_devices_is_insufficient_data_in_words() -> None:
    got = judge(_evidence(devices_using=0, devices_reporting=12, stickiness=0.0), T)
    assert got.recommendation is Recommendation.INSUFFICIENT_DATA
    assert got.explanation == (
        "0 of 12 devices used it (0%); with so few devices the true share could still be up "
        "to 24% (the cut line is 10%)"
    )


def test_half_the_fleet_with_little_business_value_is_kept_not_cut() -> None:
    got = judge(_evidence(devices_using=45, devices_reporting=100, business=Business()), T)
    assert got.recommendation is Recommendation.KEEP_PRUDENTLY
    assert "at least" in got.explanation


def test_heavily_used_and_valuable_is_invest() -> None:
    got = judge(_evidence(devices_using=90, business=VALUABLE), T)
    assert got.recommendation is Recommendation.ITERATE_INVEST
    assert got.explanation.endswith("invest")


def test_a_feature_live_six_days_is_too_early_whatever_its_use() -> None:
    for using in (0, 50, 100):
        got = judge(_evidence(devices_using=using, days_live=6, measured_days=6), T)
        assert got.recommendation is Recommendation.TOO_EARLY
        assert "live here for 6 days" in got.explanation and "from 2026-01-22" in got.explanation


def test_no_go_live_and_no_report_is_not_live() -> None:
    got = judge(_evidence(live_since=None, days_live=None), T)
    assert got.recommendation is Recommendation.TOO_EARLY
    assert "not live yet" in got.explanation


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"devices_reporting": 6, "devices_using": 0}, "only 6 devices"),
        ({"completeness": 0.4}, "40% of expected messages"),
        ({"measured_days": 2}, "only 2 days measured"),
    ],
)
def test_too_little_data_blocks_every_verdict(changes: dict[str, object], reason: str) -> None:
    got = judge(_evidence(**changes), T)
    assert got.recommendation is Recommendation.INSUFFICIENT_DATA
    assert reason in got.explanation


def test_a_standing_feature_that_never_fired_but_is_enabled_is_kept() -> None:
    alarm = _evidence(
        kind=FeatureKind.STANDING,
        devices_using=0,
        stickiness=0.0,
        enabled_reporting=100,
        devices_enabled=97,
    )
    got = judge(alarm, T)
    assert got.recommendation is Recommendation.KEEP_PRUDENTLY
    assert "enabled on 97 of 100 devices" in got.explanation


def test_a_standing_feature_without_enabled_reports_is_not_judged_by_firing() -> None:
    alarm = _evidence(kind=FeatureKind.STANDING, devices_using=0, stickiness=0.0)
    got = judge(alarm, T)
    assert got.recommendation is Recommendation.INSUFFICIENT_DATA
    assert "judged by being enabled, not by firing" in got.explanation


def test_a_standing_feature_switched_off_everywhere_and_unused_is_a_cut_candidate() -> None:
    alarm = _evidence(
        kind=FeatureKind.STANDING,
        devices_using=0,
        stickiness=0.0,
        enabled_reporting=80,
        devices_enabled=0,
    )
    assert judge(alarm, T).recommendation is Recommendation.CUT_CANDIDATE


def test_a_cut_rests_on_enough_days() -> None:
    """A feature used weekly or monthly can have a quiet week: not a cut over 7 days."""
    unused = _evidence(devices_using=0, devices_reporting=50, stickiness=0.0)
    short = judge(replace(unused, measured_days=7), T)
    assert short.recommendation is Recommendation.INSUFFICIENT_DATA
    assert "a cut rests on at least 14 days measured" in short.explanation
    assert (
        judge(replace(unused, measured_days=14), T).recommendation is Recommendation.CUT_CANDIDATE
    )


def test_a_few_devices_reporting_settings_do_not_speak_for_the_fleet() -> None:
    """36 of 500 devices (say, on new firmware) report the alarm off: not shown off."""
    alarm = _evidence(
        kind=FeatureKind.STANDING,
        devices_reporting=500,
        devices_using=0,
        stickiness=0.0,
        enabled_reporting=36,
        devices_enabled=0,
    )
    got = judge(alarm, T)
    assert got.recommendation is Recommendation.INSUFFICIENT_DATA
    assert "only 36 of 500 reporting devices report their settings" in got.explanation
    most = judge(replace(alarm, enabled_reporting=300), T)
    assert most.recommendation is Recommendation.CUT_CANDIDATE


def test_a_few_habitual_users_show_user_value() -> None:
    got = judge(_evidence(devices_using=4, devices_reporting=100, stickiness=0.04), T)
    assert got.user_value is UserValue.SHOWN
    assert "a habit" in got.explanation


# judge(): properties


@st.composite
def evidence(draw: st.DrawFn) -> Evidence:
    reporting = draw(st.integers(0, 600))
    return Evidence(
        kind=draw(st.sampled_from(FeatureKind)),
        devices_reporting=reporting,
        devices_using=draw(st.integers(0, reporting)),
        stickiness=draw(st.floats(0, 1)),
        measured_days=draw(st.floats(0, 120)),
        completeness=draw(st.none() | st.floats(0, 1)),
        live_since=LIVE,
        days_live=draw(st.none() | st.floats(-10, 400)),
        business=Business(
            draw(st.none() | st.integers(1, 5)),
            draw(st.none() | st.floats(0, 1e6)),
            draw(st.none() | st.floats(1, 1e7)),
            draw(st.booleans()),
        ),
        enabled_reporting=(enabled := draw(st.integers(0, 600))),
        devices_enabled=draw(st.integers(0, enabled)),
    )


@settings(max_examples=400)
@given(evidence(), st.integers(0, 600), st.floats(0, 1), st.integers(0, 600))
def test_more_adoption_stickiness_or_enablement_never_moves_towards_cut(
    e: Evidence, more_using: int, more_sticky: float, more_enabled: int
) -> None:
    before = CUT_RANK[judge(e, T).recommendation]
    changes = [
        {"devices_using": min(e.devices_reporting, e.devices_using + more_using)},
        {"stickiness": min(1.0, e.stickiness + more_sticky)},
        {"devices_enabled": min(e.enabled_reporting, e.devices_enabled + more_enabled)},
    ]
    for change in changes:
        after = judge(replace(e, **change), T)  # type: ignore[arg-type]
        assert CUT_RANK[after.recommendation] >= before, (change, after.explanation)


@settings(max_examples=300)
@given(evidence())
def test_a_cut_always_rests_on_an_interval_under_the_line(e: Evidence) -> None:
    got = judge(e, T)
    if got.recommendation is Recommendation.CUT_CANDIDATE:
        assert got.adoption.high < T.cut_adoption
        assert e.stickiness < T.cut_stickiness
        assert e.measured_days >= T.cut_min_days
        assert e.devices_reporting >= T.medium_confidence_devices
        assert e.days_live is not None and e.days_live >= T.maturity_days
        if e.kind is FeatureKind.STANDING:
            assert got.enabled is not None and got.enabled.high < T.cut_adoption
            assert e.enabled_reporting >= e.devices_reporting / 2
    if got.recommendation in {Recommendation.KEEP_PRUDENTLY, Recommendation.ITERATE_INVEST}:
        assert got.user_value is UserValue.SHOWN


@settings(max_examples=200)
@given(evidence(), evidence())
def test_a_verdict_depends_on_its_own_evidence_only(e: Evidence, other: Evidence) -> None:
    """`judge` sees one feature of one project; judging another in between changes nothing."""
    first = judge(e, T)
    judge(other, T)
    assert judge(e, T) == first
