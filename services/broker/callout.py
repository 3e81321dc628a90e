"""`fieldtrack broker auth`: the NATS cluster's auth callout — every device login, on any node,
is decided here against the registry.

A node that takes an MQTT login it has no user for asks on `$SYS.REQ.USER.AUTH` (a request
JWT the node signed, carrying the client's username, password and MQTT client id). The answer
is a response JWT signed with the issuer key the nodes trust, holding a user JWT that places
the device in the APP account with exactly its own topics: publish to its three topics,
subscribe to its own prefix, MQTT connections only. Or a refusal with a reason the node logs.
Several instances may run: they share the requests as one queue group.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import time
from dataclasses import dataclass
from typing import Any

import nats
import psycopg
from nats.aio.msg import Msg
from prometheus_client import Counter, start_http_server
from psycopg_pool import ConnectionPool

from services.core import nats_jwt
from services.core.errors import InvalidInputError
from services.core.payloads import MAX_PAYLOAD_BYTES
from services.core.settings import Settings
from services.core.topics import (
    SERIAL_RE,
    device_publish_topics,
    is_reserved_name,
    nats_client_id,
    nats_subject,
)
from services.registry import credentials

log = logging.getLogger(__name__)

AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
QUEUE_GROUP = "fieldtrack-auth"
APP_ACCOUNT = "APP"
PAYLOAD_HEADROOM = 1024
IDENTITY_TTL_S = 24 * 3600
IDENTITY_TTL_SPREAD_S = 3600
# Logins decided at once: each is one indexed registry lookup; a reconnect storm after a node
# is lost (a third of the fleet at once) queues here instead of opening more connections.
POOL_MAX = 4
# A registry lookup that takes longer than this fails the login (the device retries) instead
# of holding every other login behind a stuck connection.
LOOKUP_TIMEOUT_MS = 2000
CONNECT_TIMEOUT_S = 5
# Refused logins are logged at most this often: anyone can attempt logins at will.
REFUSAL_LOG_EVERY_S = 1.0
RECONNECT_WAIT_S = 0.5

DECISIONS = Counter(
    "fieldtrack_broker_auth_total", "device logins the auth callout decided", ["outcome"]
)


@dataclass(frozen=True)
class Login:
    user_nkey: str  # the node's one-time key for this connection: the user JWT's subject
    server_id: str  # the node asking: the response's audience
    serial: str
    password: str
    client_type: str
    client_id: str


def read_request(token: bytes) -> Login:
    """The login a node asks about, from its signed request."""
    claims = nats_jwt.decode_verified(token.decode(), issuer_prefix=nats_jwt.SERVER_KEY_PREFIX)
    body: dict[str, Any] = claims.get("nats") or {}
    if body.get("type") != "authorization_request":
        raise InvalidInputError("not an authorization request")
    client = body.get("client_info") or {}
    options = body.get("connect_opts") or {}
    return Login(
        user_nkey=str(body.get("user_nkey", "")),
        server_id=str((body.get("server_id") or {}).get("id", "")),
        serial=str(options.get("user") or ""),
        password=str(options.get("pass") or ""),
        client_type=str(client.get("type") or ""),
        client_id=str(client.get("mqtt_id") or ""),
    )


def refusal(login: Login) -> str | None:
    """Why *login* is refused before the registry is asked; None: ask it."""
    if login.client_type != "mqtt":
        return "device credentials are for MQTT connections only"
    if not SERIAL_RE.fullmatch(login.serial) or is_reserved_name(login.serial):
        return "not a device username"
    if login.client_id != nats_client_id(login.serial):
        # The client id names the MQTT session: a device taking another's would end it.
        return "a device's MQTT client id must be its serial ('.' written '~')"
    return None


def device_permissions(serial: str) -> dict[str, Any]:
    """A device's rights, as the user JWT grants them: publish to its own topics, nothing
    else. Devices receive nothing from the broker, and on NATS an MQTT subscription of a
    persistent session is a durable consumer of the replicated stream that would keep every
    later message for it: no subscription is allowed."""
    return {
        "pub": {"allow": [nats_subject(topic) for topic in device_publish_topics(serial)]},
        "sub": {"deny": [">"]},
        "subs": 0,
        "data": nats_jwt.NO_LIMIT,
        # the node counts its own MQTT header (a few bytes) into the payload
        "payload": MAX_PAYLOAD_BYTES + PAYLOAD_HEADROOM,
        "allowed_connection_types": ["MQTT"],
        "type": "user",
        "version": 2,
    }


def answer(login: Login, issuer_seed: str, why_not: str | None) -> str:
    """The response JWT: the device's user JWT, or the refusal."""
    body: dict[str, Any] = {"type": "authorization_response", "version": 2}
    if why_not is None:
        # A login is checked again at least this often: the bound on a connection that slipped
        # past a revocation (admitted from a read just before it committed, and registered on
        # its node just after the revocation looked for it). Spread so that devices admitted
        # together do not all log in again together.
        expires = int(time.time() + IDENTITY_TTL_S + secrets.randbelow(IDENTITY_TTL_SPREAD_S))
        body["jwt"] = nats_jwt.encode(
            {
                "sub": login.user_nkey,
                "aud": APP_ACCOUNT,
                "name": login.serial,
                "exp": expires,
                "nats": device_permissions(login.serial),
            },
            issuer_seed,
        )
    else:
        body["error"] = why_not
    return nats_jwt.encode(
        {"sub": login.user_nkey, "aud": login.server_id, "nats": body}, issuer_seed
    )


class AuthCallout:
    """Answers the cluster's login requests from the registry."""

    def __init__(self, settings: Settings) -> None:
        settings.nats.require()
        self._settings = settings
        seed = settings.nats.issuer_seed
        password = settings.nats.auth_password
        if seed is None or password is None:  # require() said so already
            raise InvalidInputError("the auth callout's secrets are not set")
        self._seed = seed.get_secret_value()
        self._password = password.get_secret_value()
        self._pool = ConnectionPool(
            settings.database_url.get_secret_value(),
            min_size=1,
            max_size=POOL_MAX,
            open=False,
            name="auth-callout",
            kwargs={
                "connect_timeout": CONNECT_TIMEOUT_S,
                "options": f"-c statement_timeout={LOOKUP_TIMEOUT_MS}",
                "keepalives_idle": 10,
            },
        )
        self._slots = asyncio.Semaphore(POOL_MAX)
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_refusal_log = 0.0
        self._refusals_unlogged = 0

    def decide(self, token: bytes) -> str | None:
        """The response to one request; None when the request itself is unreadable (no
        answer: the node times the login out)."""
        try:
            login = read_request(token)
        except InvalidInputError as exc:
            log.warning("unreadable auth request: %s", exc)
            DECISIONS.labels("unreadable").inc()
            return None
        why_not = refusal(login)
        if why_not is None:
            try:
                with self._pool.connection() as conn:
                    why_not = credentials.check(conn, login.serial, login.password).refused
            except psycopg.Error as exc:
                log.warning("registry lookup for a login failed: %s", exc)
                why_not = "the registry could not be asked; try again"
        DECISIONS.labels("accepted" if why_not is None else "refused").inc()
        if why_not is not None:
            self._log_refusal(login.serial, why_not)
        return answer(login, self._seed, why_not)

    def _log_refusal(self, serial: str, why_not: str) -> None:
        now = time.monotonic()
        if now - self._last_refusal_log < REFUSAL_LOG_EVERY_S:
            self._refusals_unlogged += 1
            return
        more = f" ({self._refusals_unlogged} more refused since the last line)"
        log.info(
            "login of %.64r refused: %s%s", serial, why_not, more if self._refusals_unlogged else ""
        )
        self._last_refusal_log, self._refusals_unlogged = now, 0

    async def _on_request(self, msg: Msg) -> None:
        """nats-py awaits each callback before the next message: decide in a task of its own,
        so up to POOL_MAX logins are looked up at once."""
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        try:
            async with self._slots:
                response = await asyncio.to_thread(self.decide, msg.data)
            if response is not None:
                await msg.respond(response.encode())
        except Exception:  # one bad request must not end the service
            log.exception("auth request failed")

    async def serve(self, stop: asyncio.Event) -> None:
        nats_settings = self._settings.nats
        self._pool.open(wait=True)
        client = await nats.connect(
            servers=nats_settings.url_list(),
            user=nats_settings.auth_username,
            password=self._password,
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT_S,
            name="fieldtrack-auth",
        )
        try:
            await client.subscribe(AUTH_SUBJECT, queue=QUEUE_GROUP, cb=self._on_request)
            log.info("auth callout serving %s", nats_settings.urls)
            await stop.wait()
        finally:
            await client.drain()
            self._pool.close()


def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT."""

    nats_settings = settings.nats
    if nats_settings.callout_metrics_port:
        try:
            start_http_server(
                nats_settings.callout_metrics_port, addr=nats_settings.callout_metrics_host
            )
        except OSError as exc:  # a second callout on the same host: serves without metrics
            log.warning(
                "metrics not served on port %d: %s", nats_settings.callout_metrics_port, exc
            )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await AuthCallout(settings).serve(stop)

    asyncio.run(main())
