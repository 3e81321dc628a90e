"""The capacity projection: from per-unit costs measured on one machine, what a fleet of a
given size needs (CPU cores per component, broker memory, the time to provision it), which
limit it meets first on a given machine, and the deployment that suits it. Pure arithmetic:
every assumption is a parameter or a named constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.core.broker_admin import COMMANDS_PER_MESSAGE, REPLY_TIMEOUT_S

FLEETS = (10_000, 100_000, 1_000_000)
# Mosquitto runs on one thread: one core is its wall whatever the machine.
BROKER_THREAD_CORES = 1.0
# Of the rate one ingest process was measured at, what it is planned to carry.
INGEST_PROCESS_SHARE = 0.7
# Provisioning sends two commands per device (its role and its client).
COMMANDS_PER_DEVICE = 2
# A deployment keeps half of its machine's cores free for peaks and catch-up after outages.
HEADROOM = 0.5
# Longer than this, provisioning a whole fleet is an operation of its own, not an import.
PROVISIONING_WALL_S = 3600.0


@dataclass(frozen=True)
class Rates:
    """What each device sends; each message is stored as one row."""

    usage_every_s: float = 60.0
    telemetry_every_s: float = 300.0

    @property
    def messages_per_device_s(self) -> float:
        return 1 / self.usage_every_s + 1 / self.telemetry_every_s


@dataclass(frozen=True)
class Costs:
    """Per-unit costs, as measured; telemetry is taken to cost what a usage message does."""

    broker_cpu_s_per_message: float
    ingest_cpu_s_per_message: float
    postgres_cpu_s_per_row: float
    broker_mib_per_device: float  # one idle connection
    provision_s_per_device: float  # with no identity present
    provision_s_per_identity: float  # what each identity already present adds to that
    ingest_msgs_per_s: float  # the rate one ingest process was measured at
    # the cores one broker process can use: Mosquitto's one thread; a NATS cluster's nodes are
    # multi-threaded and each on a machine of its own: no such wall (infinity)
    broker_thread_cores: float = BROKER_THREAD_CORES


@dataclass(frozen=True)
class Machine:
    name: str
    cores: int
    memory_gib: float


@dataclass(frozen=True)
class Need:
    devices: int
    messages_per_s: float
    broker_cores: float
    ingest_cores: float
    postgres_cores: float
    broker_memory_gib: float
    provisioning_s: float  # every device of the fleet, one batch after another, from none
    ingest_processes: int

    @property
    def cores(self) -> float:
        return self.broker_cores + self.ingest_cores + self.postgres_cores


def provisioning_s(costs: Costs, devices: int) -> float:
    """Provisioning *devices* from none: the i-th device costs base + i × growth."""
    return (
        costs.provision_s_per_device * devices
        + costs.provision_s_per_identity * devices * (devices - 1) / 2
    )


def need(costs: Costs, rates: Rates, devices: int) -> Need:
    rate = devices * rates.messages_per_device_s
    return Need(
        devices=devices,
        messages_per_s=rate,
        broker_cores=rate * costs.broker_cpu_s_per_message,
        ingest_cores=rate * costs.ingest_cpu_s_per_message,
        postgres_cores=rate * costs.postgres_cpu_s_per_row,
        broker_memory_gib=devices * costs.broker_mib_per_device / 1024,
        provisioning_s=provisioning_s(costs, devices),
        ingest_processes=max(1, math.ceil(rate / (INGEST_PROCESS_SHARE * costs.ingest_msgs_per_s))),
    )


def identity_wall(costs: Costs) -> float:
    """The identities present at which one admin message of provisioning commands takes
    longer than the admin waits for the broker's reply: provisioning fails from there on."""
    per_command = REPLY_TIMEOUT_S / COMMANDS_PER_MESSAGE
    if costs.provision_s_per_identity <= 0:
        return math.inf
    per_device = per_command * COMMANDS_PER_DEVICE
    return max(0.0, (per_device - costs.provision_s_per_device) / costs.provision_s_per_identity)


def walls(costs: Costs, rates: Rates, machine: Machine) -> dict[str, float]:
    """The fleet size at which each limit of *machine* is reached, everything on it: the
    broker's thread, all cores (named by the component that uses most of them), memory and
    the broker's identity store."""
    per_device = need(costs, rates, 1)
    shares = {
        "ingest": per_device.ingest_cores,
        "PostgreSQL": per_device.postgres_cores,
        "broker": per_device.broker_cores,
    }
    busiest = max(shares, key=lambda name: shares[name])
    return {
        "broker thread": _fleet_at(costs.broker_thread_cores, per_device.broker_cores),
        f"CPU (mostly {busiest})": _fleet_at(machine.cores, per_device.cores),
        "broker memory": _fleet_at(machine.memory_gib, per_device.broker_memory_gib),
        "broker identity store": identity_wall(costs),
    }


def _fleet_at(limit: float, per_device: float) -> float:
    """The fleet that uses *limit* at *per_device* each (none measured: no wall)."""
    return limit / per_device if per_device > 0 else math.inf


def first_wall(costs: Costs, rates: Rates, machine: Machine) -> tuple[str, float]:
    found = walls(costs, rates, machine)
    name = min(found, key=lambda key: found[key])
    return name, found[name]


def verdict(costs: Costs, rates: Rates, machine: Machine, devices: int) -> str:
    """Whether *devices* fit on *machine*, and if not, which wall they are past."""
    name, at = first_wall(costs, rates, machine)
    used = need(costs, rates, devices).cores / machine.cores
    if devices <= at:
        return f"fits ({used:.0%} of the cores)"
    return f"past the {name} wall ({at:,.0f} devices)"


def deployment(costs: Costs, rates: Rates, big: Machine, devices: int) -> str:
    """The deployment for *devices*: one machine while the fleet fits in half of *big* and
    provisioning stays an import; a broker cluster, several ingest processes and a read
    replica while PostgreSQL fits in half of it; beyond, the database split as well."""
    fleet = need(costs, rates, devices)
    processes = f"{fleet.ingest_processes} ingest process" + (
        "es" if fleet.ingest_processes > 1 else ""
    )
    # costs measured on the cluster describe the cluster: it is the broker at every size
    clustered = math.isinf(costs.broker_thread_cores)
    if (
        not clustered
        and fleet.cores <= HEADROOM * big.cores
        and fleet.broker_cores <= HEADROOM * costs.broker_thread_cores
        and fleet.provisioning_s <= PROVISIONING_WALL_S
    ):
        return f"one machine: Mosquitto, {processes}, one TimescaleDB"
    if fleet.postgres_cores <= HEADROOM * big.cores:
        return f"NATS cluster of 3, {processes}, TimescaleDB primary + read replica"
    return (
        f"NATS cluster, {processes}, TimescaleDB split by project over several primaries "
        "(each with a read replica)"
    )


def duration(seconds: float) -> str:
    for unit, size in (("days", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:,.0f} s"


def table(
    costs: Costs,
    rates: Rates,
    here: Machine,
    big: Machine,
    fleets: tuple[int, ...] = FLEETS,
) -> list[str]:
    """The projection as Markdown lines: one row per fleet size."""
    lines = [
        f"Rates: one usage message every {rates.usage_every_s:g} s and one telemetry message "
        f"every {rates.telemetry_every_s:g} s per device, one stored row each. "
        f"This machine: {here.cores} cores, {here.memory_gib:g} GiB; the bigger one: "
        f"{big.cores} cores, {big.memory_gib:g} GiB.",
        "",
        "| devices | msg/s | broker cores | ingest cores | PostgreSQL cores | all cores "
        "| broker memory | provisioning all | on this machine | on the bigger one "
        "| deployment |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for devices in fleets:
        fleet = need(costs, rates, devices)
        lines.append(
            f"| {devices:,} | {fleet.messages_per_s:,.0f} | {fleet.broker_cores:.2f} "
            f"| {fleet.ingest_cores:.2f} | {fleet.postgres_cores:.2f} | {fleet.cores:.2f} "
            f"| {fleet.broker_memory_gib:.2f} GiB | {duration(fleet.provisioning_s)} "
            f"| {verdict(costs, rates, here, devices)} | {verdict(costs, rates, big, devices)} "
            f"| {deployment(costs, rates, big, devices)} |"
        )
    lines.append("")
    for machine in (here, big):
        found = walls(costs, rates, machine)
        listed = ", ".join(
            f"{name} at {at:,.0f} devices"
            for name, at in sorted(found.items(), key=lambda x: x[1])
            if math.isfinite(at)
        )
        lines.append(f"- Walls on {machine.name} ({machine.cores} cores): {listed}.")
    return lines
