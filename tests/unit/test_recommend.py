"""confidence() and assess(): pure functions, edge cases."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.analytics.recommend import (
    AnalyticsThresholds,
    Assessment,
    Confidence,
    FeatureEvidence,
    Recommendation,
    assess,
    confidence,
)

T = AnalyticsThresholds()


def _evidence(**changes: object) -> FeatureEvidence:
    base = FeatureEvidence(
        project_id=1, feature_key="f", adoption=0.5, stickiness=0.3, trend=None,
        devices_reporting=100, confidence=Confidence.HIGH, confidence_reason="100 devices",
        contract_line_value=10_000, business_score=3, strategic=False, customers_bought=1,
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def _by_key(assessments: list[Assessment]) -> dict[str, Assessment]:
    return {a.feature_key: a for a in assessments}


# A portfolio spanning both axes: the best on each axis sets the scale.
STAR = _evidence(
    feature_key="star", adoption=1.0, stickiness=0.9, contract_line_value=200_000,
    business_score=5, strategic=True, customers_bought=4,
)  # fmt: skip
CHEAP_FAVOURITE = _evidence(
    feature_key="cheap_favourite", adoption=0.95, stickiness=0.8, contract_line_value=2_000,
    business_score=1, customers_bought=1,
)  # fmt: skip
STRATEGIC_UNUSED = _evidence(
    feature_key="strategic_unused", adoption=0.0, stickiness=0.0, contract_line_value=200_000,
    business_score=5, strategic=True, customers_bought=4,
)  # fmt: skip
VALUED_LAGGING = _evidence(
    feature_key="valued_lagging", adoption=0.2, stickiness=0.05, contract_line_value=150_000,
    business_score=5, strategic=True, customers_bought=3,
)  # fmt: skip
WEAK = _evidence(
    feature_key="weak", adoption=0.2, stickiness=0.05, contract_line_value=1_000,
    business_score=1, customers_bought=1,
)  # fmt: skip
PORTFOLIO = [STAR, CHEAP_FAVOURITE, STRATEGIC_UNUSED, VALUED_LAGGING, WEAK]


# confidence()


def test_confidence_high_at_every_high_line() -> None:
    level, why = confidence(
        T.high_confidence_devices, T.high_confidence_days, T.high_confidence_completeness, T
    )
    assert level is Confidence.HIGH
    assert str(T.high_confidence_devices) in why


@pytest.mark.parametrize(
    ("devices", "days", "completeness"),
    [
        (T.high_confidence_devices - 1, 30, 1.0),  # one device short
        (100, T.high_confidence_days - 0.5, 1.0),  # half a day short
        (100, 30, T.high_confidence_completeness - 0.01),  # a little incomplete
        (T.medium_confidence_devices, T.medium_confidence_days,
         T.medium_confidence_completeness),  # every medium line exactly
    ],
)  # fmt: skip
def test_confidence_medium_below_any_high_line(
    devices: int, days: float, completeness: float
) -> None:
    assert confidence(devices, days, completeness, T)[0] is Confidence.MEDIUM


@pytest.mark.parametrize(
    ("devices", "days", "completeness", "reason"),
    [
        (T.medium_confidence_devices - 1, 30, 1.0, f"only {T.medium_confidence_devices - 1} "),
        (1000, T.medium_confidence_days - 1, 1.0, "-day window"),
        (1000, 30, T.medium_confidence_completeness - 0.01, "of expected messages"),
        (1000, 30, None, "0% of expected messages"),  # no sequence data: not trusted
        (0, 0.5, 0.0, "only 0 devices"),
    ],
)  # fmt: skip
def test_confidence_low_below_any_medium_line_and_says_why(
    devices: int, days: float, completeness: float | None, reason: str
) -> None:
    level, why = confidence(devices, days, completeness, T)
    assert level is Confidence.LOW
    assert reason in why


def test_confidence_low_gives_every_reason() -> None:
    _, why = confidence(3, 1, 0.1, T)
    assert why.count(";") == 2


def test_confidence_follows_the_thresholds() -> None:
    strict = AnalyticsThresholds(medium_confidence_devices=200, high_confidence_devices=500)
    assert confidence(150, 30, 1.0, strict)[0] is Confidence.LOW
    assert confidence(150, 30, 1.0, T)[0] is Confidence.HIGH


# assess()


def test_empty_input_gives_nothing() -> None:
    assert assess([], T) == []


def test_archetypes() -> None:
    got = _by_key(assess(PORTFOLIO, T))
    assert got["star"].recommendation is Recommendation.ITERATE_INVEST
    assert got["cheap_favourite"].recommendation is Recommendation.KEEP_PRUDENTLY
    assert got["valued_lagging"].recommendation is Recommendation.ITERATE_INVEST
    assert "use lags" in got["valued_lagging"].explanation
    assert got["weak"].recommendation is Recommendation.CUT_CANDIDATE
    assert "weak on both axes" in got["weak"].explanation


def test_no_user_value_is_cut_even_when_strategic_and_the_most_valuable() -> None:
    got = _by_key(assess(PORTFOLIO, T))["strategic_unused"]
    assert got.business_value == 1.0
    assert got.recommendation is Recommendation.CUT_CANDIDATE
    assert "(strategic)" in got.explanation and "almost nobody uses it" in got.explanation


def test_low_confidence_always_wins() -> None:
    low = [replace(e, confidence=Confidence.LOW, confidence_reason="only 4 devices reporting")
           for e in PORTFOLIO]  # fmt: skip
    for a in assess(low, T):
        assert a.recommendation is Recommendation.INSUFFICIENT_DATA, a.feature_key
        assert a.confidence is Confidence.LOW
        assert "only 4 devices reporting" in a.explanation
    # One low-confidence feature among confident ones: only it is held back.
    mixed = [*PORTFOLIO[:-1], replace(STRATEGIC_UNUSED, feature_key="small", project_id=2,
                                     confidence=Confidence.LOW, confidence_reason="x")]  # fmt: skip
    got = _by_key(assess(mixed, T))
    assert got["small"].recommendation is Recommendation.INSUFFICIENT_DATA
    assert got["strategic_unused"].recommendation is Recommendation.CUT_CANDIDATE


def test_values_are_normalised_and_the_best_scores_one() -> None:
    assessed = assess(PORTFOLIO, T)
    for a in assessed:
        assert 0.0 <= a.user_value <= 1.0 and 0.0 <= a.business_value <= 1.0
    assert max(a.user_value for a in assessed) == 1.0
    assert max(a.business_value for a in assessed) == 1.0
    got = _by_key(assessed)
    assert got["star"].user_value == 1.0 and got["star"].business_value == 1.0
    assert got["strategic_unused"].user_value == 0.0


def test_normalisation_is_relative_to_the_portfolio() -> None:
    """Alone, a mediocre feature is the best there is: it scores 1.0 on both axes."""
    [alone] = assess([WEAK], T)
    assert (alone.user_value, alone.business_value) == (1.0, 1.0)
    assert alone.recommendation is Recommendation.ITERATE_INVEST


def test_nobody_uses_anything_divides_by_nothing() -> None:
    unused = [replace(STRATEGIC_UNUSED, feature_key=k) for k in ("a", "b")]
    for a in assess(unused, T):
        assert a.user_value == 0.0
        assert a.recommendation is Recommendation.CUT_CANDIDATE


def test_cut_needs_low_adoption_and_low_stickiness() -> None:
    # Just at the adoption line: not "no user value" (the line is strict).
    at_line = replace(VALUED_LAGGING, adoption=T.cut_adoption, stickiness=0.0)
    assert assess([STAR, at_line], T)[1].recommendation is Recommendation.ITERATE_INVEST
    below = replace(at_line, adoption=T.cut_adoption / 2)
    assert assess([STAR, below], T)[1].recommendation is Recommendation.CUT_CANDIDATE
    # Rare but habitual use (stickiness above its line) is not "no user value".
    habitual = replace(below, stickiness=T.cut_stickiness)
    assert assess([STAR, habitual], T)[1].recommendation is Recommendation.ITERATE_INVEST


def test_raising_the_cut_line_cuts_a_rarely_used_feature() -> None:
    before = _by_key(assess(PORTFOLIO, T))
    rare = replace(VALUED_LAGGING, stickiness=T.cut_stickiness / 2)
    portfolio = [STAR, rare]
    assert assess(portfolio, T)[1].recommendation is Recommendation.ITERATE_INVEST
    raised = AnalyticsThresholds(cut_adoption=rare.adoption + 0.01)
    assert assess(portfolio, raised)[1].recommendation is Recommendation.CUT_CANDIDATE
    assert before["star"].recommendation is Recommendation.ITERATE_INVEST


def test_explanation_carries_the_adoption_it_was_based_on() -> None:
    for e, a in zip(PORTFOLIO, assess(PORTFOLIO, T), strict=True):
        assert f"adoption {e.adoption:.0%} of {e.devices_reporting} reporting devices" in (
            a.explanation
        )


def test_trend_is_shown_and_bounded() -> None:
    rising = replace(WEAK, feature_key="rising", trend=0.9)
    falling = replace(WEAK, feature_key="falling", trend=-0.9)
    got = _by_key(assess([STAR, rising, falling, WEAK], T))
    assert "trend +90%" in got["rising"].explanation
    assert "trend -90%" in got["falling"].explanation
    # The trend bonus is capped at ±0.1 of raw user value (docs/analytics.md).
    assert got["rising"].user_value > got["weak"].user_value > got["falling"].user_value
    assert got["rising"].user_value - got["weak"].user_value <= 0.1 / 0.9 + 1e-3
