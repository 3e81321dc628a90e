"""What to do with each delivered feature: cut, keep or iterate, judged on its own evidence.

Pure functions over one feature's measured numbers and its delivery: no I/O, and nothing from
any other project, so a verdict never moves because another customer's feature got more
popular. The rule table (`rules`) is the one definition the code decides by and the pages,
report footer and quadrant chart print; docs/analytics.md says the same in a PM's words.

- User value is *measured*: adoption (devices using ÷ devices reporting) with its 95 % Wilson
  interval, and stickiness. A standing feature (an alarm, a safeguard, a schedule) also shows
  user value by being enabled on devices, whether or not it fired.
- Business value comes from the delivery alone: its business score, its line's share of the
  project's contract, and the strategic flag.
- Monotonic: more adoption, stickiness or enablement never moves a verdict towards cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from functools import lru_cache

from pydantic import BaseModel

from services.core.thresholds import AnalyticsThresholds as AnalyticsThresholds
from services.registry.enums import FeatureKind

# 95 % two-sided: the interval's bounds are each wrong at most 2.5 % of the time.
Z95 = 1.959963984540054
# Business value is the strongest of its signals (docs/analytics.md), so any one of them can
# make it high, and raising one never lowers it. A contract line worth this share of its
# project's contract counts fully (a fifth: a large part of what the customer pays for).
LINE_SHARE_FULL = 0.2
# A standing feature is shown switched off only when at least this share of the reporting
# devices report their settings: a few devices on new firmware do not speak for the fleet.
SETTINGS_COVERAGE = 0.5


class Confidence(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class Recommendation(StrEnum):
    ITERATE_INVEST = "iterate_invest"
    KEEP_PRUDENTLY = "keep_prudently"
    CUT_CANDIDATE = "cut_candidate"
    INSUFFICIENT_DATA = "insufficient_data"
    TOO_EARLY = "too_early"


# How each verdict is named wherever it is shown (pages, report, CLI, chart regions).
LABELS: dict[Recommendation, str] = {
    Recommendation.ITERATE_INVEST: "iterate / invest",
    Recommendation.KEEP_PRUDENTLY: "keep prudently",
    Recommendation.CUT_CANDIDATE: "cut candidate",
    Recommendation.INSUFFICIENT_DATA: "insufficient data",
    Recommendation.TOO_EARLY: "too early",
}

# How far each verdict is from cutting: monotonicity is stated (and tested) in these terms.
CUT_RANK: dict[Recommendation, int] = {
    Recommendation.CUT_CANDIDATE: 0,
    Recommendation.INSUFFICIENT_DATA: 1,
    Recommendation.TOO_EARLY: 1,
    Recommendation.KEEP_PRUDENTLY: 2,
    Recommendation.ITERATE_INVEST: 2,
}


class UserValue(StrEnum):
    """What the field evidence says about user value."""

    NONE = "none"  # even the interval's upper bound is under the cut line, and no habit
    UNCLEAR = "unclear"  # the interval reaches both sides of the cut line
    SHOWN = "shown"  # the lower bound reaches the line, or use is a habit, or it is enabled


@dataclass(frozen=True)
class Interval:
    """A share with its 95 % Wilson score interval, from `part` of `whole` devices."""

    part: int
    whole: int
    low: float
    high: float

    @property
    def share(self) -> float:
        return self.part / self.whole if self.whole else 0.0


def wilson(part: int, whole: int, z: float = Z95) -> Interval:
    """The Wilson score interval of part ÷ whole: honest for small counts and for 0 or all
    (0 of 12 gives 0–24 %), where the normal approximation claims certainty it lacks."""
    if whole <= 0:
        return Interval(0, 0, 0.0, 1.0)
    if not 0 <= part <= whole:
        raise ValueError(f"{part} of {whole} is not a share")
    p, z2 = part / whole, z * z
    centre = (p + z2 / (2 * whole)) / (1 + z2 / whole)
    half = z / (1 + z2 / whole) * math.sqrt(p * (1 - p) / whole + z2 / (4 * whole * whole))
    # the bounds are exact at 0 and at all (float rounding would leave a hair of daylight)
    low = 0.0 if part == 0 else max(0.0, centre - half)
    high = 1.0 if part == whole else min(1.0, centre + half)
    return Interval(part, whole, low, high)


@dataclass(frozen=True)
class Business:
    """What the delivery says the feature is worth to the business."""

    business_score: int | None = None  # 1..5
    contract_line_value: float | None = None
    contract_value: float | None = None  # the project's whole contract
    strategic: bool = False

    @property
    def line_share(self) -> float | None:
        if not self.contract_line_value or not self.contract_value:
            return None
        return self.contract_line_value / self.contract_value

    def value(self) -> float:
        """0..1 on an absolute scale, never relative to other features: the strongest of the
        business score (1 → 0, 5 → 1), the line's share of the contract (a fifth or more → 1)
        and the strategic flag (1)."""
        score = (self.business_score - 1) / 4 if self.business_score else 0.0
        share = min(1.0, (self.line_share or 0.0) / LINE_SHARE_FULL)
        return max(score, share, 1.0 if self.strategic else 0.0)

    def describe(self) -> str:
        parts = [f"score {self.business_score}/5" if self.business_score else "no score"]
        share = self.line_share
        if share is not None:
            parts.append(f"line {share:.0%} of the contract")
        if self.strategic:
            parts.append("strategic")
        return ", ".join(parts)


@dataclass(frozen=True)
class Evidence:
    """One delivered feature in one project, over the part of the window it was live."""

    kind: FeatureKind
    devices_reporting: int
    devices_using: int
    stickiness: float
    measured_days: float
    completeness: float | None
    live_since: date | None  # the later of go-live and delivery (None: not live yet)
    days_live: float | None  # from live_since to the end of the window
    business: Business
    # devices that reported which features they have enabled, and those with this one on
    enabled_reporting: int = 0
    devices_enabled: int = 0


@dataclass(frozen=True)
class Rule:
    """One row of the rule table: a verdict, when it applies, and what it tells a PM."""

    recommendation: Recommendation
    label: str
    when: str
    advice: str
    user_values: frozenset[UserValue] = frozenset()  # empty: a gate checked before the axes
    business_high: frozenset[bool] = frozenset({True, False})


def _pct(share: float) -> str:
    """A share as a PM reads it: whole percent, or one decimal under 10 %."""
    return f"{share:.1%}" if 0 < share < 0.1 else f"{share:.0%}"


def _line(share: float) -> str:
    """A threshold as a PM reads it: 10%, 2%, 2.5%."""
    return f"{share * 100:g}%"


@lru_cache(maxsize=16)
def rules(t: AnalyticsThresholds) -> tuple[Rule, ...]:
    """The rule table, with these thresholds written in: the code decides by it, and the
    project page, the report footer and the quadrant chart print it."""
    cut, sticky = _line(t.cut_adoption), _line(t.cut_stickiness)
    high = f"{t.high_business_value:g}"
    return (
        Rule(
            Recommendation.TOO_EARLY,
            LABELS[Recommendation.TOO_EARLY],
            f"live on this project for less than {t.maturity_days:g} days (from the later of "
            "its go-live and the delivery)",
            "wait: people are still taking it up",
        ),
        Rule(
            Recommendation.INSUFFICIENT_DATA,
            LABELS[Recommendation.INSUFFICIENT_DATA],
            f"fewer than {t.medium_confidence_devices} devices reporting, under "
            f"{t.medium_confidence_days:g} days measured or under "
            f"{_line(t.medium_confidence_completeness)} of messages received; or the adoption "
            f"interval reaches both sides of the {cut} cut line; or a cut would rest on under "
            f"{t.cut_min_days:g} days measured",
            "measure longer or on more devices before deciding",
            frozenset({UserValue.UNCLEAR}),
        ),
        Rule(
            Recommendation.CUT_CANDIDATE,
            LABELS[Recommendation.CUT_CANDIDATE],
            f"no user value, over {t.cut_min_days:g} days measured or more: even the upper bound "
            f"of adoption's 95 % interval is under {cut}, stickiness is under {sticky}, and for a "
            f"standing feature even the upper bound of the share of devices with it enabled is "
            f"under {cut}, reported by at least {_line(SETTINGS_COVERAGE)} of the reporting "
            "devices — whatever the business value",
            "customers asked for it and do not use it: cut it, or simplify",
            frozenset({UserValue.NONE}),
        ),
        Rule(
            Recommendation.ITERATE_INVEST,
            LABELS[Recommendation.ITERATE_INVEST],
            f"user value shown (adoption's lower bound at {cut} or more, stickiness at "
            f"{sticky} or more, or for a standing feature the lower bound of the share of "
            f"devices with it enabled at {cut} or more) and business value {high} or more",
            "valued on both axes: invest; where adoption lags, iterate to raise it",
            frozenset({UserValue.SHOWN}),
            frozenset({True}),
        ),
        Rule(
            Recommendation.KEEP_PRUDENTLY,
            LABELS[Recommendation.KEEP_PRUDENTLY],
            f"user value shown, business value under {high}",
            "people use it and it earns little: keep it cheap, or offer it free",
            frozenset({UserValue.SHOWN}),
            frozenset({False}),
        ),
    )


class RuleText(BaseModel):
    """A rule of the table as the API, the report and the pages print it."""

    recommendation: Recommendation
    label: str
    when: str
    advice: str


def rule_texts(t: AnalyticsThresholds) -> list[RuleText]:
    return [
        RuleText(recommendation=r.recommendation, label=r.label, when=r.when, advice=r.advice)
        for r in rules(t)
    ]


def rule_for(t: AnalyticsThresholds, user: UserValue, business_high: bool) -> Rule:
    return next(r for r in rules(t) if user in r.user_values and business_high in r.business_high)


def confidence(
    devices_reporting: int, days: float, completeness: float | None, t: AnalyticsThresholds
) -> tuple[Confidence, str]:
    """How far the numbers can be trusted, and why, in words. Low blocks any verdict."""
    complete = completeness if completeness is not None else 0.0
    reasons = []
    if devices_reporting < t.medium_confidence_devices:
        reasons.append(
            f"only {devices_reporting} device{'' if devices_reporting == 1 else 's'} reporting"
        )
    if days < t.medium_confidence_days:
        reasons.append(f"only {days:.3g} day{'' if days == 1 else 's'} measured")
    if complete < t.medium_confidence_completeness:
        reasons.append(f"{complete:.0%} of expected messages received")
    if reasons:
        return Confidence.LOW, "; ".join(reasons)
    summary = f"{devices_reporting} devices over {days:.3g} days, {complete:.0%} complete"
    if (
        devices_reporting >= t.high_confidence_devices
        and days >= t.high_confidence_days
        and complete >= t.high_confidence_completeness
    ):
        return Confidence.HIGH, summary
    return Confidence.MEDIUM, summary


@dataclass(frozen=True)
class Verdict:
    recommendation: Recommendation
    user_value: UserValue | None  # None: not judged (too early, or too little data)
    adoption: Interval
    enabled: Interval | None  # None: no device reported which features it has enabled
    business_value: float
    business_high: bool
    confidence: Confidence
    confidence_reason: str
    explanation: str


def user_value(
    e: Evidence, t: AnalyticsThresholds, adoption: Interval, enabled: Interval | None
) -> UserValue:
    """The user-value level the evidence (and its intervals) supports."""
    if adoption.low >= t.cut_adoption or e.stickiness >= t.cut_stickiness:
        return UserValue.SHOWN
    if e.kind is FeatureKind.STANDING:
        if enabled is not None and enabled.low >= t.cut_adoption:
            return UserValue.SHOWN
        # Not firing proves nothing about a standing feature: only being switched off does,
        # on enough of the fleet (a few devices on new firmware are not the fleet).
        if enabled is None or enabled.high >= t.cut_adoption or not _settings_cover(e):
            return UserValue.UNCLEAR
    if adoption.high < t.cut_adoption and e.measured_days >= t.cut_min_days:
        return UserValue.NONE
    return UserValue.UNCLEAR


def _settings_cover(e: Evidence) -> bool:
    """Enough of the reporting fleet reports its settings to speak for it."""
    return e.enabled_reporting >= SETTINGS_COVERAGE * e.devices_reporting


def judge(e: Evidence, t: AnalyticsThresholds) -> Verdict:
    """The verdict on one delivered feature, from its own evidence only."""
    level, reason = confidence(e.devices_reporting, e.measured_days, e.completeness, t)
    value = e.business.value()
    business_high = value >= t.high_business_value
    adoption = wilson(e.devices_using, e.devices_reporting)
    enabled = wilson(e.devices_enabled, e.enabled_reporting) if e.enabled_reporting else None

    def verdict(rec: Recommendation, user: UserValue | None, why: str) -> Verdict:
        return Verdict(
            rec, user, adoption, enabled, round(value, 3), business_high, level, reason, why
        )

    if e.live_since is None or e.days_live is None:
        return verdict(
            Recommendation.TOO_EARLY,
            None,
            "not live yet: the project has no go-live date and no device has reported",
        )
    if e.days_live <= 0:
        return verdict(
            Recommendation.TOO_EARLY,
            None,
            f"not live in this window: live here from {e.live_since}",
        )
    if e.days_live < t.maturity_days:
        ready = e.live_since + timedelta(days=math.ceil(t.maturity_days))
        return verdict(
            Recommendation.TOO_EARLY,
            None,
            f"live here for {_days(e.days_live)} (since {e.live_since}): judged once live for "
            f"{t.maturity_days:g} days, from {ready}",
        )
    if level is Confidence.LOW:
        return verdict(
            Recommendation.INSUFFICIENT_DATA, None, f"not enough data to judge: {reason}"
        )
    user = user_value(e, t, adoption, enabled)
    rule = rule_for(t, user, business_high)
    return verdict(
        rule.recommendation,
        user,
        _explain(e, t, user=user, adoption=adoption, enabled=enabled, value=value),
    )


def _days(days: float) -> str:
    return f"{days:.0f} day{'' if round(days) == 1 else 's'}" if days >= 1 else "under a day"


def _used(a: Interval) -> str:
    return f"{a.part} of {a.whole} devices used it ({_pct(a.share)})"


def _explain(
    e: Evidence,
    t: AnalyticsThresholds,
    *,
    user: UserValue,
    adoption: Interval,
    enabled: Interval | None,
    value: float,
) -> str:
    cut = _line(t.cut_adoption)
    business = f"business value {value:.2f} ({e.business.describe()})"
    standing = e.kind is FeatureKind.STANDING
    if enabled is not None:
        settings = (
            f"enabled on {enabled.part} of {enabled.whole} devices that report their settings "
            f"({_pct(enabled.share)}, {_pct(enabled.low)}–{_pct(enabled.high)})"
        )
    else:
        settings = "its devices do not report which features they have enabled"
    if user is UserValue.NONE:
        why = (
            f"no user value: {_used(adoption)}, at most {_pct(adoption.high)} with 95 % "
            f"confidence, under the {cut} cut line; stickiness {_pct(e.stickiness)}"
        )
        if standing:
            why += f"; a standing feature, {settings}"
        return f"{why}; {business} does not make up for that"
    if user is UserValue.UNCLEAR:
        if standing and (enabled is None or enabled.high >= t.cut_adoption):
            return (
                f"a standing feature is judged by being enabled, not by firing: {_used(adoption)} "
                f"and {settings}; that cannot show whether it is switched on"
            )
        if standing and not _settings_cover(e):
            return (
                f"a standing feature, {settings}, but only {enabled.whole if enabled else 0} of "
                f"{e.devices_reporting} reporting devices report their settings: too few to "
                "show it is switched off across the fleet"
            )
        if adoption.high < t.cut_adoption:  # under the line, over too few days to cut
            return (
                f"{_used(adoption)}, at most {_pct(adoption.high)}, but over "
                f"{_days(e.measured_days)} only: a cut rests on at least {t.cut_min_days:g} days "
                "measured (a feature used weekly or monthly can have a quiet week)"
            )
        if adoption.part == 0:
            return (
                f"{_used(adoption)}; with so few devices the true share could still be up to "
                f"{_pct(adoption.high)} (the cut line is {cut})"
            )
        return (
            f"{_used(adoption)}; the true share could be anywhere from {_pct(adoption.low)} to "
            f"{_pct(adoption.high)}, on both sides of the {cut} cut line"
        )
    if adoption.low >= t.cut_adoption:
        shown = f"{_used(adoption)}, at least {_pct(adoption.low)} with 95 % confidence"
    elif e.stickiness >= t.cut_stickiness:
        shown = f"{_used(adoption)}, on {_pct(e.stickiness)} of device-days: a habit"
    else:
        shown = f"a standing feature {settings}"
    if value >= t.high_business_value:
        act = "invest" if adoption.low >= 0.5 else "iterate to raise adoption"
        return f"valued by users and the business: {shown}; {business}: {act}"
    return f"users value it: {shown}; {business} is low: keep it cheap or offer it free"
