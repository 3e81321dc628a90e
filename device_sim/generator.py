"""What a scenario's devices send, deterministically, and the ground truth of it.

Every device has its own random stream, seeded from the scenario seed and its serial, and
each day of its life is planned from a stream seeded by (seed, serial, day). The same
scenario therefore produces the same messages whatever the mode (live, accelerated, load,
backfill) and whatever the window size the caller walks time in.

A device's life is also independent of the span a run covers: its reboots and outages are
drawn day by day like its uses, and its scenario dates (go-live, deliveries) count back from
an anchor day, not from the end of the run. A run that starts after the device's *origin*
(the first moment it was simulated, for instance the start of a backfill) replays the time
in between without sending it, so each device continues its boot counter and sequence
numbers exactly where the earlier run left them: a live fleet continues a backfill.

Each message carries a boot counter: a reboot increases it and restarts the sequence at 0,
so ingest counts gaps within one boot only.

The ground truth counts what was *emitted*: a use planned while the device was offline was
never sent and is not counted. Injected bad data is counted by the quarantine reason ingest
is expected to give it. A resumed run's truth covers its whole timeline, from the origin.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from device_sim.scenario import (
    DIURNAL_PROFILES,
    WEEKLY_PROFILES,
    Customer,
    Project,
    Scenario,
    Usage,
    delivered_on,
    go_live,
    serials,
)
from services.core.topics import MessageKind

Expectation = Literal[
    "stored", "duplicate", "not_json", "invalid_payload", "too_old", "future_timestamp"
]
Control = Literal["offline", "online"]

DAY = timedelta(days=1)
# Late copies are this much older than the late-data window, so ingest must refuse them.
LATE_MARGIN = timedelta(days=1)
FUTURE_OFFSET = timedelta(days=1)
# An outage lasts at most this long (drawn from an exponential: a cap keeps the look-back of
# `offline_at` short); days looked back for outages still running.
MAX_OUTAGE = timedelta(days=2)
_OUTAGE_LOOKBACK_DAYS = MAX_OUTAGE.days + 1
DAYS_PER_MONTH = 30
REPLAY_WINDOW = timedelta(days=1)  # the step of a resumed run's unsent replay
BOOT_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)  # boot counters count seconds from here


def _seed(*parts: object) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Outgoing:
    """One thing a device does at simulated time `at`: a message, or going off/online."""

    at: datetime
    serial: str
    kind: MessageKind | None
    payload: bytes
    expect: Expectation | None = None
    control: Control | None = None


@dataclass
class FeatureTruth:
    devices: set[str] = field(default_factory=set)
    events: int = 0
    messages: int = 0
    enabled: set[str] = field(default_factory=set)  # devices that reported it switched on
    # per device, the UTC days (device time) it used the feature on
    days: dict[str, set[date]] = field(default_factory=lambda: defaultdict(set))


@dataclass
class Truth:
    """What the generator emitted, per project and feature, and what it injected."""

    scenario: str
    seed: int
    start: datetime | None = None
    end: datetime | None = None
    anchor: date | None = None  # the day the scenario's dates count back from
    features: dict[tuple[str, str], FeatureTruth] = field(
        default_factory=lambda: defaultdict(FeatureTruth)
    )
    usage_messages: Counter[str] = field(default_factory=Counter)
    telemetry_messages: Counter[str] = field(default_factory=Counter)
    metric_readings: Counter[str] = field(default_factory=Counter)
    devices_reporting: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # per project and device, the UTC days it sent anything on (for parts of the run)
    reporting_days: dict[str, dict[str, set[date]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(set))
    )
    # devices that reported their enabled features at all
    settings_reporting: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    injected: Counter[str] = field(default_factory=Counter)
    outages: int = 0
    reboots: int = 0

    def to_json(self) -> dict[str, Any]:
        projects: dict[str, Any] = {}
        for project in sorted(set(self.usage_messages) | set(self.telemetry_messages)):
            projects[project] = {
                "usage_messages": self.usage_messages[project],
                "telemetry_messages": self.telemetry_messages[project],
                "metric_readings": self.metric_readings[project],
                "devices_reporting": len(self.devices_reporting[project]),
                "devices_reporting_settings": len(self.settings_reporting[project]),
                "features": {},
            }
        for (project, feature), truth in sorted(self.features.items()):
            entry = projects.setdefault(project, {"features": {}})
            entry["features"][feature] = {
                "devices_using": len(truth.devices),
                "events": truth.events,
                "messages": truth.messages,
                "devices_enabled": len(truth.enabled),
            }
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
            "anchor": self.anchor.isoformat() if self.anchor else None,
            "projects": projects,
            "injected": dict(sorted(self.injected.items())),
            "outages": self.outages,
            "reboots": self.reboots,
        }


def firmware_of(scenario: Scenario, project: Project, serial: str) -> str:
    """The firmware a device runs: chosen once by share, the same for seeding and sending."""
    rng = random.Random(_seed(scenario.seed, serial, "firmware"))
    choices = project.fleet.firmware
    return rng.choices([f.version for f in choices], weights=[f.share for f in choices])[0]


@dataclass
class _FeaturePlan:
    key: str
    usage: Usage
    never: bool
    adopt_at: float  # the device adopts once the project's adoption share exceeds this
    live: date  # used from this day: the later of go-live and the delivery
    enabled: bool = False  # switched on (reported when the fleet reports enabled features)


class DeviceModel:
    """One device's behaviour over time from `origin`; call `emit` with consecutive windows
    starting there. Its scenario dates count back from `anchor`."""

    def __init__(
        self,
        scenario: Scenario,
        customer: Customer,
        project: Project,
        serial: str,
        *,
        origin: datetime,
        anchor: date,
    ) -> None:
        self.scenario, self.project, self.serial = scenario, project, serial
        self.customer = customer
        self.go_live = go_live(project, anchor)
        rng = random.Random(_seed(scenario.seed, serial))
        self.firmware = firmware_of(scenario, project, serial)
        # Own streams for what later scenario fields add: older scenarios replay unchanged.
        self.dead = random.Random(_seed(scenario.seed, serial, "dead")).random() < (
            project.fleet.dead_share
        )
        self.features = [
            _FeaturePlan(
                d.feature,
                d.usage,
                rng.random() < d.usage.never_share,
                rng.random(),
                max(self.go_live, delivered_on(project, d, anchor)),
                random.Random(_seed(scenario.seed, serial, "enabled", d.feature)).random()
                < d.enabled_share,
            )
            for d in project.deliveries
            if d.status == "delivered"
        ] + [
            _FeaturePlan(
                u.feature, u.usage, rng.random() < u.usage.never_share, rng.random(), self.go_live
            )
            for u in project.undelivered_use
        ]
        self.enabled_features = sorted(
            p.key for p in self.features if p.enabled and project.fleet.reports_enabled
        )
        fleet = project.fleet
        self.clock_offset = timedelta(seconds=rng.uniform(-1, 1) * fleet.clock_drift_max_s)
        self.telemetry_every = timedelta(minutes=fleet.telemetry_every_minutes)
        self.telemetry_phase = timedelta(
            seconds=rng.uniform(0, self.telemetry_every.total_seconds())
        )
        self.goes_offline = rng.random() < fleet.offline.share
        # From here on the device sends nothing (its site went dark), run after run alike.
        self.quiet_from = (
            origin + timedelta(hours=fleet.quiet_after_hours)
            if fleet.quiet_after_hours is not None
            else None
        )
        # The boot counter at the origin is the second the device was (simulated to be)
        # powered on, counted from BOOT_EPOCH: a run started afresh later is a later power-on
        # and never repeats a boot an earlier run of the device used (ingest would take its
        # messages for those, same boot and seq); a run resuming this one continues from here.
        self.boot = int((origin - BOOT_EPOCH).total_seconds())
        self.seq = rng.randrange(1, 1000)
        self.battery = rng.uniform(60, 100)
        self._day: date | None = None
        self._planned: list[tuple[datetime, str, int, int]] = []
        self._noise: list[tuple[float, float, float]] = []
        self._midnight = datetime(origin.year, origin.month, origin.day, tzinfo=UTC)
        self._events: dict[date, tuple[list[datetime], list[tuple[datetime, datetime]]]] = {}
        self._running: dict[date, list[tuple[datetime, datetime]]] = {}  # outages near a day

    def _day_events(self, day: date) -> tuple[list[datetime], list[tuple[datetime, datetime]]]:
        """The day's reboots and the outages that begin on it, from the device-day's own
        stream: the same whatever span a run covers."""
        if (known := self._events.get(day)) is not None:
            return known
        rng = random.Random(_seed(self.scenario.seed, self.serial, day.isoformat(), "events"))
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        fleet = self.project.fleet
        reboots = sorted(
            midnight + DAY * rng.random()
            for _ in range(_poisson(rng, fleet.reboots_per_device_month / DAYS_PER_MONTH))
        )
        outages: list[tuple[datetime, datetime]] = []
        if self.goes_offline:
            for _ in range(_poisson(rng, fleet.offline.per_device_month / DAYS_PER_MONTH)):
                begin = midnight + DAY * rng.random()
                length = timedelta(hours=rng.expovariate(1 / fleet.offline.mean_hours))
                outages.append((begin, begin + min(length, MAX_OUTAGE)))
            outages.sort()
        self._events[day] = (reboots, outages)
        return reboots, outages

    def _outages_near(self, first: date, last: date) -> list[tuple[datetime, datetime]]:
        """Outages that begin between MAX_OUTAGE before `first` and `last` (days)."""
        found: list[tuple[datetime, datetime]] = []
        day = first - timedelta(days=_OUTAGE_LOOKBACK_DAYS)
        while day <= last:
            found += self._day_events(day)[1]
            day += DAY
        return found

    def offline_at(self, moment: datetime) -> bool:
        if self.quiet_from is not None and moment >= self.quiet_from:
            return True
        if not self.goes_offline:
            return False
        day = moment.date()
        if (running := self._running.get(day)) is None:  # once per day: called per message
            running = self._running[day] = self._outages_near(day, day)
        return any(begin <= moment < finish for begin, finish in running)

    def _plan_day(self, day: date) -> None:
        """Draw the day's uses; every device-day has its own stream (window-size independent)."""
        self._day = day
        rng = random.Random(_seed(self.scenario.seed, self.serial, day.isoformat()))
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        planned: list[tuple[datetime, str, int, int]] = []
        for plan in self.features:
            usage = plan.usage
            days_live = (day - plan.live).days
            if days_live < 0 or plan.never or plan.adopt_at >= usage.adoption.share(days_live):
                rng.random()  # keep the stream aligned whatever the branch
                continue
            weekly = WEEKLY_PROFILES[usage.weekly]
            chance = min(1.0, usage.per_device_day * weekly[day.weekday()] / (sum(weekly) / 7))
            if rng.random() >= chance:
                continue
            hours = DIURNAL_PROFILES[usage.diurnal]
            hour = rng.choices(range(24), weights=hours)[0]
            at = midnight + timedelta(hours=hour, seconds=rng.uniform(0, 3599))
            count = rng.randint(*usage.events_per_use)
            planned.append((at, plan.key, count, rng.randint(200, 8000)))
        self._planned = sorted(planned)
        # The day's telemetry noise comes from the same day stream: window-size independent.
        ticks = int(DAY / self.telemetry_every) + 2
        self._noise = [
            (rng.uniform(0.05, 0.25), rng.gauss(-72, 7), rng.gauss(0, 0.6)) for _ in range(ticks)
        ]
        self._midnight = midnight

    def emit(self, t0: datetime, t1: datetime, truth: Truth) -> list[Outgoing]:
        """Everything this device does in [t0, t1), in time order (a dead device: nothing)."""
        out: list[Outgoing] = []
        if self.dead:
            return out
        moments: list[tuple[datetime, str, Any]] = []
        day = t0.date()
        while datetime(day.year, day.month, day.day, tzinfo=UTC) < t1:
            if self._day != day:
                self._plan_day(day)
            moments += [(at, "usage", p) for p in self._planned if t0 <= (at := p[0]) < t1]
            day += DAY
        first = (
            t0
            + (self.telemetry_phase - (t0 - _epoch()) % self.telemetry_every) % self.telemetry_every
        )
        tick = first
        while tick < t1:
            moments.append((tick, "telemetry", None))
            tick += self.telemetry_every
        last_day = (t1 - timedelta(microseconds=1)).date()
        day = t0.date()
        while day <= last_day:
            moments += [(r, "reboot", None) for r in self._day_events(day)[0] if t0 <= r < t1]
            day += DAY
        if self.goes_offline:
            for begin, finish in self._outages_near(t0.date(), last_day):
                if t0 <= begin < t1:
                    moments.append((begin, "offline", None))
                if t0 <= finish < t1:
                    moments.append((finish, "online", None))
        quiet = self.quiet_from
        if quiet is not None:
            moments = [m for m in moments if m[0] < quiet]
            if t0 <= quiet < t1:
                moments.append((quiet, "offline", None))
        for at, what, detail in sorted(moments, key=lambda m: (m[0], m[1])):
            if what == "offline":
                truth.outages += 1
                out.append(Outgoing(at, self.serial, None, b"", control="offline"))
            elif what == "online":
                out.append(Outgoing(at, self.serial, None, b"", control="online"))
            elif what == "reboot":
                truth.reboots += 1
                self.boot += 1  # a reboot starts a new boot, its sequence at 0
                self.seq = -1
            elif self.offline_at(at):
                continue  # not sent, not counted
            elif what == "usage":
                out.append(self._usage(at, detail, truth))
            else:
                out.append(self._telemetry(at, truth))
        return out

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _usage(
        self, at: datetime, planned: tuple[datetime, str, int, int], truth: Truth
    ) -> Outgoing:
        _, feature, count, duration = planned
        # Built from a template: keys and feature names are plain tokens, nothing to escape.
        payload = (
            f'{{"v":1,"boot":{self.boot},"seq":{self._next_seq()},'
            f'"ts":"{_iso(at + self.clock_offset)}","events":[{{"feature":"{feature}",'
            f'"count":{count},"duration_ms":{duration}}}]}}'
        )
        name = self.project.name
        entry = truth.features[(name, feature)]
        entry.devices.add(self.serial)
        entry.days[self.serial].add((at + self.clock_offset).date())
        entry.events += count
        entry.messages += 1
        truth.usage_messages[name] += 1
        self._reported(at, truth)
        return Outgoing(at, self.serial, MessageKind.USAGE, payload.encode(), "stored")

    def _reported(self, at: datetime, truth: Truth) -> None:
        name = self.project.name
        truth.devices_reporting[name].add(self.serial)
        truth.reporting_days[name][self.serial].add((at + self.clock_offset).date())

    def _telemetry(self, at: datetime, truth: Truth) -> Outgoing:
        if self._day != at.date():
            self._plan_day(at.date())
        drain, rssi, noise = self._noise[int((at - self._midnight) / self.telemetry_every)]
        self.battery -= drain * (self.telemetry_every / timedelta(hours=1))
        if self.battery < 8:
            self.battery = 100.0  # someone swapped the battery
        hour = at.hour + at.minute / 60
        temperature = 21 + 3 * math.sin((hour - 9) / 24 * 2 * math.pi) + noise
        settings = ""
        name = self.project.name
        if self.project.fleet.reports_enabled:
            settings = (
                ',"enabled_features":['
                + ",".join(f'"{key}"' for key in self.enabled_features)
                + "]"
            )
            truth.settings_reporting[name].add(self.serial)
            for key in self.enabled_features:
                truth.features[(name, key)].enabled.add(self.serial)
        payload = (
            f'{{"v":1,"boot":{self.boot},"seq":{self._next_seq()},'
            f'"ts":"{_iso(at + self.clock_offset)}","metrics":['
            f'{{"name":"battery","value":{self.battery:.2f},"unit":"%"}},'
            f'{{"name":"rssi","value":{rssi:.1f},"unit":"dBm"}},'
            f'{{"name":"temperature","value":{temperature:.2f},"unit":"C"}}]{settings}}}'
        )
        truth.telemetry_messages[name] += 1
        truth.metric_readings[name] += 3
        self._reported(at, truth)
        return Outgoing(at, self.serial, MessageKind.TELEMETRY, payload.encode(), "stored")


def _epoch() -> datetime:
    return datetime(2000, 1, 1, tzinfo=UTC)


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method: fine for the small means used here.
    if mean <= 0:
        return 0
    limit, k, p = math.exp(-min(mean, 500)), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


class Generator:
    """Walks a scenario's fleet through [start, end), window by window, with bad data mixed in.

    *origin* (default *start*) is where the devices' simulated lives begin: a run resuming an
    earlier one (a live fleet after a backfill) gives the earlier run's origin and starts where
    it ended; the devices replay [origin, start) unsent, so their boot counters and sequence
    numbers continue, and the truth covers [origin, end). *anchor* (default: the day of *end*)
    is the day the scenario's dates count back from; a resumed run must use the earlier one's.
    """

    def __init__(
        self,
        scenario: Scenario,
        start: datetime,
        end: datetime,
        *,
        origin: datetime | None = None,
        anchor: date | None = None,
        inject: bool = True,
        inject_late: bool = True,
        late_data_days: int = 30,
        now: datetime | None = None,
        only: set[str] | None = None,
    ) -> None:
        origin = start if origin is None else origin
        if origin > start:
            raise ValueError("a run cannot start before its devices' origin")
        anchor = end.date() if anchor is None else anchor
        self.scenario, self.start, self.end = scenario, start, end
        self.origin, self.anchor = origin, anchor
        self.truth = Truth(scenario.name, scenario.seed, origin, start, anchor)
        self.devices = [
            DeviceModel(scenario, customer, project, serial, origin=origin, anchor=anchor)
            for customer, project in scenario.projects()
            for serial in serials(project)
            if only is None or serial in only
        ]
        self._inject = inject
        # A history import accepts old data by design, so "late" copies would be stored.
        self._inject_late = inject_late
        self._late = timedelta(days=late_data_days)
        self._now = now
        self._rng = random.Random(_seed(scenario.seed, "inject"))
        self._replay(origin, start)

    def _replay(self, origin: datetime, start: datetime) -> None:
        """Walk the devices through [origin, start) without sending: what an earlier run
        sent. Counted in the truth (the database holds it), with no bad data injected."""
        t0 = origin
        while t0 < start:
            t1 = min(t0 + REPLAY_WINDOW, start)
            for device in self.devices:
                device.emit(t0, t1, self.truth)
            t0 = t1
        self.truth.end = start

    def windows(self, step: timedelta) -> Iterator[list[Outgoing]]:
        """Everything that happens, one window of simulated time after another, in time order."""
        for _, _, batch in self.spans(step):
            yield batch

    def bounds(self, step: timedelta) -> Iterator[tuple[datetime, datetime]]:
        """The windows [t0, t1) of `step` from start to end."""
        t0 = self.start
        while t0 < self.end:
            t1 = min(t0 + step, self.end)
            yield t0, t1
            t0 = t1

    def spans(self, step: timedelta) -> Iterator[tuple[datetime, datetime, list[Outgoing]]]:
        """Like `windows`, with each window's bounds [t0, t1)."""
        for t0, t1 in self.bounds(step):
            yield t0, t1, self.window(t0, t1)

    def window(self, t0: datetime, t1: datetime) -> list[Outgoing]:
        """Everything that happens in [t0, t1), the window after the last one walked, in time
        order; counted in the truth, which then ends at t1. Generate a window only when it is
        about to be sent, so that the truth never counts what was not."""
        batch: list[Outgoing] = []
        if t0 == self.start:  # a device in an outage as the run starts is not connected
            batch += [
                Outgoing(t0, d.serial, None, b"", control="offline")
                for d in self.devices
                if not d.dead and d.offline_at(t0)
            ]
        for device in self.devices:
            batch += device.emit(t0, t1, self.truth)
        batch.sort(key=lambda o: o.at)
        self.truth.end = t1
        return self._with_bad_data(batch) if self._inject else batch

    def _with_bad_data(self, batch: list[Outgoing]) -> list[Outgoing]:
        share = self.scenario.inject
        if not (share.malformed or share.duplicate or share.late or share.future):
            return batch
        out: list[Outgoing] = []
        for item in batch:
            out.append(item)
            if item.kind is None:
                continue
            rng = self._rng
            if rng.random() < share.duplicate:
                out.append(Outgoing(item.at, item.serial, item.kind, item.payload, "duplicate"))
                self.truth.injected["duplicate"] += 1
            if rng.random() < share.malformed:
                out.append(self._malformed(item))
            if rng.random() < share.late and self._inject_late:
                out.append(self._retimed(item, self._clock() - self._late - LATE_MARGIN, "too_old"))
            if rng.random() < share.future:
                out.append(self._retimed(item, self._clock() + FUTURE_OFFSET, "future_timestamp"))
        return out

    def _clock(self) -> datetime:
        return self._now or datetime.now(UTC)

    def _malformed(self, item: Outgoing) -> Outgoing:
        expect: Expectation
        if self._rng.random() < 0.5:
            payload, expect = item.payload[: len(item.payload) // 2], "not_json"
        else:
            body = json.loads(item.payload)
            body["seq"] = str(body["seq"])  # a number sent as text: strictly refused
            payload, expect = _dumps(body), "invalid_payload"
        self.truth.injected[expect] += 1
        return Outgoing(item.at, item.serial, item.kind, payload, expect)

    def _retimed(self, item: Outgoing, ts: datetime, expect: Expectation) -> Outgoing:
        body = json.loads(item.payload)
        body["ts"] = _iso(ts)
        self.truth.injected[expect] += 1
        return Outgoing(item.at, item.serial, item.kind, _dumps(body), expect)

    def write_truth(self, path: Path) -> None:
        """Write the truth so far; replaced whole, so a reader never sees half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(self.truth.to_json(), indent=2) + "\n")
        partial.replace(path)


@dataclass(frozen=True)
class Timeline:
    """Where a scenario's simulated timeline stands, read from its truth file: a run that
    resumes it starts at `end`, with the same origin and anchor."""

    origin: datetime
    end: datetime
    anchor: date

    @classmethod
    def from_truth(cls, body: dict[str, Any], scenario: Scenario) -> Timeline:
        if (body.get("scenario"), body.get("seed")) != (scenario.name, scenario.seed):
            raise ValueError(
                f"the truth file is of scenario {body.get('scenario')!r} seed {body.get('seed')}, "
                f"not {scenario.name!r} seed {scenario.seed}"
            )
        if not (body.get("start") and body.get("end") and body.get("anchor")):
            raise ValueError("the truth file has no timeline (start, end, anchor) to resume")
        return cls(
            datetime.fromisoformat(body["start"]),
            datetime.fromisoformat(body["end"]),
            date.fromisoformat(body["anchor"]),
        )
