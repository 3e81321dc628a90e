"""Verdicts on many portfolios generated at random with known truth, built like real ones:
fleets from tiny pilots to hundreds of devices, projects just gone live, dead fleets, poor
connectivity, alarm features that rightly never fire, and true adoption from nil to all.

Each device of a project either works (reports) or is dead; a working device uses a feature
with the feature's true adoption, on days at its own rate, and has it switched on with the
feature's true enabled share. The verdict is `judge` on what such a fleet would be measured
to do. Some claims hold for every feature; the statistical ones are stated as error rates,
over fixed seeds so the test is repeatable.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta

import pytest

from services.analytics.recommend import (
    AnalyticsThresholds,
    Business,
    Evidence,
    Recommendation,
    Verdict,
    judge,
)
from services.registry.enums import FeatureKind

T = AnalyticsThresholds()
END = date(2026, 12, 1)
WINDOW_DAYS = 30
PORTFOLIOS = 60
SEEDS = range(PORTFOLIOS)


@dataclass(frozen=True)
class Truth:
    """What is really so of one delivered feature in one project."""

    kind: FeatureKind
    adoption: float  # share of working devices that use it
    enabled: float  # share of devices with it switched on
    provisioned: int
    dead_share: float
    days_live: int
    completeness: float
    reports_settings: bool
    business: Business


@dataclass(frozen=True)
class Judged:
    truth: Truth
    evidence: Evidence
    verdict: Verdict


def _adoption(rng: random.Random) -> float:
    """True adoption as real portfolios spread it: many unused features, a long middle."""
    band = rng.choices(
        [(0.0, 0.0), (0.005, 0.08), (0.1, 0.3), (0.3, 0.7), (0.7, 1.0)],
        weights=[20, 15, 15, 25, 25],
    )[0]
    return rng.uniform(*band)


def _binomial(rng: random.Random, n: int, p: float) -> int:
    return sum(rng.random() < p for _ in range(n))


def _project(rng: random.Random) -> list[Truth]:
    provisioned = int(math.exp(rng.uniform(math.log(3), math.log(800))))  # pilots to fleets
    dead = rng.uniform(0.5, 0.95) if rng.random() < 0.15 else rng.uniform(0, 0.1)
    live = rng.randint(0, 20) if rng.random() < 0.2 else rng.randint(21, 400)
    complete = rng.uniform(0.3, 0.7) if rng.random() < 0.1 else rng.uniform(0.9, 1.0)
    settings = rng.random() < 0.6
    out = []
    for _ in range(rng.randint(1, 8)):
        standing = rng.random() < 0.25
        out.append(
            Truth(
                kind=FeatureKind.STANDING if standing else FeatureKind.INTERACTIVE,
                # an alarm rightly fires rarely, if ever
                adoption=rng.choice([0.0, 0.0, 0.02]) if standing else _adoption(rng),
                enabled=rng.choice([0.0, rng.uniform(0.5, 1.0), 1.0]) if standing else 1.0,
                provisioned=provisioned,
                dead_share=dead,
                # some features are delivered after go-live
                days_live=live if rng.random() < 0.8 else rng.randint(0, live),
                completeness=complete,
                reports_settings=settings,
                business=Business(
                    business_score=rng.choice([None, 1, 2, 3, 4, 5]),
                    contract_line_value=rng.choice([None, rng.uniform(1e3, 2e5)]),
                    contract_value=rng.choice([None, rng.uniform(5e4, 1e6)]),
                    strategic=rng.random() < 0.2,
                ),
            )
        )
    return out


def _measure(rng: random.Random, truth: Truth) -> Evidence:
    """What the rollups would say of such a fleet over the window."""
    working = _binomial(rng, truth.provisioned, 1 - truth.dead_share)
    days = max(0, min(WINDOW_DAYS, truth.days_live))
    users = _binomial(rng, working, truth.adoption) if days else 0
    use_days = sum(_binomial(rng, days, rng.uniform(0.03, 1.0)) for _ in range(users))
    enabled_reporting = working if truth.reports_settings else 0
    return Evidence(
        kind=truth.kind,
        devices_reporting=working,
        devices_using=users,
        stickiness=use_days / (working * days) if working and days else 0.0,
        measured_days=days,
        completeness=truth.completeness,
        live_since=END - timedelta(days=truth.days_live),
        days_live=truth.days_live,
        business=truth.business,
        enabled_reporting=enabled_reporting,
        devices_enabled=_binomial(rng, enabled_reporting, truth.enabled),
    )


@pytest.fixture(scope="module")
def judged() -> list[Judged]:
    out = []
    for seed in SEEDS:
        rng = random.Random(seed)
        for _ in range(rng.randint(5, 40)):
            for truth in _project(rng):
                evidence = _measure(rng, truth)
                out.append(Judged(truth, evidence, judge(evidence, T)))
    return out


def _is(j: Judged, rec: Recommendation) -> bool:
    return j.verdict.recommendation is rec


CUT = Recommendation.CUT_CANDIDATE


def test_the_portfolios_hold_every_awkward_case(judged: list[Judged]) -> None:
    """So the claims below are tested on something: thousands of features, every case."""
    cases: Counter[str] = Counter()
    for j in judged:
        e = j.evidence
        cases["features"] += 1
        cases["tiny pilot"] += e.devices_reporting < T.medium_confidence_devices
        cases["new"] += e.days_live is not None and e.days_live < T.maturity_days
        cases["dead fleet"] += j.truth.dead_share >= 0.5
        cases["unused, many devices"] += j.truth.adoption == 0 and e.devices_reporting >= 50
        cases["standing, never fired"] += (
            j.truth.kind is FeatureKind.STANDING and not e.devices_using
        )
        cases["poor connectivity"] += j.truth.completeness < T.medium_confidence_completeness
        cases["half used"] += 0.4 <= j.truth.adoption <= 0.6
        cases["cut"] += _is(j, CUT)
    assert cases["features"] > 5000, cases
    assert all(n >= 50 for n in cases.values()), cases


def test_no_feature_used_by_more_than_the_cut_line_is_ever_cut(judged: list[Judged]) -> None:
    for j in judged:
        if _is(j, CUT):
            assert j.evidence.devices_using / j.evidence.devices_reporting < T.cut_adoption
            assert j.verdict.adoption.high < T.cut_adoption


def test_no_cut_before_maturity_on_too_few_devices_or_on_poor_data(judged: list[Judged]) -> None:
    for j in judged:
        e = j.evidence
        if (
            e.days_live is None
            or e.days_live < T.maturity_days
            or e.measured_days < T.cut_min_days
            or e.devices_reporting < T.medium_confidence_devices
            or (e.completeness or 0) < T.medium_confidence_completeness
        ):
            assert not _is(j, CUT), j


def test_a_standing_feature_enabled_on_half_its_devices_is_never_cut(judged: list[Judged]) -> None:
    checked = 0
    for j in judged:
        e = j.evidence
        if e.kind is FeatureKind.STANDING and e.enabled_reporting and j.truth.enabled >= 0.5:
            assert not _is(j, CUT), j
            checked += 1
    assert checked > 100


def test_false_cuts_stay_within_the_intervals_promise(judged: list[Judged]) -> None:
    """A feature truly used by the cut line's share or more is cut only when its interval
    misses the truth, which 95 % intervals do at most 2.5 % of the time on that side; the
    further above the line, the rarer. Here: never above twice the line."""
    at_least_line = [j for j in judged if j.truth.adoption >= T.cut_adoption]
    false_cuts = [j for j in at_least_line if _is(j, CUT)]
    assert len(false_cuts) / len(at_least_line) < 0.01, len(false_cuts)
    assert not [j for j in false_cuts if j.truth.adoption >= 2 * T.cut_adoption]
    # standing features judged by their settings: switched on truly by the line's share
    standing = [
        j
        for j in judged
        if j.truth.kind is FeatureKind.STANDING
        and j.truth.enabled >= T.cut_adoption
        and j.truth.reports_settings
    ]
    assert not [j for j in standing if _is(j, CUT)]


def test_an_unused_feature_on_a_healthy_fleet_is_always_found(judged: list[Judged]) -> None:
    """The other side: with nothing to hide behind, no user among 50 or more working devices
    over a mature, complete month is a cut candidate (interactive features)."""
    found = 0
    for j in judged:
        e = j.evidence
        if (
            e.kind is FeatureKind.INTERACTIVE
            and e.devices_using == 0
            and e.devices_reporting >= 50
            and e.days_live is not None
            and e.days_live >= T.maturity_days
            and e.measured_days >= T.cut_min_days
            and (e.completeness or 0) >= T.medium_confidence_completeness
        ):
            assert _is(j, CUT), j
            found += 1
    assert found > 50


def test_heavily_used_valuable_features_are_iterate_or_invest(judged: list[Judged]) -> None:
    heavy = [
        j
        for j in judged
        if j.truth.adoption >= 0.7
        and j.verdict.business_high
        and j.evidence.devices_reporting >= T.medium_confidence_devices
        and (j.evidence.days_live or 0) >= T.maturity_days
        and j.evidence.measured_days >= T.medium_confidence_days
        and (j.evidence.completeness or 0) >= T.medium_confidence_completeness
    ]
    assert len(heavy) > 100
    assert all(_is(j, Recommendation.ITERATE_INVEST) for j in heavy)


def test_the_interval_covers_the_true_adoption_as_promised(judged: list[Judged]) -> None:
    measured = [j for j in judged if j.evidence.devices_reporting and j.evidence.measured_days]
    covered = sum(
        j.verdict.adoption.low <= j.truth.adoption <= j.verdict.adoption.high for j in measured
    )
    assert covered / len(measured) >= 0.93, covered / len(measured)


def test_a_verdict_never_moves_when_the_rest_of_the_portfolio_changes(
    judged: list[Judged],
) -> None:
    """Judged alone, in its own portfolio or in another: the same verdict."""
    alone = [judge(j.evidence, T) for j in judged[:500]]
    assert alone == [j.verdict for j in judged[:500]]
