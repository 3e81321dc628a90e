"""Scenario files: customers, projects, deliveries and the fleets that use them."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.core.errors import FieldtrackError

FeatureKey = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
Probability = Annotated[float, Field(ge=0, le=1)]


class ScenarioError(FieldtrackError):
    """A scenario file cannot be read or does not validate."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Feature(_Model):
    key: FeatureKey
    name: str = Field(min_length=1, max_length=200)
    product_line: str | None = None
    description: str | None = None


class Delivery(_Model):
    feature: FeatureKey
    status: Literal["delivered", "planned", "cut"] = "delivered"
    contract_line_value: float | None = Field(default=None, ge=0)
    business_score: int | None = Field(default=None, ge=1, le=5)
    strategic: bool = False
    cost_person_days: float | None = Field(default=None, ge=0)
    use_per_hour: Probability = Field(
        default=0.0, description="chance that a device uses the feature in a given hour"
    )


class Fleet(_Model):
    count: int = Field(ge=0, le=100_000)
    serial_prefix: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,50}$")
    model: str = "generic"
    firmware: list[str] = Field(default_factory=lambda: ["1.0.0"], min_length=1)


class Project(_Model):
    name: str = Field(min_length=1, max_length=200)
    contract_value: float | None = Field(default=None, ge=0)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    go_live_date: date | None = None
    status: Literal["delivering", "live", "ended"] = "delivering"
    fleet: Fleet
    deliveries: list[Delivery] = Field(default_factory=list)
    undelivered_use: dict[FeatureKey, Probability] = Field(default_factory=dict)


class Customer(_Model):
    name: str = Field(min_length=1, max_length=200)
    tier: Literal["head", "waist", "tail"]
    industry: str = Field(min_length=1, max_length=100)
    lifecycle_stage: Literal["onboarding", "adoption", "expansion", "renewal", "at_risk"]
    projects: list[Project] = Field(default_factory=list)


class Scenario(_Model):
    features: list[Feature]
    customers: list[Customer]

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        known = {f.key for f in self.features}
        prefixes: set[str] = set()
        for customer in self.customers:
            for project in customer.projects:
                for delivery in project.deliveries:
                    if delivery.feature not in known:
                        raise ValueError(
                            f"project {project.name!r} delivers unknown feature "
                            f"{delivery.feature!r}; add it under features"
                        )
                if project.fleet.serial_prefix in prefixes:
                    raise ValueError(f"serial_prefix {project.fleet.serial_prefix!r} is used twice")
                prefixes.add(project.fleet.serial_prefix)
        return self


def load(path: Path) -> Scenario:
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
