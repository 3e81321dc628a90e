"""Running a scenario's fleet live: every device its own MQTT client, usage by probability."""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

from device_sim.device import SimDevice
from device_sim.scenario import Scenario, serials
from services.registry.upserts import DeviceCredential

log = logging.getLogger(__name__)

TELEMETRY_EVERY_TICKS = 10
CONNECT_WAIT_S = 15.0


@dataclass
class DevicePlan:
    device: SimDevice
    use_per_hour: dict[str, float]
    battery: float


class Fleet:
    """All devices of a scenario for which credentials are known."""

    def __init__(
        self,
        scenario: Scenario,
        credentials: list[DeviceCredential],
        host: str,
        port: int,
        *,
        speed: float = 60.0,
        seed: int | None = None,
    ) -> None:
        self._speed = speed
        self._random = random.Random(seed)
        passwords = {c.serial: c.password for c in credentials}
        self.plans: list[DevicePlan] = []
        for customer in scenario.customers:
            for project in customer.projects:
                use = {d.feature: d.use_per_hour for d in project.deliveries if d.status != "cut"}
                use.update(project.undelivered_use)
                firmware = project.fleet.firmware
                for i, serial in enumerate(serials(project)):
                    if serial not in passwords:
                        continue
                    device = SimDevice(serial, passwords[serial], host, port)
                    device.firmware = firmware[i % len(firmware)]
                    self.plans.append(DevicePlan(device, use, self._random.uniform(60, 100)))
        self.sent = 0

    def start(self) -> int:
        """Connect every device; return how many connected within CONNECT_WAIT_S."""
        for plan in self.plans:
            plan.device.start()
        deadline = time.monotonic() + CONNECT_WAIT_S
        for plan in self.plans:
            plan.device.connected.wait(max(0.0, deadline - time.monotonic()))
        return sum(p.device.connected.is_set() for p in self.plans)

    def tick(self, tick_s: float, number: int) -> int:
        """Advance simulated time by tick_s × speed; return messages published."""
        hours = tick_s * self._speed / 3600
        published = 0
        for plan in self.plans:
            for feature, per_hour in plan.use_per_hour.items():
                chance = 1 - (1 - per_hour) ** hours
                if per_hour and self._random.random() < chance:
                    plan.device.usage(feature, duration_ms=self._random.randint(200, 5000))
                    published += 1
            if number % TELEMETRY_EVERY_TICKS == 0:
                plan.battery = max(0.0, plan.battery - self._random.uniform(0, 0.05) * hours)
                plan.device.telemetry({
                    "battery": (round(plan.battery, 2), "%"),
                    "rssi": (round(self._random.gauss(-70, 6), 1), "dBm"),
                    "temperature": (round(self._random.gauss(21, 1.5), 2), "C"),
                })  # fmt: skip
                published += 1
        self.sent += published
        return published

    def run(self, stop: threading.Event, tick_s: float = 1.0) -> None:
        number = 0
        while not stop.is_set():
            started = time.monotonic()
            self.tick(tick_s, number)
            number += 1
            stop.wait(max(0.0, tick_s - (time.monotonic() - started)))

    def stop(self) -> None:
        for plan in self.plans:
            plan.device.stop()
