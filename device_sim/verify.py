"""Compare a ground-truth file with what the database holds.

Windows are widened by 10 minutes each side: device clocks drift, so a message generated
just inside the window may carry a device time just outside it."""

from __future__ import annotations

from typing import Any

import psycopg

FEATURES = """
SELECT p.name, u.feature_key, sum(u.events)::bigint, count(DISTINCT u.device_id)::int,
       sum(u.readings)::bigint
FROM usage_hourly u JOIN projects p ON p.id = u.project_id
WHERE p.name = ANY(%s) AND u.hour >= time_bucket('1 hour', %s::timestamptz - interval '10 minutes')
  AND u.hour < %s::timestamptz + interval '10 minutes'
GROUP BY 1, 2
"""
MESSAGES = """
SELECT p.name, sum(h.messages)::bigint
FROM device_hourly h JOIN projects p ON p.id = h.project_id
WHERE p.name = ANY(%s) AND h.hour >= time_bucket('1 hour', %s::timestamptz - interval '10 minutes')
  AND h.hour < %s::timestamptz + interval '10 minutes'
GROUP BY 1
"""
METRICS = """
SELECT p.name, count(*)::bigint
FROM metric_samples m JOIN projects p ON p.id = m.project_id
WHERE p.name = ANY(%s) AND m.device_time >= %s::timestamptz - interval '10 minutes'
  AND m.device_time < %s::timestamptz + interval '10 minutes'
GROUP BY 1
"""
QUARANTINE = """
SELECT reason, count(*) FROM quarantine
WHERE received_at >= %s GROUP BY 1
"""


def mismatches(
    truth: dict[str, Any], conn: psycopg.Connection, *, quarantined_since: Any = None
) -> list[str]:
    """Every way the database differs from the truth file (empty when they agree exactly)."""
    projects = list(truth["projects"])
    window = (projects, truth["start"], truth["end"])
    problems: list[str] = []
    stored = {(p, f): (e, d, m) for p, f, e, d, m in conn.execute(FEATURES, window)}
    expected = {
        (p, f): (v["events"], v["devices_using"], v["messages"])
        for p, body in truth["projects"].items()
        for f, v in body.get("features", {}).items()
    }
    for key in sorted(set(stored) | set(expected)):
        want, got = expected.get(key, (0, 0, 0)), stored.get(key, (0, 0, 0))
        if tuple(want) != tuple(got):
            problems.append(
                f"{key[0]} / {key[1]}: expected events, devices, messages {want}, stored {got}"
            )
    messages: dict[str, int] = dict(conn.execute(MESSAGES, window).fetchall())
    metrics: dict[str, int] = dict(conn.execute(METRICS, window).fetchall())
    for project, body in truth["projects"].items():
        want = body.get("usage_messages", 0) + body.get("telemetry_messages", 0)
        if messages.get(project, 0) != want:
            problems.append(
                f"{project}: expected {want} messages, stored {messages.get(project, 0)}"
            )
        if metrics.get(project, 0) != body.get("metric_readings", 0):
            problems.append(
                f"{project}: expected {body.get('metric_readings', 0)} metric readings, "
                f"stored {metrics.get(project, 0)}"
            )
    if quarantined_since is not None:
        reasons: dict[str, int] = dict(conn.execute(QUARANTINE, (quarantined_since,)).fetchall())
        for reason, count in truth.get("injected", {}).items():
            if reason != "duplicate" and reasons.get(reason, 0) != count:
                problems.append(
                    f"quarantine {reason}: injected {count}, found {reasons.get(reason, 0)}"
                )
    return problems
