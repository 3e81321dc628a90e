"""Processes under test: `fieldtrack ingest` (a real, separate process with its own broker
session and Prometheus endpoint) and the naive reference; their CPU and memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench import PROJECT_ROOT
from services.core.settings import Settings, child_environment

CONNECT_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def connection_env(settings: Settings) -> dict[str, str]:
    """The environment a fieldtrack process needs to reach the benchmark's services."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **child_environment(settings)}


NATS_READY_LINE = "consuming $MQTT_msgs"


class Proc:
    """A subprocess with a log file, started and stopped by the benchmark."""

    ready_line = ""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_dir: Path):
        self.name, self.argv, self.env = name, list(argv), env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None  # noqa: S101
        return self.proc.pid

    def launch(self) -> None:
        self.runs += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- run {self.runs} ---\n".encode())
            self.proc = subprocess.Popen(
                self.argv,
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text.rsplit(f"--- run {self.runs} ---\n", 1)[-1]

    def wait_ready(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_line in self.log():
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not start:\n{self.log()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


class IngestProc(Proc):
    """`fieldtrack ingest` against the bench database, with its own client id and metrics."""

    ready_line = "connected to broker"

    def __init__(self, settings: Settings, client_id: str, group: str, log_dir: Path) -> None:
        self.metrics_port = free_port()
        env = {
            **connection_env(settings),
            "FIELDTRACK_INGEST_CLIENT_ID": client_id,
            "FIELDTRACK_INGEST_SHARE_GROUP": group,
            "FIELDTRACK_INGEST_METRICS_PORT": str(self.metrics_port),
        }
        if settings.broker == "nats":
            self.ready_line = NATS_READY_LINE
        super().__init__(client_id, [sys.executable, "-m", "services", "ingest"], env, log_dir)
        self.client_id = client_id

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics: unlabelled by name, labelled as name{k=v,…}."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return values

    def committed(self) -> int:
        """Usage rows committed so far by this process run (retained status messages the
        broker replays on subscribe are not counted)."""
        try:
            return int(self.metrics().get("fieldtrack_ingest_rows_total{kind=usage}", 0))
        except httpx.HTTPError:
            return 0


@dataclass(frozen=True)
class Usage:
    cpu_percent: float  # of one core; two busy threads on two cores read 200 %
    rss_mib: float  # the largest resident set seen
    cpu_s: float = 0.0  # CPU seconds in all


class Sampler:
    """CPU time and peak RSS of some processes between start() and stop(); with *children*,
    the CPU time of their child processes too (PostgreSQL's backends), those that exit
    meanwhile included."""

    def __init__(
        self, pids: Sequence[int], interval: float = 0.25, *, children: bool = False
    ) -> None:
        self._procs = [psutil.Process(pid) for pid in pids]
        self._children = children
        self._interval = interval
        self._stop = threading.Event()
        self._rss = 0
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._cpu0 = 0.0
        self._t0 = 0.0

    def _cpu(self) -> float:
        total = 0.0
        for proc in self._procs:
            with suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
                if self._children:
                    # a child that exits moves its whole time into the parent's children_*
                    # (the parent reaps it), so live children + reaped ones never jumps back
                    total += times.children_user + times.children_system
                    for child in proc.children():
                        with suppress(psutil.Error):
                            own = child.cpu_times()
                            total += own.user + own.system
        return total

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            rss = 0
            for proc in self._procs:
                with suppress(psutil.Error):
                    rss += proc.memory_info().rss
            self._rss = max(self._rss, rss)

    def start(self) -> Sampler:
        self._cpu0, self._t0 = self._cpu(), time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> Usage:
        cpu, elapsed = self._cpu() - self._cpu0, time.monotonic() - self._t0
        self._stop.set()
        self._thread.join(5)
        return Usage(
            cpu_percent=round(100 * cpu / elapsed, 1) if elapsed > 0 else 0.0,
            rss_mib=round(self._rss / 2**20, 1),
            cpu_s=round(cpu, 3),
        )
