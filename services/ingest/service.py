"""The ingest service: MQTT in, TimescaleDB out, the broker acknowledged only after commit.

The paho network thread only wraps each message (decoding the larger ones, which is pure
and never raises) and enqueues it. One writer thread takes
batches (by size or time), stores them in one transaction, commits, and then sends the
PUBACKs. If the database fails, nothing is acknowledged and the batch is retried with
backoff; the broker keeps everything else queued in the persistent session.

Errors are of three kinds (see NOT_TRANSIENT and CODE_ERRORS_FROM_DATABASE): the database
unreachable or failing (retried), a message the database refuses (isolated and quarantined),
and anything else, a bug (the writer stops, nothing of its batch is acknowledged or
quarantined, and the process exits non-zero for its supervisor to restart it; the broker
redelivers). `/health` on the metrics port says whether the writer and listener are alive.
"""

from __future__ import annotations

import gc
import json
import logging
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from functools import partial
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app
from psycopg import sql

from services.core.errors import ConfigError
from services.core.mqtt_client import BufferedClient
from services.core.payloads import decode
from services.core.settings import Settings, check_ingest_client_id
from services.core.topics import shared_subscription
from services.ingest.batch import BatchResult, RawMessage
from services.ingest.directory import DeviceDirectory
from services.ingest.jetstream import JetStreamSource
from services.ingest.retention import RetentionSchedule
from services.ingest.store import NOT_TRANSIENT, store_batch, store_isolating

log = logging.getLogger(__name__)

# Backoff while the database is unreachable: quick first retry, then at most every 10 s.
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 10.0
# How long SIGTERM waits for the last batch to commit before giving up on it (the broker
# redelivers whatever was not acknowledged, so giving up loses nothing).
SHUTDOWN_FLUSH_S = 20.0
QOS = 1
RECONNECT_MAX_S = 2
# Registry changes arrive by LISTEN/NOTIFY; this is how often the listener checks for stop.
LISTEN_POLL_S = 1.0
# Larger payloads (several readings) are decoded on the network thread as they arrive, while
# the writer waits on PostgreSQL: +27 % rows/s for 100-reading messages (bench, same run).
# Smaller ones are left to the writer: their decode is too short to repay the GIL handoffs.
EARLY_DECODE_BYTES = 1024
DEVICE_CHANNEL = "fieldtrack_devices"
# The writer keeps a whole batch alive until it commits (decoding alone allocates 10 tracked
# objects a message). With CPython's default thresholds (700, 10, 10) the cyclic collector
# runs every 70 messages and walks older generations every few thousand: a message decoded
# into a batch of 2,000 cost 18-23 µs against 9, and a live drain of single-reading
# messages took 57 µs a message (ingest and its PostgreSQL session) against 44 with these.
GC_THRESHOLDS = (50_000, 20, 100)
# The process's exit status when a worker thread died: EX_SOFTWARE (sysexits.h), an internal
# error. Any non-zero status makes a supervisor (compose's restart policy, systemd) restart it.
WORKER_DIED_EXIT = 70
# Database errors that say our SQL does not fit the database (a bug, or a schema that is not
# the one this code was written for), and integrity errors that are not data errors (NOT
# NULL: see NOT_TRANSIENT): retrying cannot cure them and they are no message's fault, so
# the writer stops instead of retrying forever or quarantining.
CODE_ERRORS_FROM_DATABASE = (
    psycopg.ProgrammingError,
    psycopg.NotSupportedError,
    psycopg.IntegrityError,
)
# Served beside /metrics on the metrics port (every other path is the metrics).
HEALTH_PATH = "/health"
# How long stopping waits for a retention pass to finish its current transaction.
RETENTION_STOP_S = 5.0

MESSAGES = Counter("fieldtrack_ingest_messages_total", "MQTT messages taken by the writer")
ROWS = Counter("fieldtrack_ingest_rows_total", "readings stored", ["kind"])
DUPLICATES = Counter(
    "fieldtrack_ingest_duplicates_total", "readings already stored (redeliveries)", ["kind"]
)
QUARANTINED = Counter("fieldtrack_ingest_quarantined_total", "messages quarantined", ["reason"])
DB_FAILURES = Counter("fieldtrack_ingest_db_failures_total", "batches that failed and were retried")
QUEUE_DEPTH = Gauge("fieldtrack_ingest_queue_depth", "messages received, not yet committed")
BATCH_SECONDS = Histogram("fieldtrack_ingest_batch_seconds", "time to store and commit a batch")
BATCH_SIZE = Histogram(
    "fieldtrack_ingest_batch_messages",
    "messages per committed batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
COMMIT_LAG = Histogram(
    "fieldtrack_ingest_publish_to_commit_seconds",
    "device time of a stored message to its commit (includes device clock skew)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)
INGEST_DELAY = Histogram(
    "fieldtrack_ingest_receive_to_commit_seconds",
    "receipt of a batch's oldest message to the batch's commit: ingest's own delay, whatever "
    "the device times (replayed history, clock skew)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
STATUS_CLEARED = Counter(
    "fieldtrack_ingest_status_cleared_total", "empty retained status messages (cleared, not stored)"
)
WRITER_ALIVE = Gauge(
    "fieldtrack_ingest_writer_alive", "1 while the writer thread runs, 0 once it has died"
)


def _paho_queue_pubacks() -> Any:
    """A function sending many PUBACKs (MQTT 3.1.1: 0x40, 2, mid) as one queued write, through
    the paho client's own packet queue; None if this paho version lacks it (then each
    message is acknowledged through the public `ack`)."""
    queue_packet = getattr(mqtt.Client, "_packet_queue", None)
    if queue_packet is None or not hasattr(mqtt, "PUBACK"):
        return None

    def queue_pubacks(client: mqtt.Client, mids: list[int]) -> None:
        packet = b"".join(_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids)
        queue_packet(client, mqtt.PUBACK, packet, mids[0], 1)

    return queue_pubacks


_PUBACK = struct.Struct("!BBH")
_queue_pubacks = _paho_queue_pubacks()


class IngestService:
    def __init__(self, settings: Settings) -> None:
        # Settings made by model_copy skip their validators: ingest refuses a client id that
        # a device could be provisioned under (and so take this persistent session over).
        try:
            check_ingest_client_id(settings.ingest_client_id)
        except ValueError as exc:
            raise ConfigError(f"ingest client id: {exc}") from exc
        self._settings = settings
        self._queue: queue.SimpleQueue[RawMessage] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._generation = 0  # bumped on every (re)connect; acks never cross connections
        self._directory = DeviceDirectory()
        self._skew = timedelta(seconds=settings.ingest_max_future_skew_s)
        self.totals = BatchResult()
        self._client = BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=settings.ingest_client_id,
            clean_session=False,  # the broker keeps our subscription and queue across restarts
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        self._client.username_pw_set(
            settings.mqtt_ingest_username, settings.mqtt_ingest_password.get_secret_value()
        )
        # Reconnect quickly after a broker restart: Mosquitto 2.0 does not restore shared
        # subscriptions from its persistence file, so until ingest has subscribed again the
        # broker has no subscriber for what devices publish.
        self._client.reconnect_delay_set(min_delay=1, max_delay=RECONNECT_MAX_S)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish_raw = self._on_publish
        # On a NATS cluster ingest reads the replicated MQTT stream instead of subscribing.
        self._jetstream = (
            JetStreamSource(
                settings,
                self._on_stream_message,
                self._queue.qsize,
                self._connected,
                on_death=self._source_died,
            )
            if settings.broker == "nats"
            else None
        )
        self._writer = threading.Thread(
            target=self._guarded, args=(self._write_loop,), name="ingest-writer", daemon=True
        )
        self._listener = threading.Thread(
            target=self._guarded,
            args=(self._listen_loop,),
            name="ingest-registry-listener",
            daemon=True,
        )
        # Retention (raw rows and the quarantine) on a thread and connection of its own.
        self._retention = RetentionSchedule(settings, lambda: datetime.now(UTC))
        # Set once a worker thread died: the process must stop (see `failed`).
        self.failed = threading.Event()
        self._dead: set[str] = set()
        self._db_failing = False
        self._http: WSGIServer | None = None

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
        log.info(
            "connected to broker (session present: %s), subscribed to %s",
            flags.session_present,
            topic,
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._generation += 1
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("disconnected from broker (%s); reconnecting", reason)

    def _on_publish(self, topic: str, payload: bytes, mid: int, qos: int, retain: bool) -> None:
        if self._stop.is_set():
            return  # shutting down: left unacknowledged, the broker redelivers it later
        received = datetime.now(UTC)
        decoded = None
        if len(payload) > EARLY_DECODE_BYTES:
            try:
                decoded = decode(topic, payload, now=received, max_future_skew=self._skew)
            except Exception:  # decode never raises; if it did, the writer decodes it again
                log.exception("could not decode a message from %.200s on receipt", topic)
        try:
            self._queue.put_nowait(
                RawMessage(
                    topic, payload, received, mid, qos, self._generation, retain, decoded=decoded
                )
            )
        except Exception:  # a callback that raises would kill paho's network loop
            log.exception("could not enqueue a message from %.200s", topic)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """paho's route, for what the fast reader leaves to paho (QoS 2, never subscribed)."""
        self._on_publish(msg.topic, bytes(msg.payload), msg.mid, msg.qos, bool(msg.retain))

    def _on_stream_message(self, topic: str, payload: bytes, ack: str) -> None:
        """The JetStream source's route (a NATS cluster): acknowledged by its ack subject."""
        if self._stop.is_set():
            return  # left unacknowledged: the stream delivers it again
        received = datetime.now(UTC)
        decoded = None
        try:
            if len(payload) > EARLY_DECODE_BYTES:
                decoded = decode(topic, payload, now=received, max_future_skew=self._skew)
            self._queue.put_nowait(
                RawMessage(topic, payload, received, 0, 1, decoded=decoded, ack=ack)
            )
        except Exception:  # never into the fetch loop: the message just comes again
            log.exception("could not enqueue a message from %.200s", topic)

    def _source_died(self) -> None:
        """The JetStream fetcher is gone: like a dead worker thread, the process must stop."""
        self._dead.add("ingest-jetstream")
        self._stop.set()
        self.failed.set()

    # --- worker threads: a dead one stops the process --------------------------

    def _guarded(self, work: Callable[[], None]) -> None:
        """Run a worker thread's loop. Its loop handles what it can recover from; anything that
        escapes is a bug, and a process whose writer (or registry listener) is gone must not
        go on taking messages it will never acknowledge: the service fails (`failed`)."""
        try:
            work()
        except BaseException:
            name = threading.current_thread().name
            log.critical(
                "%s died; what it held is not acknowledged (the broker redelivers it) and "
                "ingest stops",
                name,
                exc_info=True,
            )
            self._dead.add(name)
            if threading.current_thread() is self._writer:
                WRITER_ALIVE.set(0)
            self._stop.set()  # take no more messages; the writer, if alive, flushes
            self.failed.set()

    # --- writer thread ------------------------------------------------------

    def _take_batch(self) -> list[RawMessage]:
        batch: list[RawMessage] = []
        try:
            batch.append(self._queue.get(timeout=0.2))
        except queue.Empty:
            return batch
        deadline = time.monotonic() + self._settings.ingest_batch_wait_ms / 1000
        while len(batch) < self._settings.ingest_batch_max:
            try:  # what is already queued is taken without waiting (or reading the clock)
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
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
                result = self._commit(conn, batch)
            except CODE_ERRORS_FROM_DATABASE:
                raise  # neither transient nor a message's fault: the writer stops
            except psycopg.Error as exc:
                DB_FAILURES.inc()
                self._db_failing = True
                log.warning(
                    "storing %d messages failed (%s); retrying in %.1fs", len(batch), exc, delay
                )
                if conn is not None:
                    conn.close()
                conn = None
                if self._stop.is_set():
                    give_up_at = give_up_at or time.monotonic() + SHUTDOWN_FLUSH_S
                    if time.monotonic() > give_up_at:
                        log.error(  # noqa: TRY400 - each retry already logged the cause
                            "database still failing at shutdown; %d messages left "
                            "unacknowledged for redelivery",
                            len(batch),
                        )
                        break
                if self._stop.is_set():
                    time.sleep(delay)  # shutting down: keep trying until give_up_at
                else:
                    self._stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_FIRST_S
            self._db_failing = False
            self._acknowledge(batch)
            self._record(result, min(raw.received_at for raw in batch))
            batch = []
        if conn is not None:
            conn.close()

    def _commit(self, conn: psycopg.Connection, batch: list[RawMessage]) -> BatchResult:
        """Store a batch, quarantining what the database refuses."""
        started = time.perf_counter()
        try:
            result = self._store(conn, batch)
        except NOT_TRANSIENT as exc:
            # Some message in the batch is one the database refuses. Find it by halving,
            # quarantine it, and store the rest: the queue never blocks.
            log.warning("a batch could not be stored (%r); isolating the message", exc)
            result = store_isolating(conn, batch, partial(self._store, conn))
        BATCH_SECONDS.observe(time.perf_counter() - started)
        return result

    def _store(self, conn: psycopg.Connection, batch: list[RawMessage]) -> BatchResult:
        with conn.transaction():
            return store_batch(
                conn,
                batch,
                self._directory,
                max_future_skew=self._skew,
                now=datetime.now(UTC),
                late_data_days=self._settings.ingest_late_data_days,
            )

    def _acknowledge(self, batch: list[RawMessage]) -> None:
        if self._jetstream is not None:
            self._jetstream.acknowledge([raw.ack for raw in batch if raw.ack is not None])
            return
        generation = self._generation
        # A message from an earlier connection is redelivered by the broker on this one;
        # acking its old mid here would acknowledge some other message.
        current = [raw for raw in batch if raw.qos > 0 and raw.generation == generation]
        if _queue_pubacks is not None:
            # All the batch's PUBACKs as one write (one wake-up of the network thread, one
            # send) instead of a queued packet, a wake-up and a send each.
            pubacks = [raw.mid for raw in current if raw.qos == 1]
            if pubacks:
                _queue_pubacks(self._client, pubacks)
            current = [raw for raw in current if raw.qos != 1]
        for raw in current:
            self._client.ack(raw.mid, raw.qos)

    def _record(self, result: BatchResult, oldest_received: datetime) -> None:
        MESSAGES.inc(result.messages)
        ROWS.labels("usage").inc(result.usage_rows)
        ROWS.labels("metric").inc(result.metric_rows)
        DUPLICATES.labels("usage").inc(result.usage_duplicates)
        DUPLICATES.labels("metric").inc(result.metric_duplicates)
        for reason, count in result.quarantined.items():
            QUARANTINED.labels(reason).inc(count)
        BATCH_SIZE.observe(result.messages)
        redelivered = result.usage_duplicates + result.metric_duplicates
        if redelivered:
            # Only after a fault (a lost acknowledgement): worth a line, and fault tests
            # count these to report the redeliveries absorbed.
            log.info("absorbed %d redelivered readings (already stored)", redelivered)
        STATUS_CLEARED.inc(result.status_cleared)
        committed = datetime.now(UTC)
        INGEST_DELAY.observe(max((committed - oldest_received).total_seconds(), 0.0))
        for device_time in result.device_times:
            COMMIT_LAG.observe(max((committed - device_time).total_seconds(), 0.0))
        self.totals.merge(result)
        self.totals.device_times.clear()  # totals keep counts, not every timestamp

    # --- registry listener --------------------------------------------------

    def _listen_loop(self) -> None:
        """Forget cached devices as soon as the registry says they changed."""
        delay = RETRY_FIRST_S
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._settings.database_url.get_secret_value(),
                    autocommit=True,
                    connect_timeout=5,
                ) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(DEVICE_CHANNEL)))
                    # Changes made while we were not listening are unknown: start afresh.
                    self._directory.forget()
                    delay = RETRY_FIRST_S
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=LISTEN_POLL_S):
                            self._directory.forget(note.payload)
            except psycopg.Error as exc:
                log.warning("registry listener lost its connection (%s); retrying", exc)
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    # --- health -----------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, object]]:
        """Whether this process is fit to run (its worker threads are alive), and the details.
        A database or broker outage does not make it unfit: it recovers by itself, and a
        restart would not help."""
        threads = {"writer": self._writer, "registry_listener": self._listener}
        state = {
            key: "alive" if thread.is_alive() and thread.name not in self._dead else "dead"
            for key, thread in threads.items()
        }
        if self._jetstream is not None:
            state["jetstream"] = "alive" if self._jetstream.alive() else "dead"
        alive = all(value == "alive" for value in state.values())
        return alive, {
            "status": "ok" if alive else "failed",
            **state,
            "broker": "connected" if self._connected.is_set() else "disconnected",
            "database": "retrying" if self._db_failing else "ok",
            "queue_depth": self._queue.qsize(),
        }

    def _http_app(self, metrics: WSGIApplication) -> WSGIApplication:
        """/health (200 when fit, 503 when not, JSON), and the Prometheus metrics elsewhere."""

        def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            if environ.get("PATH_INFO") != HEALTH_PATH:
                return metrics(environ, start_response)
            alive, details = self.health()
            body = json.dumps(details).encode()
            start_response(
                "200 OK" if alive else "503 Service Unavailable",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]

        return app

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self._listener.start()
        self._writer.start()
        self._retention.start()
        WRITER_ALIVE.set(1)
        if self._settings.ingest_metrics_port:
            host, port = self._settings.ingest_metrics_host, self._settings.ingest_metrics_port
            try:
                self._http = _serve_http(host, port, self._http_app(make_wsgi_app()))
            except OSError as exc:
                log.error("metrics endpoint not started on %s:%s: %s", host, port, exc)  # noqa: TRY400
        if self._jetstream is not None:
            self._jetstream.start()
            return
        self._client.connect_async(
            self._settings.mqtt_host, self._settings.mqtt_port, self._settings.ingest_keepalive_s
        )
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stop(self) -> None:
        """Flush and acknowledge what was received, then disconnect."""
        self._stop.set()
        self._writer.join(SHUTDOWN_FLUSH_S + RETRY_MAX_S)
        self._listener.join(LISTEN_POLL_S + 1)
        self._retention.stop(RETENTION_STOP_S)
        if self._jetstream is not None:
            self._jetstream.stop()
        else:
            self._client.disconnect()
            self._client.loop_stop()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


class _HttpServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds up the process's exit


class _HttpServer6(_HttpServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a scrape every few seconds would be a log line every few seconds."""


def _serve_http(host: str, port: int, app: WSGIApplication) -> WSGIServer:
    """Serve *app* on host:port from a daemon thread."""
    server = (_HttpServer6 if ":" in host else _HttpServer)((host, port), _QuietHandler)
    server.set_app(app)
    threading.Thread(target=server.serve_forever, name="ingest-http", daemon=True).start()
    return server


def tune_collector() -> None:
    """For a process that runs ingest: what start-up loaded (modules, schemas, settings) is
    never collected, and the collector runs on batches, not on every few messages."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def discard_session(settings: Settings, client_id: str) -> None:
    """Remove the persistent broker session (and its queue) of an ingest client id that will
    not come back (a retired process, a test or benchmark run), so the broker stops queueing
    messages for it."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    client.username_pw_set(
        settings.mqtt_ingest_username, settings.mqtt_ingest_password.get_secret_value()
    )
    with suppress(OSError):
        client.connect(settings.mqtt_host, settings.mqtt_port, 10)
        client.loop_start()
        time.sleep(0.3)
        client.disconnect()
        client.loop_stop()
