"""A run that resumes an earlier one (the live fleet after a backfill) continues every device's
boot counter and sequence numbers, reboots included: split anywhere, the generator sends the
same messages as one run over the whole span, and ingest has no gap to count."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from device_sim import scenario
from device_sim.cli import scenario_path
from device_sim.generator import Generator
from services.ingest.rollup_sums import sequence_gaps

ORIGIN = datetime(2026, 11, 20, 3, 17, tzinfo=UTC)
SPLIT = ORIGIN + timedelta(days=2, hours=5, minutes=41, seconds=13)
END = SPLIT + timedelta(hours=20)


def _restless(tmp_path: Path) -> scenario.Scenario:
    """The demo with devices that reboot and drop offline several times a day."""
    text = scenario_path("demo").read_text()
    text = text.replace("reboots_per_device_month: 2", "reboots_per_device_month: 90")
    text = text.replace("per_device_month: 4, mean_hours: 3", "per_device_month: 60, mean_hours: 2")
    assert "reboots_per_device_month: 90" in text and "per_device_month: 60" in text
    path = tmp_path / "restless.yaml"
    path.write_text(text)
    return scenario.load(path)


def _messages(generator: Generator, step: timedelta) -> list[tuple[str, bytes]]:
    return [
        (o.serial, o.payload)
        for batch in generator.windows(step)
        for o in batch
        if o.kind is not None
    ]


def test_a_resumed_run_continues_boots_and_sequences_exactly(tmp_path: Path) -> None:
    loaded = _restless(tmp_path)
    anchor = END.date()
    whole = Generator(loaded, ORIGIN, END, anchor=anchor, inject=False)
    everything = _messages(whole, timedelta(hours=1))

    backfill = Generator(loaded, ORIGIN, SPLIT, anchor=anchor, inject=False)
    before = _messages(backfill, timedelta(days=1))
    live = Generator(loaded, SPLIT, END, origin=ORIGIN, anchor=anchor, inject=False)
    after = _messages(live, timedelta(minutes=10))

    assert backfill.truth.reboots > 0 and live.truth.reboots > backfill.truth.reboots
    assert before + after == everything
    # The resumed run's truth covers the whole timeline, as the database will hold it.
    assert live.truth.to_json() == whole.truth.to_json()
    assert (live.truth.start, live.truth.end) == (ORIGIN, END)

    # Within a boot the numbers run on by one; a new boot is a later one (a device may reboot
    # twice between two messages) and starts at 0.
    last: dict[str, tuple[int, int]] = {}
    new_boots = 0
    for serial, payload in everything:
        body = json.loads(payload)
        now = (body["boot"], body["seq"])
        if serial in last:
            boot, seq = last[serial]
            assert now == (boot, seq + 1) or (now[0] > boot and now[1] == 0), (
                serial,
                boot,
                seq,
                now,
            )
            new_boots += now[0] != boot
        last[serial] = now
    assert new_boots > 0


def test_a_device_life_does_not_depend_on_where_a_run_ends(tmp_path: Path) -> None:
    """A live run's end is a year away; its first hours are what a run ending then sends."""
    loaded = _restless(tmp_path)
    anchor = END.date()
    short = Generator(loaded, ORIGIN, SPLIT, anchor=anchor, inject=False)
    long = Generator(loaded, ORIGIN, SPLIT + timedelta(days=365), anchor=anchor, inject=False)
    step = timedelta(hours=1)
    sent = [
        (o.serial, o.payload)
        for t0, t1 in long.bounds(step)
        if t0 < SPLIT
        for o in long.window(t0, min(t1, SPLIT))
        if o.kind is not None
    ]
    assert sent == _messages(short, step)


def test_a_run_starting_inside_an_outage_takes_the_device_offline(tmp_path: Path) -> None:
    loaded = _restless(tmp_path)
    anchor = END.date()
    probe = Generator(loaded, ORIGIN, END, anchor=anchor, inject=False)
    moment, offline = next(
        (t, [d.serial for d in probe.devices if not d.dead and d.offline_at(t)])
        for t in (ORIGIN + timedelta(minutes=30 * i) for i in range(200))
        if any(not d.dead and d.offline_at(t) for d in probe.devices)
    )
    resumed = Generator(loaded, moment, END, origin=ORIGIN, anchor=anchor, inject=False)
    first = resumed.window(moment, moment + timedelta(minutes=1))
    assert sorted(o.serial for o in first if o.control == "offline" and o.at == moment) == sorted(
        offline
    )
    assert not any(o.serial in offline for o in first if o.kind is not None)


def test_per_device_counts_continue_across_any_split(tmp_path: Path) -> None:
    """Messages per device: the backfill's plus the live run's equal one run's."""
    loaded = _restless(tmp_path)
    anchor = END.date()
    whole: dict[str, int] = defaultdict(int)
    for serial, _ in _messages(
        Generator(loaded, ORIGIN, END, anchor=anchor, inject=False), timedelta(hours=3)
    ):
        whole[serial] += 1
    parts: dict[str, int] = defaultdict(int)
    middle = ORIGIN + timedelta(hours=7, minutes=3)
    for start, end in ((ORIGIN, middle), (middle, SPLIT), (SPLIT, END)):
        gen = Generator(loaded, start, end, origin=ORIGIN, anchor=anchor, inject=False)
        for serial, _ in _messages(gen, timedelta(minutes=30)):
            parts[serial] += 1
    assert parts == whole


def test_ingest_counts_nothing_missing_across_the_seam(tmp_path: Path) -> None:
    """The backfill's and the resumed run's messages through ingest's own gap walk
    (rollup_sums.sequence_gaps): no number skipped, no jump, reboots included. (A run started
    afresh would pass this too, its devices starting an unrelated boot; that it continues
    the same boot and numbers is the first test's.)"""
    loaded = _restless(tmp_path)
    anchor = END.date()
    before = _messages(
        Generator(loaded, ORIGIN, SPLIT, anchor=anchor, inject=False), timedelta(days=1)
    )
    live = Generator(loaded, SPLIT, END, origin=ORIGIN, anchor=anchor, inject=False)
    after = _messages(live, timedelta(minutes=10))
    ids: dict[str, int] = {}
    stored = []
    for serial, payload in before + after:
        body = json.loads(payload)
        at = datetime.fromisoformat(body["ts"])
        stored.append((ids.setdefault(serial, len(ids)), 1, body["seq"], at, body["boot"]))
    # as ingest sees them: the history in one import, then the live run batch by batch
    cut = len(before)
    counts, latest = sequence_gaps(stored[:cut], {})
    for first in range(cut, len(stored), 500):
        more, latest_now = sequence_gaps(stored[first : first + 500], latest)
        latest = {**latest, **latest_now}
        for key, value in more.items():
            counts.setdefault(key, [0, 0])
            counts[key] = [counts[key][0] + value[0], counts[key][1] + value[1]]
    assert live.truth.reboots > 0
    assert sum(c[0] for c in counts.values()) == 0
    assert sum(c[1] for c in counts.values()) == 0


def test_a_run_started_afresh_never_reuses_a_boot(tmp_path: Path) -> None:
    """Without --resume a later run is a later power-on: a boot and sequence number of its
    would otherwise name a message of the earlier run, and ingest would drop it as a
    duplicate."""
    loaded = _restless(tmp_path)
    anchor = END.date()
    boots: dict[str, set[int]] = defaultdict(set)
    for serial, payload in _messages(
        Generator(loaded, ORIGIN, SPLIT, anchor=anchor, inject=False), timedelta(hours=6)
    ):
        boots[serial].add(json.loads(payload)["boot"])
    for serial, payload in _messages(
        Generator(loaded, SPLIT, END, anchor=anchor, inject=False), timedelta(hours=6)
    ):
        assert json.loads(payload)["boot"] > max(boots[serial]), serial


def test_a_fleet_that_goes_quiet_sends_nothing_after_and_a_resumed_run_agrees(
    tmp_path: Path,
) -> None:
    """The demo's depot goes quiet 338.1 h after the origin: it says goodbye then, sends
    nothing after, and a run resumed past that point neither sends nor counts anything."""
    loaded = scenario.load(scenario_path("demo"))
    origin = ORIGIN
    quiet = origin + timedelta(hours=338.1)
    start, end = quiet - timedelta(hours=3), quiet + timedelta(hours=3)
    run = Generator(loaded, start, end, origin=origin, anchor=end.date(), inject=False)
    depot = {d.serial for d in run.devices if d.serial.startswith("acme-lgt")}
    sent = [o for batch in run.windows(timedelta(minutes=10)) for o in batch]
    mine = [o for o in sent if o.serial in depot]
    assert max(o.at for o in mine if o.kind is not None) < quiet
    assert {o.serial for o in mine if o.control == "offline" and o.at == quiet} == depot
    assert any(o.at >= quiet for o in sent if o.serial not in depot and o.kind is not None)
    resumed = Generator(
        loaded, quiet + timedelta(hours=1), end, origin=origin, anchor=end.date(), inject=False
    )
    later = [o for batch in resumed.windows(timedelta(minutes=10)) for o in batch]
    assert not [o for o in later if o.serial in depot and o.kind is not None]
