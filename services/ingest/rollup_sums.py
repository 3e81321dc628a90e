"""What newly stored readings and messages add to the rollups, summed in memory: the one
definition every path that stores them (live ingest, history imports, the quarantine replay)
shares, through `store.store_batch`. Usage rollups by hour, day, month and feature; what devices
reported as enabled; messages, sequence gaps and jumps by device and hour (the gap walk).
`services/ingest/rollups.py` rebuilds the same set-based, as a reference a test compares.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

from services.ingest.batch import Stored

_EPOCH_DAY = date(1970, 1, 1).toordinal()


def usage_rollups(usage: list[tuple[Any, ...]]) -> dict[str, list[Any]]:
    """The rollup rows of usage readings that are all newly stored (UTC hours and days;
    bitmasks of migration 0007), as the column arrays UPSERT_USAGE_ROLLUPS takes: the one
    definition of the usage rollups for every path that stores readings."""
    hourly: dict[tuple[int, str, int, int], list[int]] = {}
    for device, project, feature, at, _received, _seq, _item, count, duration, _ in usage:
        key = (project, feature, device, int(at.timestamp() // 3600))
        sums = hourly.get(key)
        if sums is None:
            hourly[key] = [count, 1, duration or 0]
        else:
            sums[0] += count
            sums[1] += 1
            sums[2] += duration or 0
    # everything else follows from the (far fewer) hourly sums
    daily: dict[tuple[int, int, str, int], int] = {}
    feature_hours: dict[tuple[int, int, str], int] = {}
    for (project, feature, device, hour), (events, _, _) in hourly.items():
        dkey = (project, hour // 24, feature, device)
        daily[dkey] = daily.get(dkey, 0) | 1 << hour % 24
        fkey = (project, hour, feature)
        feature_hours[fkey] = feature_hours.get(fkey, 0) + events

    def hour_at(hour: int) -> datetime:
        return datetime.fromtimestamp(hour * 3600, UTC)

    feature_days: dict[tuple[int, int, str], int] = {}
    for (project, hour, feature), events in feature_hours.items():
        fdkey = (project, hour // 24, feature)
        feature_days[fdkey] = feature_days.get(fdkey, 0) + events

    h = sorted(hourly.items())
    fh = sorted(feature_hours.items())
    fd = sorted(feature_days.items())
    return {
        "h_project": [k[0] for k, _ in h],
        "h_feature": [k[1] for k, _ in h],
        "h_device": [k[2] for k, _ in h],
        "h_hour": [hour_at(k[3]) for k, _ in h],
        "h_events": [v[0] for _, v in h],
        "h_readings": [v[1] for _, v in h],
        "h_duration": [v[2] for _, v in h],
        **_mask_columns(daily),
        "fh_project": [k[0] for k, _ in fh],
        "fh_hour": [hour_at(k[1]) for k, _ in fh],
        "fh_feature": [k[2] for k, _ in fh],
        "fh_events": [v for _, v in fh],
        "fd_project": [k[0] for k, _ in fd],
        "fd_day": [_date_of(k[1]) for k, _ in fd],
        "fd_feature": [k[2] for k, _ in fd],
        "fd_events": [v for _, v in fd],
    }


def enabled_rollups(enabled: Iterable[tuple[int, int, str, int]]) -> dict[str, list[Any]]:
    """The rows of UPSERT_ENABLED from (device, project, feature key or ENABLED_REPORTED,
    hour since the epoch) of what devices reported as enabled."""
    daily: dict[tuple[int, int, str, int], int] = {}
    for device, project, feature, hour in enabled:
        key = (project, hour // 24, feature, device)
        daily[key] = daily.get(key, 0) | 1 << hour % 24
    return _mask_columns(daily)


@lru_cache(maxsize=4096)
def _date_of(day: int) -> date:
    """The UTC date of *day* days since the epoch (a batch touches a handful)."""
    return date.fromordinal(_EPOCH_DAY + day)


def _mask_columns(daily: dict[tuple[int, int, str, int], int]) -> dict[str, list[Any]]:
    """Day rows (project, day since the epoch, feature, device) → hours bitmask, and the month
    rows they give, as the column arrays of `_mask_upserts`."""
    monthly: dict[tuple[int, date, str, int], int] = {}
    for project, day, feature, device in daily:
        when = _date_of(day)
        mkey = (project, when.replace(day=1), feature, device)
        monthly[mkey] = monthly.get(mkey, 0) | 1 << (when.day - 1)
    d = sorted(daily.items())
    m = sorted(monthly.items())
    return {
        "d_project": [k[0] for k, _ in d],
        "d_day": [_date_of(k[1]) for k, _ in d],
        "d_feature": [k[2] for k, _ in d],
        "d_device": [k[3] for k, _ in d],
        "d_hours": [v for _, v in d],
        "m_project": [k[0] for k, _ in m],
        "m_month": [k[1] for k, _ in m],
        "m_feature": [k[2] for k, _ in m],
        "m_device": [k[3] for k, _ in m],
        "m_days": [v for _, v in m],
    }


# A forward jump of more sequence numbers than this is not lost messages but the numbering
# starting over elsewhere (a counter reset, a re-flash, a corrupt counter): counted as a jump
# (device_hourly.seq_jumps), not as missing. A million is 11 days of a message a second lost
# between two stored messages; and no sum of gaps can overflow a bigint below 9·10^12 messages.
MAX_SEQ_GAP = 1_000_000


def sequence_gaps(
    stored: Stored, previous: dict[int, tuple[int, datetime, int]]
) -> tuple[dict[tuple[int, int], list[int]], dict[int, tuple[int, datetime, int]]]:
    """Missing messages and jumps per device and hour, from the newly stored messages.

    Walking each device's new messages in device-time order from its last known (seq, time,
    boot), within one boot (or none): a step forward of up to MAX_SEQ_GAP + 1 counts the
    numbers skipped, a longer one is a jump (a restart elsewhere, not a gap); a lower number
    at a later time is a restart (reboot); a message older than the last known one arrived
    late and fills a gap counted before (-1) if its number is up to MAX_SEQ_GAP below. A
    message of another boot is a restart. Rollups' DEVICE_HOURLY walks the same way.
    Returns [missing, jumps] per (device, hour) and each device's latest (seq, time, boot)."""
    counts: dict[tuple[int, int], list[int]] = {}
    latest = dict(previous)
    for device, _project, seq, at, boot in sorted(stored, key=lambda m: (m[0], m[3], m[2], m[4])):
        last = latest.get(device)
        if last is not None:
            last_seq, last_at, last_boot = last
            step = seq - last_seq if boot == last_boot else None
            if at < last_at:
                if step is not None and -MAX_SEQ_GAP <= step < 0:
                    counts.setdefault((device, hour_key(at)), [0, 0])[0] -= 1
                continue
            if step is not None and step > 1:
                count = counts.setdefault((device, hour_key(at)), [0, 0])
                if step <= MAX_SEQ_GAP + 1:
                    count[0] += step - 1
                else:
                    count[1] += 1
        latest[device] = (seq, at, boot)
    return counts, {d: v for d, v in latest.items() if previous.get(d) != v}


def hour_key(at: datetime) -> int:
    """Whole hours since the epoch: a cheap key for the UTC hour of *at* (per message)."""
    return int(at.timestamp() // 3600)


def device_hours(stored: Stored, gaps: dict[tuple[int, int], list[int]]) -> list[tuple[Any, ...]]:
    """Rows (device, project, hour, messages, seq_min, seq_max, missing, seq_jumps) in one
    lock order."""
    hours: dict[tuple[int, int], list[Any]] = {}
    no_gaps = (0, 0)
    for device_id, project_id, seq, at, _boot in stored:
        entry = hours.setdefault((device_id, hour_key(at)), [project_id, 0, seq, seq])
        entry[1] += 1
        if seq < entry[2]:
            entry[2] = seq
        elif seq > entry[3]:
            entry[3] = seq
    return [
        (
            device,
            hours[key][0],
            datetime.fromtimestamp(hour * 3600, UTC),
            *hours[key][1:],
            *gaps.get(key, no_gaps),
        )
        for key in sorted(hours)
        for device, hour in (key,)
    ]
