"""The swarm: thousands of real MQTT devices in one process on one network thread, against the
suite's broker and the running ingest. Nothing is mocked: logins, ACLs, PUBACKs, last wills
and the rows ingest stores are all real. For the broker nodes of a cluster, a second node is
a TCP relay to the suite's broker (`NodeRelay`), so that every node's messages reach the same
ingest and a node can die."""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from device_sim.device import SimDevice
from device_sim.swarm import DeviceState, Swarm, SwarmStats
from services.core.broker_admin import BrokerAdmin
from services.core.settings import BrokerNode, Settings, node_name
from services.core.topics import MessageKind
from services.ingest.service import IngestService
from services.registry.upserts import DeviceCredential, provision_devices
from tests.integration.conftest import Project, wait_for
from tests.integration.ingest_support import usage_body

USAGE_ROWS = """
SELECT count(*) FROM usage_events u JOIN devices d ON d.id = u.device_id
WHERE d.serial = ANY(%s)
"""
QUARANTINED_WITH_PAYLOAD = """
SELECT count(*) FROM quarantine WHERE device_serial = ANY(%s) AND payload_size > 0
"""
ONLINE = """
SELECT d.serial, s.online FROM device_state s JOIN devices d ON d.id = s.device_id
WHERE d.serial = ANY(%s)
"""


def usage_rows(conn: psycopg.Connection, serials: Sequence[str]) -> int:
    row = conn.execute(USAGE_ROWS, (list(serials),)).fetchone()
    return int(row[0]) if row else 0


def online(conn: psycopg.Connection, serials: Sequence[str]) -> dict[str, bool | None]:
    return dict(conn.execute(ONLINE, (list(serials),)).fetchall())


def rss_mib() -> float:
    """Resident memory of this process now (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@contextmanager
def provisioned(
    conn: psycopg.Connection, admin: BrokerAdmin, project_id: int, serials: Sequence[str]
) -> Iterator[list[DeviceCredential]]:
    """Device rows and broker identities for *serials*; the identities are removed after."""
    started = time.monotonic()
    try:
        credentials = provision_devices(
            conn, admin, project_id, [(s, "SWARM-1", "1.0") for s in serials]
        )
        print(
            f"\n[swarm] provisioned {len(serials)} devices (rows + broker identities) "
            f"in {time.monotonic() - started:.1f}s"
        )
        yield credentials
    finally:
        started = time.monotonic()
        admin.delete_devices(serials)
        print(
            f"[swarm] removed {len(serials)} broker identities in {time.monotonic() - started:.1f}s"
        )


def publish_all(
    swarm: Swarm, serials: Sequence[str], seqs: range, feature: str, *, threads: int = 4
) -> list[str]:
    """Every device publishes usage message *seq* for each seq, from several threads at once
    (the swarm's publish() is called from threads other than its network thread)."""
    base = datetime.now(UTC) - timedelta(minutes=1)
    errors: list[str] = []

    def work(mine: Sequence[str]) -> None:
        for seq in seqs:
            payload_ts = base + timedelta(milliseconds=seq)
            for serial in mine:
                try:
                    if not swarm.publish(
                        serial, MessageKind.USAGE, usage_body(seq, payload_ts, feature)
                    ):
                        errors.append(f"{serial}/{seq}: refused")
                except Exception as exc:
                    errors.append(f"{serial}/{seq}: {exc!r}")

    workers = [
        threading.Thread(target=work, args=(serials[i::threads],), name=f"publisher-{i}")
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
    return errors


def dead_node() -> BrokerNode:
    """An address nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return ("127.0.0.1", probe.getsockname()[1])


class NodeRelay:
    """Another node of the suite's broker: a TCP relay on a port of its own. `kill` ends it as
    a dying node ends: its listener closes and every connection through it is cut."""

    def __init__(self, broker: BrokerNode) -> None:
        self._broker = broker
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.node: BrokerNode = ("127.0.0.1", self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._dead = False
        threading.Thread(target=self._accept, name="node-relay", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                device, _ = self._listener.accept()
            except OSError:
                return
            try:
                broker = socket.create_connection(self._broker)
            except OSError:
                device.close()  # the broker is away: the device sees a failed connect
                continue
            with self._lock:
                self._sockets += [device, broker]
                if self._dead:  # accepted just as it was killed
                    break
            for src, dst in ((device, broker), (broker, device)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()
        self._cut()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _cut(self) -> None:
        with self._lock:
            self._dead = True
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self._listener.close()
        self._cut()


def assert_clean(stats: SwarmStats, messages: int) -> None:
    assert stats.consistent, stats
    assert (stats.submitted, stats.sent, stats.acked, stats.outstanding) == (
        messages,
        messages,
        messages,
        0,
    ), stats
    assert stats.failed == {} and stats.refused == {} and stats.disconnected == {}, stats
    assert stats.gave_up == 0, stats


# --- 1. two thousand devices ---------------------------------------------------------------


@pytest.mark.slow
# Its own bounded waits add up to over ten minutes; it took 294 s in a loaded run.
@pytest.mark.timeout(900)
def test_two_thousand_devices_publish_from_one_process(
    ingest: IngestService,
    settings: Settings,
    broker_admin: BrokerAdmin,
    conn: psycopg.Connection,
    project: Project,
    unique: str,
) -> None:
    devices, per_device = 2000, 5
    serials = [f"swarm-{unique}-{i:04d}" for i in range(devices)]
    rss_before = rss_mib()
    threads_before = threading.active_count()
    with provisioned(conn, broker_admin, project.id, serials) as credentials:
        swarm = Swarm(
            settings.broker_nodes(),
            [(c.serial, c.password) for c in credentials],
            firmware=dict.fromkeys(serials, "1.0"),
        )
        try:
            started = time.monotonic()
            connected = swarm.start(timeout=120)
            connect_s = time.monotonic() - started
            assert connected == devices, swarm.stats
            added = threading.active_count() - threads_before
            assert added < 10, f"{added} threads for {devices} devices: a thread per device?"

            started = time.monotonic()
            errors = publish_all(swarm, serials, range(1, per_device + 1), project.feature_key)
            handed_s = time.monotonic() - started
            assert not errors, errors[:5]
            assert swarm.wait_acked(120), swarm.stats
            acked_s = time.monotonic() - started
            messages = devices * per_device
            assert_clean(swarm.stats, messages)

            wait_for(lambda: usage_rows(conn, serials) >= messages, timeout=120, interval=0.5)
            stored_s = time.monotonic() - started
            time.sleep(1.0)  # anything extra (a duplicate) would land now
            assert usage_rows(conn, serials) == messages
            # Every birth message reached ingest too.
            wait_for(
                lambda: sum(v is True for v in online(conn, serials).values()) == devices,
                timeout=60,
                interval=0.5,
            )
            print(
                f"[swarm] {devices} devices connected in {connect_s:.1f}s; "
                f"{messages} QoS 1 messages handed over in {handed_s:.1f}s "
                f"({messages / handed_s:,.0f}/s), all acknowledged after {acked_s:.1f}s "
                f"({messages / acked_s:,.0f}/s), stored after {stored_s:.1f}s; "
                f"RSS {rss_before:.0f} → {rss_mib():.0f} MiB, peak {peak_rss_mib():.0f} MiB; "
                f"threads {threading.active_count()}"
            )
        finally:
            swarm.stop(clear_status=True)
        stats = swarm.stats
        assert stats.connected == 0 and stats.consistent, stats
        # Whatever ingest quarantined for these devices, it was none of their messages (the
        # empty retained messages that clear their statuses are all that may show up there).
        wait_for(
            lambda: all(v is False for v in online(conn, serials).values()),
            timeout=60,
            interval=0.5,
        )
        assert conn.execute(QUARANTINED_WITH_PAYLOAD, (serials,)).fetchone() == (0,)


# --- 2. backpressure ---------------------------------------------------------------------


def test_backpressure_blocks_publishers_and_never_drops(
    ingest: IngestService,
    settings: Settings,
    broker_admin: BrokerAdmin,
    conn: psycopg.Connection,
    project: Project,
    unique: str,
) -> None:
    devices, per_device, limit = 100, 40, 50
    serials = [f"swarm-bp-{unique}-{i:03d}" for i in range(devices)]
    with provisioned(conn, broker_admin, project.id, serials) as credentials:
        swarm = Swarm(
            settings.broker_nodes(),
            [(c.serial, c.password) for c in credentials],
            max_outstanding_per_device=5,
            max_outstanding_total=limit,
        )
        peak = 0
        done = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, swarm.stats.outstanding)
                time.sleep(0.001)

        try:
            assert swarm.start(timeout=60) == devices, swarm.stats
            watcher = threading.Thread(target=watch, name="watch-outstanding")
            watcher.start()
            try:
                errors = publish_all(
                    swarm, serials, range(1, per_device + 1), project.feature_key, threads=8
                )
            finally:
                done.set()
                watcher.join(10)
            assert not errors, errors[:5]
            assert swarm.wait_acked(60), swarm.stats
            messages = devices * per_device
            stats = swarm.stats
            assert_clean(stats, messages)
            assert stats.backpressure_waits > 0, "the limit was never reached: test too small"
            assert peak <= limit, peak
            wait_for(lambda: usage_rows(conn, serials) >= messages, timeout=60, interval=0.2)
            time.sleep(0.5)
            assert usage_rows(conn, serials) == messages
            print(
                f"[swarm] backpressure: {messages} messages through a window of {limit}, "
                f"{stats.backpressure_waits} publish() calls waited, peak outstanding {peak}"
            )
        finally:
            swarm.stop(clear_status=True)


# --- 3. refused logins, last will, graceful disconnect --------------------------------------


def test_refusal_is_counted_and_only_a_dropped_device_leaves_a_last_will(
    ingest: IngestService,
    settings: Settings,
    broker_admin: BrokerAdmin,
    conn: psycopg.Connection,
    project: Project,
    unique: str,
) -> None:
    dropped, parted, impostor = (f"swarm-lw-{unique}-{n}" for n in ("drop", "part", "bad"))
    serials = [dropped, parted, impostor]
    with provisioned(conn, broker_admin, project.id, serials) as credentials:
        passwords = {c.serial: c.password for c in credentials}
        passwords[impostor] = "not-the-password"
        swarm = Swarm(settings.broker_nodes(), list(passwords.items()))
        try:
            assert swarm.start(timeout=30) == 2  # no exception for the refused login
            stats = swarm.stats
            assert stats.refused == {"Not authorized": 1}, stats
            assert swarm.state(impostor) is DeviceState.REFUSED
            assert not swarm.publish(impostor, MessageKind.USAGE, b"{}")
            assert swarm.stats.failed == {"device_refused": 1}

            wait_for(lambda: online(conn, [dropped, parted]) == {dropped: True, parted: True})

            assert swarm.disconnect(parted)
            assert swarm.state(parted) is DeviceState.OFFLINE
            assert swarm.drop(dropped)
            assert swarm.state(dropped) is DeviceState.OFFLINE
            # The broker published the dropped device's last will; ingest recorded it.
            wait_for(lambda: online(conn, [dropped])[dropped] is False, timeout=15)
            # The will of the device that said goodbye was discarded: it stays online. The
            # dropped device's will went through the same ingest after it, so ingest has
            # seen anything the parting device could have caused; wait a little more anyway.
            time.sleep(1.0)
            assert online(conn, [parted]) == {parted: True}

            # Messages to a device that is down are counted, not lost silently.
            assert not swarm.publish(parted, MessageKind.USAGE, b"{}")
            stats = swarm.stats
            assert stats.failed == {"device_refused": 1, "device_offline": 1}, stats
            assert stats.disconnected == {}, stats  # we asked for both: not a broker disconnect

            assert swarm.reconnect(dropped)
            wait_for(lambda: online(conn, [dropped])[dropped] is True, timeout=15)
            payload = usage_body(1, datetime.now(UTC), project.feature_key)
            assert swarm.publish(dropped, MessageKind.USAGE, payload)
            assert swarm.wait_acked(10)
            wait_for(lambda: usage_rows(conn, [dropped]) == 1)
            assert swarm.stats.consistent
            # Back online, so that stop() can clear its retained status too.
            assert swarm.reconnect(parted)
        finally:
            swarm.stop(clear_status=True)


# --- 4. disconnected by the broker: recorded, retried a bounded number of times -----------


def test_a_device_the_broker_throws_out_is_recorded_and_not_retried_forever(
    ingest: IngestService,
    settings: Settings,
    broker_admin: BrokerAdmin,
    conn: psycopg.Connection,
    project: Project,
    unique: str,
) -> None:
    kicked, steady = f"swarm-kick-{unique}", f"swarm-steady-{unique}"
    with provisioned(conn, broker_admin, project.id, [kicked, steady]) as credentials:
        swarm = Swarm(settings.broker_nodes(), [(c.serial, c.password) for c in credentials])
        try:
            assert swarm.start(timeout=30) == 2
            broker_admin.disable_device(kicked)  # the broker disconnects it at once
            wait_for(lambda: swarm.state(kicked) is DeviceState.REFUSED, timeout=20)
            stats = swarm.stats
            assert stats.disconnected == {"connection lost": 1}, stats
            assert stats.refused == {"Not authorized": 1}, stats  # its reconnect was refused
            assert stats.connected == 1 and swarm.state(steady) is DeviceState.CONNECTED
            # (Mosquitto's dynamic security kicks a disabled client without its last will.)

            # Re-enabled, a refused device comes back when asked (and stop() can then clear
            # its retained status).
            password = next(c.password for c in credentials if c.serial == kicked)
            broker_admin.create_devices([(kicked, password)])
            assert swarm.reconnect(kicked)
            assert swarm.stats.reconnected == 1
        finally:
            swarm.stop(clear_status=True)


def test_an_unreachable_broker_makes_devices_give_up_after_bounded_attempts() -> None:
    swarm = Swarm([dead_node()], [("nowhere-1", "x"), ("nowhere-2", "x")], max_reconnect_attempts=2)
    try:
        started = time.monotonic()
        assert swarm.publish("nowhere-1", MessageKind.USAGE, b"{}")  # held for the connect
        assert swarm.start(timeout=30) == 0
        elapsed = time.monotonic() - started
        stats = swarm.stats
        assert stats.gave_up == 2, stats
        assert 0.5 < elapsed < 10, elapsed  # backed off, but not forever
        assert stats.failed == {"gave_up_before_ack": 1} and stats.consistent, stats
        assert not swarm.publish("nowhere-2", MessageKind.USAGE, b"{}")
        assert swarm.stats.failed == {"gave_up_before_ack": 1, "device_gave_up": 1}
    finally:
        swarm.stop()


# --- 5. broker nodes: spread, fail over, no acknowledged message lost -----------------------


def test_devices_of_a_dead_node_fail_over_to_a_live_one(
    ingest: IngestService,
    settings: Settings,
    broker_admin: BrokerAdmin,
    conn: psycopg.Connection,
    project: Project,
    unique: str,
) -> None:
    devices, per_device = 20, 3
    serials = [f"swarm-dead-{unique}-{i:02d}" for i in range(devices)]
    dead, [live] = dead_node(), settings.broker_nodes()
    with provisioned(conn, broker_admin, project.id, serials) as credentials:
        swarm = Swarm([dead, live], [(c.serial, c.password) for c in credentials])
        try:
            # Held before the first connect: the dead node's devices send it on the live one.
            errors = publish_all(swarm, serials, range(1, 2), project.feature_key)
            started = time.monotonic()
            assert swarm.start(timeout=30) == devices, swarm.stats
            assert time.monotonic() - started < 5  # one backoff, not the give-up
            stats = swarm.stats
            assert stats.nodes == {node_name(dead): 0, node_name(live): devices}, stats
            assert stats.reconnected == 0, stats  # failed connects are not reconnects

            errors += publish_all(swarm, serials, range(2, per_device + 1), project.feature_key)
            assert not errors, errors[:5]
            assert swarm.wait_acked(30), swarm.stats
            messages = devices * per_device
            assert_clean(swarm.stats, messages)
            wait_for(lambda: usage_rows(conn, serials) >= messages, timeout=30, interval=0.2)
            time.sleep(0.5)
            assert usage_rows(conn, serials) == messages
        finally:
            swarm.stop(clear_status=True)


def test_a_node_that_dies_hands_its_devices_to_the_other_without_losing_a_message(
    ingest: IngestService,
    settings: Settings,
    broker_admin: BrokerAdmin,
    conn: psycopg.Connection,
    project: Project,
    unique: str,
) -> None:
    devices, before, during = 20, 5, 40
    serials = [f"swarm-node-{unique}-{i:02d}" for i in range(devices)]
    [live] = settings.broker_nodes()
    relay = NodeRelay(live)
    nodes = [live, relay.node]
    with provisioned(conn, broker_admin, project.id, serials) as credentials:
        swarm = Swarm(
            nodes, [(c.serial, c.password) for c in credentials], max_outstanding_per_device=5
        )
        try:
            assert swarm.start(timeout=30) == devices, swarm.stats
            half = devices // 2
            assert swarm.stats.nodes == {node_name(live): half, node_name(relay.node): half}
            errors = publish_all(swarm, serials, range(1, before + 1), project.feature_key)
            assert swarm.wait_acked(30), swarm.stats

            # The node dies while its devices publish: some of their messages are in flight.
            seqs = range(before + 1, before + during + 1)
            publisher = threading.Thread(
                target=lambda: errors.extend(
                    publish_all(swarm, serials, seqs, project.feature_key)
                ),
                name="publish-through-the-failover",
            )
            publisher.start()
            wait_for(lambda: swarm.stats.acked >= devices * (before + 2), interval=0.001)
            relay.kill()
            publisher.join(120)
            assert not errors, errors[:5]
            assert swarm.wait_acked(60), swarm.stats

            stats = swarm.stats
            messages = devices * (before + during)
            assert stats.nodes == {node_name(live): devices, node_name(relay.node): 0}, stats
            assert stats.disconnected == {"connection lost": half}, stats
            assert stats.reconnected == half, stats
            assert stats.consistent, stats
            assert (stats.submitted, stats.acked, stats.outstanding) == (messages, messages, 0)
            assert stats.failed == {} and stats.gave_up == 0, stats
            # Every acknowledged message was stored, each once (a resent one is recognised).
            wait_for(lambda: usage_rows(conn, serials) >= messages, timeout=60, interval=0.2)
            time.sleep(1.0)
            assert usage_rows(conn, serials) == messages
        finally:
            swarm.stop(clear_status=True)
            relay.kill()


def test_a_simulated_device_moves_on_from_a_dead_node(
    ingest: IngestService,
    settings: Settings,
    broker_admin: BrokerAdmin,
    conn: psycopg.Connection,
    project: Project,
    unique: str,
) -> None:
    serial = f"sim-dead-{unique}"
    dead, [live] = dead_node(), settings.broker_nodes()
    with provisioned(conn, broker_admin, project.id, [serial]) as [credential]:
        device = SimDevice(serial, credential.password, [dead, live])
        device.start()
        try:
            assert device.connected.wait(15), device.refused
            assert device.node == live
            device.usage(project.feature_key).wait_for_publish(10)
            wait_for(lambda: usage_rows(conn, [serial]) == 1)
        finally:
            device.stop()
