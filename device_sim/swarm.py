"""Thousands of simulated devices in one process: one MQTT client per device, one network thread.

Every device is a real MQTT 3.1.1 client of its own (client id = username = serial, clean
session, the same last will and birth message as `device_sim.device.SimDevice`), but no
device owns a thread: one network thread runs a `selectors` loop over all their sockets with
paho's external-loop API (`loop_read`, `loop_write`, `loop_misc`, `want_write` and the
socket callbacks).

Threads. Only the network thread touches sockets, the selector and the connection state of a
client (connect, disconnect, reads, writes). `publish` may be called from any thread: it hands
the message to the device's client (`Client.publish`, which paho guards with its own lock),
then marks the device "dirty" and wakes the network thread through a socketpair, which then
writes. A `socket_register_write` callback is always installed, because without one paho
would write to the socket from the publishing thread itself. (As with paho's own threaded
loop, a publish racing the network thread's reconnect can, rarely, queue a PUBLISH ahead of
the CONNECT; the broker then closes the connection and the normal retry resends it.)

Backpressure. A message is *outstanding* from the moment it is handed to paho until its
PUBACK. `publish` blocks while the device has `max_outstanding_per_device` outstanding
messages or the swarm `max_outstanding_total`; after `PUBLISH_WAIT_S` it counts the message
as failed and raises `SwarmError`. paho's own queue is sized above the per-device limit, so
`MQTT_ERR_QUEUE_SIZE` should not occur; if it does, `publish` waits and retries.

Disconnected devices (MQTT_ERR_NO_CONN). A device that is only temporarily away (connecting,
or lost and due to reconnect) still accepts messages: paho keeps them (rc NO_CONN) and sends
them after the reconnect; they are outstanding meanwhile and count against the limits. A
device that will not come back by itself (refused by the broker, reconnect attempts
exhausted, `disconnect`/`drop`/`stop` asked for) accepts nothing: `publish` returns False
and counts the message as failed with the reason. When a device goes down for good, its
outstanding messages become failed ("…_before_ack": they may or may not have reached the
broker) and are discarded from paho before any later `reconnect`, so a message counted
failed is never sent afterwards.

Accounting: every message given to `publish` is in exactly one of acked, outstanding and
failed (`SwarmStats.consistent`). Birth and offline statuses are the swarm's own messages and
are not counted there.
"""

from __future__ import annotations

import contextlib
import enum
import heapq
import logging
import random
import resource
import selectors
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from device_sim.device import QOS, set_last_will, status_payload
from services.core.mqtt_client import BufferedClient
from services.core.topics import MessageKind, device_topic

if TYPE_CHECKING:
    from paho.mqtt.client import SocketLike

log = logging.getLogger(__name__)

# Longer than any pause of this process, short enough that the broker notices a vanished
# swarm within a minute and a half; PINGREQs for thousands of idle devices stay rare.
KEEPALIVE_S = 60
# Handshakes (TCP connect → CONNACK) in flight at once: waves the broker's accept queue and
# its login handling absorb without connects timing out, while 2,000 devices still connect
# in a few seconds.
CONNECT_WINDOW = 200
# paho's TCP connect is blocking and runs on the network thread; a broker that does not
# accept within this is treated as a failed attempt rather than stalling everyone.
CONNECT_TIMEOUT_S = 5.0
# How long publish() waits for room (PUBACKs) before giving up: far beyond any healthy
# broker's latency, so reaching it means the broker or the network is stuck.
PUBLISH_WAIT_S = 60.0
# Pause between retries when paho's own queue is full (should not happen, see module doc).
QUEUE_FULL_RETRY_S = 0.005
# Reconnect attempts after a lost connection or a failed connect before a device gives up;
# with the backoff below (0.5, 1, 2, 4, 8 s, jittered) that is 8–16 s of trying: enough for
# a broker restart, short enough that a dead broker is reported soon.
MAX_RECONNECT_ATTEMPTS = 5
RECONNECT_BASE_S = 0.5
RECONNECT_MAX_S = 30.0
# A connection that lasted this long counts as a success and resets the attempt counter; a
# device the broker kicks out right after every login (a duplicate client id, say) therefore
# still runs out of attempts instead of reconnecting forever.
STABLE_CONNECTION_S = 30.0
# Keepalive bookkeeping (loop_misc) for every client once a second: plenty for a 60 s keepalive.
MISC_INTERVAL_S = 1.0
# Upper bound of one select(): how late a due reconnect or a stop request can be noticed.
SELECT_MAX_WAIT_S = 0.25
# paho queue slots beyond the per-device limit, for the swarm's own birth/offline statuses.
STATUS_HEADROOM = 4
# Descriptors beyond one socket per device: the selector, the wake socketpair, the database
# connections, log files and whatever else the hosting process holds.
FD_HEADROOM = 128
# Bounded waits of stop(), disconnect() and the commands run on the network thread.
STOP_WAIT_S = 30.0
DRAIN_WAIT_S = 10.0
COMMAND_WAIT_S = 30.0
LOOP_JOIN_S = 10.0
# Conditions over every device (all settled, all sockets closed) are polled at this pace
# rather than re-evaluated on each of thousands of notifications.
POLL_INTERVAL_S = 0.05
# How long reconnect() lets a publish() that started before the device went down finish.
RESERVATION_WAIT_S = 1.0
# CONNACK reasons worth retrying: the broker exists but cannot take the login right now.
RETRYABLE_REFUSALS = frozenset({"Server unavailable", "Server busy"})

_OK_RC = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)


class SwarmError(Exception):
    """The swarm cannot do what was asked (too few descriptors, a stuck broker, …)."""


class DeviceState(enum.Enum):
    IDLE = "idle"  # start() not called yet
    CONNECTING = "connecting"  # waiting for a handshake slot, or in the handshake
    CONNECTED = "connected"
    RETRYING = "retrying"  # lost or failed; a reconnect is scheduled
    REFUSED = "refused"  # the broker refused the login: stays down until reconnect()
    GAVE_UP = "gave_up"  # reconnect attempts exhausted: stays down until reconnect()
    OFFLINE = "offline"  # disconnect(), drop() or stop() took it down


# States in which a device takes messages (paho holds them until it is connected).
_LIVE = frozenset(
    {DeviceState.IDLE, DeviceState.CONNECTING, DeviceState.CONNECTED, DeviceState.RETRYING}
)
_DOWN = frozenset({DeviceState.REFUSED, DeviceState.GAVE_UP, DeviceState.OFFLINE})


@dataclass(frozen=True)
class SwarmStats:
    """A consistent snapshot; message counts are the callers' messages (not statuses)."""

    devices: int
    connected: int
    refused: dict[str, int]  # refused logins, by the broker's reason
    disconnected: dict[str, int]  # connections ended by the broker or the network, by reason
    reconnected: int  # logins after the first: automatic reconnects and reconnect() calls
    gave_up: int  # devices that ran out of reconnect attempts
    submitted: int  # messages given to publish()
    sent: int  # handed to paho
    acked: int  # PUBACK received
    failed: dict[str, int]  # given up on, by reason
    outstanding: int  # handed to paho, PUBACK not yet received
    backpressure_waits: int  # publish() calls that had to wait for room

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def consistent(self) -> bool:
        """Every message is in exactly one of acked, outstanding and failed."""
        return (
            self.submitted == self.acked + self.outstanding + self.failed_total
            and self.acked + self.outstanding <= self.sent <= self.submitted
        )


@dataclass(eq=False)
class _Device:
    serial: str
    client: mqtt.Client
    firmware: str | None
    state: DeviceState = DeviceState.IDLE
    handshaking: bool = False  # socket open, CONNACK not yet received
    closing: bool = False  # disconnect() is draining it: no new messages
    intent: str | None = None  # "disconnect", "drop" or "stop" while we take it down
    attempts: int = 0  # failed attempts since the last stable connection
    ever_connected: bool = False
    connected_at: float = 0.0
    retry_token: int = 0
    epoch: int = 0  # bumped whenever its outstanding messages are written off
    reserved: int = 0  # publish() calls between reserving room and recording the mid
    pending: set[int] = field(default_factory=set)  # outstanding mids of callers' messages
    early: set[int] = field(default_factory=set)  # PUBACKs that beat publish() to the books
    status_mids: set[int] = field(default_factory=set)  # birth/offline awaiting PUBACK
    sock: SocketLike | None = None
    mask: int = 0
    last_error: str | None = None


def reconnect_delay(attempt: int, rng: random.Random) -> float:
    """Seconds before reconnect attempt *attempt* (1-based): exponential, capped, jittered
    to 50–100 % so a swarm that lost its broker does not come back in one burst."""
    nominal = min(RECONNECT_MAX_S, RECONNECT_BASE_S * 2.0 ** max(0, attempt - 1))
    return nominal * (0.5 + rng.random() / 2)


def descriptors_needed(devices: int, open_now: int) -> int:
    """File descriptors the process needs for a swarm of *devices*, holding *open_now*."""
    return open_now + devices + FD_HEADROOM


def raise_descriptor_limit(
    needed: int,
    *,
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
) -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the soft limit now in force.
    Raises SwarmError if it is below *needed*."""
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise RLIMIT_NOFILE from %s to %s: %s", soft, target, exc)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise SwarmError(
            f"this process may open {soft} files (hard limit {hard}) but the swarm needs "
            f"{needed} (one socket per device plus {FD_HEADROOM} spare): raise the hard limit "
            "(ulimit -Hn, LimitNOFILE=, nofile in limits.conf) or simulate fewer devices"
        )
    return soft


def _open_descriptors() -> int:
    with contextlib.suppress(OSError):
        return sum(1 for _ in Path("/proc/self/fd").iterdir())
    return 0


def _reason_name(reason: ReasonCode) -> str:
    name = reason.getName()
    return "connection lost" if name == "Unspecified error" else name


class Swarm:
    """Devices sharing one network thread. See the module docstring for the guarantees."""

    def __init__(
        self,
        host: str,
        port: int,
        credentials: Sequence[tuple[str, str]],
        *,
        firmware: Mapping[str, str] | None = None,
        max_outstanding_per_device: int = 100,
        max_outstanding_total: int = 20_000,
        max_reconnect_attempts: int = MAX_RECONNECT_ATTEMPTS,
    ) -> None:
        if max_outstanding_per_device < 1 or max_outstanding_total < 1:
            raise ValueError("outstanding limits must be at least 1")
        self._host, self._port = host, port
        self._per_device = max_outstanding_per_device
        self._total_limit = max_outstanding_total
        self._max_attempts = max_reconnect_attempts
        self._rng = random.Random()
        firmware = firmware or {}
        self._devices: dict[str, _Device] = {}
        for serial, password in credentials:
            if serial in self._devices:
                raise ValueError(f"device {serial} is listed twice")
            device = _Device(serial, self._make_client(serial, password), firmware.get(serial))
            device.client.user_data_set(device)  # each callback learns its device
            self._devices[serial] = device

        # Everything below _lock guards is shared with publishing threads.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiters = 0  # threads waiting on _cond: acks notify only when someone listens
        self._closing = False
        self._loop_error: BaseException | None = None
        self._outstanding = 0
        self._reserved = 0
        self._submitted = 0
        self._sent = 0
        self._acked = 0
        self._failed: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._disconnected: Counter[str] = Counter()
        self._reconnected = 0
        self._gave_up = 0
        self._handshakes = 0
        self._status_outstanding = 0  # birth/offline statuses awaiting their PUBACK
        self._backpressure_waits = 0

        # Handed from publishing threads to the network thread.
        self._dirty_lock = threading.Lock()
        self._dirty: set[_Device] = set()
        self._wake_pending = False
        self._commands: deque[tuple[Callable[[], Any], Future[Any]]] = deque()

        # Network thread only.
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop_ident: int | None = None
        self._exit = False
        self._touched: set[_Device] = set()
        self._connect_queue: deque[_Device] = deque()
        self._retries: list[tuple[float, int, int, _Device]] = []  # due, seq, token, device
        self._retry_seq = 0
        self._stopped = False

    def _make_client(self, serial: str, password: str) -> mqtt.Client:
        client = BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=serial,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        client.username_pw_set(serial, password)
        set_last_will(client, serial)
        # Every outstanding message goes on the wire at once: the limits are ours, not paho's.
        client.max_inflight_messages_set(self._per_device + STATUS_HEADROOM)
        client.max_queued_messages_set(self._per_device + STATUS_HEADROOM)
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.connect_async(self._host, self._port, KEEPALIVE_S)  # no I/O: sets the target
        return client

    # --- public API ------------------------------------------------------------------------

    @property
    def serials(self) -> list[str]:
        return list(self._devices)

    def state(self, serial: str) -> DeviceState:
        return self._device(serial).state

    @property
    def stats(self) -> SwarmStats:
        with self._lock:
            return SwarmStats(
                devices=len(self._devices),
                connected=sum(d.state is DeviceState.CONNECTED for d in self._devices.values()),
                refused=dict(self._refused),
                disconnected=dict(self._disconnected),
                reconnected=self._reconnected,
                gave_up=self._gave_up,
                submitted=self._submitted,
                sent=self._sent,
                acked=self._acked,
                failed=dict(self._failed),
                outstanding=self._outstanding,
                backpressure_waits=self._backpressure_waits,
            )

    def start(self, timeout: float = 120.0) -> int:
        """Connect every device (in waves of CONNECT_WINDOW); return how many are connected
        once all have connected, been refused or given up, or after *timeout* seconds."""
        if self._thread is not None:
            raise SwarmError("the swarm was started already")
        raise_descriptor_limit(descriptors_needed(len(self._devices), _open_descriptors()))
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        with self._lock:
            for device in self._devices.values():
                device.state = DeviceState.CONNECTING
        self._connect_queue.extend(self._devices.values())
        started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="swarm-network", daemon=True)
        self._thread.start()
        self._poll(self._settled, started + timeout)
        stats = self.stats
        log.info(
            "swarm: %s of %s devices connected in %.1fs (refused: %s, gave up: %s)",
            stats.connected,
            stats.devices,
            time.monotonic() - started,
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
                self._release(device)
                self._count_failed("publish_error")
                self._notify()
            raise
        if not self._record(device, info, epoch):
            return False
        self._mark_dirty(device)
        return True

    def _reserve(self, device: _Device, deadline: float) -> int | None:
        """Wait for room and reserve it; the device's epoch, or None if the message was
        counted as failed because the device takes none."""
        waited = False
        with self._cond:
            while True:
                if self._loop_error is not None:
                    self._count_failed("network_thread_died")
                    raise SwarmError(f"the swarm's network thread died: {self._loop_error!r}")
                refusal = self._refusal(device)
                if refusal is not None:
                    self._count_failed(refusal)
                    return None
                if self._has_room(device):
                    break
                if time.monotonic() >= deadline:
                    self._count_failed("backpressure_timeout")
                    raise SwarmError(
                        f"{device.serial}: no PUBACKs for {PUBLISH_WAIT_S:.0f}s with "
                        f"{self._outstanding} messages outstanding; is the broker stuck?"
                    )
                if not waited:
                    waited = True
                    self._backpressure_waits += 1
                self._wait_once(deadline)
            device.reserved += 1
            self._reserved += 1
            return device.epoch

    def _record(self, device: _Device, info: mqtt.MQTTMessageInfo | None, epoch: int) -> bool:
        """Book a hand-over: outstanding (True), or acked already (True), or failed (False)."""
        with self._cond:
            self._release(device)
            if info is None or info.rc not in _OK_RC or info.mid in device.early:
                self._notify()  # room freed, or nothing left outstanding: waiters may go on
            if info is None:
                self._count_failed("queue_full_timeout")
                raise SwarmError(
                    f"{device.serial}: paho's queue stayed full for {PUBLISH_WAIT_S:.0f}s"
                )
            if info.rc not in _OK_RC:
                self._count_failed(f"publish_rc: {mqtt.error_string(info.rc)}")
                return False
            self._submitted += 1
            self._sent += 1
            if info.mid in device.early:  # the PUBACK came before we got here
                device.early.discard(info.mid)
                self._acked += 1
            elif device.epoch != epoch:  # written off while we were handing it over
                self._failed["went_down_before_ack"] += 1
                self._notify()
                return False
            else:
                device.pending.add(info.mid)
                self._outstanding += 1
        return True

    def wait_acked(self, timeout: float) -> bool:
        """Wait until no message is outstanding; False if some still are after *timeout*."""
        with self._cond:
            return self._wait(
                lambda: self._outstanding == 0 and self._reserved == 0,
                time.monotonic() + timeout,
            )

    def disconnect(self, serial: str, timeout: float = DRAIN_WAIT_S) -> bool:
        """Take a device offline gracefully (DISCONNECT: the broker discards its last will),
        after waiting up to *timeout* s for its outstanding messages. True once it is down."""
        device = self._device(serial)
        with self._cond:
            if device.state in _DOWN:
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
            if device.state in _DOWN:
                return False
            device.closing = True
        return self._take_down(device, "drop")

    def reconnect(self, serial: str, timeout: float = COMMAND_WAIT_S) -> bool:
        """Bring a device that is down (offline, refused, given up) back; True once connected."""
        device = self._device(serial)
        self._call(lambda: self._reopen(device))
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
        if self._thread is None:
            self._write_off_all("stop_before_ack")
            return
        deadline = time.monotonic() + timeout
        try:
            if self._loop_error is None:
                self._call(lambda: self._publish_statuses(status_payload))
                with self._cond:
                    self._wait(self._quiet, deadline)
                if clear_status:
                    self._call(lambda: self._publish_statuses(lambda state, firmware: b""))
                    with self._cond:
                        self._wait(self._quiet, deadline)
                self._call(self._disconnect_all)
                self._poll(
                    lambda: all(d.sock is None for d in self._devices.values()),
                    time.monotonic() + DRAIN_WAIT_S,
                )
        finally:
            self._exit = True
            self._wake()
            self._thread.join(LOOP_JOIN_S)
            if self._thread.is_alive():
                log.error("swarm network thread did not stop within %ss", LOOP_JOIN_S)
            else:
                self._release_sockets()
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

    def _device(self, serial: str) -> _Device:
        try:
            return self._devices[serial]
        except KeyError:
            raise SwarmError(f"device {serial!r} is not part of this swarm") from None

    def _refusal(self, device: _Device) -> str | None:
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
        self, device: _Device, topic: str, payload: bytes, deadline: float
    ) -> mqtt.MQTTMessageInfo | None:
        while True:
            info = device.client.publish(topic, payload, qos=QOS)
            if info.rc != mqtt.MQTT_ERR_QUEUE_SIZE:
                return info
            if time.monotonic() >= deadline:
                return None
            time.sleep(QUEUE_FULL_RETRY_S)

    def _has_room(self, device: _Device) -> bool:
        """Whether one more message fits under both outstanding limits (lock held)."""
        return (
            len(device.pending) + device.reserved < self._per_device
            and self._outstanding + self._reserved < self._total_limit
        )

    def _release(self, device: _Device) -> None:
        """Return a reservation (lock held); the caller then records the message."""
        device.reserved -= 1
        self._reserved -= 1

    def _count_failed(self, reason: str, n: int = 1) -> None:
        """Lock held."""
        self._submitted += n
        self._failed[reason] += n

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

    def _quiet(self) -> bool:
        return self._outstanding == 0 and self._reserved == 0 and self._status_outstanding == 0

    def _mark_dirty(self, device: _Device) -> None:
        with self._dirty_lock:
            self._dirty.add(device)
            if self._wake_pending:
                return
            self._wake_pending = True
        self._wake()

    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                self._wake_w.send(b"\0")

    def _call(self, fn: Callable[[], Any], timeout: float = COMMAND_WAIT_S) -> Any:
        """Run *fn* on the network thread and return its result."""
        if self._thread is None or not self._thread.is_alive():
            raise SwarmError("the swarm is not running (start() it first)")
        if threading.get_ident() == self._loop_ident:
            return fn()
        future: Future[Any] = Future()
        self._commands.append((fn, future))
        self._wake()
        return future.result(timeout)

    def _take_down(self, device: _Device, intent: str) -> bool:
        self._call(lambda: self._close(device, intent))
        with self._cond:
            return self._wait(
                lambda: device.state is DeviceState.OFFLINE,
                time.monotonic() + DRAIN_WAIT_S,
            )

    def _write_off(self, device: _Device, reason: str) -> None:
        """The device went down for good (lock held): its outstanding messages fail."""
        if device.pending:
            n = len(device.pending)
            self._failed[reason] += n
            self._outstanding -= n
            device.pending.clear()
        self._status_outstanding -= len(device.status_mids)
        device.status_mids.clear()
        device.epoch += 1
        self._notify()

    def _write_off_all(self, reason: str) -> None:
        with self._cond:
            for device in self._devices.values():
                self._write_off(device, reason)
                if device.state in _LIVE:
                    device.state = DeviceState.OFFLINE

    # --- network thread --------------------------------------------------------------------

    def _run(self) -> None:
        self._loop_ident = threading.get_ident()
        assert self._selector is not None  # noqa: S101 (set by start())
        next_misc = time.monotonic() + MISC_INTERVAL_S
        try:
            while not self._exit:
                for key, mask in self._selector.select(self._select_timeout(next_misc)):
                    if key.data is None:
                        self._drain_wake()
                    else:
                        self._service(key.data, mask)
                self._run_commands()
                self._flush_dirty()
                now = time.monotonic()
                if now >= next_misc:
                    self._misc()
                    next_misc = now + MISC_INTERVAL_S
                self._due_retries(now)
                self._start_connects()
                self._sync_touched()
        except BaseException as exc:
            log.exception("swarm network thread died")
            with self._cond:
                self._loop_error = exc
                self._cond.notify_all()
            self._fail_commands(exc)

    def _select_timeout(self, next_misc: float) -> float:
        if self._commands or (
            self._connect_queue and self._handshakes < CONNECT_WINDOW and not self._closing
        ):
            return 0.0
        until = next_misc
        if self._retries:
            until = min(until, self._retries[0][0])
        return min(SELECT_MAX_WAIT_S, max(0.0, until - time.monotonic()))

    def _drain_wake(self) -> None:
        assert self._wake_r is not None  # noqa: S101
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass

    def _guarded(self, device: _Device, what: str, fn: Callable[[], object]) -> None:
        """Run a client operation; one device's failure must not stop the others."""
        try:
            fn()
        except Exception:
            log.exception("swarm: %s failed for device %s", what, device.serial)
        self._touched.add(device)

    def _service(self, device: _Device, mask: int) -> None:
        client = device.client
        if mask & selectors.EVENT_READ:
            self._guarded(device, "read", client.loop_read)
        if mask & selectors.EVENT_WRITE and device.sock is not None:
            self._guarded(device, "write", client.loop_write)

    def _flush_dirty(self) -> None:
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
            self._wake_pending = False
        for device in dirty:
            if device.sock is not None:
                self._guarded(device, "write", device.client.loop_write)

    def _sync_touched(self) -> None:
        """Watch a socket for writability exactly while paho has bytes queued for it."""
        assert self._selector is not None  # noqa: S101
        touched, self._touched = self._touched, set()
        for device in touched:
            sock = device.sock
            if sock is None:
                continue
            want = selectors.EVENT_READ
            if device.client.want_write():
                want |= selectors.EVENT_WRITE
            if want != device.mask:
                self._selector.modify(sock, want, device)
                device.mask = want

    def _misc(self) -> None:
        for device in self._devices.values():
            if device.sock is not None:
                self._guarded(device, "keepalive", device.client.loop_misc)

    def _run_commands(self) -> None:
        while self._commands:
            fn, future = self._commands.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)

    def _fail_commands(self, exc: BaseException) -> None:
        while self._commands:
            _, future = self._commands.popleft()
            if future.set_running_or_notify_cancel():
                future.set_exception(SwarmError(f"the swarm's network thread died: {exc!r}"))

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
                device.client.reconnect()  # TCP connect (blocking, bounded) + CONNECT queued
            except Exception as exc:  # refused, timed out, unreachable: a failed attempt
                with self._cond:
                    device.handshaking = False
                    self._handshakes -= 1
                    device.last_error = str(exc)
                    self._attempt_failed(device, f"connect failed: {exc}")
            self._flush(device)  # the CONNECT goes out now, not after another select()

    def _attempt_failed(self, device: _Device, why: str) -> None:
        """A connect attempt failed or a connection was lost (lock held): retry with
        backoff, or give up after max_reconnect_attempts."""
        if self._closing:
            device.state = DeviceState.OFFLINE
            self._write_off(device, "stop_before_ack")
            return
        device.attempts += 1
        if device.attempts > self._max_attempts:
            device.state = DeviceState.GAVE_UP
            self._gave_up += 1
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

    def _close(self, device: _Device, intent: str) -> None:
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
            self._guarded(device, "read", device.client.loop_read)
        else:
            self._guarded(device, "disconnect", device.client.disconnect)
            self._flush(device)

    def _reopen(self, device: _Device) -> None:
        deadline = time.monotonic() + RESERVATION_WAIT_S
        while True:
            with self._lock:
                if device.state not in _DOWN:
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
                    if device.state in _LIVE:  # queued or waiting to retry: cancel
                        device.state = DeviceState.OFFLINE
                        self._write_off(device, "stop_before_ack")
                    continue
            self._publish_status(device, payload("offline", device.firmware))
            self._flush(device)

    def _publish_status(self, device: _Device, payload: str | bytes) -> None:
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
                    self._status_outstanding += 1
        else:
            log.warning("device %s: status not sent: %s", device.serial, mqtt.error_string(info.rc))
        self._touched.add(device)

    def _flush(self, device: _Device) -> None:
        """Write what paho has queued now rather than after the next select()."""
        if device.sock is not None:
            self._guarded(device, "write", device.client.loop_write)

    def _disconnect_all(self) -> None:
        for device in self._devices.values():
            if device.sock is not None:
                with self._lock:
                    device.intent = "stop"
                self._guarded(device, "disconnect", device.client.disconnect)
                self._flush(device)

    def _release_sockets(self) -> None:
        """After the network thread ended: close what is left and detach the callbacks, so
        paho never calls back into a swarm that is gone."""
        for device in self._devices.values():
            client = device.client
            client.on_socket_open = client.on_socket_close = None
            client.on_socket_register_write = None
            client.on_connect = client.on_disconnect = client.on_publish = None
            if device.sock is not None:
                with contextlib.suppress(OSError):
                    device.sock.close()
                device.sock = None
        if self._selector is not None:
            self._selector.close()
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._wake_w = None

    # --- paho callbacks (network thread, except register_write) ----------------------------

    def _on_socket_open(self, client: mqtt.Client, device: _Device, sock: SocketLike) -> None:
        assert self._selector is not None  # noqa: S101
        self._selector.register(sock, selectors.EVENT_READ, device)
        device.sock = sock
        device.mask = selectors.EVENT_READ
        self._touched.add(device)

    def _on_socket_close(self, client: mqtt.Client, device: _Device, sock: SocketLike) -> None:
        if device.sock is sock:
            if self._selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
            device.sock = None
            device.mask = 0

    def _on_socket_register_write(
        self, client: mqtt.Client, device: _Device, sock: SocketLike
    ) -> None:
        if threading.get_ident() == self._loop_ident:
            self._touched.add(device)
        else:  # paho queued a packet from a publishing thread
            self._mark_dirty(device)

    def _on_connect(
        self,
        client: mqtt.Client,
        device: _Device,
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
                self._refused[str(reason)] += 1
                self._write_off(device, "refused_before_ack")
                log.warning("device %s refused by broker: %s", device.serial, reason)
                return
            if device.intent is not None or self._closing:
                return  # being taken down; the DISCONNECT is already queued
            if device.ever_connected:
                self._reconnected += 1
            device.ever_connected = True
            device.state = DeviceState.CONNECTED
            device.connected_at = now
            device.last_error = None
            self._notify()
        self._publish_status(device, status_payload("online", device.firmware))

    def _on_disconnect(
        self,
        client: mqtt.Client,
        device: _Device,
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
            if device.state in _DOWN:
                return  # refused: already written off
            why = _reason_name(reason)
            if device.state is DeviceState.CONNECTED:
                self._disconnected[why] += 1
                log.warning("device %s disconnected: %s", device.serial, why)
                if time.monotonic() - device.connected_at >= STABLE_CONNECTION_S:
                    device.attempts = 0
            self._attempt_failed(device, why)

    def _on_publish(
        self, client: mqtt.Client, device: _Device, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        with self._lock:
            if mid in device.status_mids:
                device.status_mids.discard(mid)
                self._status_outstanding -= 1
                wake = self._status_outstanding == 0
            elif mid in device.pending:
                was_full = not self._has_room(device)
                device.pending.discard(mid)
                self._outstanding -= 1
                self._acked += 1
                # Waking every waiter on each of thousands of PUBACKs costs more than the
                # acks themselves: wake only when something a waiter waits for happened
                # (waits are also capped at 1 s, so a missed case only costs latency).
                wake = was_full or self._outstanding == 0 or not device.pending
            else:
                device.early.add(mid)
                return
            if wake:
                self._notify()


__all__ = ["DeviceState", "Swarm", "SwarmError", "SwarmStats", "reconnect_delay"]
