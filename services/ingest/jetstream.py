"""Ingest's source on a NATS cluster: the cluster's replicated MQTT message stream, read through
one durable pull consumer that every ingest process shares.

A node acknowledges a device's QoS 1 PUBLISH only after it stored the message in `$MQTT_msgs`
(replicated on three nodes; interest retention: kept until every consumer acknowledged it).
Ingest's consumer is that interest: it takes device messages in batches, and acknowledges each
only after its batch committed, so a message is stored by the time a device learns it was
received, and removed from the stream only once it is in TimescaleDB. A message whose ingest
process died unacknowledged is delivered again after the consumer's ack wait
(`FIELDTRACK_NATS__ACK_WAIT_S`), to any process; the store's unique keys make the second
delivery a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import suppress

import nats
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError, TimeoutError as NatsTimeoutError
from nats.js.errors import ServiceUnavailableError

from services.core.nats_stream import MQTT_STREAM, ensure_consumer
from services.core.settings import Settings
from services.core.topics import NATS_MQTT_STREAM_PREFIX, mqtt_topic

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 1.0
RECONNECT_WAIT_S = 0.5
# How many of a fetch's messages may wait in ingest's queue before it stops fetching.
QUEUE_HIGH_WATER = 10_000
STOP_TIMEOUT_S = 10.0
LEADER_WAIT_S = 0.25
DRAIN_TIMEOUT_S = 5

Deliver = Callable[[str, bytes, str], None]  # topic, payload, ack subject


class JetStreamSource:
    """Fetches device messages for ingest on a thread of its own (an asyncio loop)."""

    def __init__(
        self,
        settings: Settings,
        deliver: Deliver,
        backlog: Callable[[], int],
        connected: threading.Event,
        on_death: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._on_death = on_death
        self._deliver = deliver
        self._backlog = backlog
        self._connected = connected
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="ingest-jetstream", daemon=True)
        self._client: NatsClient | None = None
        self._stopping: asyncio.Event | None = None
        self._done = threading.Event()
        self.error: BaseException | None = None
        self.fetches = 0  # pull requests answered (with messages or empty)
        self.fetched = 0  # messages taken from the stream

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            self.error = exc
            log.critical("the JetStream fetcher died", exc_info=True)
            self._on_death()
        finally:
            self._done.set()
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        while not self._stopping.is_set():
            try:
                await self._consume(self._stopping)
            except (NatsError, OSError) as exc:
                self._connected.clear()
                log.warning("NATS cluster unavailable (%r); retrying", exc)
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), RECONNECT_WAIT_S * 4)

    async def _consume(self, stopping: asyncio.Event) -> None:
        settings = self._settings
        client = await nats.connect(
            servers=settings.nats.url_list(),
            user=settings.mqtt_ingest_username,
            password=settings.mqtt_ingest_password.get_secret_value(),
            name="fieldtrack-ingest",
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT_S,
            drain_timeout=DRAIN_TIMEOUT_S,
            error_cb=_log_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._client = client
        subscription = None
        try:
            stream = client.jetstream()
            await ensure_consumer(client, settings)
            subscription = await stream.pull_subscribe_bind(settings.nats.consumer, MQTT_STREAM)
            self._connected.set()
            log.info("consuming %s as %s", MQTT_STREAM, settings.nats.consumer)
            while not stopping.is_set():
                if self._backlog() > QUEUE_HIGH_WATER:
                    await asyncio.sleep(0.05)  # the writer is behind: let it catch up
                    continue
                try:
                    messages = await subscription.fetch(
                        settings.ingest_batch_max, timeout=FETCH_TIMEOUT_S
                    )
                except (NatsTimeoutError, TimeoutError):
                    self.fetches += 1
                    continue  # nothing arrived within the fetch's wait (nats-py raises either)
                except ServiceUnavailableError:
                    # JetStream is electing the consumer's leader (a node just started or
                    # died): the same connection works again in a moment.
                    await asyncio.sleep(LEADER_WAIT_S)
                    continue
                self.fetches += 1
                self.fetched += len(messages)
                for message in messages:
                    topic = mqtt_topic(message.subject.removeprefix(NATS_MQTT_STREAM_PREFIX))
                    self._deliver(topic, message.data, message.reply)
        finally:
            self._connected.clear()
            self._client = None
            with suppress(NatsError, OSError, TimeoutError):
                if stopping.is_set():
                    if subscription is not None:
                        # its pull request would hold the drain until it expires
                        await subscription.unsubscribe()
                    await client.drain()  # the acknowledgements already queued go out
                else:
                    await client.close()  # a failed connection: draining it would hang

    async def _on_disconnected(self) -> None:
        self._connected.clear()

    async def _on_reconnected(self) -> None:
        self._connected.set()

    def acknowledge(self, ack_subjects: Sequence[str]) -> None:
        """Acknowledge committed messages (from the writer thread; does not wait). A lost
        acknowledgement only means the message comes again and is found already stored."""
        if ack_subjects and not self._done.is_set():
            with suppress(RuntimeError):  # the loop closed meanwhile: they are redelivered
                asyncio.run_coroutine_threadsafe(self._ack(list(ack_subjects)), self._loop)

    async def _ack(self, subjects: list[str]) -> None:
        client = self._client
        if client is None:
            return  # no connection: the cluster redelivers after the consumer's ack wait
        try:
            for subject in subjects:
                await client.publish(subject, b"+ACK")
            await client.flush(timeout=5)
        except (NatsError, OSError, TimeoutError) as exc:
            log.warning(
                "acknowledging %d messages failed (%s); they come again", len(subjects), exc
            )

    def stop(self) -> None:
        """Stop fetching, send the acknowledgements already queued, disconnect."""
        if self._stopping is not None and not self._done.is_set():
            with suppress(Exception):  # a closed loop (RuntimeError) has stopped already
                done: Future[None] = asyncio.run_coroutine_threadsafe(self._stop(), self._loop)
                done.result(STOP_TIMEOUT_S)
        self._thread.join(STOP_TIMEOUT_S)

    async def _stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()


async def _log_error(exc: Exception) -> None:
    """nats-py's own handler logs a traceback for every failed reconnect to a stopped node."""
    log.warning("NATS connection: %r", exc)
