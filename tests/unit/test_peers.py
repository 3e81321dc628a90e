"""The peer view: other customers' adoption of the same feature, never an input to a verdict."""

from __future__ import annotations

from datetime import date

import pytest

from services.analytics.measures import InternalProjectContext
from services.analytics.portfolio import MIN_PEERS, peer_stats

OWN = InternalProjectContext(
    project_id=1,
    project_name="Docks",
    customer_id=10,
    customer_name="Harbour",
    industry="logistics",
    go_live_date=date(2026, 1, 1),
    devices_total=80,
    tier="head",
    lifecycle_stage="renewal",
    contract_value=500_000,
)


def test_quartiles_of_other_customers_only() -> None:
    # (project, customer, adoption): the project itself and its own customer's other project
    # are not peers
    values = [(1, 10, 0.9), (2, 10, 0.95), (3, 11, 0.2), (4, 12, 0.4), (5, 13, 0.6), (6, 14, 0.8)]
    peers = peer_stats("head tier · logistics", values, OWN)
    assert peers.projects == 4
    assert (peers.q1, peers.median, peers.q3) == pytest.approx((0.35, 0.5, 0.65))


def test_too_few_peers_are_counted_and_not_described() -> None:
    values = [(1, 10, 0.9), (3, 11, 0.2), (4, 12, 0.4)]
    peers = peer_stats("head tier · logistics", values, OWN)
    assert peers.projects == 2 < MIN_PEERS
    assert (peers.q1, peers.median, peers.q3) == (None, None, None)
