from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from services.core.payloads import (
    MAX_PAYLOAD_BYTES,
    Accepted,
    QuarantineReason,
    Rejected,
    UsageMessage,
    decode,
)
from services.core.topics import MessageKind, parse_topic

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=5)
USAGE = "fieldtrack/v1/dev-1/usage"


def _decode(payload: bytes | dict[str, object], topic: str = USAGE) -> Accepted | Rejected:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return decode(topic, raw, now=NOW, max_future_skew=SKEW)


def _usage(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "v": 1,
        "seq": 5,
        "ts": "2026-11-22T11:59:00Z",
        "events": [{"feature": "remote_unlock", "count": 2}],
    }
    body.update(overrides)
    return body


def test_valid_usage_message_is_accepted_with_utc_times() -> None:
    outcome = _decode(_usage(ts="2026-11-22T13:59:00+02:00"))
    assert isinstance(outcome, Accepted)
    assert outcome.topic.serial == "dev-1"
    assert isinstance(outcome.message, UsageMessage)
    assert outcome.message.ts == datetime(2026, 11, 22, 11, 59, tzinfo=UTC)
    assert outcome.message.events[0].count == 2
    # a reading without its own time takes the message's, as the store writes it: in UTC
    assert outcome.reading_times == (datetime(2026, 11, 22, 11, 59, tzinfo=UTC),)
    assert outcome.reading_times[0].tzinfo is UTC


def test_each_reading_keeps_its_own_time_in_utc() -> None:
    events = [{"feature": "a", "ts": "2026-11-22T09:00:00-03:00"}, {"feature": "b"}]
    outcome = _decode(_usage(ts="2026-11-22T13:59:00+02:00", events=events))
    assert isinstance(outcome, Accepted)
    assert outcome.reading_times == (
        datetime(2026, 11, 22, 12, 0, tzinfo=UTC),
        datetime(2026, 11, 22, 11, 59, tzinfo=UTC),
    )
    assert outcome.oldest == datetime(2026, 11, 22, 11, 59, tzinfo=UTC)


@pytest.mark.parametrize(
    ("payload", "reason", "mentions"),
    [
        (b"\xff\xfe", QuarantineReason.NOT_JSON, "Invalid JSON"),
        (b"\x08\x96\x01", QuarantineReason.NOT_JSON, "starts as this does: b'\\x08\\x96\\x01'"),
        (b"[" * 10_000, QuarantineReason.NOT_JSON, "Invalid JSON"),
        (_usage(seq="5"), QuarantineReason.INVALID_PAYLOAD, "seq"),
        (_usage(seq=-1), QuarantineReason.INVALID_PAYLOAD, "seq"),
        (_usage(seq=2**63), QuarantineReason.INVALID_PAYLOAD, "seq"),
        (_usage(ts="2026-11-22T11:59:00"), QuarantineReason.INVALID_PAYLOAD, "time zone"),
        (_usage(events=[]), QuarantineReason.INVALID_PAYLOAD, "events"),
        (_usage(events=[{"feature": "Bad Key"}]), QuarantineReason.INVALID_PAYLOAD, "feature"),
        (_usage(events=[{"feature": "a\u0000"}]), QuarantineReason.INVALID_PAYLOAD, "feature"),
        (_usage(device="dev-2"), QuarantineReason.DEVICE_MISMATCH, "dev-2"),
        (_usage(colour="red"), QuarantineReason.INVALID_PAYLOAD, "colour"),
        (b"", QuarantineReason.NOT_JSON, "the payload is empty"),
        (
            b'{"v": 1, "seq": 5, "ts": "2026-11-22T11:59:00Z", "events": [{"feat',
            QuarantineReason.NOT_JSON,
            "Invalid JSON",
        ),
        (_usage(ts=None), QuarantineReason.INVALID_PAYLOAD, "ts"),
        (_usage(events=[{"count": 1}]), QuarantineReason.INVALID_PAYLOAD, "feature"),
        (
            _usage(events=[{"feature": "x", "count": 1.5}]),
            QuarantineReason.INVALID_PAYLOAD,
            "count",
        ),
        (_usage(v=2), QuarantineReason.INVALID_PAYLOAD, "v"),
        (_usage(ts="2026-11-22T12:30:00Z"), QuarantineReason.FUTURE_TIMESTAMP, "ahead"),
        (
            _usage(events=[{"feature": "x", "ts": "2027-01-01T00:00:00Z"}]),
            QuarantineReason.FUTURE_TIMESTAMP,
            "2027",
        ),
        (b"x" * (MAX_PAYLOAD_BYTES + 1), QuarantineReason.PAYLOAD_TOO_LARGE, "bytes"),
    ],
)
def test_bad_usage_payloads_are_rejected_with_a_reason(
    payload: bytes | dict[str, object], reason: QuarantineReason, mentions: str
) -> None:
    outcome = _decode(payload)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is reason
    assert mentions in outcome.detail
    assert outcome.serial == "dev-1"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_metric_values_are_rejected(literal: bytes) -> None:
    payload = (
        b'{"v":1,"seq":1,"ts":"2026-11-22T11:00:00Z","metrics":[{"name":"temp","value":'
        + literal
        + b"}]}"
    )
    outcome = _decode(payload, "fieldtrack/v1/dev-1/telemetry")
    assert isinstance(outcome, Rejected)


def test_payload_naming_its_own_device_is_accepted() -> None:
    assert isinstance(_decode(_usage(device="dev-1")), Accepted)


def test_ten_minutes_of_clock_skew_is_tolerated_by_default_setting() -> None:
    outcome = decode(
        USAGE,
        json.dumps(_usage(ts="2026-11-22T12:09:00Z")).encode(),
        now=NOW,
        max_future_skew=timedelta(minutes=10),
    )
    assert isinstance(outcome, Accepted)


def test_status_message_needs_no_sequence() -> None:
    outcome = _decode({"state": "offline"}, "fieldtrack/v1/dev-1/status")
    assert isinstance(outcome, Accepted)


@pytest.mark.parametrize(
    "topic",
    [
        "fieldtrack/v1/dev-1",
        "fieldtrack/v2/dev-1/usage",
        "fieldtrack/v1/dev-1/usage/extra",
        "fieldtrack/v1/+/usage",
        "fieldtrack/v1/dev-1/firmware",
        "fieldtrack/v1//usage",
    ],
)
def test_unknown_topics_are_rejected(topic: str) -> None:
    outcome = _decode(_usage(), topic)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is QuarantineReason.UNKNOWN_TOPIC
    assert outcome.serial is None


def test_topic_round_trip() -> None:
    parsed = parse_topic("fieldtrack/v1/acme-lck-001/telemetry")
    assert parsed is not None
    assert (parsed.serial, parsed.kind) == ("acme-lck-001", MessageKind.TELEMETRY)


TELEMETRY = "fieldtrack/v1/dev-1/telemetry"


def _telemetry(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "v": 1,
        "seq": 6,
        "ts": "2026-11-22T11:59:00Z",
        "metrics": [{"name": "battery", "value": 80.0}],
    }
    body.update(overrides)
    return body


@pytest.mark.parametrize("enabled", [None, [], ["tamper_alerts", "leak_alerts"]])
def test_telemetry_may_say_which_features_are_enabled(enabled: list[str] | None) -> None:
    body = _telemetry() if enabled is None else _telemetry(enabled_features=enabled)
    outcome = _decode(body, TELEMETRY)
    assert isinstance(outcome, Accepted)
    assert getattr(outcome.message, "enabled_features", "missing") == enabled


@pytest.mark.parametrize(
    ("enabled", "mentions"),
    [
        (["Tamper Alerts"], "enabled_features.0"),  # not a feature key
        (["*"], "enabled_features.0"),  # the stored marker of "reported" is no key
        ("tamper_alerts", "enabled_features"),  # a string, not a list
        ([f"f{i}" for i in range(201)], "enabled_features"),  # more than any device carries
        ([1], "enabled_features.0"),
    ],
)
def test_bad_enabled_features_are_quarantined_with_the_field(
    enabled: object, mentions: str
) -> None:
    outcome = _decode(_telemetry(enabled_features=enabled), TELEMETRY)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is QuarantineReason.INVALID_PAYLOAD
    assert mentions in outcome.detail


def test_usage_and_status_messages_do_not_take_enabled_features() -> None:
    outcome = _decode(_usage(enabled_features=["tamper_alerts"]))
    assert isinstance(outcome, Rejected) and "enabled_features" in outcome.detail


@pytest.mark.parametrize("kind", [MessageKind.USAGE, MessageKind.TELEMETRY])
def test_a_boot_counter_is_optional_and_kept(kind: MessageKind) -> None:
    """Issue 22, finding 5: `boot` is part of a message's identity; old payloads stay valid."""
    metrics = [{"name": "battery", "value": 80.0}]
    body = _usage() if kind is MessageKind.USAGE else _usage(events=None, metrics=metrics)
    body = {key: value for key, value in body.items() if value is not None}
    topic = f"fieldtrack/v1/dev-1/{kind.value}"
    without = _decode(body, topic)
    assert isinstance(without, Accepted)
    assert getattr(without.message, "boot", "missing") is None
    for boot in (0, 7, 2**31 - 1):
        outcome = _decode({**body, "boot": boot}, topic)
        assert isinstance(outcome, Accepted)
        assert getattr(outcome.message, "boot", None) == boot


@pytest.mark.parametrize("boot", [-1, 2**31, "3", 1.5, True])
def test_a_boot_counter_out_of_range_or_of_another_type_is_quarantined(boot: object) -> None:
    outcome = _decode(_usage(boot=boot))
    assert isinstance(outcome, Rejected)
    assert outcome.reason is QuarantineReason.INVALID_PAYLOAD
    assert "boot" in outcome.detail


def test_status_messages_take_no_boot_counter() -> None:
    status = {"v": 1, "state": "online", "boot": 3}
    outcome = _decode(status, "fieldtrack/v1/dev-1/status")
    assert isinstance(outcome, Rejected)
    assert "boot" in outcome.detail
