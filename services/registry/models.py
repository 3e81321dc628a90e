"""What was delivered to whom: the registry's resources as the API sees them.

Each resource has a Create model (what a client sends), an Update model (every field
optional, for PATCH) and an output model (what the API returns). The constraints mirror
the database's CHECKs so bad input is a 422 naming the field, never a database error.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, ClassVar, Generic, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from services.core.db import MAX_BIGINT as MAX_BIGINT  # routes take it from here
from services.core.topics import SERIAL_PATTERN, is_reserved_name
from services.registry.enums import (  # re-exported: routes take them from here
    DeliveryStatus as DeliveryStatus,
    DeviceStatus as DeviceStatus,
    FeatureKind as FeatureKind,
    LifecycleStage as LifecycleStage,
    ProjectStatus as ProjectStatus,
    Tier as Tier,
)

MAX_MONEY = Decimal("999999999999.99")  # numeric(14, 2)
FEATURE_KEY_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"


def _no_nul(value: str) -> str:
    """Text PostgreSQL can store: no NUL characters, no lone UTF-16 surrogates."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode (it contains a lone surrogate)") from exc
    return value


def _strip(value: str) -> str:
    stripped = value.strip()
    if not stripped:
        raise ValueError("must not be blank")
    return stripped


Text = Annotated[str, AfterValidator(_no_nul)]
Name = Annotated[
    str, AfterValidator(_strip), AfterValidator(_no_nul), Field(min_length=1, max_length=200)
]
Label = Annotated[
    str, AfterValidator(_strip), AfterValidator(_no_nul), Field(min_length=1, max_length=100)
]
Notes = Annotated[str, AfterValidator(_no_nul), Field(max_length=5000)]
Money = Annotated[Decimal, Field(ge=0, le=MAX_MONEY, decimal_places=2, allow_inf_nan=False)]
PersonDays = Annotated[
    Decimal, Field(ge=0, le=Decimal("999999.99"), decimal_places=2, allow_inf_nan=False)
]
Id = Annotated[int, Field(ge=1, le=MAX_BIGINT)]
FeatureKey = Annotated[str, Field(pattern=FEATURE_KEY_PATTERN, examples=["remote_unlock"])]


def _not_reserved(serial: str) -> str:
    """A serial is also a broker client id: fieldtrack's own identities are not for devices."""
    if is_reserved_name(serial):
        raise ValueError(
            "is reserved for fieldtrack's own broker accounts (ingest, admin, fieldtrack-*)"
        )
    return serial


Serial = Annotated[
    str,
    # pydantic's regex engine reads `$` as the very end (no trailing newline), as
    # JSON Schema does; the Python-side check is SERIAL_RE.fullmatch
    Field(pattern=f"^{SERIAL_PATTERN}$", examples=["acme-lck-001"]),
    AfterValidator(_not_reserved),
]
Tag = Annotated[str, AfterValidator(_no_nul), Field(min_length=1, max_length=64)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Patch(_In):
    """A partial update: absent fields stay as they are; fields the resource cannot be
    without may be changed but not set to null."""

    not_null: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*")
    @classmethod
    def _no_null_for_required(cls, value: object, info: ValidationInfo) -> object:
        # Runs only for fields the client sent: absent fields keep their defaults unchecked.
        if value is None and info.field_name in cls.not_null:
            raise ValueError("cannot be null; leave the field out to keep its value")
        return value


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- customers ----------------------------------------------------------------------


class CustomerCreate(_In):
    name: Name = Field(examples=["Acme Logistics"])
    tier: Tier = Field(description="head (large), waist (mid) or tail (small and micro)")
    industry: Label = Field(examples=["logistics"])
    lifecycle_stage: LifecycleStage = LifecycleStage.ONBOARDING


class CustomerUpdate(_Patch):
    not_null = frozenset({"name", "tier", "industry", "lifecycle_stage"})

    name: Name | None = None
    tier: Tier | None = None
    industry: Label | None = None
    lifecycle_stage: LifecycleStage | None = None


class CustomerView(_Out):
    """A customer as its own viewers see it: nothing of how we segment or judge them."""

    id: int
    name: str
    industry: str
    created_at: datetime


class Customer(CustomerView):
    """A customer as the solution company's staff see it."""

    tier: Tier
    lifecycle_stage: LifecycleStage


# --- projects -------------------------------------------------------------------------

# What a project's retention keeps, for every model that carries the field (docs/operations.md,
# "Retention"; services/ingest/retention.py enforces it).
RETENTION_DAYS = (
    "days of raw device data kept: usage events, metric samples and status history older "
    "than this are deleted (within FIELDTRACK_RETENTION_EVERY_S, 10 minutes by default), "
    "except the status reports where a device's firmware changed. null: the server's "
    "FIELDTRACK_RAW_RETENTION_DAYS (400 days by default, the longest window any route reads). "
    "The hourly, daily and monthly rollups are kept for ever, so usage, adoption and verdicts "
    "of any window stay as they were; only views of single readings (a device's telemetry, "
    "its status changes) end at the cutoff. Readings older than this are also too old for "
    "live ingest (quarantined as too_old)"
)


class ProjectCreate(_In):
    customer_id: Id
    name: Name = Field(examples=["Smart Lockers EU"])
    contract_value: Money | None = Field(default=None, examples=["480000.00"])
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$", description="ISO 4217 code")
    go_live_date: date | None = None
    status: ProjectStatus = ProjectStatus.DELIVERING
    retention_days: int | None = Field(default=None, ge=1, le=36500, description=RETENTION_DAYS)
    late_data_days: int | None = Field(
        default=None,
        ge=1,
        le=3650,
        description="readings older than this (device time) are quarantined; null: ingest default",
    )


class ProjectUpdate(_Patch):
    not_null = frozenset({"name", "currency", "status"})

    name: Name | None = None
    contract_value: Money | None = None
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    go_live_date: date | None = None
    status: ProjectStatus | None = None
    retention_days: int | None = Field(default=None, ge=1, le=36500, description=RETENTION_DAYS)
    late_data_days: int | None = Field(default=None, ge=1, le=3650)


class ProjectView(_Out):
    """A project as the customer's viewers see it: no contract value."""

    id: int
    customer_id: int
    customer_name: str
    name: str
    currency: str
    go_live_date: date | None
    status: ProjectStatus
    retention_days: int | None = Field(description=RETENTION_DAYS)
    late_data_days: int | None
    devices: int = Field(description="active devices")
    created_at: datetime


class Project(ProjectView):
    """A project as the solution company's staff see it."""

    contract_value: Decimal | None


# --- features ---------------------------------------------------------------------------


class _WithoutUsageDefinitions(BaseModel):
    """The catalog's usage definitions were accepted and never applied: they are refused
    now, naming the field and why, instead of being ignored."""

    usage_events: SkipJsonSchema[object] = Field(default=None, exclude=True)
    usage_metrics: SkipJsonSchema[object] = Field(default=None, exclude=True)

    @field_validator("usage_events", "usage_metrics", mode="before")
    @classmethod
    def _not_supported(cls, value: object) -> object:
        raise ValueError(
            "is not supported: a feature is used when a device reports a usage event under "
            "the feature's key; alarms and other standing features take kind=standing"
        )


class FeatureCreate(_WithoutUsageDefinitions, _In):
    key: FeatureKey = Field(
        description="stable key; devices report use of the feature as usage events under it"
    )
    name: Name = Field(examples=["Remote unlock"])
    product_line: Label | None = None
    description: Notes | None = None
    kind: FeatureKind = Field(
        default=FeatureKind.INTERACTIVE,
        description="interactive: judged by use; standing (alarms, safeguards, schedules): "
        "judged by being enabled on devices, not by how often it fires",
    )


class FeatureUpdate(_WithoutUsageDefinitions, _Patch):
    not_null = frozenset({"name", "kind"})

    name: Name | None = None
    product_line: Label | None = None
    description: Notes | None = None
    kind: FeatureKind | None = None


class Feature(_Out):
    id: int
    key: str
    name: str
    product_line: str | None
    description: str | None
    kind: FeatureKind
    created_at: datetime


# --- deliveries ---------------------------------------------------------------------------


class DeliveryCreate(_In):
    project_id: Id
    feature_id: Id
    status: DeliveryStatus = DeliveryStatus.DELIVERED
    delivered_on: date | None = None
    cost_person_days: PersonDays | None = None
    contract_line_value: Money | None = None
    business_score: int | None = Field(default=None, ge=1, le=5)
    strategic: bool = False
    notes: Notes | None = None


class DeliveryUpdate(_Patch):
    not_null = frozenset({"status", "strategic"})

    status: DeliveryStatus | None = None
    delivered_on: date | None = None
    cost_person_days: PersonDays | None = None
    contract_line_value: Money | None = None
    business_score: int | None = Field(default=None, ge=1, le=5)
    strategic: bool | None = None
    notes: Notes | None = None


class DeliveryView(_Out):
    """A delivery as the customer's viewers see it: what was delivered, not what it cost
    us, what it is worth to us or what we noted about it."""

    id: int
    project_id: int
    feature_id: int
    feature_key: str
    feature_name: str
    status: DeliveryStatus
    delivered_on: date | None
    created_at: datetime


class Delivery(DeliveryView):
    """A delivery as the solution company's staff see it."""

    cost_person_days: Decimal | None
    contract_line_value: Decimal | None
    business_score: int | None
    strategic: bool
    notes: str | None


# --- devices ---------------------------------------------------------------------------------


class DeviceCreate(_In):
    serial: Serial = Field(description="also the device's MQTT username, client id and topic level")
    project_id: Id
    model: Label | None = None
    firmware: Label | None = None
    site: Name | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=20)


class DeviceUpdate(_Patch):
    not_null = frozenset({"tags"})

    model: Label | None = None
    firmware: Label | None = None
    site: Name | None = None
    tags: list[Tag] | None = Field(default=None, max_length=20)


class Device(_Out):
    id: int
    serial: str
    project_id: int
    model: str | None
    firmware: str | None
    site: str | None
    tags: list[str]
    status: DeviceStatus
    online: bool | None = Field(description="from birth / last-will messages; null if never seen")
    last_seen: datetime | None
    created_at: datetime
    revoked_at: datetime | None


class ProvisionedDevice(BaseModel):
    device: Device
    password: str = Field(description="MQTT password; shown once, stored nowhere in clear")


# --- shared -------------------------------------------------------------------------------------

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(description="items matching the filters, over all pages")
    limit: int
    offset: int
