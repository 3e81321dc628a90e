"""Helpers for the ingest guarantee and fault tests: fleets with known sequence streams, a
ledger of what the broker acknowledged, Jepsen-style accounting against the database, and
ingest subprocesses that can be killed, restarted and stopped.

Every wait is bounded in time; every loop in count.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from device_sim.device import SimDevice
from services.core.broker_admin import BrokerAdmin, device_role
from services.core.migrate import migrate
from services.core.settings import Settings
from services.core.topics import MessageKind, device_topic
from services.infra.local import LocalServices
from services.infra.postgres import PG_BIN
from services.infra.system import run
from services.registry import upserts as registry
from services.registry.upserts import DeviceCredential
from tests import PROJECT_ROOT
from tests.integration.conftest import make_project, scratch_database

# --- payloads -----------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def usage_body(
    seq: int, ts: datetime, feature: str, *, count: int = 1, readings: int = 1, **extra: Any
) -> bytes:
    """A usage message with an explicit seq and ts, so the sender knows exactly what it sent."""
    events = [{"feature": feature, "count": count, "duration_ms": 10 * i} for i in range(readings)]
    body = {"v": 1, "seq": seq, "ts": iso(ts), "events": events, **extra}
    return json.dumps(body, separators=(",", ":")).encode()


def stream_ts(base: datetime, seq: int) -> datetime:
    """The device time of message *seq* in a stream: fixed, so a re-send is byte-identical."""
    return base + timedelta(milliseconds=seq)


# --- devices ------------------------------------------------------------------------------


@dataclass
class Fleet:
    """Connected simulated devices of one project (and their broker identities to remove)."""

    project_id: int
    feature_key: str
    devices: list[SimDevice]
    serials: list[str]
    admin: BrokerAdmin

    def by_serial(self, serial: str) -> SimDevice:
        return next(d for d in self.devices if d.serial == serial)

    def stop(self) -> None:
        for device in self.devices:
            with suppress(Exception):
                # Clear the retained status instead of leaving "offline" behind: the broker
                # replays every retained status to each new ingest session, forever.
                client = device._client
                if device.connected.is_set():
                    topic = device_topic(device.serial, MessageKind.STATUS)
                    client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
                client.disconnect()
                client.loop_stop()
        # Keep the broker's dynamic-security store from growing with every test run.
        with suppress(Exception):
            self.admin.check(
                [
                    cmd
                    for serial in self.serials
                    for cmd in (
                        {"command": "deleteClient", "username": serial},
                        {"command": "deleteRole", "rolename": device_role(serial)},
                    )
                ],
                tolerate=["not found"],
            )


def create_project(conn: psycopg.Connection, token: str) -> tuple[int, str]:
    """A customer, a project and one delivered feature; returns (project id, feature key)."""
    made = make_project(conn, token)
    return made.id, made.feature_key


def connect_devices(
    credentials: Sequence[DeviceCredential], settings: Settings, timeout: float = 20.0
) -> list[SimDevice]:
    devices = [SimDevice(c.serial, c.password, settings.broker_nodes()) for c in credentials]
    for device in devices:
        device.start()
    deadline = time.monotonic() + timeout
    for device in devices:
        if not device.connected.wait(max(deadline - time.monotonic(), 0.01)):
            for d in devices:
                d.stop()
            raise AssertionError(f"device {device.serial} could not connect: {device.refused}")
    return devices


@contextmanager
def fleet(
    url: str,
    admin: BrokerAdmin,
    settings: Settings,
    project_id: int,
    feature_key: str,
    serials: Sequence[str],
) -> Iterator[Fleet]:
    """Provision *serials* into the project (in the database at *url*) and connect them."""
    with psycopg.connect(url, autocommit=True) as conn:
        credentials = registry.provision_devices(
            conn, admin, project_id, [(s, "T1", "1.0") for s in serials]
        )
    devices = connect_devices(credentials, settings)
    connected = Fleet(project_id, feature_key, devices, list(serials), admin)
    try:
        yield connected
    finally:
        connected.stop()


# --- the ledger: what was handed to paho and what the broker acknowledged ----------------


@dataclass
class Ledger:
    """Jepsen-style history of one run. A message counts as published once the broker sent
    its PUBACK; a message handed to paho but never acknowledged is indeterminate (it may or
    may not be stored, but it must not be stored twice)."""

    handed: dict[tuple[str, int], mqtt.MQTTMessageInfo] = field(default_factory=dict)
    acked: set[tuple[str, int]] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, serial: str, seq: int, info: mqtt.MQTTMessageInfo) -> None:
        with self.lock:
            self.handed[(serial, seq)] = info

    def wait_acks(self, timeout: float) -> int:
        """Wait (bounded) for every PUBACK; return how many stay indeterminate."""
        deadline = time.monotonic() + timeout
        with self.lock:
            pending = [(key, info) for key, info in self.handed.items() if key not in self.acked]
        for key, info in pending:
            if acknowledged(info, max(deadline - time.monotonic(), 0.001)):
                self.acked.add(key)
        return len(self.handed) - len(self.acked)

    @property
    def indeterminate(self) -> int:
        return len(self.handed) - len(self.acked)


def acknowledged(info: mqtt.MQTTMessageInfo, timeout: float) -> bool:
    """Whether the broker sent the PUBACK of this message within *timeout* seconds."""
    if info.rc == mqtt.MQTT_ERR_NO_CONN:
        # Queued by paho while disconnected and sent after reconnecting; paho's own waits
        # refuse such messages, so watch the flag they would read.
        deadline = time.monotonic() + timeout
        while not info._published and time.monotonic() < deadline:
            time.sleep(0.01)
        return bool(info._published)
    try:
        info.wait_for_publish(timeout)
        return info.is_published()
    except (RuntimeError, ValueError):  # paho refused it: never sent
        return False


def publish_streams(
    devices: Sequence[SimDevice],
    feature: str,
    seqs: Sequence[int],
    base_ts: datetime,
    *,
    threads: int = 4,
    rate: float | None = None,
    readings: int = 1,
    ledger: Ledger | None = None,
    stop: threading.Event | None = None,
) -> Ledger:
    """Every device publishes usage message *seq* for each seq in *seqs* (device time
    `stream_ts(base_ts, seq)`), from *threads* threads, at most *rate* messages/s overall."""
    ledger = ledger or Ledger()
    threads = max(1, min(threads, len(devices)))
    per_thread_rate = rate / threads if rate else None

    def work(mine: Sequence[SimDevice]) -> None:
        started = time.monotonic()
        sent = 0
        for seq in seqs:
            for device in mine:
                if stop is not None and stop.is_set():
                    return
                payload = usage_body(seq, stream_ts(base_ts, seq), feature, readings=readings)
                try:
                    info = device.publish(MessageKind.USAGE, payload)
                except Exception as exc:  # recorded; the accounting then fails loudly
                    ledger.errors.append(f"{device.serial}/{seq}: {exc}")
                    continue
                ledger.record(device.serial, seq, info)
                sent += 1
                if per_thread_rate:
                    ahead = started + sent / per_thread_rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)

    workers = [
        threading.Thread(target=work, args=(devices[i::threads],), name=f"publisher-{i}")
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
    return ledger


class Background:
    """Run a function in a thread and collect its result or exception."""

    def __init__(self, target: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = target()
            except BaseException as exc:
                self.error = exc

        self._thread = threading.Thread(target=run, name="background", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"background work did not finish within {timeout}s")
        if self.error is not None:
            raise self.error
        return self.result


# --- accounting ----------------------------------------------------------------------------

READINGS = """
SELECT d.serial, u.seq, u.item, count(*)
FROM usage_events u JOIN devices d ON d.id = u.device_id
WHERE d.serial = ANY(%s) GROUP BY 1, 2, 3
"""
TOTALS = """
WITH ids AS (SELECT id FROM devices WHERE serial = ANY(%(serials)s))
SELECT
    (SELECT count(*) FROM usage_events WHERE device_id IN (SELECT id FROM ids)),
    (SELECT coalesce(sum(count), 0) FROM usage_events WHERE device_id IN (SELECT id FROM ids)),
    (SELECT coalesce(sum(events), 0) FROM usage_hourly WHERE device_id IN (SELECT id FROM ids)),
    (SELECT coalesce(sum(readings), 0) FROM usage_hourly
        WHERE device_id IN (SELECT id FROM ids)),
    (SELECT count(DISTINCT (device_id, seq)) FROM usage_events
        WHERE device_id IN (SELECT id FROM ids)),
    (SELECT coalesce(sum(messages), 0) FROM device_hourly
        WHERE device_id IN (SELECT id FROM ids))
"""


@dataclass
class Accounting:
    published: int  # acknowledged by the broker
    indeterminate: int  # handed to paho, never acknowledged
    stored_messages: int  # distinct (device, seq)
    stored_readings: int
    stored_events: int  # sum of count
    lost: int  # acknowledged, not stored
    duplicated: int  # (device, seq, item) stored more than once
    unexpected: int  # stored, never handed to paho
    rollup_events: int  # usage_hourly.events
    rollup_readings: int  # usage_hourly.readings
    hourly_messages: int  # device_hourly.messages
    lost_sample: list[tuple[str, int]]

    def line(self) -> str:
        return (
            f"published={self.published} indeterminate={self.indeterminate} "
            f"stored={self.stored_messages} readings={self.stored_readings} lost={self.lost} "
            f"duplicated={self.duplicated} unexpected={self.unexpected} "
            f"usage_hourly.events={self.rollup_events}/{self.stored_events} "
            f"usage_hourly.readings={self.rollup_readings}/{self.stored_readings} "
            f"device_hourly.messages={self.hourly_messages}/{self.stored_messages}"
        )

    def assert_exact(self) -> None:
        """Nothing lost, nothing twice, nothing invented, rollups equal to the raw rows."""
        assert (self.lost, self.duplicated, self.unexpected) == (0, 0, 0), (
            f"{self.line()}; lost e.g. {self.lost_sample}"
        )
        assert self.rollup_events == self.stored_events, self.line()
        assert self.rollup_readings == self.stored_readings, self.line()
        assert self.hourly_messages == self.stored_messages, self.line()


def account(url: str, ledger: Ledger, serials: Sequence[str]) -> Accounting:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(READINGS, (list(serials),)).fetchall()
        totals = conn.execute(TOTALS, {"serials": list(serials)}).fetchone()
    assert totals is not None
    readings, events, rollup_events, rollup_readings, distinct, hourly = totals
    stored = {(serial, seq) for serial, seq, _item, _n in rows}
    assert distinct == len(stored), (distinct, len(stored))
    duplicated = sum(1 for *_key, n in rows if n > 1)
    lost = sorted(ledger.acked - stored)
    return Accounting(
        published=len(ledger.acked),
        indeterminate=ledger.indeterminate,
        stored_messages=len(stored),
        stored_readings=int(readings),
        stored_events=int(events),
        lost=len(lost),
        duplicated=duplicated,
        unexpected=len(stored - set(ledger.handed)),
        rollup_events=int(rollup_events),
        rollup_readings=int(rollup_readings),
        hourly_messages=int(hourly),
        lost_sample=lost[:5],
    )


def stored_count(url: str, serials: Sequence[str]) -> int:
    """Distinct (device, seq) messages stored for these devices."""
    with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
        row = conn.execute(
            """SELECT count(DISTINCT (u.device_id, u.seq)) FROM usage_events u
               JOIN devices d ON d.id = u.device_id WHERE d.serial = ANY(%s)""",
            (list(serials),),
        ).fetchone()
    return int(row[0]) if row else 0


def wait_all_stored(
    url: str, ledger: Ledger, serials: Sequence[str], timeout: float
) -> tuple[int, float]:
    """Wait (bounded) until every acknowledged message is stored; return (stored, seconds)."""
    started = time.monotonic()
    deadline = started + timeout
    stored = -1
    while time.monotonic() < deadline:
        with suppress(psycopg.OperationalError):
            stored = stored_count(url, serials)
            if stored >= len(ledger.acked):
                break
        time.sleep(0.1)
    return stored, time.monotonic() - started


# --- ingest subprocesses --------------------------------------------------------------------

STOPPED = re.compile(
    r"stopped: (?P<messages>\d+) messages, (?P<rows>\d+) usage rows, "
    r"(?P<duplicates>\d+) duplicates absorbed, quarantined (?P<quarantined>.*)$",
    re.MULTILINE,
)


@dataclass(frozen=True)
class Stopped:
    messages: int
    usage_rows: int
    duplicates: int
    quarantined: str


# What ingest logs once it takes messages: subscribed on Mosquitto, consuming on NATS.
READY_MARKERS = ("connected to broker", "consuming $MQTT_msgs")


class IngestProcess:
    """`python -m services ingest` against a given database, with a stable client id."""

    def __init__(
        self,
        database_url: str,
        client_id: str,
        share_group: str,
        log_dir: Path,
        *,
        metrics_port: int = 0,
    ) -> None:
        self.client_id = client_id
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "FIELDTRACK_DATABASE_URL": database_url,
            "FIELDTRACK_INGEST_CLIENT_ID": client_id,
            "FIELDTRACK_INGEST_SHARE_GROUP": share_group,
            "FIELDTRACK_INGEST_METRICS_PORT": str(metrics_port),
            "FIELDTRACK_INGEST_BATCH_WAIT_MS": "50",
        }
        self.log_dir = log_dir
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = log_dir / f"{client_id}.log"

    def start(self, timeout: float = 30.0) -> None:
        """Start (or restart) and wait until it is connected to the broker."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.runs += 1
        self.log_path = self.log_dir / f"{self.client_id}.{self.runs}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services", "ingest"],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(marker in self.log() for marker in READY_MARKERS):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"ingest {self.client_id} did not connect:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def all_logs(self) -> str:
        return "".join(
            (self.log_dir / f"{self.client_id}.{run}.log").read_text(errors="replace")
            for run in range(1, self.runs + 1)
            if (self.log_dir / f"{self.client_id}.{run}.log").exists()
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> tuple[int, float, Stopped | None]:
        """SIGTERM; return (exit code, seconds to exit, its `stopped:` totals)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"ingest {self.client_id} did not exit within {timeout}s of SIGTERM:\n"
                f"{self.log()[-3000:]}"
            ) from None
        elapsed = time.monotonic() - started
        found = STOPPED.search(self.log())
        stopped = (
            Stopped(
                int(found["messages"]),
                int(found["rows"]),
                int(found["duplicates"]),
                found["quarantined"],
            )
            if found
            else None
        )
        return code, elapsed, stopped

    def ensure_dead(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class FaultEnv:
    """A scratch database with one project, and where subprocess logs go."""

    url: str
    project_id: int
    feature_key: str
    token: str
    log_dir: Path

    def ingest(self, name: str, group: str, *, metrics_port: int = 0) -> IngestProcess:
        return IngestProcess(
            self.url,
            f"fieldtrack-ingest-{name}-{self.token}",
            group,
            self.log_dir,
            metrics_port=metrics_port,
        )


@contextmanager
def fault_database(local_services: LocalServices, settings: Settings) -> Iterator[FaultEnv]:
    token = uuid.uuid4().hex[:8]
    app_url = settings.database_url.get_secret_value()
    log_dir = local_services.root / "test-ingest-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with scratch_database(local_services, app_url, "fieldtrack_fault") as url:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            project_id, feature_key = create_project(conn, token)
        yield FaultEnv(url, project_id, feature_key, token, log_dir)


def stop_postgres_now(services: LocalServices) -> None:
    """`pg_ctl -m immediate stop`: no checkpoint, clients cut off, crash recovery at start."""
    pg = services.postgres
    run(
        [PG_BIN / "pg_ctl", "-D", pg.data, "-m", "immediate", "-w", "stop"],
        what="PostgreSQL immediate stop",
        as_user="postgres",
    )


def ensure_postgres(services: LocalServices) -> None:
    pg = services.postgres
    if not pg.running():
        pg.start(lambda message: print(f"[infra] {message}"))
    pg.wait_ready()


def wait_until_stored(
    url: str, device: SimDevice, feature: str, seq: int, timeout: float = 20.0
) -> None:
    """Publish one probe message (again, every second) until it is stored: the ingest is then
    subscribed. Probe devices are left out of the accounting."""
    deadline = time.monotonic() + timeout
    payload = usage_body(seq, datetime.now(UTC), feature)
    while time.monotonic() < deadline:
        device.publish(MessageKind.USAGE, payload).wait_for_publish(5)
        for _ in range(20):
            if stored_count(url, [device.serial]) > 0:
                return
            time.sleep(0.05)
    raise AssertionError(f"probe from {device.serial} was not stored within {timeout}s")


def metric_samples(port: int) -> dict[str, float]:
    """An ingest process's /metrics: unlabelled samples by name, buckets as name{le=…}."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                values[f"{sample.name}{{le={sample.labels['le']}}}"] = sample.value
            elif not sample.labels:
                values[sample.name] = sample.value
    return values


def try_metric_samples(port: int) -> dict[str, float] | None:
    try:
        return metric_samples(port)
    except httpx.HTTPError:
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
