"""The swarm's books: where every caller's message stands, and what happened to the logins."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from device_sim.swarm.connection import Device


@dataclass(frozen=True)
class SwarmStats:
    """A consistent snapshot; message counts are the callers' messages (not statuses)."""

    devices: int
    connected: int
    nodes: dict[str, int]  # connected devices by broker node (host:port), every node listed
    refused: dict[str, int]  # refused logins, by the broker's reason
    disconnected: dict[str, int]  # connections ended by the broker or the network, by reason
    reconnected: int  # logins after the first: automatic reconnects and reconnect() calls
    gave_up: int  # devices that ran out of reconnect attempts
    submitted: int  # messages given to publish()
    sent: int  # handed to paho
    acked: int  # PUBACK received
    failed: dict[str, int]  # given up on, by reason
    outstanding: int  # handed to paho, PUBACK not yet received
    backpressure_waits: int  # publish() calls that had to wait for room

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def consistent(self) -> bool:
        """Every message is in exactly one of acked, outstanding and failed."""
        return (
            self.submitted == self.acked + self.outstanding + self.failed_total
            and self.acked + self.outstanding <= self.sent <= self.submitted
        )


@dataclass
class Ledger:
    """The counters behind `SwarmStats` and the outstanding limits; every method is called with
    the swarm's lock held."""

    per_device: int  # outstanding messages one device may have
    total_limit: int  # outstanding messages the swarm may have
    outstanding: int = 0
    reserved: int = 0  # publish() calls between reserving room and recording the mid
    submitted: int = 0
    sent: int = 0
    acked: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    disconnected: Counter[str] = field(default_factory=Counter)
    reconnected: int = 0
    gave_up: int = 0
    status_outstanding: int = 0  # birth/offline statuses awaiting their PUBACK
    backpressure_waits: int = 0

    def has_room(self, device: Device) -> bool:
        """Whether one more message fits under both outstanding limits."""
        return (
            len(device.pending) + device.reserved < self.per_device
            and self.outstanding + self.reserved < self.total_limit
        )

    def reserve(self, device: Device) -> None:
        device.reserved += 1
        self.reserved += 1

    def release(self, device: Device) -> None:
        """Return a reservation; the caller then records the message."""
        device.reserved -= 1
        self.reserved -= 1

    def count_failed(self, reason: str, n: int = 1) -> None:
        self.submitted += n
        self.failed[reason] += n

    def write_off(self, device: Device, reason: str) -> None:
        """The device went down for good: its outstanding messages fail."""
        if device.pending:
            n = len(device.pending)
            self.failed[reason] += n
            self.outstanding -= n
            device.pending.clear()
        self.status_outstanding -= len(device.status_mids)
        device.status_mids.clear()
        device.epoch += 1

    def quiet(self) -> bool:
        """Nothing outstanding, reserved or awaiting a status PUBACK."""
        return self.outstanding == 0 and self.reserved == 0 and self.status_outstanding == 0

    def snapshot(self, devices: int, nodes: dict[str, int]) -> SwarmStats:
        """The books now, with the connected devices by node (*nodes*)."""
        return SwarmStats(
            devices=devices,
            connected=sum(nodes.values()),
            nodes=nodes,
            refused=dict(self.refused),
            disconnected=dict(self.disconnected),
            reconnected=self.reconnected,
            gave_up=self.gave_up,
            submitted=self.submitted,
            sent=self.sent,
            acked=self.acked,
            failed=dict(self.failed),
            outstanding=self.outstanding,
            backpressure_waits=self.backpressure_waits,
        )
