"""Faults on the NATS cluster under load, accounted Jepsen style.

A fleet of real MQTT devices (one swarm, devices spread over the three nodes) publishes usage
messages with known (device, seq) while two real `fieldtrack ingest` processes consume the
replicated MQTT stream. In turn: the node leading the stream is SIGKILLed (and started
again), one ingest process is SIGKILLed (and started again), the read replica is restarted.
Afterwards every message the swarm saw acknowledged is looked for in TimescaleDB: lost,
duplicated and unexpected must all be 0; how long each fault took to recover from is
reported.

Short in `make test` (tests/integration/test_cluster_faults.py), long in `make chaos`
(`python -m tests.integration.cluster_chaos`: its own services in `.state/chaos-cluster`, 2,000
devices, a JSON + Markdown report).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import psycopg

from device_sim.swarm import Swarm
from services.core.aio import run_sync
from services.core.identities import open_identities
from services.core.migrate import migrate
from services.core.nats_stream import MQTT_STREAM
from services.core.settings import Settings
from services.core.topics import MessageKind, nats_client_id
from services.infra.local import LocalServices
from services.infra.nats import NatsNode
from services.registry import upserts as registry
from tests import PROJECT_ROOT
from tests.integration.cluster_support import cluster_settings, process_env
from tests.integration.conftest import make_project
from tests.integration.ingest_support import IngestProcess, stream_ts, usage_body

POLL_S = 0.1


@dataclass
class Profile:
    devices: int
    rate: float  # messages per second over the whole fleet
    phase_s: float  # load before, between and after the faults
    ack_wait_s: float  # the consumer's: how soon a killed ingest's messages come again
    settle_s: float = 120.0


SHORT = Profile(devices=300, rate=150.0, phase_s=4.0, ack_wait_s=5.0)
LONG = Profile(devices=2000, rate=400.0, phase_s=15.0, ack_wait_s=10.0, settle_s=300.0)


@dataclass
class Recovery:
    fault: str
    detail: str
    recovered_s: float  # from the fault to the measure of recovery named in `detail`
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class ClusterFaultReport:
    devices: int
    rate: float
    handed: int = 0
    acked: int = 0
    failed: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    redelivered: int = 0
    spread_before: dict[str, int] = field(default_factory=dict)
    recoveries: list[Recovery] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return (self.lost, self.duplicated, self.unexpected, self.failed) == (0, 0, 0, 0) and (
            self.stored == self.acked == self.handed
        )

    def lines(self) -> list[str]:
        out = [
            f"{self.devices} devices, {self.rate:g} msg/s: handed {self.handed}, acknowledged "
            f"{self.acked}, failed {self.failed}; stored {self.stored}; lost {self.lost}, "
            f"duplicated {self.duplicated}, unexpected {self.unexpected}; redeliveries absorbed "
            f"{self.redelivered}; {self.seconds:.0f} s",
            f"devices per node before the faults: {self.spread_before}",
        ]
        out += [
            f"{r.fault}: {r.detail} after {r.recovered_s:.2f} s {r.extra}" for r in self.recoveries
        ]
        return out


READINGS = """
SELECT d.serial, u.seq, count(*)
FROM usage_events u JOIN devices d ON d.id = u.device_id
WHERE d.project_id = %s GROUP BY 1, 2
"""


class Publisher:
    """Every device publishes seq 1, 2, … in turn, at the profile's rate over the fleet."""

    def __init__(self, swarm: Swarm, serials: list[str], feature: str, rate: float) -> None:
        self._swarm, self._serials, self._feature, self._rate = swarm, serials, feature, rate
        self.handed: dict[str, int] = dict.fromkeys(serials, 0)  # last seq handed per device
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._base = datetime.now(UTC)
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        started, sent, seq = time.monotonic(), 0, 0
        try:
            while not self.stop.is_set():
                seq += 1
                for serial in self._serials:
                    if self.stop.is_set():
                        return
                    body = usage_body(seq, stream_ts(self._base, seq), self._feature)
                    if self._swarm.publish(serial, MessageKind.USAGE, body):
                        self.handed[serial] = seq
                    sent += 1
                    ahead = sent / self._rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self._thread.join(30)
        if self.error is not None:
            raise self.error


async def _stream_leader(settings: Settings) -> str | None:
    client = await nats.connect(
        servers=settings.nats.url_list(),
        user=settings.mqtt_ingest_username,
        password=settings.mqtt_ingest_password.get_secret_value(),
        allow_reconnect=False,
        max_reconnect_attempts=0,
        connect_timeout=2,
    )
    try:
        info = await client.jetstream().stream_info(MQTT_STREAM)
        return info.cluster.leader if info.cluster else None
    finally:
        await client.close()


def stream_leader(settings: Settings) -> str | None:
    """The node leading the MQTT stream, or None while it has none (an election)."""
    try:
        return run_sync(lambda: asyncio.wait_for(_stream_leader(settings), 3))
    except Exception:  # no node answers yet, or no leader: both mean "not yet"
        return None


def wait_until(check: Any, timeout: float, what: str) -> float:
    """Seconds until check() is true; AssertionError after *timeout*."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(POLL_S)
    return time.monotonic() - started


def stored_total(url: str, project_id: int) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM usage_events u JOIN devices d ON d.id = u.device_id "
            "WHERE d.project_id = %s",
            (project_id,),
        ).fetchone()
    return int(row[0]) if row else 0


def run_cluster_faults(
    services: LocalServices,
    settings: Settings,
    profile: Profile,
    log_dir: Path,
    *,
    report: Any = print,
) -> ClusterFaultReport:
    """Run the three faults under load on the cluster *settings* name (broker nats, its
    nodes running); the read replica of *services* must run."""
    started = time.monotonic()
    tag = uuid.uuid4().hex[:8]
    url = settings.database_url.get_secret_value()
    settings = settings.model_copy(
        update={
            "nats": settings.nats.model_copy(
                update={"consumer": f"faults-{tag}", "ack_wait_s": profile.ack_wait_s}
            )
        }
    )
    result = ClusterFaultReport(profile.devices, profile.rate)
    with psycopg.connect(url, autocommit=True) as conn:
        project = make_project(conn, tag)
        project_id, feature = project.id, project.feature_key
        serials = [f"cf-{tag}-{i:05d}" for i in range(profile.devices)]
        with open_identities(settings) as identities:
            credentials = registry.provision_devices(
                conn, identities, project_id, [(s, "T1", "1.0") for s in serials]
            )
    log_dir.mkdir(parents=True, exist_ok=True)
    ingests = [
        IngestProcess(url, f"fieldtrack-ingest-cf{i}", "", log_dir, metrics_port=0)
        for i in range(2)
    ]
    for ingest in ingests:
        ingest.env.update(process_env(settings))
        ingest.start(timeout=60)
    nodes = [("127.0.0.1", node.mqtt_port) for node in services.cluster.nodes]
    swarm = Swarm(
        nodes,
        [(c.serial, c.password) for c in credentials],
        client_id_of=nats_client_id,
        max_reconnect_attempts=1000,  # a device keeps trying: its node may be away a while
        max_outstanding_total=50_000,
    )
    publisher = Publisher(swarm, serials, feature, profile.rate)
    try:
        connected = swarm.start(timeout=120)
        assert connected == profile.devices, f"only {connected} devices connected"
        result.spread_before = swarm.stats.nodes
        report(f"{connected} devices connected: {result.spread_before}")
        publisher.start()
        time.sleep(profile.phase_s)
        result.recoveries.append(kill_stream_leader(services, settings, swarm, profile))
        report(result.recoveries[-1])
        time.sleep(profile.phase_s)
        result.recoveries.append(kill_one_ingest(ingests[0], url, project_id, swarm, profile))
        report(result.recoveries[-1])
        time.sleep(profile.phase_s)
        result.recoveries.append(restart_replica(services, url))
        report(result.recoveries[-1])
        time.sleep(profile.phase_s)
        publisher.finish()
        assert swarm.wait_acked(profile.settle_s), "messages still unacknowledged"
        stats = swarm.stats
        result.acked, result.failed = stats.acked, sum(stats.failed.values())
        result.handed = sum(publisher.handed.values())
        wait_until(
            lambda: stored_total(url, project_id) >= result.acked,
            profile.settle_s,
            "every acknowledged message stored",
        )
        time.sleep(1)  # a duplicate would arrive with the last redeliveries
        account(url, project_id, publisher.handed, result)
    finally:
        publisher.stop.set()
        swarm.stop(clear_status=True)
        for ingest in ingests:
            if ingest.alive():
                ingest.terminate()
        result.redelivered = sum(
            int(n) for ingest in ingests for n in _redelivered(ingest.all_logs())
        )
        result.seconds = time.monotonic() - started
    return result


def _redelivered(log: str) -> list[str]:
    marker = "absorbed "
    return [line.split(marker)[1].split()[0] for line in log.splitlines() if marker in line]


def account(url: str, project_id: int, handed: dict[str, int], result: ClusterFaultReport) -> None:
    """Compare what is stored with what was handed (every message handed was acknowledged:
    `failed` is 0 in a clean run, so handed == acknowledged, message for message)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(READINGS, (project_id,)).fetchall()
    stored = {(serial, int(seq)) for serial, seq, _n in rows}
    expected = {(serial, seq) for serial, last in handed.items() for seq in range(1, last + 1)}
    result.stored = len(stored)
    result.duplicated = sum(1 for *_key, n in rows if n > 1)
    result.lost = len(expected - stored)
    result.unexpected = len(stored - expected)


def kill_stream_leader(
    services: LocalServices, settings: Settings, swarm: Swarm, profile: Profile
) -> Recovery:
    leader = stream_leader(settings)
    victim: NatsNode = next(
        (n for n in services.cluster.nodes if n.name == leader), services.cluster.nodes[0]
    )
    before = swarm.stats
    on_victim = before.nodes.get(f"127.0.0.1:{victim.mqtt_port}", 0)
    killed_at = time.monotonic()
    victim.stop(signal.SIGKILL)
    new_leader_s = wait_until(
        lambda: stream_leader(settings) not in (None, victim.name), 60, "a new stream leader"
    )
    acked = swarm.stats.acked
    wait_until(lambda: swarm.stats.acked > acked, 60, "PUBACKs again")
    pubacks_again_s = time.monotonic() - killed_at
    wait_until(lambda: swarm.stats.connected == profile.devices, 120, "every device back on a node")
    reconnected_s = time.monotonic() - killed_at
    victim.start()
    wait_until(victim.healthy, 60, f"{victim.name} back and current")
    return Recovery(
        "SIGKILL of the stream's leader node",
        f"{victim.name} (leader: {leader}); its {on_victim} devices reconnected elsewhere",
        reconnected_s,
        {
            "new_stream_leader_s": round(new_leader_s, 2),
            "pubacks_again_s": round(pubacks_again_s, 2),
            "node_rejoined_s": round(time.monotonic() - killed_at, 2),
        },
    )


def kill_one_ingest(
    ingest: IngestProcess, url: str, project_id: int, swarm: Swarm, profile: Profile
) -> Recovery:
    killed_at = time.monotonic()
    ingest.kill()
    target = swarm.stats.acked
    caught_up_s = wait_until(
        lambda: stored_total(url, project_id) >= target,
        profile.ack_wait_s + 60,
        "what was acknowledged at the kill stored",
    )
    ingest.start(timeout=60)
    return Recovery(
        "SIGKILL of one of two ingest processes",
        "everything acknowledged at the kill stored (its unacknowledged batch redelivered "
        f"to the other after the {profile.ack_wait_s:g} s ack wait)",
        caught_up_s,
        {"restarted_s": round(time.monotonic() - killed_at, 2)},
    )


def restart_replica(services: LocalServices, url: str) -> Recovery:
    replica = services.replica
    database = url.rsplit("/", 1)[1].split("?", maxsplit=1)[0]
    restarted_at = time.monotonic()
    replica.stop()
    replica.start(print)
    replica.wait_ready()
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    target = row[0]
    replica_url = url.replace(f":{services.pg_port}/", f":{services.pg_replica_port}/")

    def caught_up() -> bool:
        try:
            with psycopg.connect(replica_url, autocommit=True, connect_timeout=2) as conn:
                got = conn.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
                ).fetchone()
            return bool(got and got[0])
        except psycopg.Error:
            return False

    caught_up_s = wait_until(caught_up, 120, "the replica replaying past the primary")
    return Recovery(
        "restart of the read replica",
        f"replica answering and replayed past the primary's position at restart ({database})",
        time.monotonic() - restarted_at,
        {"replay_caught_up_s": round(caught_up_s, 2)},
    )


# --- `make chaos`: the long run on services of its own -------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=LONG.devices)
    parser.add_argument("--rate", type=float, default=LONG.rate)
    parser.add_argument("--phase-s", type=float, default=LONG.phase_s)
    args = parser.parse_args(argv)
    profile = replace(LONG, devices=args.devices, rate=args.rate, phase_s=args.phase_s)
    state = Path(
        os.environ.setdefault(
            "FIELDTRACK_STATE_DIR", str(PROJECT_ROOT / ".state" / "chaos-cluster")
        )
    )
    for key, port in (
        ("FIELDTRACK_LOCAL_PG_PORT", "54379"),
        ("FIELDTRACK_LOCAL_PG_REPLICA_PORT", "54380"),
        ("FIELDTRACK_LOCAL_MQTT_PORT", "18890"),
        ("FIELDTRACK_LOCAL_NATS_PORT", "14260"),
        ("FIELDTRACK_LOCAL_NATS_MQTT_PORT", "18891"),
    ):
        os.environ.setdefault(key, port)
    services = LocalServices.from_env()
    services.remove_replica(print)  # a replica of an earlier run may stream from elsewhere
    services.up(print, replica=True)
    from services.core.settings import get_settings

    get_settings.cache_clear()
    base = get_settings()
    services.cluster.remove(print)
    services.cluster.up(services.cluster_secrets(services.load_secrets()), print)
    with services.postgres.scratch_database(
        base.database_url.get_secret_value(), "fieldtrack_cluster_chaos"
    ) as url:
        migrate(url)
        from pydantic import SecretStr

        settings = cluster_settings(
            services, base.model_copy(update={"database_url": SecretStr(url)})
        )
        callout = services.callout
        callout.stop()
        callout.start(env=process_env(settings))
        try:
            result = run_cluster_faults(services, settings, profile, state / "logs")
        finally:
            callout.stop()
            services.cluster.remove(print)
    out = state / "report"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster-faults.json").write_text(
        json.dumps({**asdict(result), "clean": result.clean}, indent=2, default=str)
    )
    (out / "cluster-faults.md").write_text(
        "# Faults on the NATS cluster\n\n"
        + "\n".join(f"- {line}" for line in result.lines())
        + "\n"
    )
    print("\n".join(result.lines()))
    print(f"report: {out / 'cluster-faults.md'}")
    return 0 if result.clean else 1


if __name__ == "__main__":
    sys.exit(main())
