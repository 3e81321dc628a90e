"""Device message payloads, version 1, and the pure function that classifies raw bytes.

Every message ends as exactly one of: readings to store, a status change, or a
quarantine entry with a reason. Nothing here does I/O, so it is safe on any thread.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)
from pydantic_core import ErrorDetails

from services.core.topics import DeviceTopic, MessageKind, parse_topic

# Largest payload fieldtrack stores; larger ones are quarantined (truncated) instead.
MAX_PAYLOAD_BYTES = 256 * 1024
# Quarantine keeps this much of an oversized payload: enough to see what it was.
QUARANTINE_KEEP_BYTES = 64 * 1024
MAX_READINGS = 1000
# More features than any device carries; a longer list is a fault, not a configuration.
MAX_ENABLED_FEATURES = 200
# Stored beside the enabled features of a device-hour: the device reported its list at all
# (an empty list too). No feature key can take this value (FeatureKey's pattern).
ENABLED_REPORTED = "*"
MAX_SEQ = 2**63 - 1
# Largest boot counter: stored as an int4 beside each reading (a device that starts a million
# times a day takes six years to reach it).
MAX_BOOT = 2**31 - 1
# The bytes a JSON text can begin with (RFC 8259: whitespace or a value, and the NaN and
# Infinity pydantic's parser also reads). A payload that begins otherwise (binary such as
# protobuf or CBOR, another encoding, nothing at all) is refused without a parse: garbage
# must stay cheap to turn away.
_JSON_FIRST_BYTES = frozenset(b' \t\r\n{["-0123456789tfnNI')

# The models ingest accepts with are checked by pydantic-core alone (no Python call per
# field): timestamps must carry a zone (AwareDatetime), text must hold no NUL (a pattern).
# A message they refuse is validated again by the "checked" subclasses below, whose Python
# validators word the errors quarantined (and convert timestamps to UTC, which can overflow
# at the edges of the calendar): so what is quarantined, and why, is decided by those.
NO_NUL = r"^[^\x00]*$"
FeatureKey = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
MetricName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
Unit = Annotated[str, StringConstraints(max_length=16, pattern=NO_NUL)]
Firmware = Annotated[str, StringConstraints(max_length=64, pattern=NO_NUL)]


def _clean_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must carry a time zone (e.g. 2026-01-31T12:00:00Z)")
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise ValueError("is out of range once converted to UTC") from None


CheckedTimestamp = Annotated[datetime, AfterValidator(_utc)]
CleanText = Annotated[str, AfterValidator(_clean_text)]
# the length is checked after the NUL check, as a constraint on the validated value
CheckedUnit = Annotated[CleanText, Field(max_length=16)]
CheckedFirmware = Annotated[CleanText, Field(max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class UsageReading(_Strict):
    feature: FeatureKey = Field(description="feature key from the catalog, e.g. remote_unlock")
    count: int = Field(default=1, ge=0, le=1_000_000, description="uses in this reading")
    duration_ms: int | None = Field(default=None, ge=0, le=86_400_000)
    ts: AwareDatetime | None = Field(
        default=None, description="when used; defaults to the message ts"
    )


class MetricReading(_Strict):
    name: MetricName = Field(description="metric name, e.g. battery, rssi, temperature")
    value: float = Field(description="finite number")
    unit: Unit | None = None
    ts: AwareDatetime | None = None


class _Message(_Strict):
    v: Literal[1] = Field(default=1, description="payload schema version")
    device: Annotated[str, Field(max_length=64)] | None = Field(
        default=None, description="optional; if given it must equal the topic's device"
    )
    seq: int = Field(ge=0, le=MAX_SEQ, description="per-device sequence number")
    ts: AwareDatetime = Field(description="device time of the message, ISO 8601 with zone")
    boot: int | None = Field(
        default=None,
        ge=0,
        le=MAX_BOOT,
        description="optional boot counter: kept by the device across restarts and increased "
        "at every start (seq may restart at 0). With it, a message is the same message as "
        "another of its device with the same boot and seq, whatever their ts (a resend with a "
        "fresh ts is stored once); without it, the same seq and ts make the same message.",
    )


class UsageMessage(_Message):
    """Published to fieldtrack/v1/{device}/usage."""

    events: list[UsageReading] = Field(min_length=1, max_length=MAX_READINGS)


class TelemetryMessage(_Message):
    """Published to fieldtrack/v1/{device}/telemetry."""

    metrics: list[MetricReading] = Field(min_length=1, max_length=MAX_READINGS)
    enabled_features: list[FeatureKey] | None = Field(
        default=None,
        max_length=MAX_ENABLED_FEATURES,
        description="optional: the catalog keys of the features switched on on the device at "
        "`ts` ([] for none). Standing features (alarms, safeguards, schedules) are judged by "
        "this, not by how often they fire; devices that never send it are not counted.",
    )


class DeviceStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class StatusMessage(_Strict):
    """Published (retained) to fieldtrack/v1/{device}/status: birth and last will."""

    v: Literal[1] = 1
    device: Annotated[str, Field(max_length=64)] | None = None
    state: DeviceStatus
    ts: AwareDatetime | None = None
    firmware: Firmware | None = None


# The same models with the Python validators (fields keep their place, so errors come in the
# same order). Used only for messages the models above refuse, and for timestamps that cannot
# be converted to UTC.
class _CheckedUsageReading(UsageReading):
    ts: CheckedTimestamp | None = None


class _CheckedMetricReading(MetricReading):
    unit: CheckedUnit | None = None
    ts: CheckedTimestamp | None = None


class _CheckedUsageMessage(UsageMessage):
    ts: CheckedTimestamp
    events: list[_CheckedUsageReading] = Field(  # type: ignore[assignment]  # subclass items
        min_length=1, max_length=MAX_READINGS
    )


class _CheckedTelemetryMessage(TelemetryMessage):
    ts: CheckedTimestamp
    metrics: list[_CheckedMetricReading] = Field(  # type: ignore[assignment]  # subclass items
        min_length=1, max_length=MAX_READINGS
    )


class _CheckedStatusMessage(StatusMessage):
    ts: CheckedTimestamp | None = None
    firmware: CheckedFirmware | None = None


MESSAGE_MODELS: dict[MessageKind, type[BaseModel]] = {
    MessageKind.USAGE: UsageMessage,
    MessageKind.TELEMETRY: TelemetryMessage,
    MessageKind.STATUS: StatusMessage,
}
_CHECKED_MODELS: dict[MessageKind, type[BaseModel]] = {
    MessageKind.USAGE: _CheckedUsageMessage,
    MessageKind.TELEMETRY: _CheckedTelemetryMessage,
    MessageKind.STATUS: _CheckedStatusMessage,
}
# Their validators, called directly: BaseModel.model_validate_json is a Python frame more on
# every message, and one more traceback entry on every refusal.
_VALIDATORS = {kind: model.__pydantic_validator__ for kind, model in MESSAGE_MODELS.items()}
_CHECKED_VALIDATORS = {
    kind: model.__pydantic_validator__ for kind, model in _CHECKED_MODELS.items()
}


class QuarantineReason(StrEnum):
    PAYLOAD_TOO_LARGE = "payload_too_large"
    NOT_JSON = "not_json"
    INVALID_PAYLOAD = "invalid_payload"
    UNKNOWN_TOPIC = "unknown_topic"
    UNKNOWN_DEVICE = "unknown_device"
    REVOKED_DEVICE = "revoked_device"
    FUTURE_TIMESTAMP = "future_timestamp"
    TOO_OLD = "too_old"
    DEVICE_MISMATCH = "device_mismatch"
    REJECTED_BY_DATABASE = "rejected_by_database"
    STORE_FAILED = "store_failed"


class Rejected(NamedTuple):
    """Why a message cannot be stored (a tuple, like Accepted: one is built per message)."""

    reason: QuarantineReason
    detail: str
    serial: str | None


Message = UsageMessage | TelemetryMessage | StatusMessage


class Accepted(NamedTuple):
    """A message to store (a tuple: a frozen dataclass costs about 1 µs more per message)."""

    topic: DeviceTopic
    message: Message
    oldest: datetime | None = None  # earliest device time in the message (late-data window)
    # the device time of each reading (its own, else the message's) in UTC with the stdlib's
    # tzinfo: pydantic's own tzinfo makes every later comparison, hour and COPY of a time
    # call back into it (about 4 µs a reading in all)
    reading_times: tuple[datetime, ...] = ()


def decode(
    topic: str, payload: bytes, *, now: datetime, max_future_skew: timedelta
) -> Accepted | Rejected:
    """Classify one raw MQTT message; never raises."""
    where = parse_topic(topic)
    if where is None:
        return Rejected(
            QuarantineReason.UNKNOWN_TOPIC, f"not a v1 device topic: {topic[:200]}", None
        )
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejected(
            QuarantineReason.PAYLOAD_TOO_LARGE,
            f"{len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}",
            where.serial,
        )
    if not payload or payload[0] not in _JSON_FIRST_BYTES:
        return Rejected(QuarantineReason.NOT_JSON, _not_json(payload), where.serial)
    try:
        # Pydantic's own JSON parser, strict: no NaN/Infinity, no "5" for 5, no floats for ints.
        validated = _validate(where.kind, payload, where.serial)
    except (RecursionError, ValueError, TypeError) as exc:
        return Rejected(QuarantineReason.INVALID_PAYLOAD, str(exc)[:500], where.serial)
    if isinstance(validated, Rejected):
        return validated
    message, readings, oldest, latest = validated
    if message.device is not None and message.device != where.serial:
        # Identity comes from credentials and topic; a payload claiming otherwise is suspect.
        return Rejected(
            QuarantineReason.DEVICE_MISMATCH,
            f"payload names device {message.device[:64]!r}, topic names {where.serial!r}",
            where.serial,
        )
    if latest is not None and latest > now + max_future_skew:
        return Rejected(
            QuarantineReason.FUTURE_TIMESTAMP,
            f"device time {utc_iso(latest)} is ahead of receive time {now.isoformat()}",
            where.serial,
        )
    return Accepted(where, message, oldest, readings)


_Validated = tuple[Message, tuple[datetime, ...], datetime | None, datetime | None]


def _validate(kind: MessageKind, payload: bytes, serial: str) -> _Validated | Rejected:
    """The message, its readings' device times in UTC, and its earliest and latest device
    times; or why it is refused, worded by the checked models. A refusal is worked out once
    and returned, not raised: garbage must stay cheap to turn away."""
    try:
        message: Message = _VALIDATORS[kind].validate_json(payload, strict=True)
    except ValidationError as exc:
        errors = _errors(exc)
        # bytes that are not JSON give exactly one error (JSON is parsed before any field)
        if errors[0]["type"] == "json_invalid":
            return Rejected(QuarantineReason.NOT_JSON, _summarise(errors), serial)
        if not (
            any(_CHECKED_FIELDS.intersection(e["loc"]) for e in errors) or _calendar_edge(payload)
        ):
            # Refused on fields both models word alike: the checked models would repeat the
            # same errors at twice the cost.
            return Rejected(QuarantineReason.INVALID_PAYLOAD, _summarise(errors), serial)
    else:
        try:
            return _in_utc(message)
        except OverflowError:
            pass  # a time in year 1 or 9999 that UTC cannot hold: refused below, and why
    # Refused, or a time that UTC cannot hold: the checked models find and word the errors.
    try:
        message = _CHECKED_VALIDATORS[kind].validate_json(payload, strict=True)
    except ValidationError as exc:
        return Rejected(QuarantineReason.INVALID_PAYLOAD, _summarise(_errors(exc)), serial)
    return _in_utc(message)


def _not_json(payload: bytes) -> str:
    if not payload:
        return "payload: Invalid JSON: the payload is empty"
    return f"payload: Invalid JSON: no JSON text starts as this does: {payload[:16]!r}"


def _in_utc(message: Message) -> _Validated:
    """*message* with its readings' device times in UTC, and its earliest and latest device
    time; raises OverflowError for a time that UTC cannot hold."""
    if isinstance(message, StatusMessage):
        ts = message.ts.astimezone(UTC) if message.ts else None
        return message, (), ts, ts
    ts = message.ts.astimezone(UTC)
    items = message.events if isinstance(message, UsageMessage) else message.metrics
    readings = tuple(item.ts.astimezone(UTC) if item.ts else ts for item in items)
    return message, readings, min(ts, *readings), max(ts, *readings)


# Where the checked models word errors their own way: time zones, NUL characters.
_CHECKED_FIELDS = frozenset({"ts", "unit", "firmware"})


def _calendar_edge(payload: bytes) -> bool:
    """Whether the payload may hold a time in year 1 or 9999, which the fast models accept and
    the checked ones refuse (out of range in UTC). A year spelt with JSON escapes slips past
    this; the message is refused all the same, its detail just lacks that one error."""
    return b'"0001-' in payload or b'"9999-' in payload


def _errors(exc: ValidationError) -> list[ErrorDetails]:
    """The errors without their input values (which can be the whole payload) or links:
    garbage should cost no more to turn away than a valid message costs to take."""
    return exc.errors(include_url=False, include_context=False, include_input=False)


def utc_iso(moment: datetime) -> str:
    """A device time as quarantine details print it: in UTC."""
    return moment.astimezone(UTC).isoformat()


def _summarise(errors: list[ErrorDetails]) -> str:
    parts = [f"{'.'.join(map(str, err['loc'])) or 'payload'}: {err['msg']}" for err in errors[:5]]
    more = len(errors) - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
