"""The load: device messages built as they are sent, published by the simulator's swarm.

Each message is stamped with the real time at the moment it is built, right before
`device_sim.runner.run_load` hands it to the swarm, so the payload's `ts` is the publish
time (same machine, same clock as the ingest process that commits it). Every phase uses a
fresh range of sequence numbers per device, so phases never collide and the stored rows of
a phase are found by (project, seq range).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bench.env import FEATURE
from device_sim.device import SimDevice
from device_sim.generator import Outgoing
from device_sim.runner import run_load
from device_sim.swarm import Swarm
from services.core.settings import Settings
from services.core.topics import MessageKind
from services.registry.upserts import DeviceCredential


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def usage_payload(seq: int, ts: datetime, readings: int) -> bytes:
    """A usage message as a device sends it: one reading like the simulator's devices, or
    *readings* buffered readings, each with its own time, in one message."""
    if readings == 1:
        return (
            f'{{"v":1,"seq":{seq},"ts":"{iso(ts)}","events":[{{"feature":"{FEATURE}",'
            f'"count":1,"duration_ms":{seq % 5000}}}]}}'
        ).encode()
    events = ",".join(
        f'{{"feature":"{FEATURE}","count":{1 + i % 3},"duration_ms":{10 * i},'
        f'"ts":"{iso(ts - timedelta(milliseconds=readings - 1 - i))}"}}'
        for i in range(readings)
    )
    return f'{{"v":1,"seq":{seq},"ts":"{iso(ts)}","events":[{events}]}}'.encode()


@dataclass(frozen=True)
class LoadPlan:
    """`per_device` messages from every device, round robin, seqs first_seq, first_seq+1, …"""

    serials: list[str]
    per_device: int
    readings: int
    first_seq: int

    @property
    def messages(self) -> int:
        return len(self.serials) * self.per_device

    @property
    def rows(self) -> int:
        return self.messages * self.readings

    @property
    def seq_end(self) -> int:
        return self.first_seq + self.per_device

    def windows(self, step: timedelta) -> Iterator[Iterator[Outgoing]]:
        yield self._messages()

    def _messages(self) -> Iterator[Outgoing]:
        for seq in range(self.first_seq, self.seq_end):
            for serial in self.serials:
                now = datetime.now(UTC)
                payload = usage_payload(seq, now, self.readings)
                yield Outgoing(now, serial, MessageKind.USAGE, payload)


@dataclass(frozen=True)
class Sent:
    messages: int  # acknowledged by the broker
    failed: int
    seconds: float  # from the first message handed over to the last PUBACK

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


class Load:
    """The connected swarm of load devices and the probe device, for the whole run."""

    def __init__(
        self, settings: Settings, devices: list[DeviceCredential], probe: DeviceCredential
    ) -> None:
        self.serials = [c.serial for c in devices]
        self._swarm = Swarm(
            settings.broker_nodes(),
            [(c.serial, c.password) for c in devices],
            client_id_of=settings.device_client_id,
        )
        self._probe = SimDevice(
            probe.serial,
            probe.password,
            settings.broker_nodes(),
            client_id_of=settings.device_client_id,
        )
        self._next_seq = 1
        self._probe_seq = 1

    def __enter__(self) -> Load:
        connected = self._swarm.start(timeout=60)
        if connected != len(self.serials):
            self._swarm.stop()
            raise RuntimeError(f"only {connected} of {len(self.serials)} load devices connected")
        self._probe.start()
        if not self._probe.connected.wait(15):
            raise RuntimeError(f"the probe device could not connect: {self._probe.refused}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._probe.stop()
        self._swarm.stop(clear_status=True)

    def plan(self, messages: int, readings: int, serials: list[str] | None = None) -> LoadPlan:
        """The next *messages* (rounded up to whole rounds over the devices: the swarm's, or
        *serials*)."""
        serials = serials or self.serials
        per_device = max(1, -(-messages // len(serials)))
        plan = LoadPlan(serials, per_device, readings, self._next_seq)
        self._next_seq = plan.seq_end
        return plan

    def send(self, plan: LoadPlan, rate: float | None = None) -> Sent:
        """Publish the plan (at *rate* msgs/s, or as fast as the broker takes it) and wait
        for every PUBACK."""
        before = self._swarm.stats
        started = time.monotonic()
        run_load(plan, self._swarm, rate=rate, stop=threading.Event())
        self._swarm.wait_acked(120)
        seconds = time.monotonic() - started
        after = self._swarm.stats
        return Sent(
            messages=after.acked - before.acked,
            failed=after.failed_total - before.failed_total,
            seconds=seconds,
        )

    def probe(self, readings: int = 1) -> None:
        """One message from the probe device (not part of any count)."""
        payload = usage_payload(self._probe_seq, datetime.now(UTC), readings)
        self._probe_seq += 1
        self._probe.publish(MessageKind.USAGE, payload).wait_for_publish(5)
