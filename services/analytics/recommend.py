"""User value × business value, confidence, and what to do with each delivered feature.

Pure functions over measured numbers: no I/O. Thresholds are settings
(FIELDTRACK_ANALYTICS__<NAME>, see `AnalyticsThresholds`) and documented in docs/analytics.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, Field


class Confidence(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class Recommendation(StrEnum):
    ITERATE_INVEST = "iterate_invest"
    KEEP_PRUDENTLY = "keep_prudently"
    CUT_CANDIDATE = "cut_candidate"
    INSUFFICIENT_DATA = "insufficient_data"


class AnalyticsThresholds(BaseModel):
    """Where the lines are drawn. Every value is a share (0..1) unless its name says otherwise."""

    high_confidence_devices: int = Field(default=30, ge=1, description="reporting devices for high")
    medium_confidence_devices: int = Field(default=10, ge=1, description="below this: low")
    high_confidence_days: float = Field(default=14, gt=0, description="window days for high")
    medium_confidence_days: float = Field(default=3, gt=0, description="below this: low")
    high_confidence_completeness: float = Field(default=0.9, ge=0, le=1)
    medium_confidence_completeness: float = Field(default=0.6, ge=0, le=1)
    cut_adoption: float = Field(default=0.05, ge=0, le=1, description="below: no user value …")
    cut_stickiness: float = Field(default=0.02, ge=0, le=1, description="… and below this too")
    high_user_value: float = Field(default=0.5, ge=0, le=1, description="normalised score")
    high_business_value: float = Field(default=0.5, ge=0, le=1, description="normalised score")


def confidence(
    devices_reporting: int, window_days: float, completeness: float | None, t: AnalyticsThresholds
) -> tuple[Confidence, str]:
    """How far the numbers can be trusted, and why, in words."""
    complete = completeness if completeness is not None else 0.0
    reasons = []
    if devices_reporting < t.medium_confidence_devices:
        reasons.append(f"only {devices_reporting} devices reporting")
    if window_days < t.medium_confidence_days:
        reasons.append(f"a {window_days:g}-day window")
    if complete < t.medium_confidence_completeness:
        reasons.append(f"{complete:.0%} of expected messages received")
    if reasons:
        return Confidence.LOW, "; ".join(reasons)
    if (
        devices_reporting >= t.high_confidence_devices
        and window_days >= t.high_confidence_days
        and complete >= t.high_confidence_completeness
    ):
        return Confidence.HIGH, (
            f"{devices_reporting} devices over {window_days:g} days, {complete:.0%} complete"
        )
    return Confidence.MEDIUM, (
        f"{devices_reporting} devices over {window_days:g} days, {complete:.0%} complete"
    )


@dataclass(frozen=True)
class FeatureEvidence:
    """One delivered feature in one project: what was measured and what the contract says."""

    project_id: int
    feature_key: str
    adoption: float
    stickiness: float
    trend: float | None
    devices_reporting: int
    confidence: Confidence
    confidence_reason: str
    contract_line_value: float | None
    business_score: int | None
    strategic: bool
    customers_bought: int


class Assessment(BaseModel):
    project_id: int
    feature_key: str
    user_value: float = Field(description="0..1, normalised within the portfolio")
    business_value: float = Field(description="0..1, normalised within the portfolio")
    confidence: Confidence
    recommendation: Recommendation
    explanation: str


def raw_user_value(adoption: float, stickiness: float, trend: float | None) -> float:
    """Adoption counts most; habit (stickiness) next; a rising trend adds a little."""
    lift = max(-0.2, min(0.2, trend or 0.0))
    return max(0.0, 0.6 * adoption + 0.3 * min(1.0, stickiness * 2) + 0.5 * lift)


def raw_business_value(e: FeatureEvidence, max_line: float, max_customers: int) -> float:
    line = (e.contract_line_value or 0.0) / max_line if max_line else 0.0
    score = (e.business_score or 0) / 5
    customers = e.customers_bought / max_customers if max_customers else 0.0
    return 0.35 * line + 0.3 * score + 0.2 * (1.0 if e.strategic else 0.0) + 0.15 * customers


def assess(evidence: Sequence[FeatureEvidence], t: AnalyticsThresholds) -> list[Assessment]:
    """Place every delivered feature on the user × business plane and recommend."""
    if not evidence:
        return []
    users = [raw_user_value(e.adoption, e.stickiness, e.trend) for e in evidence]
    # The scale is set by what can be trusted: a 5-device pilot must not define "the best".
    trusted = [
        u for u, e in zip(users, evidence, strict=True) if e.confidence is not Confidence.LOW
    ]
    max_user = max(trusted or users) or 1.0
    max_line = max((e.contract_line_value or 0.0) for e in evidence)
    max_customers = max(e.customers_bought for e in evidence)
    business = [raw_business_value(e, max_line, max_customers) for e in evidence]
    max_business = max(business) or 1.0
    out = []
    for e, user_raw, business_raw in zip(evidence, users, business, strict=True):
        user, value = min(1.0, user_raw / max_user), business_raw / max_business
        numbers = (
            f"adoption {e.adoption:.0%} of {e.devices_reporting} reporting devices, "
            f"stickiness {e.stickiness:.0%}"
            + (f", trend {e.trend:+.0%}" if e.trend is not None else "")
            + f"; business value {value:.2f}"
            + (" (strategic)" if e.strategic else "")
        )
        no_user_value = e.adoption < t.cut_adoption and e.stickiness < t.cut_stickiness
        high_user, high_business = user >= t.high_user_value, value >= t.high_business_value
        if e.confidence is Confidence.LOW:
            rec = Recommendation.INSUFFICIENT_DATA
            why = f"not enough data to judge ({e.confidence_reason}): {numbers}"
        elif no_user_value:
            rec = Recommendation.CUT_CANDIDATE
            why = f"almost nobody uses it: {numbers}; business value does not make up for that"
        elif high_business:
            rec = Recommendation.ITERATE_INVEST
            why = (
                f"valued by users and the business: {numbers}"
                if high_user
                else f"the business values it, use lags: iterate to raise adoption; {numbers}"
            )
        elif high_user:
            rec = Recommendation.KEEP_PRUDENTLY
            why = f"users value it, the business less: keep it cheap or offer it free; {numbers}"
        else:
            rec = Recommendation.CUT_CANDIDATE
            why = f"weak on both axes: {numbers}"
        out.append(
            Assessment(
                project_id=e.project_id, feature_key=e.feature_key, user_value=round(user, 3),
                business_value=round(value, 3), confidence=e.confidence, recommendation=rec,
                explanation=why,
            )
        )  # fmt: skip
    return out
