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

Broker nodes. A swarm is given one or more broker nodes, a cluster in which any node accepts
any device. Device i starts on node i mod n; each failed connect attempt and each lost
connection sends that device's next attempt to the next node in the list, so the devices of
a node that died are back on a live one within their reconnect backoff (the attempts count
across nodes). Messages in flight are resent on the new node and keep their place in the
books; `SwarmStats.nodes` counts the connected devices by node.

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

Modules: `swarm.py` (the `Swarm`: what callers may ask, connects and retries), `loop.py` (the
network thread), `connection.py` (one device's connection state), `limits.py` (handshakes in
flight, backoff, descriptors) and `stats.py` (the books behind `SwarmStats`).
"""

from device_sim.swarm.connection import DeviceState
from device_sim.swarm.limits import SwarmError, reconnect_delay
from device_sim.swarm.stats import SwarmStats
from device_sim.swarm.swarm import Swarm

__all__ = ["DeviceState", "Swarm", "SwarmError", "SwarmStats", "reconnect_delay"]
