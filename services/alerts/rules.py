"""Alert rules: what each kind watches, its parameters with their defaults, and who sees it.

A rule is data (table `alert_rules`): a kind, its parameters (validated here), the channels
it notifies. The rule with no project is the portfolio-wide default of its kind; a project's
own rule of the same kind replaces it for that project.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.core.errors import InvalidInputError


class RuleKind(StrEnum):
    DEVICE_SILENT = "device_silent"
    PROJECT_SILENT = "project_silent"
    DEVICES_OFFLINE = "devices_offline"
    QUARANTINE_RATE = "quarantine_rate"
    COMPLETENESS_LOW = "completeness_low"
    INGEST_LAG = "ingest_lag"
    ADOPTION_DROP = "adoption_drop"


class Audience(StrEnum):
    """Who may see a kind's alerts: a customer's viewers see their own projects' device
    alerts; ingest alerts are for ops; adoption alerts carry verdict evidence, for PMs."""

    PROJECT = "project"  # admin, ops, pm, and the project's customer's viewers
    OPS = "ops"  # admin, ops
    PM = "pm"  # admin, pm


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceSilent(_Params):
    intervals: Annotated[float, Field(ge=1.5, le=1000)] = Field(
        default=3.0, description="silent for this many times its usual reporting interval"
    )
    min_silence_s: Annotated[int, Field(ge=10, le=30 * 86400)] = Field(
        default=600, description="and for at least this long (seconds)"
    )


class ProjectSilent(_Params):
    silent_s: Annotated[int, Field(ge=10, le=30 * 86400)] = Field(
        default=900, description="no message from any of the project's devices for this long"
    )


class DevicesOffline(_Params):
    share: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.5, description="share of the project's seen devices offline above this"
    )
    min_devices: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=3, description="only projects with at least this many seen devices"
    )


class QuarantineRate(_Params):
    per_minute: Annotated[float, Field(gt=0, le=1e6)] = Field(
        default=10.0, description="quarantined messages of one reason per minute above this"
    )
    window_s: Annotated[int, Field(ge=60, le=86400)] = Field(
        default=300, description="averaged over this long"
    )


class CompletenessLow(_Params):
    below: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.95, description="received ÷ (received + missing) under this"
    )
    window_s: Annotated[int, Field(ge=3600, le=30 * 86400)] = Field(
        default=86400, description="over this long (whole hours)"
    )
    min_messages: Annotated[int, Field(ge=1)] = Field(
        default=100, description="only when at least this many messages were expected"
    )


class IngestLag(_Params):
    lag_s: Annotated[float, Field(gt=0, le=86400)] = Field(
        default=300.0, description="live messages' receive lag (p95, last 5 minutes) above this"
    )
    queue: Annotated[int, Field(ge=1)] = Field(
        default=50_000, description="or ingest's in-process queue above this many messages"
    )


class AdoptionDrop(_Params):
    points: Annotated[float, Field(gt=0, le=100)] = Field(
        default=20.0, description="weekly adoption down by more than this many points"
    )
    min_devices: Annotated[int, Field(ge=1)] = Field(
        default=10, description="devices reporting in each of the two weeks, at least"
    )


PARAMS: dict[RuleKind, type[_Params]] = {
    RuleKind.DEVICE_SILENT: DeviceSilent,
    RuleKind.PROJECT_SILENT: ProjectSilent,
    RuleKind.DEVICES_OFFLINE: DevicesOffline,
    RuleKind.QUARANTINE_RATE: QuarantineRate,
    RuleKind.COMPLETENESS_LOW: CompletenessLow,
    RuleKind.INGEST_LAG: IngestLag,
    RuleKind.ADOPTION_DROP: AdoptionDrop,
}
AUDIENCE: dict[RuleKind, Audience] = {
    RuleKind.DEVICE_SILENT: Audience.PROJECT,
    RuleKind.PROJECT_SILENT: Audience.PROJECT,
    RuleKind.DEVICES_OFFLINE: Audience.PROJECT,
    RuleKind.COMPLETENESS_LOW: Audience.PROJECT,
    RuleKind.QUARANTINE_RATE: Audience.OPS,
    RuleKind.INGEST_LAG: Audience.OPS,
    RuleKind.ADOPTION_DROP: Audience.PM,
}
# Kinds judged per project; the others watch the whole ingest path (one subject each).
PER_PROJECT = frozenset(k for k, a in AUDIENCE.items() if a is not Audience.OPS)
DESCRIPTIONS: dict[RuleKind, str] = {
    RuleKind.DEVICE_SILENT: "devices of a project silent for longer than a multiple of their "
    "usual reporting interval (one alert per project, listing the devices)",
    RuleKind.PROJECT_SILENT: "a project whose devices sent nothing for a while",
    RuleKind.DEVICES_OFFLINE: "the share of a project's devices offline above a bound",
    RuleKind.QUARANTINE_RATE: "quarantined messages per minute of one reason above a bound "
    "(one alert per reason, naming the devices)",
    RuleKind.COMPLETENESS_LOW: "a project's data completeness under a bound over a window",
    RuleKind.INGEST_LAG: "ingest unreachable, its live receive lag or its queue above a bound",
    RuleKind.ADOPTION_DROP: "a delivered feature's weekly adoption down by more than some "
    "points between the last two whole weeks, beyond both weeks' 95 % intervals",
}


def parse_params(kind: RuleKind, params: dict[str, Any]) -> _Params:
    """A kind's parameters, checked; unknown names and bad values are an InvalidInputError."""
    try:
        return PARAMS[kind].model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInputError(f"{kind} parameters: {problems}", field="params") from exc


def catalog() -> list[dict[str, Any]]:
    """Every kind with its audience, description and parameters (defaults, bounds)."""
    return [
        {
            "kind": kind,
            "audience": AUDIENCE[kind],
            "description": DESCRIPTIONS[kind],
            "params": PARAMS[kind].model_json_schema()["properties"],
        }
        for kind in RuleKind
    ]
