"""Sorting a batch's decoded messages into what the store writes: whether a well-formed message's
device may store it (known, active, within the late-data window), and the rows of readings,
statuses and enabled features, gathered before any statement runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from services.core.payloads import (
    ENABLED_REPORTED,
    Accepted,
    DeviceStatus,
    QuarantineReason,
    Rejected,
    StatusMessage,
    TelemetryMessage,
    UsageMessage,
    utc_iso,
)
from services.core.topics import MessageKind, parse_topic
from services.ingest.batch import NO_BOOT, BatchResult, RawMessage
from services.ingest.directory import DeviceRef
from services.ingest.identity import Identified
from services.ingest.rollup_sums import hour_key


@dataclass
class DeviceSeen:
    """What a batch says of a device's state: when it was last heard from, its status."""

    last_seen: datetime | None
    online: bool | None = None
    online_since: datetime | None = None
    firmware: str | None = None


def is_status(topic: str) -> bool:
    """Whether *topic* is a device's status topic."""
    where = parse_topic(topic)
    return where is not None and where.kind is MessageKind.STATUS


def check_device(
    accepted: Accepted, devices: dict[str, DeviceRef], *, now: datetime, late_data_days: int | None
) -> Rejected | None:
    """Why a well-formed message still cannot be stored, or None if it can."""
    serial = accepted.topic.serial
    device = devices.get(serial)
    if device is None:
        return Rejected(
            QuarantineReason.UNKNOWN_DEVICE, "no provisioned device with this serial", serial
        )
    if not device.active:
        return Rejected(QuarantineReason.REVOKED_DEVICE, "device was revoked", serial)
    if late_data_days is None:
        return None
    oldest = accepted.oldest
    # Never later than the project keeps raw rows: a redelivery of a message whose rows
    # retention deleted would otherwise be stored again and counted twice in the rollups.
    days = device.late_data_days or late_data_days
    window = timedelta(days=min(days, device.retention_days or days))
    if oldest is not None and oldest < now - window:
        return Rejected(
            QuarantineReason.TOO_OLD,
            f"device time {utc_iso(oldest)} is older than the project's late-data window "
            f"of {window.days} days",
            serial,
        )
    return None


@dataclass
class Rows:
    """What one batch will write, gathered before any statement runs."""

    usage: list[tuple[object, ...]] = field(default_factory=list)
    metrics: list[tuple[object, ...]] = field(default_factory=list)
    quarantine: list[tuple[object, ...]] = field(default_factory=list)
    seen: dict[int, DeviceSeen] = field(default_factory=dict)
    statuses: list[tuple[object, ...]] = field(default_factory=list)
    # (device, project, feature key or ENABLED_REPORTED, hour since the epoch)
    enabled: list[tuple[int, int, str, int]] = field(default_factory=list)
    identified: list[Identified] = field(default_factory=list)  # judged by identity window

    def drop(self, repeats: list[Identified]) -> None:
        """Leave out the rows of messages found stored already."""
        usage = {i for r in repeats if r.usage for i in r.readings}
        metrics = {i for r in repeats if not r.usage for i in r.readings}
        enabled = {i for r in repeats for i in r.enabled}
        self.usage = [row for i, row in enumerate(self.usage) if i not in usage]
        self.metrics = [row for i, row in enumerate(self.metrics) if i not in metrics]
        self.enabled = [row for i, row in enumerate(self.enabled) if i not in enabled]

    def add(
        self,
        index: int,
        raw: RawMessage,
        accepted: Accepted,
        device: DeviceRef,
        result: BatchResult,
    ) -> None:
        message = accepted.message
        state = self.seen.setdefault(device.id, DeviceSeen(last_seen=None))
        if raw.historical:
            seen_at = getattr(message, "ts", None) or raw.received_at
            state.last_seen = max(state.last_seen or seen_at, seen_at)
        elif not raw.retained:
            # A retained status replayed on subscribe says nothing about when the device
            # was last heard from; only live messages refresh last_seen.
            state.last_seen = max(state.last_seen or raw.received_at, raw.received_at)
        times = accepted.reading_times
        if isinstance(message, UsageMessage):
            boot = NO_BOOT if message.boot is None else message.boot
            first = len(self.usage)
            for item, event in enumerate(message.events):
                self.usage.append(
                    (
                        device.id,
                        device.project_id,
                        event.feature,
                        times[item],
                        raw.received_at,
                        message.seq,
                        item,
                        event.count,
                        event.duration_ms,
                        boot,
                    )
                )
            result.device_times.append(message.ts)
            if message.boot is not None:
                readings = range(first, len(self.usage))
                self.identified.append(
                    Identified(index, device.id, boot, message.seq, True, readings, range(0))
                )
        elif isinstance(message, TelemetryMessage):
            boot = NO_BOOT if message.boot is None else message.boot
            first, first_enabled = len(self.metrics), len(self.enabled)
            for item, metric in enumerate(message.metrics):
                self.metrics.append(
                    (
                        device.id,
                        device.project_id,
                        metric.name,
                        metric.value,
                        metric.unit,
                        times[item],
                        raw.received_at,
                        message.seq,
                        item,
                        boot,
                    )
                )
            result.device_times.append(message.ts)
            if message.enabled_features is not None:
                hour = hour_key(times[0])  # the hour the message counts in, as reporting
                self.enabled += [
                    (device.id, device.project_id, key, hour)
                    for key in {ENABLED_REPORTED, *message.enabled_features}
                ]
            if message.boot is not None:
                readings = range(first, len(self.metrics))
                enabled = range(first_enabled, len(self.enabled))
                self.identified.append(
                    Identified(index, device.id, boot, message.seq, False, readings, enabled)
                )
        elif isinstance(message, StatusMessage):
            state.online = message.state is DeviceStatus.ONLINE
            state.online_since = message.ts or raw.received_at
            state.firmware = message.firmware or state.firmware
            result.status_updates += 1
            # A status the broker replays on subscribe (retained) may be one ingest never saw
            # live (the device connected before ingest subscribed): kept if it carries its
            # time, which makes a replay of one already stored the same row (the history's
            # key is device, time, state). One without a time (a last will) would be stamped
            # with each replay's arrival, a new row every time: only the live one is kept.
            if not raw.retained or message.ts is not None:
                self.statuses.append(
                    (
                        device.id,
                        device.project_id,
                        state.online_since,
                        raw.received_at,
                        state.online,
                        message.firmware,
                    )
                )
