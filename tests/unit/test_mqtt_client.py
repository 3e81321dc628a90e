"""BufferedClient: every message of a byte stream arrives once, in order, whatever the splits
of the stream into socket reads, on the fast path (`on_publish_raw`) and on paho's own
(`on_message`); other packets still reach paho; a new connection starts with an empty buffer."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from services.core import mqtt_client
from services.core.mqtt_client import BufferedClient

# 70 kB payloads make hypothesis' reprs large; they are still the interesting cases
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")


def _publish_packet(topic: str, payload: bytes, mid: int) -> bytes:
    """An MQTT 3.1.1 PUBLISH, QoS 1."""
    encoded = topic.encode()
    body = struct.pack("!H", len(encoded)) + encoded + struct.pack("!H", mid) + payload
    length, remaining = bytearray(), len(body)
    while True:
        byte, remaining = remaining % 128, remaining // 128
        length.append(byte | (0x80 if remaining else 0))
        if not remaining:
            break
    return bytes([0x32]) + bytes(length) + body


class _Socket:
    """A non-blocking socket: `recv` takes from what has arrived, else "would block"."""

    def __init__(self) -> None:
        self.arrived, self.recvs = b"", 0

    def recv(self, size: int) -> bytes:
        self.recvs += 1
        if not self.arrived:
            raise BlockingIOError
        data, self.arrived = self.arrived[:size], self.arrived[size:]
        return data

    def close(self) -> None:
        pass


def _network_loop(client: BufferedClient, sock: _Socket, chunks: list[bytes]) -> None:
    """What paho's loop does: whenever select() says the socket is readable, `loop_read`."""
    for chunk in chunks:
        sock.arrived += chunk
        while sock.arrived:
            assert client.loop_read() == 0
            assert not _whole_packet_in(client), "a whole packet left in the buffer, unseen"


def _whole_packet_in(client: BufferedClient) -> bool:
    """Whether the buffer holds a complete packet (which select() would never announce)."""
    buffered = client._rbuf
    header = mqtt_client._remaining_length(buffered, 1, len(buffered)) if buffered else None
    return header is not None and header[1] + header[0] <= len(buffered)


PINGRESP = b"\xd0\x00"


def _client(received: list[tuple[str, bytes, int]], *, fast: bool = True) -> BufferedClient:
    client = BufferedClient(CallbackAPIVersion.VERSION2, client_id="t", manual_ack=True)
    if fast:
        client.on_publish_raw = lambda topic, payload, mid, qos, retain: received.append(
            (topic, payload, mid)
        )
    client.on_message = lambda _c, _u, msg: received.append(
        (msg.topic, bytes(msg.payload), msg.mid)
    )
    return client


messages = st.lists(
    st.tuples(
        st.sampled_from(["fieldtrack/v1/a/usage", "fieldtrack/v1/device-0042/telemetry"]),
        st.one_of(st.binary(max_size=600), st.just(b"x" * 70_000)),  # one above RECV_CHUNK
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(messages, st.lists(st.integers(min_value=1, max_value=200_000), max_size=30), st.booleans())
def test_every_message_arrives_once_in_order_whatever_the_read_splits(
    sent: list[tuple[str, bytes]], cuts: list[int], fast: bool
) -> None:
    # a PINGRESP after every third message: packets the fast path hands to paho
    stream = b"".join(
        _publish_packet(t, p, i + 1) + (PINGRESP if i % 3 == 2 else b"")
        for i, (t, p) in enumerate(sent)
    )
    points = sorted({c % len(stream) for c in cuts} - {0})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    sock = _Socket()
    received: list[tuple[str, bytes, int]] = []
    client = _client(received, fast=fast)
    client._sock = sock  # type: ignore[assignment]
    client._ping_t = 1.0  # a ping outstanding: each PINGRESP clears it
    _network_loop(client, sock, chunks)
    assert client._ping_t == 0 or len(sent) < 3
    assert received == [(t, p, i + 1) for i, (t, p) in enumerate(sent)]


def test_many_small_packets_take_few_system_calls() -> None:
    stream = b"".join(_publish_packet("fieldtrack/v1/a/usage", b"{}" * 80, i) for i in range(1000))
    sock = _Socket()
    received: list[tuple[str, bytes, int]] = []
    client = _client(received)
    client._sock = sock  # type: ignore[assignment]
    _network_loop(client, sock, [stream])
    assert len(received) == 1000
    # paho alone: three or more recv() per packet; here one per RECV_CHUNK bytes
    assert sock.recvs <= len(stream) // mqtt_client.RECV_CHUNK + 3


def test_a_new_connection_never_sees_bytes_buffered_from_the_old_one() -> None:
    first = _publish_packet("fieldtrack/v1/a/usage", b"old", 1)
    second = _publish_packet("fieldtrack/v1/a/usage", b"new", 2)
    received: list[tuple[str, bytes, int]] = []
    client = _client(received)
    old = _Socket()  # a packet, then a broken one (a 5-byte length) and more bytes
    old.arrived = first + b"\x32\xff\xff\xff\xff\xff" + first
    client._sock = old  # type: ignore[assignment]
    assert client.loop_read() != 0  # paho gives up on the connection mid-buffer
    assert client._rbuf, "the old connection's bytes are still buffered"
    new = _Socket()
    new.arrived = second
    client._sock = new  # type: ignore[assignment]
    client.loop_read()
    assert [m[1] for m in received] == [b"old", b"new"]
