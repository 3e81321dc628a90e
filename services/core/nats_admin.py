"""Device identities when the broker is a NATS cluster.

Nothing per device lives in the broker: the auth callout checks each login against the
registry's credentials (services/registry/credentials.py), so provisioning a device is one
row, whatever the fleet's size. What the broker must be told is that a device has to go now
(revoked, its password rotated or re-provisioned, deleted): its open connections, on whichever
node, are found through the system account (CONNZ) and closed (KICK); its next login meets the
callout, which refuses it. That happens after the registry's change is committed
(`committed`), or the device could log in again in between and be let in.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from types import TracebackType

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from services.core.aio import run_sync
from services.core.errors import DisconnectError
from services.core.settings import Settings

log = logging.getLogger(__name__)

CONNZ_ALL_NODES = "$SYS.REQ.SERVER.PING.CONNZ"
KICK = "$SYS.REQ.SERVER.{server_id}.KICK"
APP_ACCOUNT = "APP"
# Every live node answers CONNZ at once; a node that is down never does (its connections are
# gone with it), so the wait for the missing answers is bounded.
CONNZ_WAIT_S = 0.5
CONNECT_TIMEOUT_S = 3.0
KICK_TIMEOUT_S = 2.0
# CONNZ pages; a device has one connection, a few at most while one is replaced.
CONNZ_LIMIT = 64


class NatsIdentities:
    """The DeviceIdentities of a NATS cluster: disconnects devices that must go."""

    def __init__(self, settings: Settings) -> None:
        if settings.nats.system_password is None:
            raise DisconnectError(
                "FIELDTRACK_NATS__SYSTEM_PASSWORD is not set: revoked devices could not be "
                "disconnected from the NATS cluster"
            )
        self._settings = settings
        self._pending: list[str] = []

    def __enter__(self) -> NatsIdentities:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pending.clear()

    def create_devices(self, credentials: Sequence[tuple[str, str]]) -> None:
        """The registry's credentials are the identity; a device given a new password here
        (provisioned again) must lose the connection its old one opened."""
        self._pending.extend(serial for serial, _ in credentials)

    def disable_device(self, serial: str) -> None:
        self._pending.append(serial)

    def set_device_password(self, serial: str, password: str) -> None:
        self._pending.append(serial)

    def delete_device(self, serial: str) -> None:
        self._pending.append(serial)

    def delete_devices(self, serials: Sequence[str]) -> None:
        self._pending.extend(serials)

    def committed(self) -> None:
        """The registry change is committed: disconnect the devices it concerns."""
        serials, self._pending = self._pending, []
        if serials:
            self.disconnect(serials)

    def disconnect(self, serials: Sequence[str]) -> int:
        """Close every open connection of these devices on every node; how many were closed."""
        try:
            return run_sync(lambda: self._disconnect(list(dict.fromkeys(serials))))
        except (NatsError, OSError, TimeoutError) as exc:
            raise DisconnectError(
                f"the registry change is saved, but the NATS cluster could not be reached to "
                f"disconnect {', '.join(serials[:3])}: {exc}; the device is refused at its next "
                "login, and repeating the request disconnects it"
            ) from exc

    async def _disconnect(self, serials: list[str]) -> int:
        nats_settings = self._settings.nats
        password = nats_settings.system_password
        client = await nats.connect(
            servers=nats_settings.url_list(),
            user=nats_settings.system_username,
            password=password.get_secret_value() if password else "",
            connect_timeout=CONNECT_TIMEOUT_S,
            allow_reconnect=False,
            max_reconnect_attempts=0,
        )
        try:
            nodes = cluster_size(client, len(nats_settings.url_list()))
            found = await asyncio.gather(*(_connections(client, s, nodes) for s in serials))
            targets = [target for per_serial in found for target in per_serial]
            answers = await asyncio.gather(
                *(
                    client.request(
                        KICK.format(server_id=server_id),
                        json.dumps({"cid": cid}).encode(),
                        timeout=KICK_TIMEOUT_S,
                    )
                    for server_id, cid in targets
                )
            )
            for answer in answers:
                error = json.loads(answer.data or b"{}").get("error")
                # a connection that closed by itself meanwhile is not a failure
                if error and "not found" not in str(error).lower():
                    raise DisconnectError(f"the NATS cluster refused to disconnect: {error}")
        finally:
            await client.close()
        return len(targets)


def cluster_size(client: NatsClient, configured: int) -> int:
    """How many nodes should answer CONNZ: the cluster's own count of its client URLs (the
    settings may name one node, or a load balancer), or the URLs configured."""
    info = getattr(client, "_server_info", None) or {}
    advertised = info.get("connect_urls") or []
    return max(configured, len(advertised), 1)


async def _connections(client: NatsClient, serial: str, nodes: int) -> list[tuple[str, int]]:
    """(server id, connection id) of every open connection *serial* has, on any node."""
    inbox = client.new_inbox()
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        await answers.put(msg.data)

    subscription = await client.subscribe(inbox, cb=collect)
    query = {"acc": APP_ACCOUNT, "user": serial, "auth": True, "state": 0, "limit": CONNZ_LIMIT}
    await client.publish(CONNZ_ALL_NODES, json.dumps(query).encode(), reply=inbox)
    found: list[tuple[str, int]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNZ_WAIT_S
    answered = 0
    while answered < nodes:
        try:
            body = await asyncio.wait_for(answers.get(), max(deadline - loop.time(), 0.001))
        except TimeoutError:
            break
        answered += 1
        answer = json.loads(body)
        server_id = answer.get("server", {}).get("id")
        for connection in (answer.get("data") or {}).get("connections") or []:
            if server_id and connection.get("cid") is not None:
                found.append((server_id, int(connection["cid"])))
    await subscription.unsubscribe()
    if answered < nodes:
        log.warning(
            "%d of %d NATS nodes answered while disconnecting %s (a node that is down holds no "
            "connection)",
            answered,
            nodes,
            serial,
        )
    return found
