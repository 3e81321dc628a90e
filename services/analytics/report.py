"""A customer's report: its delivered features beside their measured use.

One self-contained HTML page a PM can print or mail (dashboards/templates/report.html: inline
CSS, nothing fetched from elsewhere), rendered from the analytics' own models. The dashboard
page (/dashboards/customers/{id}/report) renders it from the analytics it computes;
`fieldtrack report` (services/client/report.py) reads the API's answers into the same models
and renders through here too, and prints its terminal table with the same wording helpers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from services.analytics.measures import FeatureMeasures
from services.analytics.portfolio import CustomerProjectAnalytics, FeatureRow, ProjectAnalytics
from services.analytics.recommend import Recommendation, RuleText
from services.registry.models import Customer, CustomerView

AnyProjectAnalytics = ProjectAnalytics | CustomerProjectAnalytics


@dataclass(frozen=True)
class CustomerReport:
    customer: Customer | CustomerView
    since: datetime
    until: datetime
    window_days: int
    generated_at: datetime
    # ProjectAnalytics for the internal version, CustomerProjectAnalytics for the customer's
    projects: Sequence[AnyProjectAnalytics]
    # the solution company's version: tier and stage, business value, verdicts and the rules
    internal: bool = False
    rules: Sequence[RuleText] = ()

    @property
    def labels(self) -> dict[Recommendation, str]:
        """Each verdict's label, as the rule table words it."""
        return {r.recommendation: r.label for r in self.rules}


# --- wording, shared by the page and the terminal table -----------------------------------


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def points(value: float | None) -> str:
    """A change of a share, in percentage points."""
    return "–" if value is None else f"{value * 100:+.0f} pts"


def interval(f: FeatureMeasures) -> str:
    """Adoption's 95 % interval, as the page and the report print it."""
    return f"{pct(f.adoption_low)}–{pct(f.adoption_high)}"


def when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def coverage_line(p: AnyProjectAnalytics) -> str:
    c = p.coverage
    complete = "–" if c.completeness is None else f"{c.completeness:.0%}"
    measured = f"measured over {c.measured_days:.0f} days"
    if p.live_since and c.measured_since > p.since:
        measured += f" (live since {p.live_since})"
    return (
        f"{c.devices_reporting} of {p.project.devices_total} devices reporting "
        f"({pct(c.reporting_share)}), {c.devices_silent} silent; {complete} of expected "
        f"messages received; {measured}"
    )


def verdict(f: FeatureMeasures) -> FeatureRow | None:
    """The feature with its business value and verdict, when the report carries them (the
    internal version, delivered features only)."""
    return f if isinstance(f, FeatureRow) else None


def explanation(f: FeatureMeasures) -> str:
    row = verdict(f)
    if row is not None and row.explanation:
        return row.explanation
    if f.delivery_status is None:
        return "used here but never delivered here: demand, or a misconfiguration"
    return f"{f.delivery_status}, not delivered: only delivered features are assessed"


def feature_rows(p: AnyProjectAnalytics) -> list[FeatureMeasures]:
    """The delivered features, then (internal version) what is used without a delivery."""
    undelivered = p.undelivered_usage if isinstance(p, ProjectAnalytics) else []
    return [*p.features, *undelivered]


def customer_line(c: Customer | CustomerView, internal: bool) -> str:
    """Tier and lifecycle stage are the solution company's view of a customer: internal."""
    if internal and isinstance(c, Customer):
        return f"  {c.tier} tier · {c.industry} · {c.lifecycle_stage}"
    return f"  {c.industry}"


# --- the page -------------------------------------------------------------------------------


def render_html(report: CustomerReport) -> str:
    from jinja2 import (  # noqa: PLC0415 - lazy: `fieldtrack --help` stays fast
        Environment,
        StrictUndefined,
    )

    from services.core.paths import template_loader  # noqa: PLC0415

    env = Environment(
        loader=template_loader(),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    labels = report.labels
    env.filters.update(pct=pct, points=points, when=when, interval=interval)
    summary: dict[Recommendation, int] = dict.fromkeys(labels, 0)
    for p in report.projects:
        for f in p.features:
            row = verdict(f)
            if row is not None and row.recommendation in summary:
                summary[row.recommendation] += 1
    return env.get_template("report.html").render(
        report=report,
        customer=report.customer,
        projects=report.projects,
        internal=report.internal,
        summary=summary,
        labels=labels,
        rules=report.rules,
        coverage_line=coverage_line,
        feature_rows=feature_rows,
        explanation=explanation,
        verdict=verdict,
    )
