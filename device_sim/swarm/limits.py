"""The swarm's limits and pacing: handshakes in flight, publish backpressure, reconnect backoff
and the file descriptors a swarm needs."""

from __future__ import annotations

import contextlib
import logging
import random
import resource
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

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
# paho queue slots beyond the per-device limit, for the swarm's own birth/offline statuses.
STATUS_HEADROOM = 4
# Descriptors beyond one socket per device: the selector, the wake socketpair, the database
# connections, log files and whatever else the hosting process holds.
FD_HEADROOM = 128


class SwarmError(Exception):
    """The swarm cannot do what was asked (too few descriptors, a stuck broker, …)."""


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


def open_descriptors() -> int:
    with contextlib.suppress(OSError):
        return sum(1 for _ in Path("/proc/self/fd").iterdir())
    return 0
