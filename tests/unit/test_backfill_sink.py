"""The simulator's backfill hands its messages to a sink it is given (in the command line:
ingest's history importer); the simulator itself never imports ingest."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from device_sim import runner, scenario
from device_sim.cli import scenario_path
from device_sim.generator import Generator
from services.core.topics import MessageKind

END = datetime(2026, 11, 22, tzinfo=UTC)


class Recorder:
    def __init__(self) -> None:
        self.items: list[tuple[str, MessageKind, bytes]] = []

    def add(self, serial: str, kind: MessageKind, payload: bytes) -> None:
        self.items.append((serial, kind, payload))


def _generator() -> Generator:
    demo = scenario.load(scenario_path("demo"))
    return Generator(demo, END - timedelta(hours=6), END, now=END, inject_late=False)


def test_backfill_gives_the_sink_what_export_writes(tmp_path: Path) -> None:
    sink, seen = Recorder(), list[int]()
    sent = runner.backfill(_generator(), sink, seen.append)
    written = runner.export_ndjson(_generator(), tmp_path / "history.ndjson")
    assert sent == len(sink.items) == written > 0
    assert seen and seen[-1] == sent  # progress reports the running count
    lines = (tmp_path / "history.ndjson").read_bytes().splitlines()
    for (serial, kind, _payload), line in zip(sink.items, lines, strict=True):
        record = json.loads(line)
        assert (record["device"], record["kind"]) == (serial, kind.value)
