"""The NATS cluster for tests: three real nats-server nodes with JetStream and MQTT, and the
auth callout as its own process, beside (never instead of) the suite's Mosquitto.

The suite's connection file keeps naming Mosquitto: the cluster's settings reach the processes
started here through their environment only, so no other test's subprocess lands on it. One
cluster per test module, removed after it: the other modules see only the suite's services.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from services.core.nats_stream import prepare_ingest_stream
from services.core.settings import Settings, child_environment
from services.core.topics import nats_client_id
from services.infra.callout_process import CalloutProcess
from services.infra.local import LocalServices
from services.infra.nats import LocalNatsCluster

CALLOUT_READY_S = 20.0


@dataclass
class Cluster:
    nats: LocalNatsCluster
    callout: CalloutProcess
    settings: Settings  # broker nats, this session's database

    @property
    def mqtt_ports(self) -> list[int]:
        return [node.mqtt_port for node in self.nats.nodes]


def process_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a fieldtrack subprocess use *settings*' database and broker."""
    return {**os.environ, **child_environment(settings)}


def cluster_settings(services: LocalServices, settings: Settings) -> Settings:
    nats = services.nats_settings(services.load_secrets()).model_copy(
        update={"consumer": f"ingest-test-{uuid.uuid4().hex[:8]}", "callout_metrics_port": 0}
    )
    return settings.model_copy(
        update={
            "broker": "nats",
            "nats": nats,
            "mqtt_port": services.cluster.nodes[0].mqtt_port,
        }
    )


@pytest.fixture(scope="module")
def cluster(local_services: LocalServices, settings: Settings) -> Iterator[Cluster]:
    nats = local_services.cluster
    callout = local_services.callout
    callout.stop()
    nats.remove(print)  # every session starts from empty stores
    nats.up(local_services.cluster_secrets(local_services.load_secrets()), print)
    running = cluster_settings(local_services, settings)
    prepare_ingest_stream(running)  # as `infra up --cluster` does, before any device logs in
    callout.logfile.unlink(missing_ok=True)
    callout.start(env=process_env(running))
    deadline = time.monotonic() + CALLOUT_READY_S
    while "auth callout serving" not in _read(callout):
        assert time.monotonic() < deadline, f"the auth callout did not start:\n{_read(callout)}"
        time.sleep(0.1)
    yield Cluster(nats, callout, running)
    callout.stop()
    # removed, not only stopped: a cluster left configured would be started again by the next
    # session's `infra up`, which would then name it the suite's broker
    nats.remove(print)


def _read(callout: CalloutProcess) -> str:
    return callout.logfile.read_text() if callout.logfile.exists() else ""


def device_client(serial: str, password: str, *, client_id: str | None = None) -> mqtt.Client:
    """A paho client as a device on the cluster logs in (not yet connected)."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id if client_id is not None else nats_client_id(serial),
        protocol=mqtt.MQTTv311,
    )
    client.username_pw_set(serial, password)
    return client
