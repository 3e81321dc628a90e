"""The alerts' vocabulary, light enough for the command line to import for its choices."""

from __future__ import annotations

from enum import StrEnum


class AlertState(StrEnum):
    FIRING = "firing"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class ChannelKind(StrEnum):
    WEBHOOK = "webhook"
    EMAIL = "email"


class NotificationState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"
