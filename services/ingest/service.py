"""The ingest service: MQTT in, TimescaleDB out, the broker acknowledged only after commit.

The paho network thread only wraps each message and enqueues it. One writer thread takes
batches (by size or time), stores them in one transaction, commits, and then sends the
PUBACKs. If the database fails, nothing is acknowledged and the batch is retried with
backoff; the broker keeps everything else queued in the persistent session.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import Counter, Gauge, Histogram

from services.core.settings import Settings
from services.core.topics import shared_subscription
from services.ingest.directory import DeviceDirectory
from services.ingest.store import BatchResult, RawMessage, store_batch

log = logging.getLogger(__name__)

KEEPALIVE_S = 30
# Backoff while the database is unreachable: quick first retry, then at most every 10 s.
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 10.0
# How long SIGTERM waits for the last batch to commit before giving up on it (the broker
# redelivers whatever was not acknowledged, so giving up loses nothing).
SHUTDOWN_FLUSH_S = 20.0
QOS = 1

MESSAGES = Counter("fieldtrack_ingest_messages_total", "MQTT messages taken by the writer")
ROWS = Counter("fieldtrack_ingest_rows_total", "readings stored", ["kind"])
DUPLICATES = Counter(
    "fieldtrack_ingest_duplicates_total", "readings already stored (redeliveries)", ["kind"]
)
QUARANTINED = Counter("fieldtrack_ingest_quarantined_total", "messages quarantined", ["reason"])
DB_FAILURES = Counter("fieldtrack_ingest_db_failures_total", "batches that failed and were retried")
QUEUE_DEPTH = Gauge("fieldtrack_ingest_queue_depth", "messages received, not yet committed")
BATCH_SECONDS = Histogram("fieldtrack_ingest_batch_seconds", "time to store and commit a batch")
LAG_SECONDS = Histogram(
    "fieldtrack_ingest_device_to_receive_seconds",
    "device time to broker delivery for usage messages",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)


class IngestService:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._queue: queue.Queue[RawMessage] = queue.Queue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._generation = 0  # bumped on every (re)connect; acks never cross connections
        self._directory = DeviceDirectory()
        self._skew = timedelta(seconds=settings.ingest_max_future_skew_s)
        self.totals = BatchResult()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.ingest_client_id,
            clean_session=False,  # the broker keeps our subscription and queue across restarts
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        self._client.username_pw_set(
            settings.mqtt_ingest_username, settings.mqtt_ingest_password.get_secret_value()
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)

    # --- paho callbacks: convert and enqueue, never I/O, never raise ----------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.error("broker refused ingest login: %s", reason)
            return
        self._generation += 1
        topic = shared_subscription(self._settings.ingest_share_group)
        client.subscribe(topic, qos=QOS)
        self._connected.set()
        log.info("connected to broker (session present: %s), subscribed to %s",
                 flags.session_present, topic)  # fmt: skip

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._generation += 1
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("disconnected from broker (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._queue.put_nowait(
                RawMessage(
                    topic=msg.topic,
                    payload=bytes(msg.payload),
                    received_at=datetime.now(UTC),
                    mid=msg.mid,
                    qos=msg.qos,
                    generation=self._generation,
                )
            )
        except Exception:  # a callback that raises would kill paho's network loop
            log.exception("could not enqueue a message from %.200s", msg.topic)

    # --- writer thread ------------------------------------------------------

    def _take_batch(self) -> list[RawMessage]:
        batch: list[RawMessage] = []
        try:
            batch.append(self._queue.get(timeout=0.2))
        except queue.Empty:
            return batch
        deadline = time.monotonic() + self._settings.ingest_batch_wait_ms / 1000
        while len(batch) < self._settings.ingest_batch_max:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _write_loop(self) -> None:
        conn: psycopg.Connection | None = None
        delay = RETRY_FIRST_S
        batch: list[RawMessage] = []
        give_up_at: float | None = None
        while True:
            if not batch:
                if self._stop.is_set() and self._queue.empty():
                    break
                batch = self._take_batch()
                QUEUE_DEPTH.set(self._queue.qsize() + len(batch))
                if not batch:
                    continue
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(
                        self._settings.database_url.get_secret_value(), connect_timeout=5
                    )
                started = time.perf_counter()
                with conn.transaction():
                    result = store_batch(
                        conn, batch, self._directory,
                        max_future_skew=self._skew, now=datetime.now(UTC),
                    )  # fmt: skip
                BATCH_SECONDS.observe(time.perf_counter() - started)
            except psycopg.Error as exc:
                DB_FAILURES.inc()
                log.warning("storing %d messages failed (%s); retrying in %.1fs",
                            len(batch), exc, delay)  # fmt: skip
                if conn is not None:
                    conn.close()
                conn = None
                if self._stop.is_set():
                    give_up_at = give_up_at or time.monotonic() + SHUTDOWN_FLUSH_S
                    if time.monotonic() > give_up_at:
                        log.error(  # noqa: TRY400 - each retry already logged the cause
                            "database still failing at shutdown; %d messages left "
                                  "unacknowledged for redelivery", len(batch))  # fmt: skip
                        break
                if self._stop.is_set():
                    time.sleep(delay)  # shutting down: keep trying until give_up_at
                else:
                    self._stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_FIRST_S
            self._acknowledge(batch)
            self._record(result)
            batch = []
        if conn is not None:
            conn.close()

    def _acknowledge(self, batch: list[RawMessage]) -> None:
        generation = self._generation
        for raw in batch:
            # A message from an earlier connection is redelivered by the broker on this one;
            # acking its old mid here would acknowledge some other message.
            if raw.qos > 0 and raw.generation == generation:
                self._client.ack(raw.mid, raw.qos)

    def _record(self, result: BatchResult) -> None:
        MESSAGES.inc(result.messages)
        ROWS.labels("usage").inc(result.usage_rows)
        ROWS.labels("metric").inc(result.metric_rows)
        DUPLICATES.labels("usage").inc(result.usage_duplicates)
        DUPLICATES.labels("metric").inc(result.metric_duplicates)
        for reason, count in result.quarantined.items():
            QUARANTINED.labels(reason).inc(count)
            self.totals.quarantined[reason] += count
        for lag in result.lag_seconds:
            LAG_SECONDS.observe(max(lag, 0.0))
        self.totals.messages += result.messages
        self.totals.usage_rows += result.usage_rows
        self.totals.usage_duplicates += result.usage_duplicates
        self.totals.metric_rows += result.metric_rows
        self.totals.metric_duplicates += result.metric_duplicates
        self.totals.status_updates += result.status_updates

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self._writer.start()
        self._client.connect_async(self._settings.mqtt_host, self._settings.mqtt_port, KEEPALIVE_S)
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stop(self) -> None:
        """Flush and acknowledge what was received, then disconnect."""
        self._stop.set()
        self._writer.join(SHUTDOWN_FLUSH_S + RETRY_MAX_S)
        self._client.disconnect()
        self._client.loop_stop()
