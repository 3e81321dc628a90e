"""The fault suite's engine (issue #9): attack a running fieldtrack under steady load and account
for every message, Jepsen style.

A scenario is: a scratch database with one project, a fleet of real MQTT devices, one or two
real `fieldtrack ingest` subprocesses on a shared subscription, a steady stream of usage
messages with known (device, seq) — and a fault injected while the stream runs. Afterwards
the ledger (what the broker acknowledged to the devices) is compared with what is stored:
lost, duplicated and unexpected rows, plus the redeliveries ingest absorbed.

The same scenarios run short in `make test` (tests/integration/test_chaos_faults.py) and long
in `make chaos` (`python -m tests.integration.chaos`, which starts its own services in
`.state/chaos` and writes a JSON + Markdown report).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from services.core.broker_admin import BrokerAdmin
from services.core.payloads import MAX_PAYLOAD_BYTES
from services.core.settings import Settings
from services.core.topics import MessageKind
from services.infra.local import LocalServices
from services.infra.mosquitto import (
    DEVICE_BURST_BYTES,
    DEVICE_BURST_MSGS,
    DEVICE_BYTES_PER_S,
    DEVICE_MSGS_PER_S,
    config_template,
)
from services.ingest.service import discard_session
from services.registry import upserts as registry
from tests import PROJECT_ROOT
from tests.integration.ingest_support import (
    Background,
    FaultEnv,
    Fleet,
    IngestProcess,
    Ledger,
    account,
    ensure_postgres,
    fault_database,
    fleet,
    iso,
    publish_streams,
    stop_postgres_now,
    stored_count,
    usage_body,
    wait_until_stored,
)

PROBE_SEQ = 10**9  # the probe device is left out of the accounting
NOT_AUTHORISED = 135  # MQTT 5 reason code of a refused publish
BURST_SEQ_OFFSET = 10**6  # the burst's extra publisher uses seqs of its own
REDELIVERED = re.compile(r"absorbed (\d+) redelivered readings")
AUTOSAVE = re.compile(r"^autosave_interval (\d+)", re.MULTILINE)


def autosave_interval_s() -> int:
    """How often the broker writes its persistence file (from the one config template)."""
    found = AUTOSAVE.search(config_template().template)
    return int(found[1]) if found else 1800  # Mosquitto's own default


@dataclass(frozen=True)
class Profile:
    """How hard and how long: `SHORT` for `make test`, `LONG` for `make chaos`."""

    name: str
    devices: int
    rate: float  # sustained messages/s over the whole fleet
    lead_s: float  # steady load before the fault
    tail_s: float  # steady load after the fault
    kills: int  # ingest SIGKILLs in one run
    kill_every_s: float
    pg_outage_s: float
    keepalive_s: int  # ingest's MQTT keepalive; the stall lasts longer than twice this
    broker_restarts: int
    broker_down_s: float
    share_kills: int
    share_down_s: float
    burst_s: float  # the load doubles for this long
    broker_sigkills: int
    backlog_s: float  # ingest away this long before the broker is SIGKILLed (loss bound)
    garbage_round: int  # valid messages per drain of the garbage-share measurement
    # clean / mixed drain pairs: single drains vary by ±30 % on this machine, so the long run
    # takes 10 to bring the median's noise well under the 10 % it judges
    garbage_pairs: int
    hostile_down_s: float  # ingest away this long while one device floods at full speed

    @property
    def stall_s(self) -> float:
        return 2 * self.keepalive_s + max(2.0, self.keepalive_s / 3)


SHORT = Profile(
    name="short",
    devices=10,
    rate=300,
    lead_s=2,
    tail_s=2,
    kills=5,
    kill_every_s=1.5,
    pg_outage_s=6,
    keepalive_s=4,
    broker_restarts=1,
    broker_down_s=2,
    share_kills=1,
    share_down_s=2,
    burst_s=6,
    broker_sigkills=1,
    backlog_s=4,
    garbage_round=10_000,
    garbage_pairs=4,
    hostile_down_s=5,
)
LONG = Profile(
    name="long",
    devices=40,
    rate=600,
    lead_s=5,
    tail_s=5,
    kills=10,
    kill_every_s=4,
    pg_outage_s=30,
    keepalive_s=30,
    broker_restarts=2,
    broker_down_s=5,
    share_kills=3,
    share_down_s=5,
    burst_s=60,
    broker_sigkills=3,
    backlog_s=10,
    garbage_round=20_000,
    garbage_pairs=10,
    hostile_down_s=30,
)


@dataclass
class FaultResult:
    """One scenario's accounting; `exact` scenarios must show lost = duplicated = unexpected = 0."""

    fault: str
    exact: bool
    seconds: float
    handed: int  # handed to paho by the devices
    acked: int  # PUBACKed by the broker (the ledger)
    indeterminate: int  # handed, never acknowledged
    stored: int  # distinct (device, seq) stored
    lost: int  # acknowledged, not stored
    duplicated: int  # (device, seq, reading) stored more than once
    unexpected: int  # stored, never handed to paho
    redeliveries: int  # readings ingest received again after storing them (absorbed)
    caught_up_s: float  # from the end of the stream until everything acknowledged was stored
    rollups_match: bool
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return (self.lost, self.duplicated, self.unexpected) == (0, 0, 0) and self.rollups_match

    def line(self) -> str:
        return (
            f"[{self.fault}] {self.seconds:.0f}s handed={self.handed} acked={self.acked} "
            f"stored={self.stored} lost={self.lost} duplicated={self.duplicated} "
            f"unexpected={self.unexpected} redeliveries={self.redeliveries} "
            f"indeterminate={self.indeterminate} caught_up={self.caught_up_s:.1f}s "
            f"rollups_match={self.rollups_match} {json.dumps(self.notes, default=str)}"
        )


@dataclass
class Ctx:
    """What a fault can touch while the stream runs."""

    services: LocalServices
    env: FaultEnv
    ingests: list[IngestProcess]
    fleet: Fleet
    serials: list[str]
    ledger: Ledger
    profile: Profile
    notes: dict[str, Any]
    settings: Settings

    def stored(self) -> int:
        return stored_count(self.env.url, self.serials)

    def acked_now(self) -> int:
        """PUBACKs received so far (without waiting for any)."""
        with self.ledger.lock:
            infos = list(self.ledger.handed.values())
        # the flag paho's waits read; is_published() raises for messages queued offline
        return sum(1 for info in infos if info._published)


Fault = Callable[[Ctx], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: Fault
    exact: bool = True  # False: loss is measured against a bound, not expected to be 0
    ingests: int = 1
    share: bool = True  # False: one ingest on a plain subscription (empty share group)


# --- faults ---------------------------------------------------------------------------------


def sigkill_ingest_repeatedly(ctx: Ctx) -> None:
    ingest = ctx.ingests[0]
    for _ in range(ctx.profile.kills):
        time.sleep(ctx.profile.kill_every_s)
        ingest.kill()
        time.sleep(0.3)
        ingest.start()
    ctx.notes["kills"] = ctx.profile.kills


def postgres_immediate_stop(ctx: Ctx) -> None:
    try:
        stop_postgres_now(ctx.services)
        stopped = time.monotonic()
        time.sleep(ctx.profile.pg_outage_s)
        ctx.notes["ingest_survived_outage"] = all(i.alive() for i in ctx.ingests)
    finally:
        ensure_postgres(ctx.services)
    ctx.notes["outage_s"] = round(time.monotonic() - stopped, 1)


def _postgres_pids(services: LocalServices) -> list[int]:
    """The postmaster and every process it forked (backends, checkpointer, …)."""
    postmaster = services.postgres.pid()
    assert postmaster is not None, "PostgreSQL is not running"
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # the command name may hold spaces: the fields after the last ')' are fixed
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == postmaster:
                children.append(int(stat.parent.name))
    return [postmaster, *children]


def postgres_stall(ctx: Ctx) -> None:
    """SIGSTOP every PostgreSQL process for longer than twice ingest's keepalive: commits
    hang mid-transaction, yet the paho network thread must keep the broker connection."""
    broker_log = ctx.services.mosquitto.logfile
    log_from = broker_log.stat().st_size if broker_log.exists() else 0
    before = ctx.stored()
    pids = _postgres_pids(ctx.services)
    stall = ctx.profile.stall_s
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        time.sleep(stall)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    after = ctx.stored()
    with broker_log.open("rb") as handle:
        handle.seek(log_from)
        appended = handle.read().decode(errors="replace")
    ctx.notes.update(
        stall_s=round(stall, 1),
        keepalive_s=ctx.profile.keepalive_s,
        stored_during_stall=after - before,
        broker_keepalive_timeouts=sum(
            appended.count(f"Client {i.client_id} has exceeded timeout") for i in ctx.ingests
        ),
        ingest_disconnects=sum(i.log().count("disconnected from broker") for i in ctx.ingests),
    )


def _report(message: str) -> None:
    print(f"[infra] {message}")


def mosquitto_graceful_restart(ctx: Ctx) -> None:
    """SIGTERM (the broker saves its persistence file), a pause, start again."""
    for _ in range(ctx.profile.broker_restarts):
        time.sleep(ctx.profile.kill_every_s)
        held = max(ctx.acked_now() - ctx.stored(), 0)
        ctx.notes.setdefault("held_by_broker_at_stop", []).append(held)
        ctx.services.mosquitto.stop()
        time.sleep(ctx.profile.broker_down_s)
        ctx.services.mosquitto.start(_report)
    ctx.notes["restarts"] = ctx.profile.broker_restarts
    _wait_reconnected(ctx)


def _wait_reconnected(ctx: Ctx, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(d.connected.is_set() for d in ctx.fleet.devices):
            return
        time.sleep(0.1)


def sigkill_mosquitto(ctx: Ctx, *, backlog: bool) -> None:
    """SIGKILL the broker: whatever it acknowledged since its last autosave and had not yet
    delivered is gone. With `backlog`, ingest is away first, so the broker holds a queue."""
    ingest = ctx.ingests[0]
    kills = []
    for _ in range(ctx.profile.broker_sigkills):
        time.sleep(ctx.profile.kill_every_s)
        if backlog:
            ingest.terminate(30)
            time.sleep(ctx.profile.backlog_s)
        held = max(ctx.acked_now() - ctx.stored(), 0)  # acknowledged, not yet stored
        _sigkill_broker(ctx.services)
        time.sleep(1.0)
        ctx.services.mosquitto.start(_report)
        if backlog:
            ingest.start()
        kills.append(held)
    ctx.notes.update(
        autosave_interval_s=autosave_interval_s(),
        held_by_broker_at_kill=kills,
        backlog=backlog,
    )
    _wait_reconnected(ctx)


def _sigkill_broker(services: LocalServices) -> None:
    pid = services.mosquitto.pid()
    assert pid is not None, "Mosquitto is not running"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if this process started it
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state == "Z":  # someone else's zombie: dead all the same
            return
        time.sleep(0.05)
    raise AssertionError(f"Mosquitto (pid {pid}) survived SIGKILL")


def kill_one_of_two(ctx: Ctx) -> None:
    victim = ctx.ingests[0]
    for _ in range(ctx.profile.share_kills):
        time.sleep(ctx.profile.kill_every_s)
        victim.kill()
        time.sleep(ctx.profile.share_down_s)
        victim.start()
    ctx.notes["kills"] = ctx.profile.share_kills
    ctx.notes["survivor_alive"] = ctx.ingests[1].alive()


def burst(ctx: Ctx) -> None:
    """A second publisher on the same devices at the sustained rate: the load doubles."""
    started = time.monotonic()
    stop = threading.Event()
    extra = Background(
        lambda: publish_streams(
            [d for d in ctx.fleet.devices if d.serial in ctx.serials],
            ctx.fleet.feature_key,
            range(BURST_SEQ_OFFSET, BURST_SEQ_OFFSET + 10**6),
            ctx.notes["base_ts"],
            threads=2,
            rate=ctx.profile.rate,
            ledger=ctx.ledger,
            stop=stop,
        )
    )
    lag = 0
    while time.monotonic() - started < ctx.profile.burst_s:
        time.sleep(1.0)
        with contextlib.suppress(Exception):
            lag = max(lag, ctx.acked_now() - ctx.stored())
    stop.set()
    extra.join(120)
    ctx.notes.update(
        burst_s=ctx.profile.burst_s, burst_rate=2 * ctx.profile.rate, max_backlog_during_burst=lag
    )


# --- one hostile device while ingest is away (issue #22, finding 3) --------------------------

HOSTILE = "hostile-device-ingest-down"
HOSTILE_WINDOW = 200  # QoS 1 messages the flooder keeps unacknowledged: the pipe stays full
HOSTILE_QUIET_S = 10.0  # the flood's stored count has settled once it stops moving this long
QUEUE_LIMIT = re.compile(r"^max_queued_(messages|bytes) (\d+)", re.MULTILINE)


def queue_budget() -> dict[str, int]:
    """Ingest's session queue budget, from the one config template."""
    template = config_template().template
    return {kind: int(value) for kind, value in QUEUE_LIMIT.findall(template)}


class Flooder:
    """A device that publishes max-size valid usage messages as fast as the broker takes
    them (MQTT 5, so each refusal shows as reason code 135)."""

    def __init__(self, settings: Settings, serial: str, password: str, feature: str) -> None:
        self.serial, self.feature = serial, feature
        self.codes: dict[int, int] = {}  # seq -> PUBACK reason code
        self._pending: dict[int, int] = {}  # mid -> seq, awaiting its PUBACK
        self._early: dict[int, int] = {}  # mid -> code, PUBACKed before its mid was noted
        self._lock = threading.Lock()  # never held across a paho call: its thread takes it
        self._window = threading.BoundedSemaphore(HOSTILE_WINDOW)
        self._connected = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=serial, protocol=mqtt.MQTTv5)
        client.username_pw_set(serial, password)
        client.max_inflight_messages_set(HOSTILE_WINDOW)
        client.on_connect = lambda *_: self._connected.set()
        client.on_publish = self._on_publish
        client.connect(settings.mqtt_host, settings.mqtt_port)
        client.loop_start()
        self.client = client
        assert self._connected.wait(10), f"{serial} could not connect"

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._lock:
            if mid in self._pending:
                self.codes[self._pending.pop(mid)] = reason.value
            else:
                self._early[mid] = reason.value
        self._window.release()

    def body(self, seq: int) -> bytes:
        small = usage_body(seq, datetime.now(UTC), self.feature)
        return small[:-1] + b" " * (MAX_PAYLOAD_BYTES - len(small)) + b"}"

    def flood(self, seconds: float) -> int:
        """Publish for *seconds*, then wait (bounded) for the last PUBACKs; return how many
        messages were sent."""
        deadline, seq = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            if not self._window.acquire(timeout=1.0):
                continue
            info = self.client.publish(topic_of(self.serial), self.body(seq), qos=1)
            with self._lock:
                if info.mid in self._early:
                    self.codes[seq] = self._early.pop(info.mid)
                else:
                    self._pending[info.mid] = seq
            seq += 1
        settle = time.monotonic() + 30
        while len(self.codes) < seq and time.monotonic() < settle:
            time.sleep(0.05)
        return seq

    def accepted(self) -> list[int]:
        return sorted(seq for seq, code in self.codes.items() if code < NOT_AUTHORISED)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def topic_of(serial: str) -> str:
    return f"fieldtrack/v1/{serial}/{MessageKind.USAGE.value}"


def hostile_device_while_ingest_is_down(ctx: Ctx) -> None:
    """Ingest is away for `hostile_down_s` while one device of the fleet floods its own
    usage topic with max-size messages as fast as it can. Without a per-device quota the
    flood fills ingest's queue in about a second and Mosquitto then drops every device's
    acknowledged messages; with it, the flooder's excess is refused and the others lose
    nothing (the accounting's `lost` is the others')."""
    serial = f"ch-{ctx.env.token}-hostile"
    with psycopg.connect(ctx.env.url, autocommit=True) as conn:
        [cred] = registry.provision_devices(
            conn, ctx.fleet.admin, ctx.env.project_id, [(serial, "T1", "1.0")]
        )
    ctx.fleet.serials.append(serial)  # removed from the broker with the fleet
    flooder = Flooder(ctx.settings, serial, cred.password, ctx.env.feature_key)
    ingest = ctx.ingests[0]
    try:
        ingest.terminate(30)
        away = time.monotonic()
        sent = flooder.flood(ctx.profile.hostile_down_s)
        down_s = time.monotonic() - away
        ingest.start()
        accepted = flooder.accepted()
        # without a quota the broker drops part of what it accepted: wait until the count
        # stops moving rather than for all of it
        stored = wait_settled(ctx.env.url, [serial], len(accepted), HOSTILE_QUIET_S, 300)
    finally:
        flooder.close()
    budget = queue_budget()
    ctx.notes.update(
        ingest_down_s=round(down_s, 1),
        hostile_sent=sent,
        hostile_accepted=len(accepted),
        hostile_refused=sum(1 for code in flooder.codes.values() if code == NOT_AUTHORISED),
        hostile_offered_mib=round(sent * MAX_PAYLOAD_BYTES / 2**20, 1),
        hostile_accepted_mib=round(len(accepted) * MAX_PAYLOAD_BYTES / 2**20, 1),
        hostile_stored=stored,
        queue_budget_mib=budget.get("bytes", 0) // 2**20,
    )
    # What the flooder got into the queue per second once its burst was spent, measured:
    # the bound below divides the budget by it, not by the configured quota.
    after_burst = max(0, len(accepted) * MAX_PAYLOAD_BYTES - DEVICE_BURST_BYTES)
    inflow = after_burst / down_s
    ctx.notes.update(
        hostile_inflow_mib_s=round(inflow / 2**20, 2),
        safe_down_s=round(safe_down_s(budget, ctx.profile.rate, flood_bytes_per_s=inflow)),
    )


# Roughly what an honest fleet message weighs (one usage reading, topic and headers).
FLEET_MESSAGE_BYTES = 200


def safe_down_s(
    budget: dict[str, int], fleet_rate: float, flood_bytes_per_s: float = DEVICE_BYTES_PER_S
) -> float:
    """How long ingest may be away, with one device flooding at its quota and the rest of
    the fleet at *fleet_rate*, before ingest's queue budget is full (then the broker drops
    new messages of every device): the budget left after the flooder's burst, divided by
    what flows in per second, for messages and for bytes; the smaller wins."""
    by_messages = (budget["messages"] - DEVICE_BURST_MSGS) / (DEVICE_MSGS_PER_S + fleet_rate)
    by_bytes = (budget["bytes"] - DEVICE_BURST_BYTES) / (
        flood_bytes_per_s + fleet_rate * FLEET_MESSAGE_BYTES
    )
    return min(by_messages, by_bytes)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("ingest-sigkill", sigkill_ingest_repeatedly),
        Scenario("postgres-immediate-stop", postgres_immediate_stop),
        Scenario("postgres-stall", postgres_stall),
        Scenario("mosquitto-restart", mosquitto_graceful_restart, share=False),
        # Mosquitto 2.0.11 does not restore shared subscriptions from its persistence file:
        # what devices publish between its start and ingest's re-subscription is dropped.
        Scenario("mosquitto-restart-shared", mosquitto_graceful_restart, exact=False),
        Scenario("share-group-kill", kill_one_of_two, ingests=2),
        Scenario("burst-2x", burst),
        Scenario("mosquitto-sigkill", lambda c: sigkill_mosquitto(c, backlog=False), exact=False),
        Scenario(
            "mosquitto-sigkill-backlog", lambda c: sigkill_mosquitto(c, backlog=True), exact=False
        ),
        # exact: the other devices lose nothing; the flooder's own excess is refused
        Scenario(HOSTILE, hostile_device_while_ingest_is_down, share=False),
    )
}


# --- garbage mixed into valid traffic --------------------------------------------------------

GARBAGE = "garbage-share"
GARBAGE_TARGET = 0.9  # issue #9: a 10 % share of garbage slows valid ingest by at most 10 %
GARBAGE_CHUNKS = 4  # garbage is published in this many slices between the valid messages
GARBAGE_DEVICES = 10


def garbage_kinds(now: datetime, feature: str, serial: str) -> list[tuple[MessageKind, bytes]]:
    """One of each kind of bad message a hostile or broken device sends."""
    good = json.loads(usage_body(1, now, feature))
    return [
        (MessageKind.USAGE, b""),
        (MessageKind.USAGE, b"\xff\xfe garbage"),
        (MessageKind.USAGE, usage_body(2, now, feature)[:20]),  # truncated
        (MessageKind.USAGE, b"[" * 5000),  # deep nesting
        (MessageKind.USAGE, json.dumps({**good, "seq": "7"}).encode()),
        (MessageKind.USAGE, json.dumps({**good, "colour": "red"}).encode()),
        (MessageKind.USAGE, json.dumps({**good, "device": f"{serial}-other"}).encode()),
        (MessageKind.USAGE, json.dumps({**good, "ts": iso(now + timedelta(hours=2))}).encode()),
        # a time zone that takes the timestamp below year 1 in UTC: once killed ingest's writer
        (MessageKind.USAGE, json.dumps({**good, "ts": "0001-01-01T00:00:00+01:00"}).encode()),
        (
            MessageKind.TELEMETRY,
            b'{"v":1,"seq":3,"ts":"2026-01-01T00:00:00Z","metrics":'
            b'[{"name":"battery","value":NaN}]}',
        ),
        (MessageKind.STATUS, b'{"state":"exploded"}'),
    ]


@dataclass
class GarbageResult:
    """Drains of the same number of queued valid messages, alternately clean and with garbage
    mixed in (10 % of all messages), in one run."""

    valid_per_round: int
    garbage_per_round: int
    garbage_sent: int
    quarantined: int
    cpu_clean: list[float]  # CPU seconds of ingest and its database sessions, per drain
    cpu_mixed: list[float]
    wall_clean: list[float]
    wall_mixed: list[float]

    @property
    def ratio(self) -> float:
        """Clean over mixed CPU, the median drain of each kind. Not the cheapest: noise on a
        shared machine also makes a drain look cheap (a long run once had its cheapest mixed
        drain below every clean one, a ratio of 1.008 where the medians gave 0.931)."""
        return statistics.median(self.cpu_clean) / statistics.median(self.cpu_mixed)

    @property
    def min_ratio(self) -> float:
        return min(self.cpu_clean) / min(self.cpu_mixed)

    @property
    def wall_ratio(self) -> float:
        return statistics.median(self.wall_clean) / statistics.median(self.wall_mixed)

    @property
    def pair_ratios(self) -> list[float]:
        return [round(c / m, 3) for c, m in zip(self.cpu_clean, self.cpu_mixed, strict=True)]

    @property
    def complete(self) -> bool:
        return self.quarantined == self.garbage_sent

    @property
    def meets_target(self) -> bool:
        return self.complete and self.ratio >= GARBAGE_TARGET

    def line(self) -> str:
        return (
            f"[{GARBAGE}] drains of {self.valid_per_round} valid messages, clean / with "
            f"{self.garbage_per_round} garbage: CPU s {self.cpu_clean} / {self.cpu_mixed}, "
            f"ratio {self.ratio:.3f} (cheapest {self.min_ratio:.3f}, pairs {self.pair_ratios}); "
            f"wall s {self.wall_clean} / "
            f"{self.wall_mixed}, ratio {self.wall_ratio:.3f}; {self.quarantined} of "
            f"{self.garbage_sent} garbage messages quarantined"
        )


STORED_MESSAGES = """
SELECT coalesce(sum(h.messages), 0) FROM device_hourly h
JOIN devices d ON d.id = h.device_id WHERE d.serial = ANY(%s)
"""
# the same garbage again adds no row but counts on its row (quarantine dedupe, migration 0014)
QUARANTINED = "SELECT coalesce(sum(copies), 0) FROM quarantine WHERE device_serial = ANY(%s)"
BACKENDS = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
"""


def _count(conn: psycopg.Connection, query: str, serials: list[str]) -> int:
    row = conn.execute(query, (serials,)).fetchone()
    return int(row[0]) if row else 0


def _cpu_seconds(pids: set[int]) -> dict[int, float]:
    """CPU time so far of each of these processes (that is still there)."""
    used = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            used[pid] = times.user + times.system
    return used


def _drain(ingest: IngestProcess, url: str, serials: list[str], target: int) -> tuple[float, float]:
    """Start ingest on its queued session and drain it until `target` valid messages are
    stored: (wall seconds, CPU seconds of ingest and of its PostgreSQL backends)."""
    with psycopg.connect(url, autocommit=True) as conn:
        ingest.start()
        assert ingest.proc is not None

        def processes() -> set[int]:
            assert ingest.proc is not None
            return {ingest.proc.pid, *(pid for (pid,) in conn.execute(BACKENDS))}

        started, before = time.monotonic(), _cpu_seconds(processes())
        deadline = started + 300
        # the rollup ingest keeps in the same transaction: a poll costs PostgreSQL next to
        # nothing, so the CPU measured is ingest's work, not the watching
        while _count(conn, STORED_MESSAGES, serials) < target:
            assert time.monotonic() < deadline, f"ingest stalled:\n{ingest.log()[-2000:]}"
            assert ingest.alive(), ingest.log()[-2000:]
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        after = _cpu_seconds(processes())  # a backend started meanwhile started from 0
    ingest.terminate(30)
    return elapsed, sum(used - before.get(pid, 0.0) for pid, used in after.items())


def measure_garbage_share(
    services: LocalServices, settings: Settings, admin: BrokerAdmin, profile: Profile
) -> GarbageResult:
    """Valid messages are queued in ingest's session while it is away, then drained; drains
    alternate clean / with garbage mixed in. CPU, not wall time, is compared: the CPU that
    ingest and its database sessions spend on the same valid messages is what garbage adds
    to, and it is steady where wall time moves 3x between drains on a shared machine."""
    per_round = profile.garbage_round
    step = per_round // GARBAGE_DEVICES // GARBAGE_CHUNKS
    share = per_round // 9 // GARBAGE_CHUNKS  # garbage = 10 % of a mixed round
    with fault_database(services, settings) as env:
        serials = [f"garb-{env.token}-{i:02d}" for i in range(GARBAGE_DEVICES)]
        probe = f"garb-{env.token}-probe"
        with fleet(
            env.url, admin, settings, env.project_id, env.feature_key, [*serials, probe]
        ) as devices:
            ingest = env.ingest("garbage", f"garbage-{env.token}")
            streamed = [d for d in devices.devices if d.serial != probe]
            base = datetime.now(UTC) - timedelta(minutes=20)
            cpu: dict[bool, list[float]] = {False: [], True: []}
            wall: dict[bool, list[float]] = {False: [], True: []}
            garbage_sent = 0
            try:
                ingest.start()
                wait_until_stored(env.url, devices.by_serial(probe), env.feature_key, 10**9)
                ingest.terminate(30)
                ledger = Ledger()
                bad = garbage_kinds(base, env.feature_key, streamed[0].serial)
                for round_no, mixed in enumerate((False, True) * profile.garbage_pairs):
                    first = round_no * per_round // GARBAGE_DEVICES
                    for chunk in range(GARBAGE_CHUNKS):
                        if mixed:
                            infos = [
                                streamed[i % GARBAGE_DEVICES].publish(*bad[(i + chunk) % len(bad)])
                                for i in range(share)
                            ]
                            for info in infos:
                                info.wait_for_publish(30)
                            garbage_sent += share
                        seqs = range(first + chunk * step, first + (chunk + 1) * step)
                        publish_streams(streamed, env.feature_key, seqs, base, ledger=ledger)
                    assert ledger.wait_acks(60) == 0
                    elapsed, used = _drain(ingest, env.url, serials, len(ledger.acked))
                    wall[mixed].append(round(elapsed, 2))
                    cpu[mixed].append(round(used, 2))
            finally:
                ingest.ensure_dead()
                discard_session(settings, ingest.client_id)
            with psycopg.connect(env.url, autocommit=True) as conn:
                quarantined = _count(conn, QUARANTINED, serials)
    return GarbageResult(
        valid_per_round=step * GARBAGE_CHUNKS * GARBAGE_DEVICES,
        garbage_per_round=share * GARBAGE_CHUNKS,
        garbage_sent=garbage_sent,
        quarantined=quarantined,
        cpu_clean=cpu[False],
        cpu_mixed=cpu[True],
        wall_clean=wall[False],
        wall_mixed=wall[True],
    )


# --- one run ----------------------------------------------------------------------------------


def wait_settled(url: str, serials: list[str], target: int, quiet_s: float, timeout: float) -> int:
    """Wait until `target` messages are stored, or the count has not moved for `quiet_s`."""
    deadline = time.monotonic() + timeout
    last, moved = -1, time.monotonic()
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            now = stored_count(url, serials)
            if now >= target:
                return now
            if now != last:
                last, moved = now, time.monotonic()
        if time.monotonic() - moved > quiet_s:
            break
        time.sleep(0.2)
    return last


def run_scenario(
    services: LocalServices,
    settings: Settings,
    admin: BrokerAdmin,
    scenario: Scenario,
    profile: Profile,
) -> FaultResult:
    started = time.monotonic()
    with fault_database(services, settings) as env:
        serials = [f"ch-{env.token}-{i:03d}" for i in range(profile.devices)]
        probe = f"ch-{env.token}-probe"
        with fleet(
            env.url, admin, settings, env.project_id, env.feature_key, [*serials, probe]
        ) as devices:
            group = f"chaos-{env.token}" if scenario.share else ""
            ingests = [env.ingest(f"{scenario.name}-{i}", group) for i in range(scenario.ingests)]
            for ingest in ingests:
                ingest.env["FIELDTRACK_INGEST_KEEPALIVE_S"] = str(profile.keepalive_s)
            ledger = Ledger()
            base = datetime.now(UTC) - timedelta(minutes=30)
            notes: dict[str, Any] = {"base_ts": base}
            ctx = Ctx(services, env, ingests, devices, serials, ledger, profile, notes, settings)
            try:
                for ingest in ingests:
                    ingest.start()
                wait_until_stored(env.url, devices.by_serial(probe), env.feature_key, PROBE_SEQ)
                streamed = [d for d in devices.devices if d.serial != probe]
                stop = threading.Event()
                stream = Background(
                    lambda: publish_streams(
                        streamed,
                        env.feature_key,
                        range(BURST_SEQ_OFFSET),
                        base,
                        threads=4,
                        rate=profile.rate,
                        ledger=ledger,
                        stop=stop,
                    )
                )
                time.sleep(profile.lead_s)
                scenario.fault(ctx)
                time.sleep(profile.tail_s)
                stop.set()
                stream.join(180)
                ended = time.monotonic()
                indeterminate = ledger.wait_acks(60)
                for ingest in ingests:
                    if not ingest.alive():
                        ingest.start()
                quiet = 15.0 if scenario.exact else 8.0
                wait_settled(env.url, serials, len(ledger.acked), quiet, 180)
                caught_up = time.monotonic() - ended
                for ingest in ingests:
                    ingest.terminate(60)
            finally:
                for ingest in ingests:
                    ingest.ensure_dead()
                    discard_session(settings, ingest.client_id)
        result = account(env.url, ledger, serials)
    notes.pop("base_ts")
    if ledger.errors:
        notes["publish_errors"] = ledger.errors[:5]
    redeliveries = sum(int(n) for ingest in ingests for n in REDELIVERED.findall(ingest.all_logs()))
    rollups = (result.rollup_events, result.rollup_readings, result.hourly_messages) == (
        result.stored_events,
        result.stored_readings,
        result.stored_messages,
    )
    return FaultResult(
        fault=scenario.name,
        exact=scenario.exact,
        seconds=round(time.monotonic() - started, 1),
        handed=len(ledger.handed),
        acked=result.published,
        indeterminate=indeterminate,
        stored=result.stored_messages,
        lost=result.lost,
        duplicated=result.duplicated,
        unexpected=result.unexpected,
        redeliveries=redeliveries,
        caught_up_s=round(caught_up, 1),
        rollups_match=rollups,
        notes=notes,
    )


# --- the report -----------------------------------------------------------------------------


def hostile_line(result: FaultResult) -> str:
    """The answer to "how long can ingest be down, with one hostile device in the fleet"."""
    n = result.notes
    return (
        f"hostile device while ingest is down: lost {result.lost} of {result.acked} "
        f"(the other devices' acknowledged messages; ingest away {n.get('ingest_down_s')} s "
        f"while one device offered {n.get('hostile_offered_mib')} MiB: "
        f"{n.get('hostile_accepted_mib')} MiB accepted, {n.get('hostile_refused')} messages "
        f"refused, {n.get('hostile_stored')} of its {n.get('hostile_accepted')} accepted "
        f"messages stored; after its burst it got {n.get('hostile_inflow_mib_s')} MiB/s into "
        f"the queue, at which the queue budget of {n.get('queue_budget_mib')} MiB lasts about "
        f"{n.get('safe_down_s')} s at this fleet's rate)"
    )


def loss_bound(results: list[FaultResult]) -> dict[str, Any]:
    """The measured broker-SIGKILL loss against what the broker held only in memory."""
    killed = [r for r in results if r.fault.startswith("mosquitto-sigkill")]
    return {
        r.fault: {
            "kills": len(r.notes.get("held_by_broker_at_kill", [])),
            "acked": r.acked,
            "lost": r.lost,
            "held_by_broker_at_kill": r.notes.get("held_by_broker_at_kill"),
            "lost_share": round(r.lost / r.acked, 6) if r.acked else 0.0,
            "autosave_interval_s": r.notes.get("autosave_interval_s"),
        }
        for r in killed
    }


def write_report(
    results: list[FaultResult], profile: Profile, out: Path, garbage: GarbageResult | None = None
) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    exact = [r for r in results if r.exact]
    summary: dict[str, Any] = {
        "profile": asdict(profile),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "messages_handed": sum(r.handed for r in results),
        "messages_acked": sum(r.acked for r in results),
        "exact_scenarios_clean": all(r.clean for r in exact),
        "broker_sigkill_loss": loss_bound(results),
        "faults": [{**asdict(r), "clean": r.clean} for r in results],
        "garbage_share": garbage
        and {
            **asdict(garbage),
            "ratio": round(garbage.ratio, 3),
            "min_ratio": round(garbage.min_ratio, 3),
            "wall_ratio": round(garbage.wall_ratio, 3),
            "pair_ratios": garbage.pair_ratios,
            "target": GARBAGE_TARGET,
            "meets_target": garbage.meets_target,
        },
    }
    json_path = out / "chaos-report.json"
    json_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    lines = [
        f"# fieldtrack chaos report ({profile.name} profile)",
        "",
        f"Finished {summary['finished_at']}; {summary['messages_handed']:,} messages handed to "
        f"devices' MQTT clients, {summary['messages_acked']:,} acknowledged by the broker. "
        f"Exact scenarios clean: **{summary['exact_scenarios_clean']}**.",
        "",
        "| fault | guarantee | seconds | published | acked | stored | lost | duplicated "
        "| unexpected | redeliveries absorbed | caught up (s) | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        notes = ", ".join(f"{k}={v}" for k, v in r.notes.items())
        lines.append(
            f"| {r.fault} | {'exact' if r.exact else 'bounded'} | {r.seconds:.0f} | {r.handed} "
            f"| {r.acked} | {r.stored} | {r.lost} | {r.duplicated} | {r.unexpected} "
            f"| {r.redeliveries} | {r.caught_up_s} | {notes} |"
        )
    lines += ["", "## Broker SIGKILL loss bound", ""]
    for name, bound in summary["broker_sigkill_loss"].items():
        lines.append(
            f"- {name}: lost {bound['lost']} of {bound['acked']} acknowledged "
            f"({bound['lost_share']:.4%}) over {bound['kills']} kill(s); the broker held "
            f"{bound['held_by_broker_at_kill']} acknowledged-but-unstored messages at each kill "
            f"(autosave every {bound['autosave_interval_s']} s)."
        )
    hostile = [r for r in results if r.fault == HOSTILE]
    if hostile:
        lines += ["", "## One hostile device while ingest is down", ""]
        lines += [f"- {hostile_line(r)}" for r in hostile]
    if garbage is not None:
        lines += [
            "",
            "## 10 % garbage mixed into valid traffic",
            "",
            f"{len(garbage.cpu_clean)} clean and {len(garbage.cpu_mixed)} mixed drains of "
            f"{garbage.valid_per_round:,} queued valid messages, alternating; each mixed drain "
            f"also holds {garbage.garbage_per_round:,} garbage messages (11 kinds). "
            f"{garbage.quarantined:,} of {garbage.garbage_sent:,} garbage messages quarantined.",
            "",
            "| | clean | with garbage |",
            "|---|---|---|",
            f"| CPU s (ingest + its PostgreSQL sessions) | {garbage.cpu_clean} "
            f"| {garbage.cpu_mixed} |",
            f"| wall s | {garbage.wall_clean} | {garbage.wall_mixed} |",
            "",
            f"Valid ingest with garbage runs at **{garbage.ratio:.3f}** of its clean speed "
            f"(CPU per valid message, median drain of each kind; target ≥ {GARBAGE_TARGET}: "
            f"**{'met' if garbage.meets_target else 'MISSED'}**). Cheapest drain of each kind: "
            f"{garbage.min_ratio:.3f}; pair by pair: {garbage.pair_ratios}; wall time (medians) "
            f"{garbage.wall_ratio:.3f}.",
        ]
    md_path = out / "chaos-report.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


# --- `make chaos` -----------------------------------------------------------------------------

CHAOS_PG_PORT = "54359"
CHAOS_MQTT_PORT = "18860"


def report_dir(state: Path, only: list[str] | None) -> Path:
    """Where a run's report goes: a run of chosen scenarios (`--only`) must not overwrite the
    last full run's report."""
    return state / ("report" if only is None else "report-partial")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fieldtrack's fault suite, long version")
    parser.add_argument("--profile", choices=("long", "short"), default="long")
    parser.add_argument("--only", nargs="*", choices=[*sorted(SCENARIOS), GARBAGE], default=None)
    parser.add_argument(
        "--keep-services",
        action="store_true",
        help="leave the chaos TimescaleDB and Mosquitto running",
    )
    args = parser.parse_args(argv)
    state = Path(os.environ.get("FIELDTRACK_CHAOS_STATE_DIR", PROJECT_ROOT / ".state" / "chaos"))
    os.environ["FIELDTRACK_STATE_DIR"] = str(state.resolve())
    os.environ.setdefault("FIELDTRACK_LOCAL_PG_PORT", CHAOS_PG_PORT)
    os.environ.setdefault("FIELDTRACK_LOCAL_MQTT_PORT", CHAOS_MQTT_PORT)
    profile = LONG if args.profile == "long" else SHORT

    from services.core.settings import get_settings

    services = LocalServices.from_env()
    services.up(_report)
    get_settings.cache_clear()
    settings = get_settings()
    results: list[FaultResult] = []
    garbage: GarbageResult | None = None
    chosen = args.only or [*SCENARIOS, GARBAGE]
    try:
        with BrokerAdmin(
            settings.mqtt_host,
            settings.mqtt_port,
            settings.mqtt_admin_username,
            settings.mqtt_admin_password.get_secret_value(),
        ) as admin:
            for name in chosen:
                print(f"== {name} ({profile.name})", flush=True)
                if name == GARBAGE:
                    garbage = measure_garbage_share(services, settings, admin, profile)
                    print(garbage.line(), flush=True)
                    continue
                result = run_scenario(services, settings, admin, SCENARIOS[name], profile)
                print(result.line(), flush=True)
                if name == HOSTILE:
                    print(hostile_line(result), flush=True)
                results.append(result)
    finally:
        if results or garbage:
            out = report_dir(state, args.only)
            json_path, md_path = write_report(results, profile, out, garbage)
            print(f"report: {md_path} and {json_path}")
        if not args.keep_services:
            services.down(_report)
    failed = [r.fault for r in results if r.exact and not r.clean]
    if failed:
        print(f"FAILED: {failed} lost, duplicated or invented messages", file=sys.stderr)
        return 1
    if garbage is not None and not garbage.meets_target:
        print(f"FAILED: {garbage.line()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
