"""paho's MQTT client with a fast reader for a stream of incoming messages.

paho 2.x reads every packet with at least three `recv()` calls (command byte, length bytes,
body), handles one packet per `select()` when there is no QoS 2 traffic, and builds an
`MQTTMessage` and looks up per-topic callbacks for each one: about 40 µs of a network
thread per message here, and each system call hands the GIL to another thread (ingest's
writer) and waits to get it back. `BufferedClient.loop_read` instead reads the socket 64 KiB
at a time and cuts the packets out of that buffer itself. PUBLISH packets (QoS 0 and 1) go
straight to `on_publish_raw` as plain values; every other packet (CONNACK, SUBACK, PINGRESP,
QoS 2 …) is handed to paho's own handler, so paho still owns the connection, keepalive,
subscriptions and acknowledgements.

It overrides `loop_read` and uses paho 2.x's private packet state (`_in_packet`,
`_packet_handle`, `_loop_rc_handle`); paho is pinned below 3 in pyproject.toml and
`tests/unit/test_mqtt_client.py` checks the reader on every byte split of real packets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

# One recv() takes up to this much: a few hundred ~200-byte usage messages per system call.
RECV_CHUNK = 65_536
# Socket reads per `loop_read` before it returns to the network loop, so that queued writes
# (the writer's PUBACKs, pings) go out between long read bursts.
RECV_BURST = 8
_PUBLISH = 0x30
_MAX_LENGTH_BYTES = 4  # MQTT's variable-length "remaining length": at most 4 bytes

# topic, payload, packet id (0 at QoS 0), QoS, retained. Runs on the network thread and
# must not raise (as paho's own callbacks).
RawPublishCallback = Callable[[str, bytes, int, int, bool], None]


class _MalformedLength(Exception):
    pass


def _remaining_length(data: bytearray, at: int, end: int) -> tuple[int, int] | None:
    """MQTT's variable-length "remaining length" at *at*: (length, where the body starts),
    or None while its bytes are incomplete."""
    length = shift = 0
    while at < end:
        byte = data[at]
        at += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return length, at
        shift += 7
        if shift >= 7 * _MAX_LENGTH_BYTES:
            raise _MalformedLength
    return None


class BufferedClient(mqtt.Client):
    """An `mqtt.Client` that reads in large chunks; set `on_publish_raw` for the fast path
    (without it, PUBLISH packets take paho's usual route to `on_message`)."""

    on_publish_raw: RawPublishCallback | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = bytearray()  # bytes read but not yet parsed: at most one partial packet
        self._rbuf_sock: object = None  # the socket those bytes came from

    def _buffered(self) -> int:
        return len(self._rbuf) if self._sock is self._rbuf_sock else 0

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read what the socket has (up to RECV_BURST chunks) and handle every whole packet."""
        sock = self._sock
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        if sock is not self._rbuf_sock:  # a new connection: nothing of the old one is kept
            self._rbuf, self._rbuf_sock = bytearray(), sock
        for _ in range(RECV_BURST):
            try:
                chunk = self._sock_recv(RECV_CHUNK)  # paho's: translates TLS want-read
            except BlockingIOError:
                break
            except OSError:
                return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            if not chunk:
                return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()
            self._rbuf += chunk
            try:
                rc = self._handle_buffered()
            except _MalformedLength:
                rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
            if rc > 0:
                return self._loop_rc_handle(rc)
            if self._sock is not sock:  # a handler closed or replaced the connection
                break
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_buffered(self) -> MQTTErrorCode:
        """Handle every whole packet in the buffer; keep the partial one at its end."""
        data, end, pos = self._rbuf, len(self._rbuf), 0
        raw = self.on_publish_raw
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        while end - pos >= 2:
            first = data[pos]
            header = _remaining_length(data, pos + 1, end)
            if header is None:
                break  # the length itself is still incomplete
            length, at = header
            body_end = at + length
            if body_end > end:
                break  # the body is still incomplete
            qos = (first >> 1) & 0x03
            if raw is not None and first & 0xF0 == _PUBLISH and qos < 2 and length >= 2:
                topic_end = at + 2 + ((data[at] << 8) | data[at + 1])
                payload_at = topic_end + 2 if qos else topic_end
                if payload_at > body_end:
                    return MQTTErrorCode.MQTT_ERR_PROTOCOL
                mid = (data[topic_end] << 8) | data[topic_end + 1] if qos else 0
                topic = data[at + 2 : topic_end].decode("utf-8", "replace")
                raw(topic, bytes(data[payload_at:body_end]), mid, qos, bool(first & 0x01))
            else:
                self._in_packet = {
                    "command": first,
                    "have_remaining": 1,
                    "remaining_count": [],
                    "remaining_mult": 1,
                    "remaining_length": length,
                    "packet": bytearray(data[at:body_end]),
                    "to_process": 0,
                    "pos": 0,
                }
                rc = self._packet_handle()
                self._in_packet["command"], self._in_packet["packet"] = 0, bytearray()
                if rc > 0:
                    break
            pos = body_end
        del data[:pos]
        return rc
