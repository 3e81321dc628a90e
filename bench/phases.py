"""fieldtrack end to end, and the naive reference, under the same load.

simulator swarm → Mosquitto → `fieldtrack ingest` (1 or 2 real processes, one shared
subscription, QoS 1, acknowledged after commit) → TimescaleDB. Two ways to drive it:

- **live**: ingest runs while the swarm publishes as fast as the broker takes it; the rate
  is messages ÷ (first publish → last commit). Publisher, broker, ingest and PostgreSQL
  share the machine's cores, as they would on one small box.
- **backlog**: the messages are queued in ingest's persistent session while it is stopped,
  then ingest starts and drains them: what ingest alone sustains, the publisher idle.

Every phase checks that the rows stored equal the messages the broker acknowledged.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psycopg

from bench.ceilings import publish_paced_with_c_clients, publish_with_c_clients
from bench.env import BenchData
from bench.load import Load, LoadPlan, Sent
from bench.procs import IngestProc, Proc, Sampler, Usage, connection_env
from services.ingest.service import discard_session

WAIT_S = 300.0
POLL_S = 0.05
LAG_METRIC = "fieldtrack_ingest_publish_to_commit_seconds"

STORED = """
SELECT count(*), count(DISTINCT (device_id, seq))
FROM usage_events WHERE project_id = %s AND seq >= %s AND seq < %s
"""
RECEIVE_LAG = """
SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (
    ORDER BY extract(epoch FROM received_at - device_time))
FROM usage_events WHERE project_id = %s AND seq >= %s AND seq < %s AND item = 0
"""


@dataclass
class Phase:
    name: str
    mode: str  # live | backlog | paced
    processes: int
    readings: int
    messages: int  # planned
    acked: int = 0  # PUBACKs the publisher got
    failed: int = 0
    seconds: float = 0.0
    msgs_per_s: float = 0.0
    rows_per_s: float = 0.0
    sustained_msgs_per_s: float = 0.0  # between 10 % and 90 % of the rows committed
    publish_msgs_per_s: float = 0.0
    stored_messages: int = 0
    stored_rows: int = 0
    lost: int = 0
    cpu_percent: float = 0.0
    rss_mib: float = 0.0
    cpu_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sustained(samples: Sequence[tuple[float, int]], target: int) -> float:
    """Rows per second between the samples at 10 % and 90 % of *target*."""
    low = next((s for s in samples if s[1] >= 0.1 * target), None)
    high = next((s for s in samples if s[1] >= 0.9 * target), None)
    if low is None or high is None or high[0] <= low[0]:
        return 0.0
    return (high[1] - low[1]) / (high[0] - low[0])


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) buckets."""
    total = buckets[-1][1]
    if total <= 0:
        return math.nan
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bound: at least this much
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


def lag_buckets(metrics: dict[str, float]) -> list[tuple[float, float]]:
    prefix = f"{LAG_METRIC}_bucket{{le="
    return sorted(
        (float(key[len(prefix) : -1]), value)
        for key, value in metrics.items()
        if key.startswith(prefix)
    )


def sum_buckets(per_process: Sequence[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Several processes' cumulative histograms as one (same bucket bounds)."""
    total: dict[float, float] = {}
    for buckets in per_process:
        for bound, count in buckets:
            total[bound] = total.get(bound, 0.0) + count
    return sorted(total.items())


class IngestBench:
    def __init__(self, data: BenchData, load: Load, log_dir: Path, say: Callable[[str], None]):
        self.data, self.load, self.log_dir, self.say = data, load, log_dir, say

    # --- ingest processes ---------------------------------------------------------------

    def _procs(self, phase: str, count: int) -> list[IngestProc]:
        group = f"bench-{self.data.token}-{phase}"
        return [
            IngestProc(
                self.data.settings, f"fieldtrack-ingest-{group}-{i + 1}", group, self.log_dir
            )
            for i in range(count)
        ]

    @staticmethod
    def _launch(procs: Sequence[IngestProc]) -> None:
        for proc in procs:
            proc.launch()
        for proc in procs:
            proc.wait_ready()

    def _subscribed(self, procs: Sequence[IngestProc]) -> None:
        """Probe until every process has stored a probe: all are subscribed."""
        deadline = time.monotonic() + 30
        while any(proc.committed() == 0 for proc in procs):
            if time.monotonic() > deadline:
                raise RuntimeError("ingest did not store the probe messages within 30 s")
            self.load.probe()
            time.sleep(0.1)

    def _retire(self, procs: Sequence[IngestProc]) -> None:
        for proc in procs:
            code = proc.stop()
            if code not in (0, None):
                self.say(f"warning: {proc.name} exited {code}; see {proc.log_path}")
        for proc in procs:
            discard_session(self.data.settings, proc.client_id)

    def _wait_rows(
        self, procs: Sequence[IngestProc], target: int, baseline: int = 0
    ) -> list[tuple[float, int]]:
        """Poll the processes' committed usage rows until *target* more than *baseline*;
        the (monotonic time, rows) samples."""
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + WAIT_S
        while True:
            rows = sum(proc.committed() for proc in procs) - baseline
            samples.append((time.monotonic(), rows))
            if rows >= target:
                return samples
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingest committed {rows} of {target} rows in {WAIT_S:.0f}s")
            if any(proc.proc is not None and proc.proc.poll() is not None for proc in procs):
                raise RuntimeError(f"an ingest process died; see {self.log_dir}")
            time.sleep(POLL_S)

    def _stored(self, plan: LoadPlan) -> tuple[int, int]:
        with psycopg.connect(self.data.url) as conn:
            row = conn.execute(STORED, (self.data.project_id, plan.first_seq, plan.seq_end))
            rows, messages = row.fetchone() or (0, 0)
        return int(rows), int(messages)

    def _account(self, phase: Phase, plan: LoadPlan, sent: Sent) -> None:
        phase.acked, phase.failed = sent.messages, sent.failed
        phase.publish_msgs_per_s = round(sent.rate)
        phase.stored_rows, phase.stored_messages = self._stored(plan)
        phase.lost = sent.messages - phase.stored_messages

    @staticmethod
    def _usage(phase: Phase, usage: Usage) -> None:
        phase.cpu_percent, phase.rss_mib = usage.cpu_percent, usage.rss_mib
        phase.cpu_s = usage.cpu_s

    # --- phases ---------------------------------------------------------------------------

    def throughput(
        self,
        name: str,
        messages: int,
        readings: int,
        processes: int,
        *,
        mode: str,
        on_drain: Callable[[int], None] | None = None,
        others: Mapping[str, Sampler] | None = None,
    ) -> Phase:
        """*messages* of *readings* readings through *processes* ingest processes, `live`
        (the swarm publishing), `live_c` (mosquitto_pub publishing) or `backlog`; *on_drain*
        is called (in a thread) with the first process's pid as a backlog starts draining
        (to profile it). *others* (the broker, PostgreSQL) are sampled over the same span
        as ingest; their usage goes into the phase's extra."""
        others = others or {}
        c_load = mode == "live_c"
        plan = self._plan(messages, readings, c_load)
        phase = Phase(name, mode, processes, readings, plan.messages)
        procs = self._procs(name, processes)
        self._launch(procs)
        try:
            self._subscribed(procs)
            if mode == "backlog":
                self._retire_keeping_sessions(procs)
                sent = self.load.send(plan)
                self._launch(procs)  # fresh processes: their counters start at zero
                baseline = 0
                started = time.monotonic()
                sampler = Sampler([p.pid for p in procs]).start()
                for other in others.values():
                    other.start()
                watcher = (
                    threading.Thread(target=on_drain, args=(procs[0].pid,)) if on_drain else None
                )
                if watcher:
                    watcher.start()
                samples = self._wait_rows(procs, plan.rows)
                if watcher:
                    watcher.join(WAIT_S)
            else:
                send = self._sender(plan, c_load)
                baseline = sum(proc.committed() for proc in procs)
                sampler = Sampler([p.pid for p in procs]).start()
                for other in others.values():
                    other.start()
                started = time.monotonic()
                result: list[Sent] = []
                sender = threading.Thread(target=lambda: result.append(send()))
                sender.start()
                samples = self._wait_rows(procs, plan.rows, baseline)
                sender.join(WAIT_S)
                sent = result[0]
            self._usage(phase, sampler.stop())
            phase.extra = {name: asdict(other.stop()) for name, other in others.items()}
        finally:
            self._retire(procs)
        phase.seconds = round(samples[-1][0] - started, 3)
        phase.msgs_per_s = round(plan.messages / phase.seconds)
        phase.rows_per_s = round(plan.rows / phase.seconds)
        phase.sustained_msgs_per_s = round(sustained(samples, plan.rows) / readings)
        self._account(phase, plan, sent)
        return phase

    def _plan(self, messages: int, readings: int, c_load: bool) -> LoadPlan:
        serials = [c.serial for c in self.data.c_publishers] if c_load else None
        return self.load.plan(messages, readings, serials)

    def _sender(self, plan: LoadPlan, c_load: bool) -> Callable[[], Sent]:
        """What sends the plan's load, made ready (mosquitto_pub's payload files written)."""
        if c_load:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            return publish_with_c_clients(
                self.data.settings, self.data.c_publishers, plan, self.log_dir
            )
        return partial(self.load.send, plan)

    def _retire_keeping_sessions(self, procs: Sequence[IngestProc]) -> None:
        for proc in procs:
            proc.stop()

    def latency(
        self, rate: float, seconds: float, *, processes: int = 1, c_load: bool = False
    ) -> Phase:
        """Single-reading messages paced at *rate* msgs/s (by the swarm, or fed line by line
        to mosquitto_pub with *c_load*) through *processes* ingest processes: publish (the
        payload's ts, stamped as it is sent) to commit, from ingest's own histograms; publish
        to receive from the stored rows."""
        plan = self._plan(max(1, int(rate * seconds)), 1, c_load)
        phase = Phase("latency", "paced_c" if c_load else "paced", processes, 1, plan.messages)
        procs = self._procs("latency", processes)
        self._launch(procs)
        try:
            self._subscribed(procs)
            before = sum_buckets([lag_buckets(p.metrics()) for p in procs])
            baseline = sum(p.committed() for p in procs)
            sampler = Sampler([p.pid for p in procs]).start()
            started = time.monotonic()
            if c_load:
                sent = publish_paced_with_c_clients(
                    self.data.settings, self.data.c_publishers, plan, rate
                )
            else:
                sent = self.load.send(plan, rate=rate)
            samples = self._wait_rows(procs, plan.rows, baseline)
            self._usage(phase, sampler.stop())
            after = sum_buckets([lag_buckets(p.metrics()) for p in procs])
        finally:
            self._retire(procs)
        buckets = [(b, n - dict(before).get(b, 0.0)) for b, n in after]
        phase.seconds = round(samples[-1][0] - started, 3)
        phase.msgs_per_s = round(plan.messages / phase.seconds)
        phase.rows_per_s = phase.msgs_per_s
        self._account(phase, plan, sent)
        with psycopg.connect(self.data.url) as conn:
            row = conn.execute(RECEIVE_LAG, (self.data.project_id, plan.first_seq, plan.seq_end))
            receive = (row.fetchone() or [None])[0] or [math.nan, math.nan]
        phase.extra = {
            "target_rate": round(rate),
            "p50_publish_to_commit_s": round(histogram_quantile(buckets, 0.5), 4),
            "p99_publish_to_commit_s": round(histogram_quantile(buckets, 0.99), 4),
            "within_1s": round(dict(buckets).get(1.0, 0.0) / max(buckets[-1][1], 1), 5),
            "p50_publish_to_receive_s": round(float(receive[0]), 4),
            "p99_publish_to_receive_s": round(float(receive[1]), 4),
            "histogram": [[b, n] for b, n in buckets],
        }
        return phase

    def naive(self, messages: int, window: float, *, c_load: bool = False) -> Phase:
        """The naive consumer under the same live load (the swarm's, or mosquitto_pub's with
        *c_load*): rows it committed in *window* s."""
        plan = self._plan(messages, 1, c_load)
        phase = Phase(
            "naive_c" if c_load else "naive", "live_c" if c_load else "live", 1, 1, plan.messages
        )
        client_id = f"bench-{self.data.token}-naive-{uuid.uuid4().hex[:4]}"
        proc = Proc(
            client_id,
            [sys.executable, "-m", "bench.naive"],
            {**connection_env(self.data.settings), "NAIVE_CLIENT_ID": client_id},
            self.log_dir,
        )
        proc.ready_line = "naive: subscribed"
        proc.launch()
        try:
            proc.wait_ready()
            send = self._sender(plan, c_load)
            sampler = Sampler([proc.pid]).start()
            started = time.monotonic()
            result: list[Sent] = []
            sender = threading.Thread(target=lambda: result.append(send()))
            sender.start()
            time.sleep(window)
            rows, _ = self._stored(plan)
            elapsed = time.monotonic() - started
            self._usage(phase, sampler.stop())
            sender.join(WAIT_S)
        finally:
            proc.stop()
            discard_session(self.data.settings, client_id)
        phase.seconds = round(elapsed, 3)
        phase.msgs_per_s = phase.rows_per_s = round(rows / elapsed)
        phase.sustained_msgs_per_s = phase.msgs_per_s
        phase.acked, phase.failed = result[0].messages, result[0].failed
        phase.publish_msgs_per_s = round(result[0].rate)
        phase.stored_rows = phase.stored_messages = rows
        phase.extra = {"window_s": window, "note": "rows committed within the window"}
        return phase
