"""One simulated device: its own MQTT identity, its own topics, QoS 1, a last will.

``publish`` applies backpressure instead of dropping: when paho's queue of unacknowledged
messages is full it waits for acknowledgements, and it never returns without the message
either handed to paho or an exception raised.

Given several broker nodes (a cluster: any node accepts any device), the device starts on the
first and, whenever a connection is lost or a connect fails, paho's next reconnect goes to
the next node; queued messages go out on whichever node it reaches.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from services.core.topics import MessageKind, device_topic

if TYPE_CHECKING:
    from services.core.settings import BrokerNode

log = logging.getLogger(__name__)

QOS = 1
KEEPALIVE_S = 30
# Unacknowledged QoS 1 messages one device keeps before publish() waits: a real device's
# buffer is small, and a bounded queue keeps memory flat under load.
MAX_OUTSTANDING = 1000
BACKPRESSURE_WAIT_S = 0.01
BACKPRESSURE_GIVE_UP_S = 60.0
LAST_WILL_PAYLOAD = json.dumps({"v": 1, "state": "offline"})


class PublishError(Exception):
    """A message could not be handed to the MQTT client."""


class SimDevice:
    def __init__(
        self,
        serial: str,
        password: str,
        nodes: Sequence[BrokerNode],
        *,
        client_id_of: Callable[[str], str] = str,
    ) -> None:
        if not nodes:
            raise ValueError("a device needs at least one broker node")
        self.serial = serial
        self.connected = threading.Event()
        self.refused: str | None = None
        self.sent = 0
        self._nodes = list(nodes)
        self._node = 0  # index of the node it is connected to, or will try next
        self._stopping = False
        # Sequence numbers continue across simulator restarts, as a device's flash counter would.
        self._seq = time.time_ns() // 1_000_000
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id_of(serial), protocol=mqtt.MQTTv311
        )
        self._client.username_pw_set(serial, password)
        self._client.max_queued_messages_set(MAX_OUTSTANDING)
        set_last_will(self._client, serial)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self.firmware: str | None = None

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            log.warning("device %s refused by broker: %s", self.serial, reason)
            return
        self.refused = None
        self.connected.set()
        self._publish_status("online")

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.connected.clear()
        if not self._stopping:
            self._next_node()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._next_node()

    def _next_node(self) -> None:
        """Aim paho's next reconnect (its own loop thread) at the next broker node."""
        self._node = (self._node + 1) % len(self._nodes)
        aim(self._client, self.node, KEEPALIVE_S)

    @property
    def node(self) -> BrokerNode:
        """The broker node it is connected to, or will try next."""
        return self._nodes[self._node]

    def start(self) -> None:
        aim(self._client, self.node, KEEPALIVE_S)
        self._client.loop_start()

    def stop(self) -> None:
        """Say goodbye (offline status) and disconnect cleanly."""
        self._stopping = True
        if self.connected.is_set():
            info = self._publish_status("offline")
            info.wait_for_publish(timeout=5)
        self._client.disconnect()
        self._client.loop_stop()

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _publish_status(self, state: str) -> mqtt.MQTTMessageInfo:
        return self._client.publish(
            device_topic(self.serial, MessageKind.STATUS),
            status_payload(state, self.firmware),
            qos=QOS,
            retain=True,
        )

    def publish(self, kind: MessageKind, body: dict[str, Any] | bytes) -> mqtt.MQTTMessageInfo:
        """Publish with QoS 1, waiting while paho's outstanding queue is full."""
        payload = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":"))
        deadline = time.monotonic() + BACKPRESSURE_GIVE_UP_S
        while True:
            info = self._client.publish(device_topic(self.serial, kind), payload, qos=QOS)
            # NO_CONN: paho has queued the QoS 1 message and sends it after reconnecting.
            if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                self.sent += 1
                return info
            if info.rc != mqtt.MQTT_ERR_QUEUE_SIZE:
                raise PublishError(f"{self.serial}: publish failed: {mqtt.error_string(info.rc)}")
            if time.monotonic() > deadline:
                raise PublishError(f"{self.serial}: broker has not acknowledged for too long")
            time.sleep(BACKPRESSURE_WAIT_S)

    def usage(
        self, feature: str, count: int = 1, duration_ms: int | None = None
    ) -> mqtt.MQTTMessageInfo:
        event: dict[str, Any] = {"feature": feature, "count": count}
        if duration_ms is not None:
            event["duration_ms"] = duration_ms
        return self.publish(
            MessageKind.USAGE, {"v": 1, "seq": self.next_seq(), "ts": _now(), "events": [event]}
        )

    def telemetry(self, metrics: dict[str, tuple[float, str]]) -> mqtt.MQTTMessageInfo:
        return self.publish(
            MessageKind.TELEMETRY,
            {
                "v": 1,
                "seq": self.next_seq(),
                "ts": _now(),
                "metrics": [{"name": n, "value": v, "unit": u} for n, (v, u) in metrics.items()],
            },
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_payload(state: str, firmware: str | None = None) -> str:
    """The retained status a device publishes: birth ("online") or goodbye ("offline")."""
    body: dict[str, Any] = {"v": 1, "state": state, "ts": _now()}
    if firmware:
        body["firmware"] = firmware
    return json.dumps(body)


def aim(client: mqtt.Client, node: BrokerNode, keepalive: int) -> None:
    """Point the client's next connect at broker *node* (no I/O)."""
    host, port = node
    if (client.host, client.port) != (host, port):
        # Not paho's host/port setters: they refuse after a lost connection or a failed
        # connect. connect_async sets the target in any state, opens nothing and keeps the
        # queued messages (the reconnect resends those in flight).
        client.connect_async(host, port, keepalive)


def set_last_will(client: mqtt.Client, serial: str) -> None:
    """The broker publishes this retained "offline" status if the device vanishes without
    a DISCONNECT."""
    client.will_set(
        device_topic(serial, MessageKind.STATUS), LAST_WILL_PAYLOAD, qos=QOS, retain=True
    )
