"""The Jinja2 templates under dashboards/templates (package data), shared by every page."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.templating import Jinja2Templates
from jinja2 import Environment, select_autoescape

from services.analytics.recommend import LABELS
from services.core.paths import template_loader

templates = Jinja2Templates(
    env=Environment(loader=template_loader(), autoescape=select_autoescape())
)


def utc(moment: datetime | None) -> str:
    """A timestamp as the pages show it (dashboards/static/ops.js writes the same)."""
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    """A length of time in its two largest units: "3 d 4 h", "12 min 5 s" (as ops.js)."""
    if seconds is None:
        return "—"
    left = max(int(seconds), 0)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size} {unit}")
            left %= size
    return " ".join(parts[:2])


def rate(value: float | None) -> str:
    """A rate with the decimals its size needs (as ops.js)."""
    if value is None:
        return "—"
    return f"{value:.{1 if value >= 10 else 2 if value >= 1 else 4}f}"


def estimate(seconds: float | None, over: float | None = None) -> str:
    """A histogram quantile as the ingest page shows it (as ingest.js): its estimate, "over
    N" when it lies beyond the largest bucket (no estimate there), or "not measured"."""
    if seconds is not None:
        return f"{seconds:.2f}"
    return f"over {over:g}" if over is not None else "not measured"


templates.env.filters["utc"] = utc
templates.env.filters["estimate"] = estimate
templates.env.filters["rate"] = rate
templates.env.filters["duration"] = duration
# Each verdict's name, from the rule table's one definition (services/analytics/recommend.py).
templates.env.globals["verdict_labels"] = {key.value: label for key, label in LABELS.items()}
