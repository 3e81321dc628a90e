"""What this machine can do at all, measured in the same run: the broker with Mosquitto's
own C clients, the simulator's Python publisher into a C subscriber, and PostgreSQL's COPY
through psql of the rows ingest writes, into the same hypertable with the same indexes."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import psycopg

from bench.env import FEATURE, BenchData
from bench.load import Load, LoadPlan, Sent, usage_payload
from services.core.migrate import migrate
from services.core.settings import Settings
from services.core.topics import MessageKind, device_topic
from services.infra.postgres import PG_BIN
from services.registry.upserts import DeviceCredential

WAIT_S = 180.0
QUIET_S = 2.0
# QoS 1 messages in flight per mosquitto_pub: its default (20) throttles it, 1,000 has
# Mosquitto 2.0.11 disconnect it "due to out of memory" at 100k messages; 100 is fastest here.
PUB_INFLIGHT = "100"


def _tool(name: str) -> str:
    found = shutil.which(name) or (str(PG_BIN / name) if (PG_BIN / name).exists() else None)
    if found is None:
        raise RuntimeError(f"{name} not found: run `fieldtrack infra up` (mosquitto-clients)")
    return found


class LineCounter:
    """mosquitto_sub printing one line per message, counted without parsing."""

    def __init__(self, settings: Settings, client_id: str, topics: Sequence[str], qos: int):
        argv = [
            _tool("mosquitto_sub"),
            "-h",
            settings.mqtt_host,
            "-p",
            str(settings.mqtt_port),
            "-u",
            settings.mqtt_ingest_username,
            "-P",
            settings.mqtt_ingest_password.get_secret_value(),
            "-i",
            client_id,
            "-q",
            str(qos),
        ]
        for topic in topics:
            argv += ["-t", topic]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.lines = 0
        self._thread = threading.Thread(target=self._count, daemon=True)
        self._thread.start()

    def _count(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None  # noqa: S101
        fd = stdout.fileno()
        while chunk := os.read(fd, 1 << 20):
            self.lines += chunk.count(b"\n")

    def wait_for(self, lines: int, timeout: float = WAIT_S, *, lossy: bool = False) -> float:
        """Wait until *lines* lines arrived; the monotonic time the last one came. *lossy*
        (QoS 0, which the broker may drop under load): also stop once nothing new came for
        QUIET_S."""
        deadline = time.monotonic() + timeout
        seen, last = self.lines, time.monotonic()
        while self.lines < lines:
            now = time.monotonic()
            if self.lines != seen:
                seen, last = self.lines, now
            elif lossy and now - last > QUIET_S:
                return last
            if now > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto_sub got {self.lines} of {lines} messages")
            time.sleep(0.002)
        return time.monotonic()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._thread.join(5)


def _wait_subscribed(counter: LineCounter, poke: Any) -> int:
    """Poke (publish a probe) until the subscriber sees something; the count afterwards."""
    deadline = time.monotonic() + 20
    while counter.lines == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("mosquitto_sub never received the probe")
        poke()
        time.sleep(0.2)
    time.sleep(0.3)  # let any other probe in flight arrive
    return counter.lines


def _pub_argv(settings: Settings, cred: DeviceCredential, qos: int) -> list[str]:
    return [
        _tool("mosquitto_pub"),
        "-h",
        settings.mqtt_host,
        "-p",
        str(settings.mqtt_port),
        "-u",
        cred.serial,
        "-P",
        cred.password,
        "-i",
        cred.serial,
        "-q",
        str(qos),
        "-t",
        device_topic(cred.serial, MessageKind.USAGE),
    ]


def publish_with_c_clients(
    settings: Settings, creds: Sequence[DeviceCredential], plan: LoadPlan, work: Path
) -> Callable[[], Sent]:
    """Write the plan's payload lines now (each `ts` the time they are written: building
    them costs Python time that must not count against the phase), and return the sending:
    one mosquitto_pub per device, QoS 1, returning once every publisher has had its last
    PUBACK and exited."""
    by_serial = {c.serial: c for c in creds}
    files: list[tuple[DeviceCredential, Path]] = []
    now = datetime.now(UTC)
    for serial in plan.serials:
        path = work / f"load-{serial}-{plan.first_seq}.lines"
        with path.open("wb") as out:
            for seq in range(plan.first_seq, plan.seq_end):
                out.write(usage_payload(seq, now, plan.readings) + b"\n")
        files.append((by_serial[serial], path))

    def send() -> Sent:
        started = time.monotonic()
        pubs = []
        for cred, path in files:
            with path.open("rb") as lines:
                argv = [*_pub_argv(settings, cred, 1), "-l", "-M", PUB_INFLIGHT]
                pubs.append(subprocess.Popen(argv, stdin=lines))
        codes = [pub.wait(WAIT_S) for pub in pubs]
        seconds = time.monotonic() - started
        for _, path in files:
            path.unlink()
        if any(codes):
            raise RuntimeError(f"mosquitto_pub exited {codes}: not every message was acknowledged")
        return Sent(messages=plan.messages, failed=0, seconds=seconds)

    return send


# How often the paced feeder tops the publishers up: short against the 1 s latency target.
PACE_TICK_S = 0.002


def publish_paced_with_c_clients(
    settings: Settings, creds: Sequence[DeviceCredential], plan: LoadPlan, rate: float
) -> Sent:
    """The plan's messages at *rate* msgs/s in all, fed line by line to one mosquitto_pub
    per device through a pipe, each `ts` stamped as its line is written; returns once every
    publisher has had its last PUBACK and exited."""
    by_serial = {c.serial: c for c in creds}
    pubs = [
        subprocess.Popen(
            [*_pub_argv(settings, by_serial[serial], 1), "-l", "-M", PUB_INFLIGHT],
            stdin=subprocess.PIPE,
        )
        for serial in plan.serials
    ]
    pipes = [pub.stdin for pub in pubs if pub.stdin is not None]
    order = [(i, seq) for seq in range(plan.first_seq, plan.seq_end) for i in range(len(pubs))]
    started, done = time.monotonic(), 0
    while done < len(order):
        due = min(len(order), int((time.monotonic() - started) * rate) + 1)
        now = datetime.now(UTC)
        lines: list[list[bytes]] = [[] for _ in pipes]
        for i, seq in order[done:due]:
            lines[i].append(usage_payload(seq, now, plan.readings) + b"\n")
        for pipe, chunk in zip(pipes, lines, strict=True):
            if chunk:
                pipe.write(b"".join(chunk))
                pipe.flush()
        done = due
        time.sleep(PACE_TICK_S)
    for pipe in pipes:
        pipe.close()
    codes = [pub.wait(WAIT_S) for pub in pubs]
    if any(codes):
        raise RuntimeError(f"mosquitto_pub exited {codes}: not every message was acknowledged")
    return Sent(messages=plan.messages, failed=0, seconds=time.monotonic() - started)


def broker_ceiling(data: BenchData, messages: int, qos: int, work: Path) -> dict[str, Any]:
    """mosquitto_pub (one per ceiling device, in parallel, reading payload lines) → Mosquitto
    → mosquitto_sub, at *qos* end to end, with the single-reading payloads devices send."""
    settings, creds = data.settings, data.ceiling
    per_pub = messages // len(creds)
    files: list[Path] = []
    now = datetime.now(UTC)
    for i in range(len(creds)):
        path = work / f"broker-{i}.lines"
        with path.open("wb") as out:
            for seq in range(per_pub):
                out.write(usage_payload(seq + 1, now, 1) + b"\n")
        files.append(path)
    counter = LineCounter(
        settings,
        f"bench-{data.token}-ceiling-sub",
        [device_topic(c.serial, MessageKind.USAGE) for c in creds],
        qos,
    )
    try:
        probe = [*_pub_argv(settings, creds[0], qos), "-m", "probe"]
        baseline = _wait_subscribed(counter, lambda: subprocess.run(probe, check=True))
        started = time.monotonic()
        pubs = []
        for cred, path in zip(creds, files, strict=True):
            with path.open("rb") as lines:
                extra = ["-M", PUB_INFLIGHT] if qos else []
                pubs.append(
                    subprocess.Popen([*_pub_argv(settings, cred, qos), "-l", *extra], stdin=lines)
                )
        ended = counter.wait_for(baseline + per_pub * len(creds), lossy=qos == 0)
        received = counter.lines - baseline
        for pub in pubs:
            pub.wait(30)
    finally:
        counter.close()
    seconds = ended - started
    total = per_pub * len(creds)
    return {
        "messages": total,
        "received": received,
        "qos": qos,
        "publishers": len(creds),
        "seconds": round(seconds, 3),
        "msgs_per_s": round(received / seconds),
    }


def publisher_ceiling(data: BenchData, load: Load, messages: int) -> dict[str, Any]:
    """The simulator's swarm (the load generator of every fieldtrack phase) → Mosquitto →
    mosquitto_sub: the most any end-to-end phase can show on this machine."""
    settings = data.settings
    counter = LineCounter(
        settings, f"bench-{data.token}-publisher-sub", ["fieldtrack/v1/+/usage"], qos=1
    )
    try:
        first = load.plan(len(load.serials), 1)
        baseline = _wait_subscribed(counter, lambda: load.send(first))
        plan = load.plan(messages, 1)
        started = time.monotonic()
        sent = load.send(plan)
        ended = counter.wait_for(baseline + plan.messages)
    finally:
        counter.close()
    seconds = ended - started
    return {
        "messages": plan.messages,
        "acked": sent.messages,
        "failed": sent.failed,
        "seconds": round(seconds, 3),
        "msgs_per_s": round(plan.messages / seconds),
        "publish_msgs_per_s": round(sent.rate),
    }


def _write_rows(out: IO[str], data: BenchData, rows: int, readings: int) -> None:
    """The rows ingest writes for batched messages: one per reading."""
    with psycopg.connect(data.url) as conn:
        ids = conn.execute(
            "SELECT id, project_id FROM devices WHERE project_id = %s ORDER BY id",
            (data.project_id,),
        ).fetchall()
    writer = csv.writer(out)
    now = datetime.now(UTC)
    received = now.isoformat()
    messages = -(-rows // readings)
    for m in range(messages):
        device_id, project_id = ids[m % len(ids)]
        seq = 1 + m // len(ids)
        ts = now + timedelta(milliseconds=seq * readings)
        for item in range(readings):
            at = (ts - timedelta(milliseconds=readings - 1 - item)).isoformat()
            writer.writerow(
                (device_id, project_id, FEATURE, at, received, seq, item, 1 + item % 3, 10 * item)
            )


COPY_COLUMNS = (
    "device_id, project_id, feature_key, device_time, received_at, seq, item, count, duration_ms"
)


def copy_ceiling(data: BenchData, rows: int, readings: int, work: Path) -> dict[str, Any]:
    """psql `\\copy` of the batched phase's rows into usage_events of a freshly migrated
    scratch database: the same hypertable, the same indexes."""
    path = work / "copy-rows.csv"
    with path.open("w", newline="") as out:
        _write_rows(out, data, rows, readings)
    app_url = data.settings.database_url.get_secret_value()
    with data.services.postgres.scratch_database(app_url, "fieldtrack_bench_copy") as url:
        migrate(url)
        started = time.monotonic()
        subprocess.run(
            [
                _tool("psql"),
                url,
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                f"\\copy usage_events ({COPY_COLUMNS}) FROM '{path}' WITH (FORMAT csv)",
            ],
            check=True,
            capture_output=True,
        )
        seconds = time.monotonic() - started
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM usage_events").fetchone()
    stored = int(row[0]) if row else 0
    path.unlink()
    return {
        "rows": stored,
        "seconds": round(seconds, 3),
        "rows_per_s": round(stored / seconds),
    }
