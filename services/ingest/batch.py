"""The messages of a batch as received, and what became of them: what the MQTT consumer, the
imports, the quarantine replay and the store pass between them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

from services.core.payloads import Accepted, Rejected


class RawMessage(NamedTuple):
    """One message as the MQTT thread saw it, before any parsing (a tuple: built for every
    message on the network thread, where a frozen dataclass costs several times more)."""

    topic: str
    payload: bytes
    received_at: datetime
    mid: int = 0
    qos: int = 0
    generation: int = 0  # which broker connection delivered it (acks are per connection)
    retained: bool = False  # replayed by the broker on subscribe, not sent just now
    historical: bool = False  # bulk-imported history: device time, not receipt, is "last seen"
    decoded: Accepted | Rejected | None = None  # decoded on receipt (None: the writer decodes)
    origin: str | None = None  # where an imported record came from ("line 7"): in its detail
    ack: str | None = None  # a NATS cluster's acknowledgement subject for this message


@dataclass
class BatchResult:
    messages: int = 0
    usage_rows: int = 0
    usage_duplicates: int = 0
    metric_rows: int = 0
    metric_duplicates: int = 0
    status_updates: int = 0
    # empty retained messages on status topics: a broker-level "forget the retained status",
    # not a device message; counted (metric) but neither stored nor quarantined
    status_cleared: int = 0
    # forward jumps in a device's numbering over MAX_SEQ_GAP: restarts, not lost messages
    seq_jumps: int = 0
    quarantined: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    device_times: list[datetime] = field(default_factory=list)  # of stored usage/telemetry

    def merge(self, other: BatchResult) -> BatchResult:
        """Add *other*'s counts into this result and return it."""
        self.messages += other.messages
        self.usage_rows += other.usage_rows
        self.usage_duplicates += other.usage_duplicates
        self.metric_rows += other.metric_rows
        self.metric_duplicates += other.metric_duplicates
        self.status_updates += other.status_updates
        self.status_cleared += other.status_cleared
        self.seq_jumps += other.seq_jumps
        for reason, count in other.quarantined.items():
            self.quarantined[reason] += count
        self.device_times += other.device_times
        return self


class Fate(StrEnum):
    """What became of a message (history imports report it per line)."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # the same message was stored before: nothing added
    QUARANTINED = "quarantined"
    CLEARED = "cleared"  # an empty retained status: clears the broker's copy, nothing stored


class Outcome(NamedTuple):
    fate: Fate
    reason: str | None = None  # why it was quarantined
    detail: str | None = None


# One entry per newly stored message: (device, project, seq, device time of reading 0, boot).
# Not keyed by seq: a rebooted device reuses sequence numbers.
Stored = list[tuple[int, int, int, datetime, int]]


# The boot column of a reading whose message carried no boot counter (migration 0014).
NO_BOOT = -1
