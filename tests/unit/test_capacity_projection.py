"""The capacity projection (bench/projection.py) on costs whose results are worked out by
hand, and the least-squares fit of the provisioning growth."""

from __future__ import annotations

import math

import pytest

from bench.capacity import fit
from bench.projection import Costs, Machine, Rates, deployment, first_wall, need, verdict

COSTS = Costs(
    broker_cpu_s_per_message=10e-6,
    ingest_cpu_s_per_message=100e-6,
    postgres_cpu_s_per_row=50e-6,
    broker_mib_per_device=0.01,
    provision_s_per_device=0.01,
    provision_s_per_identity=1e-5,
    ingest_msgs_per_s=1000,
)
RATES = Rates(usage_every_s=60, telemetry_every_s=300)  # 0.02 messages per device and second
SMALL = Machine("small", 2, 16)
BIG = Machine("big", 16, 64)


def test_a_fleet_needs_its_rate_times_each_unit_cost() -> None:
    fleet = need(COSTS, RATES, 10_000)

    assert fleet.messages_per_s == pytest.approx(200)
    assert fleet.broker_cores == pytest.approx(0.002)
    assert fleet.ingest_cores == pytest.approx(0.02)
    assert fleet.postgres_cores == pytest.approx(0.01)
    assert fleet.cores == pytest.approx(0.032)
    assert fleet.broker_memory_gib == pytest.approx(100 / 1024)
    # 10,000 × 0.01 s, plus 1e-5 s for each identity already there: 1e-5 × (0 + … + 9,999)
    assert fleet.provisioning_s == pytest.approx(100 + 499.95)
    assert fleet.ingest_processes == 1
    # 20,000 msg/s over processes planned at 700 msg/s each
    assert need(COSTS, RATES, 1_000_000).ingest_processes == 29


def test_the_first_wall_is_the_smallest_fleet_any_limit_allows() -> None:
    # the broker's thread: 1 / (0.02 × 10 µs) = 5M devices; the cores: 2 / (0.02 × 160 µs)
    # = 625k; memory: 16 GiB / 0.01 MiB = 1.6M; the identity store: a message of 100
    # commands answered within 30 s is 0.6 s a device, reached at (0.6 - 0.01) / 1e-5
    name, at = first_wall(COSTS, RATES, SMALL)
    assert name == "broker identity store"
    assert at == pytest.approx(59_000)

    assert verdict(COSTS, RATES, SMALL, 10_000) == "fits (2% of the cores)"
    assert verdict(COSTS, RATES, SMALL, 100_000) == (
        "past the broker identity store wall (59,000 devices)"
    )
    without_growth = Costs(**{**COSTS.__dict__, "provision_s_per_identity": 0.0})
    name, at = first_wall(without_growth, RATES, SMALL)
    assert name == "CPU (mostly ingest)"
    assert at == pytest.approx(625_000)


def test_the_deployment_grows_with_the_fleet() -> None:
    assert deployment(COSTS, RATES, BIG, 10_000) == (
        "one machine: Mosquitto, 1 ingest process, one TimescaleDB"
    )
    # provisioning 100k takes 1,000 s + 49,999.5 s: past an hour, a broker cluster
    assert deployment(COSTS, RATES, BIG, 100_000) == (
        "NATS cluster of 3, 3 ingest processes, TimescaleDB primary + read replica"
    )


def test_fit_is_the_least_squares_line() -> None:
    assert fit([(0, 1.0), (10, 3.0), (20, 5.0)]) == pytest.approx((1.0, 0.2))


def test_costs_measured_on_the_cluster_recommend_the_cluster_at_every_size() -> None:
    clustered = Costs(**{**COSTS.__dict__, "broker_thread_cores": math.inf})
    assert deployment(clustered, RATES, BIG, 10_000).startswith("NATS cluster of 3")
