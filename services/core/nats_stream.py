"""The cluster's MQTT message stream and ingest's consumer of it, defined once: ingest binds to
them, and `fieldtrack broker-setup` (run by `infra up --cluster`) makes them before any device
logs in.

The stream is the one the NATS server keeps for an account's MQTT messages (`$MQTT_msgs`,
interest retention): a QoS 1 PUBLISH is stored there before the node acknowledges it, and kept
until every consumer acknowledged it. With no consumer yet, the node stores nothing and still
acknowledges: ingest's durable consumer must exist before devices publish.
"""

from __future__ import annotations

import asyncio

import nats
from nats.aio.client import Client as NatsClient
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from services.core.aio import run_sync
from services.core.settings import Settings
from services.core.topics import NATS_MQTT_STREAM_PREFIX, nats_ingest_filter

# Made here with the server's own settings when no device connected yet (the server then
# finds it and uses it).
MQTT_STREAM = "$MQTT_msgs"
MQTT_STREAM_REPLICAS = 3
# Messages delivered and not yet acknowledged, over all ingest processes: the bound on what a
# crash sends round again, and on each process's memory.
MAX_ACK_PENDING = 20_000
SETUP_TIMEOUT_S = 30.0


def consumer_config(settings: Settings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=settings.nats.consumer,
        filter_subject=nats_ingest_filter(),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.nats.ack_wait_s,
        max_ack_pending=MAX_ACK_PENDING,
        max_deliver=-1,  # never drop a message: a poisonous one is quarantined by the store
    )


async def ensure_consumer(client: NatsClient, settings: Settings) -> None:
    """The MQTT message stream (as the server would make it) and ingest's durable consumer."""
    stream = client.jetstream()
    try:
        await stream.stream_info(MQTT_STREAM)
    except NotFoundError:
        await stream.add_stream(
            StreamConfig(
                name=MQTT_STREAM,
                subjects=[f"{NATS_MQTT_STREAM_PREFIX}>"],
                storage=StorageType.FILE,
                retention=RetentionPolicy.INTEREST,
                num_replicas=MQTT_STREAM_REPLICAS,
            )
        )
    await stream.add_consumer(MQTT_STREAM, consumer_config(settings))


def prepare_ingest_stream(settings: Settings) -> None:
    """Make the stream and ingest's consumer now, as ingest's account, retrying while the
    cluster elects its JetStream leaders."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETUP_TIMEOUT_S
        while True:
            try:
                client = await nats.connect(
                    servers=settings.nats.url_list(),
                    user=settings.mqtt_ingest_username,
                    password=settings.mqtt_ingest_password.get_secret_value(),
                    allow_reconnect=False,
                    max_reconnect_attempts=0,
                    connect_timeout=3,
                )
                try:
                    await ensure_consumer(client, settings)
                    return
                finally:
                    await client.close()
            except (nats.errors.Error, OSError, TimeoutError):
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.5)

    run_sync(run)
