"""The swarm's pure pacing and sizing rules: reconnect backoff, descriptor budget, accounting."""

from __future__ import annotations

import random
import resource

import pytest

from device_sim.swarm.limits import (
    FD_HEADROOM,
    RECONNECT_BASE_S,
    RECONNECT_MAX_S,
    SwarmError,
    descriptors_needed,
    raise_descriptor_limit,
    reconnect_delay,
)
from device_sim.swarm.stats import SwarmStats


def test_reconnect_delay_doubles_within_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        nominal = min(RECONNECT_MAX_S, RECONNECT_BASE_S * 2 ** (attempt - 1))
        for _ in range(50):
            delay = reconnect_delay(attempt, rng)
            assert nominal / 2 <= delay <= nominal
    assert reconnect_delay(100, rng) <= RECONNECT_MAX_S


def test_reconnect_delays_are_spread_so_a_swarm_does_not_return_in_one_burst() -> None:
    rng = random.Random(1)
    delays = [reconnect_delay(3, rng) for _ in range(1000)]
    assert max(delays) - min(delays) > RECONNECT_BASE_S  # 2 s nominal: spread over ~1 s


def test_descriptors_needed_counts_one_socket_per_device_plus_headroom() -> None:
    assert descriptors_needed(2000, 40) == 2040 + FD_HEADROOM


class FakeLimits:
    def __init__(self, soft: int, hard: int, *, refuse: bool = False) -> None:
        self.soft, self.hard, self.refuse = soft, hard, refuse

    def get(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def set(self, which: int, limits: tuple[int, int]) -> None:
        if self.refuse:
            raise ValueError("not allowed")
        self.soft, self.hard = limits


def test_soft_descriptor_limit_is_raised_to_the_hard_limit() -> None:
    limits = FakeLimits(1024, 65536)
    assert raise_descriptor_limit(3000, getrlimit=limits.get, setrlimit=limits.set) == 65536
    assert limits.soft == 65536


def test_too_few_descriptors_is_a_clear_error() -> None:
    limits = FakeLimits(1024, 2048)
    with pytest.raises(SwarmError, match=r"may open 2048 files.*needs 5000"):
        raise_descriptor_limit(5000, getrlimit=limits.get, setrlimit=limits.set)


def test_a_refused_raise_keeps_the_soft_limit_and_still_checks_it() -> None:
    limits = FakeLimits(4096, 65536, refuse=True)
    assert raise_descriptor_limit(3000, getrlimit=limits.get, setrlimit=limits.set) == 4096
    with pytest.raises(SwarmError):
        raise_descriptor_limit(5000, getrlimit=limits.get, setrlimit=limits.set)


def _stats(**counts: object) -> SwarmStats:
    base: dict[str, object] = {
        "devices": 1,
        "connected": 1,
        "nodes": {"127.0.0.1:1883": 1},
        "refused": {},
        "disconnected": {},
        "reconnected": 0,
        "gave_up": 0,
        "submitted": 0,
        "sent": 0,
        "acked": 0,
        "failed": {},
        "outstanding": 0,
        "backpressure_waits": 0,
    }
    base.update(counts)
    return SwarmStats(**base)  # type: ignore[arg-type]


def test_stats_are_consistent_only_when_every_message_is_in_exactly_one_bucket() -> None:
    assert _stats(
        submitted=10, sent=9, acked=7, outstanding=2, failed={"device_offline": 1}
    ).consistent
    assert not _stats(submitted=10, sent=10, acked=7, outstanding=2).consistent  # one missing
    assert not _stats(submitted=10, sent=8, acked=8, outstanding=2).consistent  # acked unsent
