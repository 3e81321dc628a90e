"""Flat exports of analytics: one row per project and feature, for spreadsheets.

One column table serves both audiences: the customer's export leaves out every column marked
internal (business value, verdicts, their explanations, tier and lifecycle stage) and every
feature that is not delivered (undelivered use, planned and cut deliveries).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime

from services.analytics.measures import FeatureMeasures
from services.analytics.portfolio import FeatureRow, ProjectAnalytics

Value = str | int | float | bool | date | datetime | None


@dataclass(frozen=True)
class Column:
    name: str
    value: Callable[[ProjectAnalytics, FeatureMeasures], Value]
    internal: bool = False


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _assessed(f: FeatureMeasures) -> FeatureRow | None:
    return f if isinstance(f, FeatureRow) else None


def _verdict(f: FeatureMeasures) -> str:
    row = _assessed(f)
    return row.recommendation.value if row and row.recommendation else ""


def _business_value(f: FeatureMeasures) -> str:
    row = _assessed(f)
    return _share(row.business_value if row else None)


def _explanation(f: FeatureMeasures) -> str:
    row = _assessed(f)
    return (row.explanation if row else None) or ""


def _peer_median(f: FeatureMeasures) -> str:
    row = _assessed(f)
    return _share(row.peers.median if row and row.peers else None)


COLUMNS = (
    Column("customer", lambda p, f: p.project.customer_name),
    Column("tier", lambda p, f: p.project.tier, internal=True),
    Column("industry", lambda p, f: p.project.industry),
    Column("lifecycle_stage", lambda p, f: p.project.lifecycle_stage, internal=True),
    Column("project", lambda p, f: p.project.project_name),
    Column("feature", lambda p, f: f.feature_key),
    Column("kind", lambda p, f: f.kind.value),
    Column("delivery_status", lambda p, f: f.delivery_status or "not delivered"),
    Column("live_since", lambda p, f: f.live_since or ""),
    Column("measured_days", lambda p, f: f"{f.measured_days:.2f}"),
    Column("devices_reporting", lambda p, f: f.devices_reporting),
    Column("devices_using", lambda p, f: f.devices_using),
    Column("adoption", lambda p, f: _share(f.adoption)),
    Column("adoption_low", lambda p, f: _share(f.adoption_low)),
    Column("adoption_high", lambda p, f: _share(f.adoption_high)),
    Column("frequency", lambda p, f: _share(f.frequency)),
    Column("stickiness", lambda p, f: _share(f.stickiness)),
    Column("enabled_share", lambda p, f: _share(f.enabled_share)),
    Column("trend", lambda p, f: _share(f.trend)),
    Column("events", lambda p, f: f.events),
    Column("last_used", lambda p, f: f.last_used.isoformat() if f.last_used else ""),
    Column(
        "days_to_first_use",
        lambda p, f: "" if f.days_to_first_use is None else f"{f.days_to_first_use:.1f}",
    ),
    Column("completeness", lambda p, f: _share(p.coverage.completeness)),
    Column("confidence", lambda p, f: f.confidence.value),
    Column("business_value", lambda p, f: _business_value(f), internal=True),
    Column("recommendation", lambda p, f: _verdict(f), internal=True),
    Column("explanation", lambda p, f: _explanation(f), internal=True),
    Column("peer_median", lambda p, f: _peer_median(f), internal=True),
    Column("since", lambda p, f: p.since.isoformat()),
    Column("until", lambda p, f: p.until.isoformat()),
)


def analytics_csv(projects: Iterable[ProjectAnalytics], *, internal: bool) -> str:
    """The CSV for staff (*internal*) or for the customer's own viewers."""
    columns = [c for c in COLUMNS if internal or not c.internal]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(c.name for c in columns)
    for p in projects:
        rows: list[FeatureMeasures] = [*p.features, *p.undelivered_usage]
        if not internal:  # the customer's use of what was delivered to them, nothing else
            rows = [f for f in p.features if f.delivery_status == "delivered"]
        for f in rows:
            writer.writerow(c.value(p, f) for c in columns)
    return out.getvalue()
