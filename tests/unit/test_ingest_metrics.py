"""Reading ingest's Prometheus metrics: the exposition as prometheus_client writes it, and the
quantile estimate from histogram buckets (Prometheus' histogram_quantile)."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from services.fleet.ingest_metrics import histogram_quantile, parse


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
    # rank 4.75 falls in +Inf: the largest finite bound
    assert found.commit_lag_p95_seconds == 5


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
