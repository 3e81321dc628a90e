"""Where the analytics draw their lines: one typed, validated set of thresholds.

Part of the settings (FIELDTRACK_ANALYTICS__<NAME>), defined here so that core knows no layer
above it; the analytics (services/analytics/recommend.py) apply them, and docs/analytics.md
explains each in a PM's words.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.core.windows import MAX_WINDOW_DAYS


class AnalyticsThresholds(BaseModel):
    """Every value is a share (0..1) unless its name says otherwise."""

    # A stale or misspelt variable fails at start-up instead of being quietly ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)

    maturity_days: float = Field(
        default=21,
        ge=0,
        le=365,
        description="days a feature must have been live on a project before it is judged",
    )
    high_confidence_devices: int = Field(default=30, ge=1, description="reporting devices for high")
    medium_confidence_devices: int = Field(
        default=10, ge=1, description="below this: low confidence, and no verdict"
    )
    high_confidence_days: float = Field(default=14, gt=0, description="measured days for high")
    medium_confidence_days: float = Field(
        default=3, gt=0, description="below this: low confidence, and no verdict"
    )
    high_confidence_completeness: float = Field(default=0.9, ge=0, le=1)
    medium_confidence_completeness: float = Field(
        default=0.6, ge=0, le=1, description="below this: low confidence, and no verdict"
    )
    cut_adoption: float = Field(
        default=0.10,
        gt=0,
        lt=1,
        description="the cut line: a cut needs the upper bound of adoption's 95 % interval "
        "below it; user value is shown once the lower bound reaches it",
    )
    cut_min_days: float = Field(
        default=14,
        gt=0,
        le=MAX_WINDOW_DAYS,
        description="a cut rests on at least this many measured days: a feature used weekly "
        "or monthly can have a quiet week",
    )
    cut_stickiness: float = Field(
        default=0.02,
        gt=0,
        le=1,
        description="a cut also needs stickiness below this; at or above it, use is a habit "
        "and shows user value",
    )
    high_business_value: float = Field(
        default=0.6,
        ge=0,
        le=1,
        description="business value (0..1) at or above this is high: by default a business "
        "score of 4 or 5, a line worth 12 % of the contract or more, or a strategic delivery",
    )

    @model_validator(mode="after")
    def _ordered(self) -> AnalyticsThresholds:
        pairs = (
            ("devices", self.medium_confidence_devices, self.high_confidence_devices),
            ("days", self.medium_confidence_days, self.high_confidence_days),
            (
                "completeness",
                self.medium_confidence_completeness,
                self.high_confidence_completeness,
            ),
        )
        for name, medium, high in pairs:
            if medium > high:
                raise ValueError(
                    f"medium_confidence_{name} ({medium}) must not exceed "
                    f"high_confidence_{name} ({high})"
                )
        return self
