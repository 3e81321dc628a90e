"""The MQTT topic scheme, version 1.

Every device publishes under its own prefix, ``fieldtrack/v1/{device}/{kind}``, where
``{device}`` is its MQTT username (its serial). The broker's ACL lets a device publish only
under its own prefix, so the topic names the device and the payload never does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

TOPIC_ROOT = "fieldtrack/v1"
# A device serial doubles as MQTT username, client id and topic level, so it must be a
# plain token: no MQTT wildcards, no separators, nothing needing escapes.
SERIAL_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
# Use with fullmatch: `$` would also accept a serial followed by a newline.
SERIAL_RE = re.compile(SERIAL_PATTERN)
# fieldtrack's own broker identities (the ingest and admin accounts and their client ids) live
# in this namespace. A device named like one could log in under that client id and take over
# its persistent session, so no serial may be one of these, in any letter case.
RESERVED_NAMES = frozenset({"fieldtrack", "ingest", "admin"})
RESERVED_PREFIX = "fieldtrack-"
INGEST_TOPIC_FILTER = f"{TOPIC_ROOT}/+/+"
INGEST_SUBSCRIPTIONS = (f"{TOPIC_ROOT}/#", f"$share/+/{TOPIC_ROOT}/#")


class MessageKind(StrEnum):
    USAGE = "usage"
    TELEMETRY = "telemetry"
    STATUS = "status"


@dataclass(frozen=True)
class DeviceTopic:
    serial: str
    kind: MessageKind


def device_topic(serial: str, kind: MessageKind) -> str:
    return f"{TOPIC_ROOT}/{serial}/{kind.value}"


def is_reserved_name(name: str) -> bool:
    """Whether *name* belongs to fieldtrack's own broker identities (never a device's)."""
    folded = name.casefold()
    return folded in RESERVED_NAMES or folded.startswith(RESERVED_PREFIX)


def device_publish_topics(serial: str) -> list[str]:
    """Exactly the topics a device may publish to: one per message kind under its prefix."""
    return [device_topic(serial, kind) for kind in MessageKind]


def device_prefix_filter(serial: str) -> str:
    """The device's own prefix: the only topics it may ever receive from."""
    return f"{TOPIC_ROOT}/{serial}/#"


def shared_subscription(group: str) -> str:
    """Several ingest processes split the load through one shared subscription. No group: a
    plain subscription, which Mosquitto 2.0 keeps across its restarts (shared ones it does
    not restore from its persistence file)."""
    return f"$share/{group}/{INGEST_TOPIC_FILTER}" if group else INGEST_TOPIC_FILTER


def parse_topic(topic: str) -> DeviceTopic | None:
    """The device and message kind a topic names, or None if it is not a v1 device topic."""
    # Ingest parses the same few topics over and over (three per device): remembered, in a
    # bounded cache that only holds topics short enough to be device topics.
    return _parse_cached(topic) if len(topic) <= MAX_TOPIC_CACHED else _parse_topic(topic)


MAX_TOPIC_CACHED = len(TOPIC_ROOT) + 1 + 64 + 1 + max(len(kind.value) for kind in MessageKind)


def _parse_topic(topic: str) -> DeviceTopic | None:
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT:
        return None
    serial, kind = parts[2], parts[3]
    if not SERIAL_RE.fullmatch(serial):
        return None
    try:
        return DeviceTopic(serial, MessageKind(kind))
    except ValueError:
        return None


_parse_cached = lru_cache(maxsize=16_384)(_parse_topic)


# A NATS server with MQTT enabled turns an MQTT topic into a subject: levels are separated by
# `.`, and a `.` inside a level becomes `//` (https://docs.nats.io/running-a-nats-service/
# configuration/mqtt). Permissions and the ingest consumer's filter are written in subjects.
NATS_MQTT_STREAM_PREFIX = "$MQTT.msgs."


def nats_subject(topic: str) -> str:
    """The NATS subject an MQTT topic (or filter: `+` and `#` map to `*` and `>`) becomes."""
    levels = topic.split("/")
    mapped = ["*" if lv == "+" else ">" if lv == "#" else lv.replace(".", "//") for lv in levels]
    return ".".join(mapped)


def mqtt_topic(subject: str) -> str:
    """The MQTT topic a NATS subject published from MQTT came from (inverse of nats_subject)."""
    return "/".join(token.replace("//", ".") for token in subject.split("."))


def nats_client_id(serial: str) -> str:
    """A device's MQTT client id on a NATS cluster: NATS refuses `.` in client ids, so each is
    written `~` (no serial has a `~`, so no two devices share a client id). On Mosquitto the
    client id is the serial itself."""
    return serial.replace(".", "~")


def nats_ingest_filter() -> str:
    """What ingest's JetStream consumer takes from the cluster's MQTT message stream: every
    device topic, as the server stored it before acknowledging the device's PUBLISH."""
    return NATS_MQTT_STREAM_PREFIX + nats_subject(f"{TOPIC_ROOT}/#")
