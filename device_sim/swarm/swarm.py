"""The swarm: devices sharing one network thread, and what callers may ask of them (see the
package docstring for the guarantees)."""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import random
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from device_sim.device import QOS, aim, set_last_will, status_payload
from device_sim.swarm.connection import DOWN, LIVE, Device, DeviceState, reason_name
from device_sim.swarm.limits import (
    CONNECT_TIMEOUT_S,
    CONNECT_WINDOW,
    MAX_RECONNECT_ATTEMPTS,
    PUBLISH_WAIT_S,
    STABLE_CONNECTION_S,
    STATUS_HEADROOM,
    SwarmError,
    descriptors_needed,
    open_descriptors,
    raise_descriptor_limit,
    reconnect_delay,
)
from device_sim.swarm.loop import COMMAND_WAIT_S, NetworkLoop
from device_sim.swarm.stats import Ledger, SwarmStats
from services.core.mqtt_client import BufferedClient
from services.core.settings import node_name
from services.core.topics import MessageKind, device_topic

if TYPE_CHECKING:
    from services.core.settings import BrokerNode

log = logging.getLogger(__name__)

# Longer than any pause of this process, short enough that the broker notices a vanished
# swarm within a minute and a half; PINGREQs for thousands of idle devices stay rare.
KEEPALIVE_S = 60
# Pause between retries when paho's own queue is full (should not happen, see the package doc).
QUEUE_FULL_RETRY_S = 0.005
# Bounded waits of stop() and disconnect().
STOP_WAIT_S = 30.0
DRAIN_WAIT_S = 10.0
# Conditions over every device (all settled, all sockets closed) are polled at this pace
# rather than re-evaluated on each of thousands of notifications.
POLL_INTERVAL_S = 0.05
# How long reconnect() lets a publish() that started before the device went down finish.
RESERVATION_WAIT_S = 1.0
# CONNACK reasons worth retrying: the broker exists but cannot take the login right now.
RETRYABLE_REFUSALS = frozenset({"Server unavailable", "Server busy"})

_OK_RC = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)


class Swarm:
    """Devices sharing one network thread. See the package docstring for the guarantees."""

    def __init__(
        self,
        nodes: Sequence[BrokerNode],
        credentials: Sequence[tuple[str, str]],
        *,
        firmware: Mapping[str, str] | None = None,
        max_outstanding_per_device: int = 100,
        max_outstanding_total: int = 20_000,
        max_reconnect_attempts: int = MAX_RECONNECT_ATTEMPTS,
        client_id_of: Callable[[str], str] = str,
    ) -> None:
        if max_outstanding_per_device < 1 or max_outstanding_total < 1:
            raise ValueError("outstanding limits must be at least 1")
        if not nodes:
            raise ValueError("a swarm needs at least one broker node")
        if len(set(nodes)) < len(nodes):
            raise ValueError("a broker node is listed twice")
        self._nodes = list(nodes)
        self._max_attempts = max_reconnect_attempts
        # a device's MQTT client id: its serial, or on a NATS cluster Settings.device_client_id
        self._client_id_of = client_id_of
        self._rng = random.Random()
        # Everything the ledger and _lock guard is shared with publishing threads.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._books = Ledger(max_outstanding_per_device, max_outstanding_total)
        self._waiters = 0  # threads waiting on _cond: acks notify only when someone listens
        self._closing = False
        self._loop_error: BaseException | None = None
        self._handshakes = 0
        self._stopped = False
        self._devices: dict[str, Device] = {}
        self._loop = NetworkLoop(
            self._devices, step=self._step, next_due=self._next_due, on_death=self._died
        )
        # Network thread only.
        self._connect_queue: deque[Device] = deque()
        self._retries: list[tuple[float, int, int, Device]] = []  # due, seq, token, device
        self._retry_seq = 0
        firmware = firmware or {}
        for i, (serial, password) in enumerate(credentials):
            if serial in self._devices:
                raise ValueError(f"device {serial} is listed twice")
            client = self._make_client(serial, password)
            # Spread evenly: device i starts on node i mod n.
            device = Device(serial, client, firmware.get(serial), node=i % len(self._nodes))
            client.user_data_set(device)  # each callback learns its device
            self._aim(device)
            self._devices[serial] = device

    def _make_client(self, serial: str, password: str) -> mqtt.Client:
        client = BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id_of(serial),
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        client.username_pw_set(serial, password)
        set_last_will(client, serial)
        # Every outstanding message goes on the wire at once: the limits are ours, not paho's.
        client.max_inflight_messages_set(self._books.per_device + STATUS_HEADROOM)
        client.max_queued_messages_set(self._books.per_device + STATUS_HEADROOM)
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_open = self._loop.on_socket_open
        client.on_socket_close = self._loop.on_socket_close
        client.on_socket_register_write = self._loop.on_socket_register_write
        return client

    def _aim(self, device: Device) -> None:
        aim(device.client, self._nodes[device.node], KEEPALIVE_S)

    # --- public API ------------------------------------------------------------------------

    @property
    def serials(self) -> list[str]:
        return list(self._devices)

    def state(self, serial: str) -> DeviceState:
        return self._device(serial).state

    @property
    def stats(self) -> SwarmStats:
        with self._lock:
            on = Counter(d.node for d in self._devices.values() if d.state is DeviceState.CONNECTED)
            nodes = {node_name(node): on[i] for i, node in enumerate(self._nodes)}
            return self._books.snapshot(len(self._devices), nodes)

    def start(self, timeout: float = 120.0) -> int:
        """Connect every device (in waves of CONNECT_WINDOW); return how many are connected
        once all have connected, been refused or given up, or after *timeout* seconds."""
        if self._loop.started:
            raise SwarmError("the swarm was started already")
        raise_descriptor_limit(descriptors_needed(len(self._devices), open_descriptors()))
        with self._lock:
            for device in self._devices.values():
                device.state = DeviceState.CONNECTING
        self._connect_queue.extend(self._devices.values())
        started = time.monotonic()
        self._loop.start()
        self._poll(self._settled, started + timeout)
        stats = self.stats
        log.info(
            "swarm: %s of %s devices connected in %.1fs (by node: %s; refused: %s, gave up: %s)",
            stats.connected,
            stats.devices,
            time.monotonic() - started,
            stats.nodes,
            stats.refused,
            stats.gave_up,
        )
        return stats.connected

    def publish(self, serial: str, kind: MessageKind, payload: bytes) -> bool:
        """Hand one QoS 1 message to the device's client; True once it is outstanding (or
        already acknowledged), False if it was counted as failed (the device is down for
        good, or the swarm is stopping). Blocks while the outstanding limits are reached;
        raises SwarmError (the message counted as failed) after PUBLISH_WAIT_S."""
        device = self._device(serial)
        topic = device_topic(serial, kind)
        deadline = time.monotonic() + PUBLISH_WAIT_S
        epoch = self._reserve(device, deadline)
        if epoch is None:
            return False
        try:
            info = self._hand_over(device, topic, payload, deadline)
        except BaseException:
            with self._cond:
                self._books.release(device)
                self._books.count_failed("publish_error")
                self._notify()
            raise
        if not self._record(device, info, epoch):
            return False
        self._loop.mark_dirty(device)
        return True

    def _reserve(self, device: Device, deadline: float) -> int | None:
        """Wait for room and reserve it; the device's epoch, or None if the message was
        counted as failed because the device takes none."""
        waited = False
        with self._cond:
            while True:
                if self._loop_error is not None:
                    self._books.count_failed("network_thread_died")
                    raise SwarmError(f"the swarm's network thread died: {self._loop_error!r}")
                refusal = self._refusal(device)
                if refusal is not None:
                    self._books.count_failed(refusal)
                    return None
                if self._books.has_room(device):
                    break
                if time.monotonic() >= deadline:
                    self._books.count_failed("backpressure_timeout")
                    raise SwarmError(
                        f"{device.serial}: no PUBACKs for {PUBLISH_WAIT_S:.0f}s with "
                        f"{self._books.outstanding} messages outstanding; is the broker stuck?"
                    )
                if not waited:
                    waited = True
                    self._books.backpressure_waits += 1
                self._wait_once(deadline)
            self._books.reserve(device)
            return device.epoch

    def _record(self, device: Device, info: mqtt.MQTTMessageInfo | None, epoch: int) -> bool:
        """Book a hand-over: outstanding (True), or acked already (True), or failed (False)."""
        with self._cond:
            self._books.release(device)
            if info is None or info.rc not in _OK_RC or info.mid in device.early:
                self._notify()  # room freed, or nothing left outstanding: waiters may go on
            if info is None:
                self._books.count_failed("queue_full_timeout")
                raise SwarmError(
                    f"{device.serial}: paho's queue stayed full for {PUBLISH_WAIT_S:.0f}s"
                )
            if info.rc not in _OK_RC:
                self._books.count_failed(f"publish_rc: {mqtt.error_string(info.rc)}")
                return False
            self._books.submitted += 1
            self._books.sent += 1
            if info.mid in device.early:  # the PUBACK came before we got here
                device.early.discard(info.mid)
                self._books.acked += 1
            elif device.epoch != epoch:  # written off while we were handing it over
                self._books.failed["went_down_before_ack"] += 1
                self._notify()
                return False
            else:
                device.pending.add(info.mid)
                self._books.outstanding += 1
        return True

    def wait_acked(self, timeout: float) -> bool:
        """Wait until no message is outstanding; False if some still are after *timeout*."""
        with self._cond:
            return self._wait(
                lambda: self._books.outstanding == 0 and self._books.reserved == 0,
                time.monotonic() + timeout,
            )

    def disconnect(self, serial: str, timeout: float = DRAIN_WAIT_S) -> bool:
        """Take a device offline gracefully (DISCONNECT: the broker discards its last will),
        after waiting up to *timeout* s for its outstanding messages. True once it is down."""
        device = self._device(serial)
        with self._cond:
            if device.state in DOWN:
                return False
            device.closing = True
            self._wait(
                lambda: not device.pending and device.reserved == 0,
                time.monotonic() + timeout,
            )
        return self._take_down(device, "disconnect")

    def drop(self, serial: str) -> bool:
        """Take a device offline abruptly: close its socket without DISCONNECT, as a device
        losing power would; the broker then publishes its last will. Its outstanding
        messages are counted as failed. True once it is down."""
        device = self._device(serial)
        with self._lock:
            if device.state in DOWN:
                return False
            device.closing = True
        return self._take_down(device, "drop")

    def reconnect(self, serial: str, timeout: float = COMMAND_WAIT_S) -> bool:
        """Bring a device that is down (offline, refused, given up) back; True once connected."""
        device = self._device(serial)
        self._loop.call(lambda: self._reopen(device))
        with self._cond:
            self._wait(
                lambda: device.state not in (DeviceState.CONNECTING, DeviceState.RETRYING),
                time.monotonic() + timeout,
            )
            return device.state is DeviceState.CONNECTED

    def stop(self, timeout: float = STOP_WAIT_S, *, clear_status: bool = False) -> None:
        """Publish an offline status for every connected device, wait (bounded) for those and
        any outstanding messages to be acknowledged, DISCONNECT every device and stop the
        network thread. With *clear_status*, the retained status of those devices is then
        removed (an empty retained message), so the broker keeps nothing for devices that are
        going away; a device already down (dropped, refused…) cannot publish, so its retained
        status (last will or birth) stays unless it is reconnected first.
        Messages still unacknowledged are counted as failed. Idempotent."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._closing = True
            self._cond.notify_all()  # blocked publishers give up: "swarm_stopped"
        if not self._loop.started:
            self._write_off_all("stop_before_ack")
            return
        deadline = time.monotonic() + timeout
        try:
            if self._loop_error is None:
                self._loop.call(lambda: self._publish_statuses(status_payload))
                with self._cond:
                    self._wait(self._books.quiet, deadline)
                if clear_status:
                    self._loop.call(lambda: self._publish_statuses(lambda state, firmware: b""))
                    with self._cond:
                        self._wait(self._books.quiet, deadline)
                self._loop.call(self._disconnect_all)
                self._poll(
                    lambda: all(d.sock is None for d in self._devices.values()),
                    time.monotonic() + DRAIN_WAIT_S,
                )
        finally:
            self._loop.stop()
            self._write_off_all("stop_before_ack")

    def __enter__(self) -> Swarm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- publishing helpers (any thread) ---------------------------------------------------

    def _device(self, serial: str) -> Device:
        try:
            return self._devices[serial]
        except KeyError:
            raise SwarmError(f"device {serial!r} is not part of this swarm") from None

    def _refusal(self, device: Device) -> str | None:
        """Why *device* takes no message now (lock held), or None if it does."""
        if self._closing:
            return "swarm_stopped"
        if device.closing or device.state is DeviceState.OFFLINE:
            return "device_offline"
        if device.state is DeviceState.REFUSED:
            return "device_refused"
        if device.state is DeviceState.GAVE_UP:
            return "device_gave_up"
        return None

    def _hand_over(
        self, device: Device, topic: str, payload: bytes, deadline: float
    ) -> mqtt.MQTTMessageInfo | None:
        while True:
            info = device.client.publish(topic, payload, qos=QOS)
            if info.rc != mqtt.MQTT_ERR_QUEUE_SIZE:
                return info
            if time.monotonic() >= deadline:
                return None
            time.sleep(QUEUE_FULL_RETRY_S)

    def _wait(self, predicate: Callable[[], bool], deadline: float) -> bool:
        """Wait on _cond (held) until predicate() or deadline."""
        while not predicate():
            if time.monotonic() >= deadline or self._loop_error is not None:
                return predicate()
            self._wait_once(deadline)
        return True

    def _wait_once(self, deadline: float) -> None:
        self._waiters += 1
        try:
            self._cond.wait(max(0.0, min(deadline - time.monotonic(), 1.0)))
        finally:
            self._waiters -= 1

    def _poll(self, predicate: Callable[[], bool], deadline: float) -> bool:
        """Check an O(devices) predicate (under the lock) every POLL_INTERVAL_S until true."""
        while True:
            with self._lock:
                if predicate():
                    return True
                if self._loop_error is not None:
                    return False
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL_S)

    def _notify(self) -> None:
        """Wake waiting threads (lock held), if there are any."""
        if self._waiters:
            self._cond.notify_all()

    def _settled(self) -> bool:
        return all(
            d.state not in (DeviceState.CONNECTING, DeviceState.RETRYING)
            for d in self._devices.values()
        )

    def _take_down(self, device: Device, intent: str) -> bool:
        self._loop.call(lambda: self._close(device, intent))
        with self._cond:
            return self._wait(
                lambda: device.state is DeviceState.OFFLINE,
                time.monotonic() + DRAIN_WAIT_S,
            )

    def _write_off(self, device: Device, reason: str) -> None:
        """The device went down for good (lock held): its outstanding messages fail."""
        self._books.write_off(device, reason)
        self._notify()

    def _write_off_all(self, reason: str) -> None:
        with self._cond:
            for device in self._devices.values():
                self._write_off(device, reason)
                if device.state in LIVE:
                    device.state = DeviceState.OFFLINE

    # --- the network thread's rounds --------------------------------------------------------

    def _step(self, now: float) -> None:
        self._due_retries(now)
        self._start_connects()

    def _next_due(self) -> float:
        """When `_step` has work next: now while a handshake slot and a device wait for each
        other, else the next retry's time."""
        if self._connect_queue and self._handshakes < CONNECT_WINDOW and not self._closing:
            return -math.inf
        return self._retries[0][0] if self._retries else math.inf

    def _died(self, exc: BaseException) -> None:
        with self._cond:
            self._loop_error = exc
            self._cond.notify_all()

    # --- connections (network thread) -----------------------------------------------------

    def _due_retries(self, now: float) -> None:
        while self._retries and self._retries[0][0] <= now:
            _, _, token, device = heapq.heappop(self._retries)
            with self._lock:
                if device.state is not DeviceState.RETRYING or device.retry_token != token:
                    continue  # cancelled (taken down, or stopping)
                device.state = DeviceState.CONNECTING
            self._connect_queue.append(device)

    def _start_connects(self) -> None:
        while self._connect_queue and self._handshakes < CONNECT_WINDOW and not self._closing:
            device = self._connect_queue.popleft()
            with self._lock:
                if device.state is not DeviceState.CONNECTING or device.handshaking:
                    continue
                device.handshaking = True
                device.intent = None
                self._handshakes += 1
            try:
                self._aim(device)
                device.client.reconnect()  # TCP connect (blocking, bounded) + CONNECT queued
            except Exception as exc:  # refused, timed out, unreachable: a failed attempt
                with self._cond:
                    device.handshaking = False
                    self._handshakes -= 1
                    device.last_error = str(exc)
                    self._attempt_failed(device, f"connect failed: {exc}")
            self._loop.flush(device)  # the CONNECT goes out now, not after another select()

    def _attempt_failed(self, device: Device, why: str) -> None:
        """A connect attempt failed or a connection was lost (lock held): retry with
        backoff, or give up after max_reconnect_attempts."""
        if self._closing:
            device.state = DeviceState.OFFLINE
            self._write_off(device, "stop_before_ack")
            return
        # Any node of a cluster takes any device: the next attempt (even after a reconnect()
        # of a device that gave up) goes to the next node, so a dead node's devices move on.
        device.node = (device.node + 1) % len(self._nodes)
        device.attempts += 1
        if device.attempts > self._max_attempts:
            device.state = DeviceState.GAVE_UP
            self._books.gave_up += 1
            self._write_off(device, "gave_up_before_ack")
            log.warning(
                "device %s gave up after %s attempts: %s", device.serial, device.attempts, why
            )
            return
        device.state = DeviceState.RETRYING
        device.retry_token += 1
        self._retry_seq += 1
        due = time.monotonic() + reconnect_delay(device.attempts, self._rng)
        heapq.heappush(self._retries, (due, self._retry_seq, device.retry_token, device))
        self._notify()

    def _close(self, device: Device, intent: str) -> None:
        """Take a device down (network thread): DISCONNECT, or cut the socket for "drop"."""
        with self._cond:
            device.intent = intent
            if device.sock is None:  # idle, queued or waiting to retry: nothing to close
                device.state = DeviceState.OFFLINE
                self._write_off(device, f"{intent}_before_ack")
                return
        if intent == "drop":
            sock = device.sock
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # FIN without DISCONNECT
            # The next read sees end-of-stream; paho reports a lost connection and closes.
            self._loop.guarded(device, "read", device.client.loop_read)
        else:
            self._loop.guarded(device, "disconnect", device.client.disconnect)
            self._loop.flush(device)

    def _reopen(self, device: Device) -> None:
        deadline = time.monotonic() + RESERVATION_WAIT_S
        while True:
            with self._lock:
                if device.state not in DOWN:
                    return
                if not device.reserved:
                    break
            # A publish() that began before the device went down is finishing its hand-over;
            # it holds none of our locks, so a short wait here cannot deadlock.
            if time.monotonic() >= deadline:
                raise SwarmError(f"{device.serial}: a publish() is stuck handing over")
            time.sleep(0.001)
        # Nothing new can be handed to paho while the device is down, so these are exactly
        # the messages already counted as failed: they must never be sent now.
        device.client.drop_out_messages()
        with self._lock:
            device.state = DeviceState.CONNECTING
            device.closing = False
            device.intent = None
            device.attempts = 0
        self._connect_queue.append(device)

    def _publish_statuses(self, payload: Callable[[str, str | None], str | bytes]) -> None:
        """Publish a retained status for every connected device (stop())."""
        for device in self._devices.values():
            with self._lock:
                if device.state is not DeviceState.CONNECTED:
                    if device.state in LIVE:  # queued or waiting to retry: cancel
                        device.state = DeviceState.OFFLINE
                        self._write_off(device, "stop_before_ack")
                    continue
            self._publish_status(device, payload("offline", device.firmware))
            self._loop.flush(device)

    def _publish_status(self, device: Device, payload: str | bytes) -> None:
        """Queue a retained status (network thread); paho writes it with the next write."""
        topic = device_topic(device.serial, MessageKind.STATUS)
        try:
            info = device.client.publish(topic, payload, qos=QOS, retain=True)
        except Exception:
            log.exception("swarm: status publish failed for device %s", device.serial)
            return
        if info.rc in _OK_RC:
            with self._lock:
                if info.mid not in device.status_mids:
                    device.status_mids.add(info.mid)
                    self._books.status_outstanding += 1
        else:
            log.warning("device %s: status not sent: %s", device.serial, mqtt.error_string(info.rc))
        self._loop.touched.add(device)

    def _disconnect_all(self) -> None:
        for device in self._devices.values():
            if device.sock is not None:
                with self._lock:
                    device.intent = "stop"
                self._loop.guarded(device, "disconnect", device.client.disconnect)
                self._loop.flush(device)

    # --- paho callbacks (network thread) ----------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        device: Device,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        props: Any,
    ) -> None:
        now = time.monotonic()
        with self._cond:
            if device.handshaking:
                device.handshaking = False
                self._handshakes -= 1
            if reason.is_failure:
                device.last_error = str(reason)
                if reason.getName() in RETRYABLE_REFUSALS:
                    return  # on_disconnect follows and schedules the retry
                device.state = DeviceState.REFUSED
                self._books.refused[str(reason)] += 1
                self._write_off(device, "refused_before_ack")
                log.warning("device %s refused by broker: %s", device.serial, reason)
                return
            if device.intent is not None or self._closing:
                return  # being taken down; the DISCONNECT is already queued
            if device.ever_connected:
                self._books.reconnected += 1
            device.ever_connected = True
            device.state = DeviceState.CONNECTED
            device.connected_at = now
            device.last_error = None
            self._notify()
        self._publish_status(device, status_payload("online", device.firmware))

    def _on_disconnect(
        self,
        client: mqtt.Client,
        device: Device,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        props: Any,
    ) -> None:
        with self._cond:
            if device.handshaking:
                device.handshaking = False
                self._handshakes -= 1
            if device.intent is not None:
                device.state = DeviceState.OFFLINE
                self._write_off(device, f"{device.intent}_before_ack")
                return
            if device.state in DOWN:
                return  # refused: already written off
            why = reason_name(reason)
            if device.state is DeviceState.CONNECTED:
                self._books.disconnected[why] += 1
                log.warning("device %s disconnected: %s", device.serial, why)
                if time.monotonic() - device.connected_at >= STABLE_CONNECTION_S:
                    device.attempts = 0
            self._attempt_failed(device, why)

    def _on_publish(
        self, client: mqtt.Client, device: Device, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        with self._lock:
            if mid in device.status_mids:
                device.status_mids.discard(mid)
                self._books.status_outstanding -= 1
                wake = self._books.status_outstanding == 0
            elif mid in device.pending:
                was_full = not self._books.has_room(device)
                device.pending.discard(mid)
                self._books.outstanding -= 1
                self._books.acked += 1
                # Waking every waiter on each of thousands of PUBACKs costs more than the
                # acks themselves: wake only when something a waiter waits for happened
                # (waits are also capped at 1 s, so a missed case only costs latency).
                wake = was_full or self._books.outstanding == 0 or not device.pending
            else:
                device.early.add(mid)
                return
            if wake:
                self._notify()
