"""What the ingest process says about itself: its Prometheus /metrics, scraped on demand.

Counters are the scraped process's own, since it started. The page never fails because of
this: an ingest that is down, turned off or answering garbage gives `reachable: false` and why.
"""

from __future__ import annotations

import math
from collections import defaultdict

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

from services.core.settings import Settings

PREFIX = "fieldtrack_ingest_"
SCRAPE_TIMEOUT_S = 0.5


class IngestMetrics(BaseModel):
    url: str | None = Field(description="where they were scraped; null when turned off")
    reachable: bool
    error: str | None = Field(description="why they could not be read")
    writer_alive: bool | None = Field(
        default=None,
        description="whether ingest's writer thread runs (a process whose writer died exits, "
        "non-zero, for its supervisor to restart it; until then it acknowledges nothing)",
    )
    messages: float | None = Field(default=None, description="MQTT messages taken by the writer")
    duplicates: dict[str, float] = Field(
        default_factory=dict, description="readings already stored (redeliveries), by kind"
    )
    rows: dict[str, float] = Field(default_factory=dict, description="readings stored, by kind")
    quarantined: dict[str, float] = Field(default_factory=dict, description="by reason")
    db_failures: float | None = None
    queue_depth: float | None = None
    status_cleared: float | None = None
    commit_lag_count: float | None = None
    commit_lag_p50_seconds: float | None = Field(
        default=None,
        description="device time → commit of every stored message (replayed and buffered "
        "ones included), estimated from the histogram buckets; null when not measured or when "
        "the quantile lies beyond the largest bucket (then see commit_lag_p50_over_seconds)",
    )
    commit_lag_p95_seconds: float | None = None
    commit_lag_p50_over_seconds: float | None = Field(
        default=None,
        description="set when the quantile lies beyond the histogram's largest finite bound: "
        "it is over this many seconds, and no estimate is given",
    )
    commit_lag_p95_over_seconds: float | None = None
    ingest_delay_count: float | None = None
    ingest_delay_p50_seconds: float | None = Field(
        default=None,
        description="receipt of a batch's oldest message → the batch's commit: ingest's own "
        "delay (queue and write), whatever the messages' device times; null as above",
    )
    ingest_delay_p95_seconds: float | None = None
    ingest_delay_p50_over_seconds: float | None = None
    ingest_delay_p95_over_seconds: float | None = None


def metrics_url(settings: Settings) -> str | None:
    if not settings.ingest_metrics_port:
        return None
    host = settings.ingest_metrics_host
    host = "127.0.0.1" if host in {"", "0.0.0.0"} else host  # noqa: S104 - listening on all
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.ingest_metrics_port}/metrics"


def scrape(settings: Settings, timeout: float = SCRAPE_TIMEOUT_S) -> IngestMetrics:
    url = metrics_url(settings)
    if url is None:
        return IngestMetrics(
            url=None,
            reachable=False,
            error="turned off (FIELDTRACK_INGEST_METRICS_PORT=0)",
        )
    try:
        response = httpx.get(url, timeout=timeout)
        response.raise_for_status()
        return parse(response.text, url)
    except (httpx.HTTPError, ValueError) as exc:
        return IngestMetrics(url=url, reachable=False, error=str(exc) or type(exc).__name__)


def parse(text: str, url: str | None = None) -> IngestMetrics:
    """The ingest metrics in a Prometheus text exposition (ValueError if it is not one)."""
    found = IngestMetrics(url=url, reachable=True, error=None)
    histograms: dict[str, list[tuple[float, float]]] = defaultdict(list)
    plain: dict[str, float] = {}
    by_label: dict[str, dict[str, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(PREFIX):
                continue
            name = sample.name.removeprefix(PREFIX)
            if name.endswith("_bucket"):
                histograms[name.removesuffix("_bucket")].append(
                    (float(sample.labels["le"]), sample.value)
                )
            elif sample.labels.get("kind") or sample.labels.get("reason"):
                label = sample.labels.get("kind") or sample.labels["reason"]
                by_label[name][label] = sample.value
            else:
                plain[name] = sample.value
    alive = plain.get("writer_alive")
    found.writer_alive = None if alive is None else alive == 1
    found.messages = plain.get("messages_total")
    found.db_failures = plain.get("db_failures_total")
    found.queue_depth = plain.get("queue_depth")
    found.status_cleared = plain.get("status_cleared_total")
    found.duplicates = by_label.get("duplicates_total", {})
    found.rows = by_label.get("rows_total", {})
    found.quarantined = {k: v for k, v in by_label.get("quarantined_total", {}).items() if v}
    found.commit_lag_count = plain.get("publish_to_commit_seconds_count")
    commit = histograms.get("publish_to_commit_seconds", [])
    found.commit_lag_p50_seconds, found.commit_lag_p50_over_seconds = estimate(0.5, commit)
    found.commit_lag_p95_seconds, found.commit_lag_p95_over_seconds = estimate(0.95, commit)
    found.ingest_delay_count = plain.get("receive_to_commit_seconds_count")
    delay = histograms.get("receive_to_commit_seconds", [])
    found.ingest_delay_p50_seconds, found.ingest_delay_p50_over_seconds = estimate(0.5, delay)
    found.ingest_delay_p95_seconds, found.ingest_delay_p95_over_seconds = estimate(0.95, delay)
    return found


def estimate(q: float, buckets: list[tuple[float, float]]) -> tuple[float | None, float | None]:
    """(estimate, None), or (None, largest finite bound) when the quantile lies beyond it: a
    quantile in the +Inf bucket has no estimate, only a floor (Prometheus would print the
    bound itself, which reads as a measured value). (None, None) when nothing was observed."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None, None
    finite = [(bound, count) for bound, count in ordered if not math.isinf(bound)]
    if finite and finite[-1][1] < q * ordered[-1][1]:
        return None, finite[-1][0]
    return histogram_quantile(q, buckets), None


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' estimate from cumulative buckets (upper bound, count): linear within the
    bucket the rank falls in; the largest finite bound if it falls in +Inf; None if empty."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower
