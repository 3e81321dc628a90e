"""Scenario files: customers, projects, deliveries, and how their fleets behave.

A scenario is YAML validated by these models; an error names the field path. See
`docs/scenarios.md` for the format with examples, and `device_sim/scenarios/` for the three
shipped scenarios (`demo`, `portfolio`, `load`).
"""

from __future__ import annotations

from datetime import date, timedelta
from importlib.resources.abc import Traversable
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.core.errors import FieldtrackError

FeatureKey = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
Share = Annotated[float, Field(ge=0, le=1)]

# Named daily and weekly rhythms; weights are relative (normalised when used).
DIURNAL_PROFILES: dict[str, tuple[float, ...]] = {
    "flat": (1,) * 24,
    # office hours, a lunch dip
    "business": (
        0.1,
        0.1,
        0.1,
        0.1,
        0.1,
        0.2,
        0.5,
        1.5,
        3,
        3,
        2.5,
        2,
        1.5,
        2.5,
        3,
        3,
        2.5,
        1.5,
        0.8,
        0.5,
        0.3,
        0.2,
        0.1,
        0.1,
    ),
    # homes and hotels: mornings and evenings
    "evening": (
        0.2,
        0.1,
        0.1,
        0.1,
        0.1,
        0.3,
        1,
        2,
        1.5,
        0.8,
        0.6,
        0.6,
        0.7,
        0.6,
        0.6,
        0.7,
        1,
        1.8,
        2.8,
        3,
        2.6,
        2,
        1.2,
        0.5,
    ),
    # lighting schedules, night logistics
    "night": (
        2.5,
        2.5,
        2.5,
        2.5,
        2.2,
        1.5,
        0.8,
        0.3,
        0.2,
        0.2,
        0.2,
        0.2,
        0.2,
        0.2,
        0.2,
        0.2,
        0.3,
        0.6,
        1.2,
        2,
        2.5,
        2.5,
        2.5,
        2.5,
    ),
}
WEEKLY_PROFILES: dict[str, tuple[float, ...]] = {  # Monday first
    "flat": (1, 1, 1, 1, 1, 1, 1),
    "weekdays": (1.2, 1.2, 1.2, 1.2, 1.1, 0.3, 0.2),
    "weekends": (0.6, 0.6, 0.6, 0.7, 1, 1.6, 1.5),
}


class ScenarioError(FieldtrackError):
    """A scenario file cannot be read or does not validate."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Feature(_Model):
    key: FeatureKey
    name: str = Field(min_length=1, max_length=200)
    product_line: str | None = None
    description: str | None = None
    kind: Literal["interactive", "standing"] = Field(
        default="interactive",
        description="standing: an alarm, safeguard or schedule, judged by being enabled",
    )


class Adoption(_Model):
    """Share of the fleet that has taken the feature up, by day since go-live (linear ramp)."""

    start: Share = Field(default=1.0, description="share adopted at go-live")
    end: Share = Field(
        default=1.0, description="share adopted after ramp_days (may be lower: decay)"
    )
    ramp_days: int = Field(default=0, ge=0, le=3650)

    def share(self, days_since_go_live: float) -> float:
        if days_since_go_live <= 0 or self.ramp_days == 0:
            return self.start if days_since_go_live <= 0 else self.end
        progress = min(1.0, days_since_go_live / self.ramp_days)
        return self.start + (self.end - self.start) * progress


class Usage(_Model):
    """How devices use one feature."""

    per_device_day: Share = Field(
        default=0.0, description="chance an adopted device uses the feature on a given day"
    )
    events_per_use: tuple[int, int] = Field(
        default=(1, 1), description="uses counted per use, drawn uniformly from [low, high]"
    )
    never_share: Share = Field(default=0.0, description="share of devices that never use it")
    adoption: Adoption = Field(default_factory=Adoption)
    diurnal: Literal["flat", "business", "evening", "night"] = "flat"
    weekly: Literal["flat", "weekdays", "weekends"] = "flat"

    @model_validator(mode="after")
    def _range(self) -> Usage:
        low, high = self.events_per_use
        if low < 1 or high < low or high > 1000:
            raise ValueError("events_per_use must be [low, high] with 1 <= low <= high <= 1000")
        return self


class Delivery(_Model):
    feature: FeatureKey
    status: Literal["delivered", "planned", "cut"] = "delivered"
    delivered_days_ago: int | None = Field(
        default=None,
        ge=0,
        le=3650,
        description="delivery date, counted back from the scenario's end; default: go-live. "
        "Devices use the feature from the later of the two",
    )
    contract_line_value: float | None = Field(default=None, ge=0)
    business_score: int | None = Field(default=None, ge=1, le=5)
    strategic: bool = False
    cost_person_days: float | None = Field(default=None, ge=0)
    enabled_share: Share = Field(
        default=1.0,
        description="share of devices with the feature switched on (reported in telemetry "
        "when the fleet reports_enabled)",
    )
    usage: Usage = Field(default_factory=Usage)


class UndeliveredUse(_Model):
    """Use of a feature the project never bought: demand, or a misconfiguration."""

    feature: FeatureKey
    usage: Usage


class FirmwareShare(_Model):
    version: str = Field(min_length=1, max_length=64)
    share: float = Field(gt=0)


class Offline(_Model):
    """Some devices drop off the network for a while, then come back."""

    share: Share = Field(default=0.0, description="share of devices that ever go offline")
    per_device_month: float = Field(
        default=0.0, ge=0, le=100, description="outages per such device"
    )
    mean_hours: float = Field(default=6.0, gt=0, le=24 * 30)


class Fleet(_Model):
    count: int = Field(ge=0, le=100_000)
    serial_prefix: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,50}$")
    model: str = "generic"
    firmware: list[FirmwareShare] = Field(
        default_factory=lambda: [FirmwareShare(version="1.0.0", share=1)], min_length=1
    )
    telemetry_every_minutes: int = Field(default=60, ge=1, le=24 * 60)
    offline: Offline = Field(default_factory=Offline)
    reboots_per_device_month: float = Field(
        default=0.0, ge=0, le=100, description="a reboot resets the device's sequence number"
    )
    clock_drift_max_s: float = Field(
        default=0.0, ge=0, le=300, description="each device's clock is off by up to this much"
    )
    dead_share: Share = Field(
        default=0.0, description="share of devices provisioned but never sending anything"
    )
    reports_enabled: bool = Field(
        default=False,
        description="telemetry carries enabled_features: the delivered features switched on",
    )
    quiet_after_hours: float | None = Field(
        default=None,
        gt=0,
        description="the whole fleet goes offline for good this long after the timeline's "
        "origin (a site losing its uplink): the project goes quiet, for the alerts to show",
    )


class Project(_Model):
    name: str = Field(min_length=1, max_length=200)
    contract_value: float | None = Field(default=None, ge=0)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    go_live_days_ago: int = Field(
        default=60, ge=0, le=3650, description="go-live date, counted back from the scenario's end"
    )
    status: Literal["delivering", "live", "ended"] = "live"
    fleet: Fleet
    deliveries: list[Delivery] = Field(default_factory=list)
    undelivered_use: list[UndeliveredUse] = Field(default_factory=list)


class Customer(_Model):
    name: str = Field(min_length=1, max_length=200)
    tier: Literal["head", "waist", "tail"]
    industry: str = Field(min_length=1, max_length=100)
    lifecycle_stage: Literal["onboarding", "adoption", "expansion", "renewal", "at_risk"]
    projects: list[Project] = Field(default_factory=list)


class Inject(_Model):
    """Bad data mixed into the stream, as shares of valid messages; every one is counted."""

    malformed: Share = 0.0
    duplicate: Share = 0.0
    late: Share = 0.0
    future: Share = 0.0


class Scenario(_Model):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,40}$")
    seed: int = 1
    days: float = Field(
        default=1.0, gt=0, le=3650, description="history length for backfill and load"
    )
    features: list[Feature]
    customers: list[Customer]
    inject: Inject = Field(default_factory=Inject)

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        known = {f.key for f in self.features}
        prefixes: set[str] = set()
        for customer in self.customers:
            for project in customer.projects:
                used = [d.feature for d in project.deliveries] + [
                    u.feature for u in project.undelivered_use
                ]
                for key in used:
                    if key not in known:
                        raise ValueError(
                            f"project {project.name!r} uses unknown feature {key!r}; "
                            "add it under features"
                        )
                if project.fleet.serial_prefix in prefixes:
                    raise ValueError(f"serial_prefix {project.fleet.serial_prefix!r} is used twice")
                prefixes.add(project.fleet.serial_prefix)
        return self

    def projects(self) -> list[tuple[Customer, Project]]:
        return [(c, p) for c in self.customers for p in c.projects]


def load(path: Traversable) -> Scenario:
    """A scenario from its YAML: a file, or one shipped in the package (scenario_path)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc}") from exc
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ScenarioError(f"scenario {path} is invalid: {problems}") from exc


def serials(project: Project) -> list[str]:
    width = max(3, len(str(project.fleet.count)))
    return [
        f"{project.fleet.serial_prefix}-{n:0{width}d}" for n in range(1, project.fleet.count + 1)
    ]


def go_live(project: Project, end: date) -> date:
    return end - timedelta(days=project.go_live_days_ago)


def delivered_on(project: Project, delivery: Delivery, end: date) -> date:
    """The delivery date (default: the project's go-live)."""
    if delivery.delivered_days_ago is None:
        return go_live(project, end)
    return end - timedelta(days=delivery.delivered_days_ago)
