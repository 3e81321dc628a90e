"""docs/performance.md is rendered from a bench report: figures and targets, never a date or a
time of day (the history of runs is not the docs' business)."""

from __future__ import annotations

import re

from bench.report import performance_doc, targets, worst_query_p95


def _report() -> dict[str, object]:
    def timed(p95: float) -> dict[str, object]:
        return {"server_ms": {"p50": p95 / 2, "p95": p95}}

    report: dict[str, object] = {
        "meta": {
            "date": "2026-12-02",
            "started_at": "2026-12-02T04:41:53+00:00",
            "machine": "2 cores, 24 GiB RAM, Linux-6",
            "mode": "full",
        },
        "ceilings": {},
        "phases": {},
        "queries": {
            "status": "ran",
            "requests": 30,
            "window_end": "0:37:00 into the last day",
            "windows_days": [7, 30],
            "sizes": {
                "10000000": {
                    "dataset": {"days": 90},
                    "endpoints": {"portfolio": {"7": timed(90), "30": timed(120)}},
                },
                "50000000": {
                    "dataset": {"days": 90},
                    "endpoints": {"portfolio": {"7": timed(100), "30": timed(310)}},
                },
            },
        },
    }
    report["targets"] = targets(report)
    return report


def test_the_worst_query_is_the_largest_datasets_slowest() -> None:
    assert worst_query_p95(_report()) == 310


def test_the_doc_has_the_tables_and_no_date_or_time() -> None:
    doc = performance_doc(_report())
    assert "## Analytics queries" in doc and "| portfolio | 45 / 90 | 60 / 120 | 50 / 100 |" in doc
    assert (
        "| query p95 < 300 ms at the largest dataset, every endpoint and window | 310 ms | FAIL |"
        in doc
    )
    assert not re.search(r"\d{4}-\d\d-\d\d|\d\d:\d\d:\d\d", doc)
