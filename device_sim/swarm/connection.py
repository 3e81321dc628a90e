"""One device's connection as the swarm keeps it: its state and what it has outstanding."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

if TYPE_CHECKING:
    from paho.mqtt.client import SocketLike


class DeviceState(enum.Enum):
    IDLE = "idle"  # start() not called yet
    CONNECTING = "connecting"  # waiting for a handshake slot, or in the handshake
    CONNECTED = "connected"
    RETRYING = "retrying"  # lost or failed; a reconnect is scheduled
    REFUSED = "refused"  # the broker refused the login: stays down until reconnect()
    GAVE_UP = "gave_up"  # reconnect attempts exhausted: stays down until reconnect()
    OFFLINE = "offline"  # disconnect(), drop() or stop() took it down


# States in which a device takes messages (paho holds them until it is connected).
LIVE = frozenset(
    {DeviceState.IDLE, DeviceState.CONNECTING, DeviceState.CONNECTED, DeviceState.RETRYING}
)
DOWN = frozenset({DeviceState.REFUSED, DeviceState.GAVE_UP, DeviceState.OFFLINE})


@dataclass(eq=False)
class Device:
    serial: str
    client: mqtt.Client
    firmware: str | None
    node: int  # index of the broker node it is connected to, or will try next
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


def reason_name(reason: ReasonCode) -> str:
    name = reason.getName()
    return "connection lost" if name == "Unspecified error" else name
