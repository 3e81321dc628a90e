"""Hostile input for the payload classifier, property-based: whatever bytes arrive on whatever
topic, `decode` returns Accepted or Rejected with a reason and a detail, and never raises
(an exception escaping it would stop the ingest writer)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, example, given, settings, strategies as st
from pydantic import ValidationError

from services.core import payloads as payloads_module
from services.core.payloads import (
    MAX_PAYLOAD_BYTES,
    Accepted,
    QuarantineReason,
    Rejected,
    decode,
)
from services.core.topics import MessageKind

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=10)
KINDS = [kind.value for kind in MessageKind]
PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

serials = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z")
topics = st.one_of(
    st.builds(lambda s, k: f"fieldtrack/v1/{s}/{k}", serials, st.sampled_from(KINDS)),
    st.text(max_size=80),
    st.builds(lambda s, k: f"fieldtrack/v1/{s}/{k}", st.text(max_size=10), st.text(max_size=10)),
)
# Timestamps a device might send, including the edges of what Python's datetime can hold
# once converted to UTC.
timestamps = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
            "2026-11-22T11:59:00",
            "2026-02-30T00:00:00Z",
            "1970-01-01T00:00:00+23:59",
            "",
            "now",
        ]
    ),
    st.integers(),
    st.floats(),
    st.none(),
)
json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
feature_keys = st.one_of(st.from_regex(r"\A[a-z][a-z0-9_.-]{0,10}\Z"), st.text(max_size=12))
readings = st.fixed_dictionaries(
    {"feature": feature_keys},
    optional={
        "count": st.one_of(st.integers(), json_values),
        "duration_ms": st.one_of(st.integers(), json_values),
        "ts": timestamps,
        "name": feature_keys,
        "value": st.one_of(st.floats(), st.integers(), json_values),
        "unit": st.text(max_size=20),
    },
)
messages = st.fixed_dictionaries(
    {},
    optional={
        "v": st.one_of(st.just(1), json_values),
        "seq": st.one_of(st.integers(min_value=-1, max_value=2**64), json_values),
        "ts": timestamps,
        "device": st.one_of(serials, st.text(max_size=70)),
        "events": st.lists(readings, max_size=3),
        "metrics": st.lists(readings, max_size=3),
        "state": st.sampled_from(["online", "offline", "ONLINE", "", "dead"]),
        "firmware": st.text(max_size=70),
        "extra": json_values,
    },
)


def _dump(value: Any) -> bytes:
    # allow_nan: NaN and Infinity must be refused by the classifier, not by the sender
    return json.dumps(value, allow_nan=True).encode()


payloads = st.one_of(
    st.binary(max_size=300),
    messages.map(_dump),
    json_values.map(_dump),
    st.builds(lambda m, cut: _dump(m)[:cut], messages, st.integers(0, 200)),  # truncated
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
)


def _assert_classified(outcome: object, topic: str) -> None:
    assert isinstance(outcome, Accepted | Rejected), outcome
    if isinstance(outcome, Rejected):
        assert isinstance(outcome.reason, QuarantineReason)
        assert outcome.detail, "a rejection must say why"
    else:
        assert outcome.topic.serial == topic.split("/")[2]
        # what the store takes from an accepted message: each reading's time, in UTC
        message = outcome.message
        items = getattr(message, "events", None) or getattr(message, "metrics", None) or []
        assert len(outcome.reading_times) == len(items)
        for item, at in zip(items, outcome.reading_times, strict=True):
            assert at.tzinfo is UTC
            assert at == (item.ts or message.ts)
        if outcome.reading_times:
            stamps = [t for t in (message.ts, *outcome.reading_times) if t is not None]
            assert outcome.oldest == min(stamps)


@PROFILE
@given(topic=topics, payload=payloads)
@example(
    topic="fieldtrack/v1/dev-1/usage",
    payload=b'{"v":1,"seq":1,"ts":"0001-01-01T00:00:00+01:00","events":[{"feature":"a"}]}',
)
@example(
    topic="fieldtrack/v1/dev-1/telemetry",
    payload=b'{"v":1,"seq":1,"ts":"2026-11-22T11:00:00Z",'
    b'"metrics":[{"name":"a","value":1,"ts":"9999-12-31T23:59:59-01:00"}]}',
)
@example(
    topic="fieldtrack/v1/dev-1/status",
    payload=b'{"state":"online","ts":"0001-01-01T00:00:00+14:00"}',
)
def test_every_input_is_accepted_or_rejected_with_a_reason(topic: str, payload: bytes) -> None:
    outcome = decode(topic, payload, now=NOW, max_future_skew=SKEW)
    _assert_classified(outcome, topic)


@PROFILE
@given(message=messages, kind=st.sampled_from(KINDS))
def test_structured_messages_on_device_topics_are_classified(
    message: dict[str, Any], kind: str
) -> None:
    topic = f"fieldtrack/v1/dev-1/{kind}"
    outcome = decode(topic, _dump(message), now=NOW, max_future_skew=SKEW)
    _assert_classified(outcome, topic)


@settings(max_examples=20, deadline=None)
@given(extra=st.integers(1, 4096))
def test_oversized_payloads_are_rejected_by_size_before_parsing(extra: int) -> None:
    payload = b"{" * (MAX_PAYLOAD_BYTES + extra)
    outcome = decode("fieldtrack/v1/dev-1/usage", payload, now=NOW, max_future_skew=SKEW)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is QuarantineReason.PAYLOAD_TOO_LARGE


def _checked_only(kind: str, payload: bytes) -> str | None:
    """What the checked models alone (Python validators, the reference wording) say of a
    payload: the quarantine detail, or None if they accept it."""
    model = payloads_module._CHECKED_MODELS[MessageKind(kind)]
    try:
        model.model_validate_json(payload, strict=True)
    except ValidationError as exc:
        return payloads_module._summarise(payloads_module._errors(exc))
    return None


@PROFILE
@given(message=messages, kind=st.sampled_from(KINDS))
@example(message={"v": 1, "seq": 1, "ts": "2026-11-22T11:59:00", "events": []}, kind="usage")
@example(
    message={
        "seq": "7",
        "ts": "2026-11-22T11:00:00Z",
        "metrics": [{"name": "a", "value": 1, "unit": "m\x00" * 10}],
    },
    kind="telemetry",
)
@example(  # year 1 in UTC refused beside a field both models refuse alike
    message={"seq": -1, "ts": "0001-01-01T00:00:00+01:00", "events": [{"feature": "a"}]},
    kind="usage",
)
def test_a_refusal_is_worded_as_the_checked_models_word_it(
    message: dict[str, Any], kind: str
) -> None:
    """decode skips the second (checked) validation where both models word errors alike;
    that shortcut must never change what is quarantined, or why."""
    payload = _dump(message)
    outcome = decode(f"fieldtrack/v1/dev-1/{kind}", payload, now=NOW, max_future_skew=SKEW)
    reference = _checked_only(kind, payload)
    if reference is None:  # the payload is valid: later checks (skew, device) may refuse it
        assert not (
            isinstance(outcome, Rejected)
            and outcome.reason in (QuarantineReason.INVALID_PAYLOAD, QuarantineReason.NOT_JSON)
        ), outcome
    else:
        assert isinstance(outcome, Rejected), outcome
        assert outcome.reason is QuarantineReason.INVALID_PAYLOAD  # the payload is JSON
        assert outcome.detail == reference


@PROFILE
@given(payload=st.binary(max_size=64), kind=st.sampled_from(KINDS))
@example(payload=b"", kind="usage")
@example(payload=b"\xef\xbb\xbf{}", kind="usage")  # a UTF-8 byte order mark
@example(payload=b"\x0b{}", kind="status")  # vertical tab: whitespace to Python, not to JSON
@example(payload=b"NaN", kind="usage")  # pydantic's parser reads NaN and Infinity as values
@example(payload=b"Infinity", kind="telemetry")
def test_refusing_by_the_first_byte_never_changes_the_reason(payload: bytes, kind: str) -> None:
    """decode refuses payloads whose first byte no JSON text starts with before parsing; the
    parser must agree that each such payload is not JSON at all."""
    outcome = decode(f"fieldtrack/v1/dev-1/{kind}", payload, now=NOW, max_future_skew=SKEW)
    try:
        payloads_module.MESSAGE_MODELS[MessageKind(kind)].model_validate_json(payload)
    except ValidationError as exc:
        parsed_as_json = exc.errors()[0]["type"] != "json_invalid"
    else:
        parsed_as_json = True
    if not parsed_as_json:
        assert isinstance(outcome, Rejected)
        assert outcome.reason is QuarantineReason.NOT_JSON
    if not payload or payload[0] not in payloads_module._JSON_FIRST_BYTES:
        assert not parsed_as_json, f"{payload!r} parses as JSON: the first-byte check is wrong"
