"""`make bench` in its smoke mode against the suite's services: the harness works end to end
(every part runs, every phase stores exactly what was published, the report is written)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bench import run as bench_run
from services.core.settings import Settings
from services.infra.local import LocalServices


@pytest.mark.slow
def test_quick_bench_measures_every_part_and_loses_nothing(
    local_services: LocalServices, base_settings: Settings, tmp_path: Path
) -> None:
    report = bench_run.run_bench(
        local_services,
        base_settings,
        parts=["ceilings", "ingest", "naive"],
        quick=True,
        out_dir=tmp_path,
        say=print,
    )

    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["meta"]["mode"] == "quick"
    markdown = (tmp_path / "report.md").read_text()
    assert "| measure | result | reference (same run) | ratio |" in markdown

    ceilings = report["ceilings"]
    for name in ("broker_qos1", "broker_qos0", "publisher"):
        assert ceilings[name]["msgs_per_s"] > 0, ceilings[name]
    assert ceilings["postgres_copy"]["rows"] == bench_run.QUICK.copy_rows
    assert ceilings["broker_qos1"]["received"] == ceilings["broker_qos1"]["messages"]

    phases = report["phases"]
    expected = {
        *(
            f"{kind}_{n}"
            for kind in (
                "single_live",
                "single_live_c",
                "single_backlog",
                "batched_live",
                "batched_live_c",
            )
            for n in (1, 2)
        ),
        "latency_max",
        "latency",
        "naive",
        "naive_c",
    }
    assert expected <= set(phases)
    for name, phase in phases.items():
        assert phase["failed"] == 0, (name, phase)
        if name.startswith("naive"):  # rows committed within a window, not all
            assert phase["stored_messages"] > 0, phase
            continue
        # nothing lost, nothing twice: every acknowledged message stored once, with all rows
        assert phase["acked"] == phase["messages"] == phase["stored_messages"], (name, phase)
        assert phase["stored_rows"] == phase["messages"] * phase["readings"], (name, phase)
        assert phase["msgs_per_s"] > 0 and phase["cpu_percent"] > 0, (name, phase)
    latency = phases["latency"]["extra"]
    assert 0 < latency["p50_publish_to_commit_s"] <= latency["p99_publish_to_commit_s"]
    # paced at half the maximum rate measured just before it
    assert latency["target_rate"] == round(phases["latency_max"]["msgs_per_s"] / 2)

    # every ingest target measured; the query target only when the queries part runs
    measured = [t["pass"] is not None for t in report["targets"]]
    assert measured == [True] * 4 + [False], report["targets"]
    if any(t["pass"] is False for t in report["targets"]):
        assert "writer thread" in report["profile"]["summary"]
        assert report["profile"]["writer_shares"]


def test_query_part_says_when_the_query_benchmark_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # as bench.run sees it
    assert bench_run._queries(tmp_path, bench_run.QUICK) == {
        "status": "query benchmark not present"
    }
