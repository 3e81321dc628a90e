"""Reading ingest's Prometheus metrics: the exposition as prometheus_client writes it, and the
quantile estimate from histogram buckets (Prometheus' histogram_quantile)."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from services.api.templates import estimate as shown
from services.fleet.ingest_metrics import estimate, histogram_quantile, parse


def exposition() -> str:
    registry = CollectorRegistry()
    Counter("fieldtrack_ingest_messages", "", registry=registry).inc(42)
    duplicates = Counter("fieldtrack_ingest_duplicates", "", ["kind"], registry=registry)
    duplicates.labels("usage").inc(3)
    duplicates.labels("metric").inc(5)
    quarantined = Counter("fieldtrack_ingest_quarantined", "", ["reason"], registry=registry)
    quarantined.labels("not_json").inc(2)
    quarantined.labels("too_old").inc(0)
    Gauge("fieldtrack_ingest_queue_depth", "", registry=registry).set(7)
    lag = Histogram(
        "fieldtrack_ingest_publish_to_commit_seconds", "", buckets=(1, 2, 5), registry=registry
    )
    for seconds in (0.5, 0.5, 1.5, 4, 10):
        lag.observe(seconds)
    delay = Histogram(
        "fieldtrack_ingest_receive_to_commit_seconds",
        "",
        buckets=(0.05, 0.1, 1),
        registry=registry,
    )
    for seconds in (0.01, 0.06, 0.09):
        delay.observe(seconds)
    Counter("other_metric", "", registry=registry).inc()
    return generate_latest(registry).decode()


def test_parse_reads_the_counters_by_label() -> None:
    found = parse(exposition(), "http://x/metrics")
    assert found.reachable and found.url == "http://x/metrics"
    assert found.messages == 42
    assert found.duplicates == {"usage": 3, "metric": 5}
    assert found.quarantined == {"not_json": 2}  # reasons never seen are left out
    assert found.queue_depth == 7
    assert found.commit_lag_count == 5
    # 5 observations; rank 2.5 falls in (1, 2] holding the 3rd → 1 + (2.5 - 2) / 1 * 1
    assert found.commit_lag_p50_seconds == pytest.approx(1.5)
    # rank 4.75 falls in +Inf: no estimate, only a floor (Prometheus would say 5)
    assert found.commit_lag_p95_seconds is None
    assert found.commit_lag_p95_over_seconds == 5
    assert found.commit_lag_p50_over_seconds is None
    # ingest's own delay: receive → commit, a histogram of its own
    assert found.ingest_delay_count == 3
    # rank 1.5 of 3 falls in (0.05, 0.1] holding the 2nd and 3rd → 0.05 + 0.05 * 0.5 / 2
    assert found.ingest_delay_p50_seconds == pytest.approx(0.0625)
    assert found.ingest_delay_p95_over_seconds is None


def test_parse_refuses_what_is_not_an_exposition() -> None:
    with pytest.raises(ValueError):
        parse("<html>not metrics</html>\n")


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [], None),
        (0.5, [(1.0, 0.0), (math.inf, 0.0)], None),
        (0.5, [(1.0, 10.0), (math.inf, 10.0)], 0.5),  # linear from 0 in the first bucket
        (0.9, [(1.0, 0.0), (2.0, 10.0), (math.inf, 10.0)], 1.9),
        (0.5, [(math.inf, 4.0), (2.0, 2.0), (1.0, 0.0)], 2.0),  # order does not matter
    ],
)
def test_histogram_quantile(
    q: float, buckets: list[tuple[float, float]], expected: float | None
) -> None:
    got = histogram_quantile(q, buckets)
    assert got == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("q", "buckets", "expected", "page"),
    [
        (0.5, [], (None, None), "not measured"),
        (0.5, [(1.0, 0.0), (math.inf, 0.0)], (None, None), "not measured"),
        (0.5, [(1.0, 10.0), (math.inf, 10.0)], (0.5, None), "0.50"),
        # the demo's catch-up: every message older than the largest bound (an hour)
        (0.5, [(300.0, 0.0), (3600.0, 0.0), (math.inf, 50.0)], (None, 3600.0), "over 3600"),
        (0.95, [(1.0, 90.0), (3600.0, 94.0), (math.inf, 100.0)], (None, 3600.0), "over 3600"),
        (0.9, [(1.0, 90.0), (3600.0, 94.0), (math.inf, 100.0)], (1.0, None), "1.00"),
    ],
)
def test_a_quantile_beyond_the_largest_bucket_is_a_floor_not_a_value(
    q: float,
    buckets: list[tuple[float, float]],
    expected: tuple[float | None, float | None],
    page: str,
) -> None:
    assert estimate(q, buckets) == expected
    assert shown(*expected) == page
