"""Query latency of the analytics and dashboard endpoints at 10 and 50 million usage events.

`python -m bench.queries [OUT_DIR]` (or `run_query_bench(out_dir)`) uses the local services
named by the environment (`FIELDTRACK_STATE_DIR`, default `.state/bench`; ports
`FIELDTRACK_LOCAL_PG_PORT` / `_MQTT_PORT`), starts them if needed, generates or reuses each
dataset (bench/dataset.py), serves the real API with uvicorn in this process on a free port
and measures, per endpoint and window (7, 30, 90 days ending 37 minutes into the dataset's
last day, so windows have partial-day edges like the default "last 7 days"), the server
time (`Server-Timing` header) and the client wall time of ~30 requests after a warm-up.

References measured in the same run, to read the figures as ratios: `GET /health` (HTTP and
framework overhead) and, for each window at the largest size, the portfolio's usage query
over the hourly rollup the analytics read before migration 0007, run directly in PostgreSQL.
Writes `OUT_DIR/queries.json` and returns the same dict.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Collection, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from pydantic import SecretStr

from bench import PROJECT_ROOT
from bench.dataset import Dataset, ensure_dataset
from services.accounts.roles import Role
from services.accounts.store import TokenCreate, create_token
from services.api.background import serve_in_thread
from services.core.settings import Settings, get_settings
from services.infra.local import LocalServices

SIZES = (10_000_000, 50_000_000)
WINDOWS = (7, 30, 90)
REQUESTS = 30
WARMUP = 3
REFERENCE_RUNS = 1  # the old query takes seconds: one run per window is enough
TARGET_MS = 300.0
EDGE = timedelta(minutes=37)  # the windows end this far into the dataset's last day

# The portfolio's usage measures as they were computed before migration 0007 (per project,
# from the hourly rollup); run once per window for every project, directly in PostgreSQL.
HOURLY_REFERENCE = """
WITH per_device AS (
    SELECT project_id, feature_key, device_id, sum(events) AS events,
           count(DISTINCT date_trunc('day', hour, 'UTC')) AS use_days
    FROM usage_hourly WHERE hour >= %(since)s AND hour < %(until)s
    GROUP BY 1, 2, 3
)
SELECT project_id, feature_key, count(*), sum(events), sum(use_days) FROM per_device GROUP BY 1, 2
"""
BIGGEST_PROJECT = """
SELECT d.project_id, count(*) FROM devices d GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1
"""
TOP_FEATURE = """
SELECT feature_key FROM feature_daily WHERE project_id = %s GROUP BY 1 ORDER BY sum(events) DESC
LIMIT 1
"""

Report = Callable[[str], None]


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "p50": round(statistics.median(ordered), 1),
        "p95": round(p95, 1),
        "min": round(ordered[0], 1),
        "max": round(ordered[-1], 1),
    }


def _token(settings: Settings) -> str:
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        body = TokenCreate(name="bench", role=Role.PM, expires_in_days=1)
        return create_token(conn, body).token


def _timed(client: httpx.Client, path: str, params: dict[str, str]) -> tuple[float, float]:
    started = time.perf_counter()
    response = client.get(path, params=params)
    wall = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    timing = response.headers.get("server-timing", "")
    server = float(timing.split("dur=")[1]) if "dur=" in timing else float("nan")
    return server, wall


def _measure(client: httpx.Client, path: str, params: dict[str, str]) -> dict[str, Any]:
    for _ in range(WARMUP):
        _timed(client, path, params)
    samples = [_timed(client, path, params) for _ in range(REQUESTS)]
    return {
        "server_ms": _percentiles([s for s, _ in samples]),
        "client_ms": _percentiles([w for _, w in samples]),
        "requests": len(samples),
    }


def bench_size(
    dataset: Dataset,
    settings: Settings,
    report: Report,
    *,
    reference: bool = True,
    windows: Sequence[int] = WINDOWS,
    only: Collection[str] | None = None,
) -> dict[str, Any]:
    """The endpoints (*only* these, if given) over each window of *dataset*, and with
    *reference* the hourly reference query."""
    with psycopg.connect(dataset.url) as conn:
        row = conn.execute(BIGGEST_PROJECT).fetchone()
        assert row is not None  # noqa: S101 - the dataset has devices
        project, devices = int(row[0]), int(row[1])
        feature_row = conn.execute(TOP_FEATURE, (project,)).fetchone()
        feature = str(feature_row[0]) if feature_row else "remote_unlock"
    until = dataset.end - timedelta(days=1) + EDGE
    endpoints: dict[str, str] = {
        "project_analytics": f"/projects/{project}/analytics",
        "portfolio": "/portfolio",
        "firmware": f"/projects/{project}/firmware",
        "usage": f"/projects/{project}/usage",
        "adoption": f"/projects/{project}/adoption",
        "impact": "/portfolio/impact",
        "dashboard": f"/dashboards/projects/{project}",
    }
    if only is not None:
        endpoints = {name: path for name, path in endpoints.items() if name in only}
    # the routes that take the project's busiest feature
    by_feature = {"firmware", "impact"}
    result: dict[str, Any] = {
        "dataset": {
            "database": dataset.database,
            "usage_events": dataset.usage_rows,
            "metric_samples": dataset.metric_rows,
            "days": (dataset.end - dataset.start).days,
            "reused": dataset.reused,
            "generate_s": round(dataset.generate_s, 1),
            "rollup_rebuild_s": round(dataset.rebuild_s, 1),
            "size_gib": round(dataset.size_bytes / 2**30, 2),
        },
        "project": {"id": project, "devices": devices, "feature": feature},
        "endpoints": {name: {} for name in endpoints},
        "reference": {"health": {}, "hourly_usage_sql_ms": {}},
    }
    with serve_in_thread(settings) as base, httpx.Client(base_url=base, timeout=120) as client:
        # The API migrated the dataset's database on start; a PM's token reads every endpoint.
        client.headers["Authorization"] = f"Bearer {_token(settings)}"
        result["reference"]["health"] = _measure(client, "/health", {})
        for days in windows:
            window = {
                "since": (until - timedelta(days=days)).isoformat(),
                "until": until.isoformat(),
            }
            for name, path in endpoints.items():
                params = {**window, "feature": feature} if name in by_feature else window
                measured = _measure(client, path, params)
                result["endpoints"][name][str(days)] = measured
                server = measured["server_ms"]
                report(
                    f"  {dataset.target // 1_000_000}M {name:17} {days:2}d: server p50 "
                    f"{server['p50']:7.1f} ms  p95 {server['p95']:7.1f} ms"
                )
    if not reference:
        return result
    with psycopg.connect(dataset.url) as conn:
        for days in WINDOWS:
            span = {"since": until - timedelta(days=days), "until": until}
            runs = []
            for _ in range(REFERENCE_RUNS):
                started = time.perf_counter()
                conn.execute(HOURLY_REFERENCE, span).fetchall()
                runs.append((time.perf_counter() - started) * 1000)
            result["reference"]["hourly_usage_sql_ms"][str(days)] = _percentiles(runs)
            report(
                f"  {dataset.target // 1_000_000}M hourly reference {days:2}d: {min(runs):.0f} ms"
            )
    return result


def run_query_bench(
    out_dir: Path, sizes: Sequence[int] = SIZES, report: Report = print
) -> dict[str, Any]:
    """Generate or reuse each dataset, measure the endpoints, write out_dir/queries.json."""
    os.environ.setdefault("FIELDTRACK_STATE_DIR", str(PROJECT_ROOT / ".state" / "bench"))
    services = LocalServices.from_env()
    if not services.postgres.running():
        services.up(lambda message: report(f"[infra] {message}"))
    get_settings.cache_clear()
    base = get_settings()
    results: dict[str, Any] = {
        "target_ms": TARGET_MS,
        "windows_days": list(WINDOWS),
        "requests": REQUESTS,
        "warmup": WARMUP,
        "window_end": f"{EDGE // timedelta(minutes=1)} minutes into the dataset's last day",
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "sizes": {},
    }
    for size in sizes:
        began = time.monotonic()
        dataset = ensure_dataset(services, size, report)
        prepared = time.monotonic() - began
        settings = base.model_copy(update={"database_url": SecretStr(dataset.url)})
        # the old query reads the hourly rollup, about as large at every size: it takes
        # half a minute a size, so it runs at the largest one only
        measured = bench_size(dataset, settings, report, reference=size == max(sizes))
        measured["dataset"]["prepare_s_this_run"] = round(prepared, 1)
        measured["bench_s"] = round(time.monotonic() - began, 1)
        results["sizes"][str(size)] = measured
    results["load_average_after"] = os.getloadavg()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "queries.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def main(argv: Sequence[str] = tuple(sys.argv[1:])) -> None:
    out = Path(argv[0]) if argv else PROJECT_ROOT / ".state" / "bench" / "results"
    sizes = tuple(int(s) for s in argv[1:]) or SIZES
    run_query_bench(out, sizes)
    print(f"written {out / 'queries.json'}")


if __name__ == "__main__":
    main()
