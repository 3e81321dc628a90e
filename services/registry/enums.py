"""The registry's fixed vocabularies. Standard library only, so the CLI can offer them as
choices without importing the models."""

from __future__ import annotations

from enum import StrEnum


class Tier(StrEnum):
    HEAD = "head"
    WAIST = "waist"
    TAIL = "tail"


class LifecycleStage(StrEnum):
    ONBOARDING = "onboarding"
    ADOPTION = "adoption"
    EXPANSION = "expansion"
    RENEWAL = "renewal"
    AT_RISK = "at_risk"


class ProjectStatus(StrEnum):
    DELIVERING = "delivering"
    LIVE = "live"
    ENDED = "ended"


class DeliveryStatus(StrEnum):
    DELIVERED = "delivered"
    PLANNED = "planned"
    CUT = "cut"


class DeviceStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


class FeatureKind(StrEnum):
    INTERACTIVE = "interactive"  # judged by use: people or devices invoke it
    STANDING = "standing"  # alarms, safeguards, schedules: judged by being enabled, not firing
