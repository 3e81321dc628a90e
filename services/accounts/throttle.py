"""Slows down password guessing: failures per account and per client address.

After a few free failures each further one doubles the wait, up to a cap. A success clears
the account's record (not the address's: one right password must not reset an attacker
trying many accounts). State is per API process, which bounds guessing per process; that is
documented in the README.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from services.core.errors import RateLimitedError

# Typos happen: a person gets this many failures before any wait.
FREE_FAILURES_PER_ACCOUNT = 5
# One address may try a few accounts (a shared office NAT) before it is slowed down.
FREE_FAILURES_PER_ADDRESS = 20
# Waits double per failure up to this cap, so a locked-out person is back within minutes.
MAX_WAIT_S = 15 * 60
# Records older than this are forgotten: the counter restarts.
FORGET_AFTER_S = 60 * 60
# Bounded memory however many usernames an attacker invents.
MAX_TRACKED = 50_000


@dataclass
class _Record:
    failures: int = 0
    blocked_until: float = 0.0
    last_failure: float = 0.0


class LoginThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def check(self, username: str, address: str) -> None:
        """Raise RateLimitedError if either key must still wait."""
        now = self._clock()
        with self._lock:
            waits = [
                record.blocked_until - now
                for key in self._keys(username, address)
                if (record := self._fresh(key, now)) is not None
            ]
        wait = max(waits, default=0.0)
        if wait > 0:
            raise RateLimitedError(
                f"too many failed logins; try again in {math.ceil(wait)} s",
                retry_after_s=math.ceil(wait),
            )

    def failed(self, username: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            for key, free in zip(
                self._keys(username, address),
                (FREE_FAILURES_PER_ACCOUNT, FREE_FAILURES_PER_ADDRESS),
                strict=True,
            ):
                record = self._fresh(key, now) or _Record()
                record.failures += 1
                record.last_failure = now
                over = record.failures - free
                if over > 0:
                    # the exponent is capped too: 2**60000 would cost real CPU per attempt
                    record.blocked_until = now + min(MAX_WAIT_S, 2 ** min(over - 1, 30))
                self._records[key] = record
                self._records.move_to_end(key)
            while len(self._records) > MAX_TRACKED:
                self._records.popitem(last=False)

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._records.pop(self._keys(username, "")[0], None)

    @staticmethod
    def _keys(username: str, address: str) -> tuple[str, str]:
        return f"user:{username.strip().lower()}", f"addr:{address}"

    def _fresh(self, key: str, now: float) -> _Record | None:
        record = self._records.get(key)
        if record is not None and now - record.last_failure > FORGET_AFTER_S:
            del self._records[key]
            return None
        return record
