"""The login throttle's arithmetic, with a fake clock."""

from __future__ import annotations

import pytest

from services.accounts.throttle import (
    FORGET_AFTER_S,
    FREE_FAILURES_PER_ACCOUNT,
    FREE_FAILURES_PER_ADDRESS,
    MAX_WAIT_S,
    LoginThrottle,
)
from services.core.errors import RateLimitedError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def waits_after(throttle: LoginThrottle, user: str, address: str) -> int:
    try:
        throttle.check(user, address)
    except RateLimitedError as exc:
        return exc.retry_after_s
    return 0


def test_free_failures_then_doubling_waits_up_to_the_cap() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock)
    for _ in range(FREE_FAILURES_PER_ACCOUNT):
        assert waits_after(throttle, "dana", "10.0.0.1") == 0
        throttle.failed("dana", "10.0.0.1")
    seen = []
    for _ in range(15):
        wait = waits_after(throttle, "dana", "10.0.0.1")
        seen.append(wait)
        clock.now += wait  # the patient attacker waits out every block
        throttle.failed("dana", "10.0.0.1")
    assert seen[:5] == [0, 1, 2, 4, 8]
    assert max(seen) <= MAX_WAIT_S and seen[-1] == MAX_WAIT_S
    # 20 guesses cost the attacker hours instead of seconds
    assert sum(seen) > 60 * 60


def test_the_name_is_case_insensitive_and_success_clears_it() -> None:
    throttle = LoginThrottle(Clock())
    for _ in range(FREE_FAILURES_PER_ACCOUNT + 1):
        throttle.failed("Dana", "10.0.0.1")
    assert waits_after(throttle, "dana", "10.0.0.2") > 0
    throttle.succeeded("DANA")
    assert waits_after(throttle, "dana", "10.0.0.2") == 0


def test_one_address_trying_many_accounts_is_slowed_too() -> None:
    throttle = LoginThrottle(Clock())
    for i in range(FREE_FAILURES_PER_ADDRESS + 1):
        throttle.failed(f"user{i}", "10.0.0.9")
    assert waits_after(throttle, "somebody-new", "10.0.0.9") > 0
    assert waits_after(throttle, "somebody-new", "10.0.0.10") == 0


def test_records_are_forgotten_after_an_hour() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock)
    for _ in range(FREE_FAILURES_PER_ACCOUNT + 3):
        throttle.failed("dana", "10.0.0.1")
    clock.now += FORGET_AFTER_S + 1
    assert waits_after(throttle, "dana", "10.0.0.1") == 0


@pytest.mark.parametrize("count", [60_000])
def test_memory_stays_bounded(count: int) -> None:
    throttle = LoginThrottle(Clock())
    for i in range(count):
        throttle.failed(f"u{i}", "10.0.0.1")
    assert len(throttle._records) <= 50_000
