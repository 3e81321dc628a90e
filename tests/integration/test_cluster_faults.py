"""The NATS cluster under faults, short: SIGKILL of the node leading the MQTT stream, SIGKILL
of one of two ingest processes, a restart of the read replica — under load from devices
spread over the three nodes, with nothing acknowledged lost or stored twice.
The long run (2,000 devices) is `make chaos` (tests/integration/cluster_chaos.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.core.settings import Settings
from services.infra.local import LocalServices
from tests.integration.cluster_chaos import SHORT, run_cluster_faults
from tests.integration.cluster_support import Cluster
from tests.integration.ingest_support import free_port


@pytest.fixture
def with_replica(local_services: LocalServices) -> Iterator[LocalServices]:
    services = dataclasses.replace(local_services, pg_replica_port=free_port())
    services.remove_replica(print)
    services.up(print, replica=True)
    try:
        yield services
    finally:
        services.remove_replica(print)


def test_cluster_faults_lose_and_duplicate_nothing(
    cluster: Cluster, with_replica: LocalServices, settings: Settings, tmp_path: Path
) -> None:
    result = run_cluster_faults(with_replica, cluster.settings, SHORT, tmp_path / "logs")
    print("\n".join(result.lines()))
    assert result.failed == 0, result.lines()
    assert result.acked > SHORT.rate * SHORT.phase_s * 3  # the load ran through every fault
    assert (result.lost, result.duplicated, result.unexpected) == (0, 0, 0), result.lines()
    assert result.stored == result.acked == result.handed
    assert {r.fault for r in result.recoveries} == {
        "SIGKILL of the stream's leader node",
        "SIGKILL of one of two ingest processes",
        "restart of the read replica",
    }
    # the killed node's devices came back on the other two within seconds
    assert result.recoveries[0].recovered_s < 60
