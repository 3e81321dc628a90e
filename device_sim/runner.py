"""The simulator's modes: paced (live or accelerated), load, backfill and export.

All of them walk the same deterministic generator; they differ only in what they do with
each message and how fast. Simulated time never runs ahead of the real clock, so device
timestamps stay inside ingest's future tolerance: an accelerated run starts in the past and
settles into real time once it has caught up.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from device_sim.generator import Generator, Outgoing
from services.core.topics import MessageKind

# One window of simulated time per real second at most; never more than this much at once,
# so a fast run still interleaves devices the way a real fleet would.
MAX_WINDOW = timedelta(minutes=10)
BACKFILL_WINDOW = timedelta(days=1)
RATE_CHECK_EVERY = 50  # messages between rate-limit checks in load mode

Progress = Callable[[int], None]


class Publisher(Protocol):
    """What the paced and load modes need from a fleet of connected devices (the Swarm)."""

    def publish(self, serial: str, kind: MessageKind, payload: bytes) -> object: ...
    def drop(self, serial: str) -> object: ...
    def reconnect(self, serial: str) -> object: ...


class HistorySink(Protocol):
    """Where the backfill puts each message: ingest's history importer, handed in by the
    caller (the simulator knows MQTT and the message schemas, not ingest)."""

    def add(self, serial: str, kind: MessageKind, payload: bytes) -> object: ...


class Windowed(Protocol):
    """What the load mode walks: the Generator, or any other source of device messages in
    windows (the benchmark builds its messages as they are sent, stamped with the real time)."""

    def windows(self, step: timedelta) -> Iterable[Iterable[Outgoing]]: ...


@dataclass
class RunCounts:
    published: int = 0
    offline_events: int = 0
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.published / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _deliver(item: Outgoing, fleet: Publisher, counts: RunCounts) -> None:
    if item.control == "offline":
        fleet.drop(item.serial)  # no DISCONNECT: the broker publishes the last will
        counts.offline_events += 1
    elif item.control == "online":
        fleet.reconnect(item.serial)
    elif item.kind is not None:
        fleet.publish(item.serial, item.kind, item.payload)
        counts.published += 1


def run_paced(
    generator: Generator,
    fleet: Publisher,
    *,
    speed: float,
    stop: threading.Event,
    progress: Progress | None = None,
) -> RunCounts:
    """Send each window when the simulated clock reaches it: `speed` simulated seconds per
    real second, but never ahead of real time."""
    counts = RunCounts()
    started = time.monotonic()
    step = min(MAX_WINDOW, timedelta(seconds=max(1.0, speed)))
    for t0, t1 in generator.bounds(step):
        # A window goes out once the simulated clock has passed its end: nothing is ever
        # sent before its time, so no device timestamp runs ahead of the real clock.
        while not stop.is_set():
            elapsed = time.monotonic() - started
            clock = min(datetime.now(UTC), generator.start + timedelta(seconds=elapsed * speed))
            if clock >= t1:
                break
            stop.wait(min(1.0, (t1 - clock).total_seconds() / max(speed, 1.0)))
        if stop.is_set():
            break
        # Generated only now: a window cut short by `stop` is neither sent nor in the truth.
        for item in generator.window(t0, t1):
            _deliver(item, fleet, counts)
        if progress:
            progress(counts.published)
    counts.elapsed_s = time.monotonic() - started
    return counts


def run_load(
    generator: Windowed,
    fleet: Publisher,
    *,
    rate: float | None,
    stop: threading.Event,
    progress: Progress | None = None,
) -> RunCounts:
    """Send everything as fast as the broker takes it, or at `rate` messages per second."""
    counts = RunCounts()
    started = time.monotonic()
    for batch in generator.windows(MAX_WINDOW):
        for item in batch:
            if stop.is_set():
                break
            _deliver(item, fleet, counts)
            if rate and counts.published % RATE_CHECK_EVERY == 0:
                ahead = counts.published / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        if progress:
            progress(counts.published)
        if stop.is_set():
            break
    counts.elapsed_s = time.monotonic() - started
    return counts


def backfill(generator: Generator, sink: HistorySink, progress: Progress | None = None) -> int:
    """Hand the generated history to `sink` (no MQTT); return how many messages it took.
    The caller finishes the sink (HistoryImporter.finish commits the rest and reports)."""
    sent = 0
    for batch in generator.windows(BACKFILL_WINDOW):
        for item in batch:
            if item.kind is not None:
                sink.add(item.serial, item.kind, item.payload)
                sent += 1
        if progress:
            progress(sent)
    return sent


def export_ndjson(generator: Generator, path: Path, progress: Progress | None = None) -> int:
    """Write the generated history in the NDJSON format `fieldtrack import history` reads."""
    written = 0
    with path.open("wb") as out:
        for batch in generator.windows(BACKFILL_WINDOW):
            for item in batch:
                if item.kind is None:
                    continue
                head = json.dumps({"device": item.serial, "kind": item.kind.value})[:-1].encode()
                body = item.payload[1:] if item.payload.startswith(b"{") else b'"raw":null}'
                out.write(head + b"," + body + b"\n")
                written += 1
            if progress:
                progress(written)
    return written
