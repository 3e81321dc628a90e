"""Slows down password guessing, and bounds the memory password checks take.

Failures are counted per (username, client address) pair and per client address, in the
database (`login_failures`), so every API process counts the same failures and no flood of
invented usernames can push a record out. After a few free failures each further one
doubles the wait, up to a cap; a blocked attempt is refused before its password is checked,
even a right one (no oracle while blocked).

- Atomic: an attempt is counted as a failure *before* its password is checked, in one
  transaction that locks its two records; a right password then takes the count back. So
  concurrent guesses are counted one after another and cannot all pass one check.
- Nobody can lock an account out from everywhere: failing `admin` from one address blocks
  `admin` from that address only. The per-address limit stops one address from trying many
  accounts; an IPv6 client counts by its /56 (one subscriber's allocation).
- A spray from a shared address (an office NAT) does not lock out the people behind it: a
  (username, address) pair whose password was right within KNOWN_PAIR_DAYS is neither
  counted against its address nor refused by the address's block, only by its own pair
  block. Only an unknown pair's right password takes its address count back (once: the pair
  is known after it), so logging in to one's own account between guesses at others does not
  keep an address under its limit.
- Each process verifies at most a few passwords at once (argon2id holds 64 MiB for each);
  an attempt that finds them all busy gets 503 and Retry-After, not a queue of hashes. No
  database connection is held while waiting for a slot or hashing: a login flood cannot
  starve the API's connection pool.
"""

from __future__ import annotations

import ipaddress
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn

import psycopg

from services.accounts.store import PASSWORD_MEMORY_KIB
from services.core.errors import RateLimitedError

# Typos happen: a person gets this many failures per address before any wait.
FREE_FAILURES_PER_ACCOUNT = 5
# One address may try a few accounts (a shared office NAT) before it is slowed down.
FREE_FAILURES_PER_ADDRESS = 20
# Waits double per failure up to this cap, so a blocked person is back within minutes.
MAX_WAIT_S = 15 * 60
# Records without a failure for this long are forgotten: the counter restarts.
FORGET_AFTER_S = 60 * 60
# Each attempt adds at most two records; purging up to this many old ones per attempt keeps
# the table at the size of the last hour's failures.
PURGE_BATCH = 100
# Memory one API process may spend on password checks at once: 4 at argon2-cffi's 64 MiB.
VERIFY_MEMORY_BUDGET_KIB = 256 * 1024
CONCURRENT_VERIFICATIONS = max(1, VERIFY_MEMORY_BUDGET_KIB // PASSWORD_MEMORY_KIB)
# A few people logging in at once wait this long for a slot (one check took 0.1-0.2 s on
# the 2-core test machine) instead of being turned away.
VERIFY_WAIT_S = 0.25
# By then a slot is free again unless the process is flooded.
BUSY_RETRY_AFTER_S = 1
# Providers give each IPv6 subscriber a /56 (RIPE-690) or a /48: counting by /64 would give
# one subscriber 256 to 65,536 fresh budgets. Bound: a /48 still counts as 256 addresses.
IPV6_SUBSCRIBER_PREFIX = 56
# A right password from an address keeps it open to that username this long: a person who
# logs in monthly from the office still gets in while someone on the same NAT sprays guesses.
KNOWN_PAIR_DAYS = 30

_verifications = threading.BoundedSemaphore(CONCURRENT_VERIFICATIONS)

# Counts one more failure unless the record is blocked (then no row comes back, nothing
# changes). ON CONFLICT locks the row, so concurrent attempts are counted one at a time.
COUNT_FAILURE = """
INSERT INTO login_failures AS f (key, failures, blocked_until, last_failure)
VALUES (%(key)s, 1, '-infinity', now())
ON CONFLICT (key) DO UPDATE
SET failures = CASE WHEN f.last_failure < now() - make_interval(secs => %(forget_s)s) THEN 1
                    ELSE f.failures + 1 END,
    last_failure = now()
WHERE f.blocked_until <= now()
RETURNING failures
"""
BLOCK = """
UPDATE login_failures SET blocked_until = now() + make_interval(secs => %(wait_s)s)
WHERE key = %(key)s
"""
WAIT_LEFT = "SELECT extract(epoch FROM blocked_until - now()) FROM login_failures WHERE key = %s"
# An attempt that proved right (or never had its password checked) takes its count back.
REFUND = """
UPDATE login_failures
SET failures = greatest(failures - 1, 0),
    blocked_until = CASE WHEN failures - 1 <= %(free)s THEN '-infinity' ELSE blocked_until END
WHERE key = %(key)s
"""
FORGET = "DELETE FROM login_failures WHERE key = %s"
KNOWN = f"""
SELECT EXISTS (SELECT 1 FROM login_successes
               WHERE key = %s AND last_success > now() - interval '{KNOWN_PAIR_DAYS} days')
"""
REMEMBER = """
INSERT INTO login_successes (key, last_success) VALUES (%s, now())
ON CONFLICT (key) DO UPDATE SET last_success = now()
"""
PURGE_KNOWN = f"""
DELETE FROM login_successes WHERE key IN (
    SELECT key FROM login_successes
    WHERE last_success < now() - interval '{KNOWN_PAIR_DAYS} days'
    ORDER BY last_success LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
"""
PURGE = """
DELETE FROM login_failures WHERE key IN (
    SELECT key FROM login_failures
    WHERE last_failure < now() - make_interval(secs => %(forget_s)s)
    ORDER BY last_failure LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
"""


class LoginBusyError(RateLimitedError):
    """Every password-check slot of this process is taken; the client should retry soon."""


@dataclass(frozen=True)
class Attempt:
    """One login attempt, counted as a failure until it proves right."""

    pair: str
    address: str
    # False for a pair known from a right password lately: not counted against its address
    address_counted: bool = True


def backoff_s(over: int) -> int:
    """The wait after the `over`-th failure beyond the free ones: 1, 2, 4 … s, capped."""
    # the exponent is capped too: 2**60000 would cost real CPU per attempt
    return min(MAX_WAIT_S, 1 << min(over - 1, 30))


def address_key(address: str) -> str:
    """The client address as throttled: IPv4 as is, IPv6 by its /56."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"addr:{address}"  # not an IP (a test client, a Unix socket)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"addr:{ip.ipv4_mapped}"
        return f"addr:{ipaddress.ip_network((ip, IPV6_SUBSCRIBER_PREFIX), strict=False)}"
    return f"addr:{ip}"


def pair_key(username: str, address: str) -> str:
    # The address has no "|", so the last one separates the two unambiguously.
    return f"pair:{username.strip().lower()}|{address_key(address).removeprefix('addr:')}"


class LoginThrottle:
    """Failed logins per (username, address) pair and per address, shared through the
    database by every API process."""

    def begin(self, conn: psycopg.Connection, username: str, address: str) -> Attempt:
        """Count an attempt as a failure, or raise RateLimitedError if it must still wait.
        Committed at once, so the count stands whatever the request does next. A pair whose
        password was right lately counts against itself only (its address's block does not
        refuse it); a blocked pair is always refused."""
        attempt = Attempt(pair_key(username, address), address_key(address))
        with conn.transaction():
            # pair before address in every transaction: a fixed lock order, no deadlock
            if not self._count(conn, attempt.pair, FREE_FAILURES_PER_ACCOUNT):
                _refuse(conn, attempt.pair)
            known = conn.execute(KNOWN, (attempt.pair,)).fetchone()
            if known and known[0]:
                attempt = Attempt(attempt.pair, attempt.address, address_counted=False)
            elif not self._count(conn, attempt.address, FREE_FAILURES_PER_ADDRESS):
                _refuse(conn, attempt.address)  # rolls back the pair's count too
            conn.execute(PURGE, {"forget_s": FORGET_AFTER_S, "limit": PURGE_BATCH})
        conn.commit()
        return attempt

    @staticmethod
    def _count(conn: psycopg.Connection, key: str, free: int) -> bool:
        """One more failure on `key`, blocking it when over `free`; False if it is blocked."""
        counted = conn.execute(COUNT_FAILURE, {"key": key, "forget_s": FORGET_AFTER_S}).fetchone()
        if counted is None:
            return False
        if counted[0] > free:
            conn.execute(BLOCK, {"key": key, "wait_s": backoff_s(counted[0] - free)})
        return True

    def succeeded(self, conn: psycopg.Connection, attempt: Attempt) -> None:
        """The password was right: forget this pair's failures, remember the pair as known
        and, for a pair not known before, take the address's count back (one right password
        must not reset an address trying many accounts)."""
        with conn.transaction():
            conn.execute(FORGET, (attempt.pair,))
            conn.execute(REMEMBER, (attempt.pair,))
            if attempt.address_counted:
                conn.execute(REFUND, {"key": attempt.address, "free": FREE_FAILURES_PER_ADDRESS})
            conn.execute(PURGE_KNOWN, {"limit": PURGE_BATCH})
        conn.commit()

    def cancel(self, conn: psycopg.Connection, attempt: Attempt) -> None:
        """The password was never checked: take both counts back."""
        with conn.transaction():
            conn.execute(REFUND, {"key": attempt.pair, "free": FREE_FAILURES_PER_ACCOUNT})
            if attempt.address_counted:
                conn.execute(REFUND, {"key": attempt.address, "free": FREE_FAILURES_PER_ADDRESS})
        conn.commit()


def _refuse(conn: psycopg.Connection, key: str) -> NoReturn:
    row = conn.execute(WAIT_LEFT, (key,)).fetchone()
    wait = max(1, math.ceil(float(row[0]))) if row else 1
    raise RateLimitedError(f"too many failed logins; try again in {wait} s", retry_after_s=wait)


@contextmanager
def verification_slot() -> Iterator[None]:
    """Hold one of this process's password-check slots, or raise LoginBusyError."""
    if not _verifications.acquire(timeout=VERIFY_WAIT_S):
        raise LoginBusyError(
            f"too many logins at once; try again in {BUSY_RETRY_AFTER_S} s",
            retry_after_s=BUSY_RETRY_AFTER_S,
        )
    try:
        yield
    finally:
        _verifications.release()
