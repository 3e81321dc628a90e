"""Flat exports of analytics: one row per project and feature, for spreadsheets."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from services.analytics.portfolio import ProjectAnalytics

COLUMNS = (
    "customer", "tier", "industry", "lifecycle_stage", "project", "feature", "delivery_status",
    "devices_reporting", "devices_using", "adoption", "frequency", "stickiness", "trend",
    "events", "last_used", "days_to_first_use", "completeness", "confidence", "user_value",
    "business_value", "recommendation", "explanation", "since", "until",
)  # fmt: skip


def analytics_csv(projects: Iterable[ProjectAnalytics]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for p in projects:
        for f in [*p.features, *p.undelivered_usage]:
            writer.writerow((
                p.project.customer_name, p.project.tier, p.project.industry,
                p.project.lifecycle_stage, p.project.project_name, f.feature_key,
                f.delivery_status or "not delivered", p.coverage.devices_reporting,
                f.devices_using, f"{f.adoption:.4f}", f"{f.frequency:.4f}",
                f"{f.stickiness:.4f}", "" if f.trend is None else f"{f.trend:.4f}", f.events,
                f.last_used.isoformat() if f.last_used else "",
                "" if f.days_to_first_use is None else f"{f.days_to_first_use:.1f}",
                "" if p.coverage.completeness is None else f"{p.coverage.completeness:.4f}",
                p.confidence.value, "" if f.user_value is None else f.user_value,
                "" if f.business_value is None else f.business_value,
                f.recommendation.value if f.recommendation else "", f.explanation or "",
                p.since.isoformat(), p.until.isoformat(),
            ))  # fmt: skip
    return out.getvalue()
