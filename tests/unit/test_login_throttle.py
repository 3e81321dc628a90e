"""The login throttle's arithmetic, keys and password-check slots (its counting, in the
database, is tested over HTTP in tests/integration/test_auth.py and test_access.py)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.accounts.throttle import (
    BUSY_RETRY_AFTER_S,
    CONCURRENT_VERIFICATIONS,
    MAX_WAIT_S,
    LoginBusyError,
    address_key,
    backoff_s,
    pair_key,
    verification_slot,
)


def test_waits_double_up_to_the_cap() -> None:
    waits = [backoff_s(over) for over in range(1, 16)]
    assert waits[:5] == [1, 2, 4, 8, 16]
    assert max(waits) == waits[-1] == MAX_WAIT_S
    # 20 guesses cost the patient attacker hours instead of seconds
    assert sum(waits) > 60 * 60
    assert backoff_s(60_000) == MAX_WAIT_S  # no 2**60000 either


def test_the_name_is_case_insensitive_and_the_pair_includes_the_address() -> None:
    assert pair_key(" Dana ", "10.0.0.1") == pair_key("dana", "10.0.0.1")
    assert pair_key("dana", "10.0.0.1") != pair_key("dana", "10.0.0.2")
    assert pair_key("dana", "10.0.0.1") != address_key("10.0.0.1")


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", True),  # one /64
        ("2001:db8:1:2::1", "2001:db8:1:ff::1", True),  # one subscriber's /56: 256 /64s
        ("2001:db8:1:2::1", "2001:db8:1:100::1", False),  # the next /56
        ("::ffff:10.0.0.1", "10.0.0.1", True),  # IPv4 mapped into IPv6
        ("10.0.0.1", "10.0.0.2", False),
        ("testclient", "testclient", True),  # not an IP: kept as it is
    ],
)
def test_addresses_are_grouped_as_one_client_holds_them(one: str, other: str, same: bool) -> None:
    assert (address_key(one) == address_key(other)) is same
    assert (pair_key("dana", one) == pair_key("dana", other)) is same


def test_password_checks_at_once_are_bounded() -> None:
    holding, release = threading.Barrier(CONCURRENT_VERIFICATIONS + 1), threading.Event()

    def hold() -> None:
        with verification_slot():
            holding.wait()
            release.wait()

    def try_one(_: int) -> int | None:
        try:
            with verification_slot():
                return None
        except LoginBusyError as exc:
            return exc.retry_after_s

    with ThreadPoolExecutor(CONCURRENT_VERIFICATIONS) as holders:
        for _ in range(CONCURRENT_VERIFICATIONS):
            holders.submit(hold)
        holding.wait()  # every slot is taken
        with ThreadPoolExecutor(4) as late:
            refused = list(late.map(try_one, range(4)))
        release.set()
    assert refused == [BUSY_RETRY_AFTER_S] * 4
    assert try_one(0) is None  # the slots are free again
