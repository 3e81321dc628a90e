"""Message identity (migration 0014): a message that carries a boot counter is the same message
as another of its device with the same (boot, seq), whatever their times; one without is the
same as another with the same (seq, time). The hypertables' unique key (device, reading time,
seq, item, boot) refuses every exact repeat; a repeat with another time (an outbox resent with
a fresh `ts`) is found in the device's identity window (`note`) before anything is written.
"""

from __future__ import annotations

import struct
from typing import NamedTuple


class Identified(NamedTuple):
    """A message that carries a boot counter, and where its rows are in Rows."""

    position: int  # its place among the batch's decoded messages
    device: int
    boot: int
    seq: int
    usage: bool  # its readings are in Rows.usage, else in Rows.metrics
    readings: range
    enabled: range


# A device's identity window (device_state.identity_window): for each of its latest boots (most
# recently used first), the highest seq stored and which of the IDENTITY_WINDOW_SEQS numbers up
# to it were. A message seen again with another time is recognised while its seq is in there.
IDENTITY_WINDOW_SEQS = 1024  # an outbox of a day of messages at one every 90 s: 128 bytes


IDENTITY_WINDOW_BOOTS = 2  # the latest and the one before: an outbox resent after a restart


_WINDOW_ENTRY = struct.Struct(f"<iq{IDENTITY_WINDOW_SEQS // 8}s")  # boot, highest seq, bits


_WINDOW_MASK = (1 << IDENTITY_WINDOW_SEQS) - 1


def identity_check(
    identified: list[Identified], stored_windows: dict[int, bytes | None]
) -> tuple[list[Identified], dict[int, bytes]]:
    """The messages their device's identity window shows stored already (in the batch order:
    of two copies in one batch, the second), and the windows with the others noted in them."""
    windows: dict[int, list[list[int]]] = {}
    repeats = []
    for message in identified:
        window = windows.get(message.device)
        if window is None:
            window = windows[message.device] = read_window(stored_windows.get(message.device))
        if not note(window, message.boot, message.seq):
            repeats.append(message)
    return repeats, {device: pack_window(window) for device, window in windows.items()}


def note(window: list[list[int]], boot: int, seq: int) -> bool:
    """Note (boot, seq) as stored in a device's window; False if it was already."""
    for place, entry in enumerate(window):
        if entry[0] != boot:
            continue
        if place:
            window.insert(0, window.pop(place))
        _, highest, bits = entry
        if seq > highest:
            shift = seq - highest  # up to 2^63: never shifted by
            entry[1] = seq
            entry[2] = 1 if shift >= IDENTITY_WINDOW_SEQS else (bits << shift | 1) & _WINDOW_MASK
            return True
        behind = highest - seq
        if behind >= IDENTITY_WINDOW_SEQS:
            return True  # older than the window: only an exact repeat is recognised
        if bits >> behind & 1:
            return False
        entry[2] = bits | 1 << behind
        return True
    window.insert(0, [boot, seq, 1])  # a new boot (or one forgotten): remembered from here
    del window[IDENTITY_WINDOW_BOOTS:]
    return True


def read_window(stored: bytes | None) -> list[list[int]]:
    if not stored or len(stored) % _WINDOW_ENTRY.size:
        return []  # none yet (or of another layout: forgotten, as for a new device)
    return [
        [boot, highest, int.from_bytes(bits, "little")]
        for boot, highest, bits in _WINDOW_ENTRY.iter_unpack(stored)
    ]


def pack_window(window: list[list[int]]) -> bytes:
    return b"".join(
        _WINDOW_ENTRY.pack(boot, highest, bits.to_bytes(IDENTITY_WINDOW_SEQS // 8, "little"))
        for boot, highest, bits in window
    )
