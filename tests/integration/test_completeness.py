"""Data completeness from sequence numbers, end to end: history in, analytics out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
from fastapi.testclient import TestClient

from services.core.topics import MessageKind
from services.ingest.history import HistoryImporter
from services.registry import upserts
from tests.integration.conftest import Project


def _telemetry(seq: int, at: datetime) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "seq": seq,
            "ts": at.isoformat(),
            "metrics": [{"name": "battery", "value": 90.0, "unit": "%"}],
        }
    ).encode()


def test_lost_messages_lower_completeness_and_reboots_do_not(
    api: TestClient, conn: psycopg.Connection, project: Project, unique: str
) -> None:
    lossy, rebooting = f"lossy-{unique}", f"reboot-{unique}"
    upserts.provision_devices(conn, None, project.id, [(lossy, "m", "1"), (rebooting, "m", "1")])
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    importer = HistoryImporter(conn)
    dropped = set(range(3, 101, 5))  # 20 of 100 never arrive; each is followed by a later one
    for n in range(1, 101):
        if n not in dropped:
            importer.add(
                lossy, MessageKind.TELEMETRY, _telemetry(n, start + timedelta(minutes=10 * n))
            )
    for n in range(1, 101):  # a reboot after 50 restarts the numbering at 1
        seq = n if n <= 50 else n - 50
        importer.add(
            rebooting, MessageKind.TELEMETRY, _telemetry(seq, start + timedelta(minutes=10 * n))
        )
    report = importer.finish()
    assert report.metric_rows == 180

    missing: dict[str, int] = dict(
        conn.execute(
            """SELECT d.serial, sum(h.missing) FROM device_hourly h JOIN devices d ON d.id = h.device_id
               WHERE d.serial = ANY(%s) GROUP BY 1""",
            ([lossy, rebooting],),
        ).fetchall()
    )
    assert missing == {lossy: 20, rebooting: 0}

    response = api.get(
        f"/projects/{project.id}/analytics",
        params={
            "since": (start - timedelta(hours=1)).isoformat(),
            "until": (start + timedelta(days=1)).isoformat(),
        },
    )
    assert response.status_code == 200, response.text
    coverage = response.json()["coverage"]
    assert coverage["devices_reporting"] == 2
    assert abs(coverage["completeness"] - 180 / 200) < 1e-9


def test_device_state_from_before_sequence_tracking_does_not_block_storing(
    conn: psycopg.Connection, project: Project, unique: str
) -> None:
    """A device whose state predates sequence tracking (a sequence number but no time) must
    be stored normally, not quarantined."""
    serial = f"legacy-{unique}"
    upserts.provision_devices(conn, None, project.id, [(serial, "m", "1")])
    conn.execute(
        """INSERT INTO device_state (device_id, last_seq, last_seen)
           SELECT id, 500, now() FROM devices WHERE serial = %s""",
        (serial,),
    )
    importer = HistoryImporter(conn)
    at = datetime.now(UTC) - timedelta(hours=1)
    importer.add(serial, MessageKind.TELEMETRY, _telemetry(501, at))
    importer.add(serial, MessageKind.TELEMETRY, _telemetry(503, at + timedelta(minutes=1)))
    report = importer.finish()
    assert report.quarantined == {}
    assert report.metric_rows == 2
    missing = conn.execute(
        """SELECT sum(h.missing) FROM device_hourly h JOIN devices d ON d.id = h.device_id
           WHERE d.serial = %s""",
        (serial,),
    ).fetchone()
    assert missing == (1,)  # 502 never came; the walk started at 501
