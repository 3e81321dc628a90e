"""Where a running ingest process spends its time: py-spy samples, summarised per thread
and per function (the writer thread's share in parsing, in the database and elsewhere)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

TOP = 12
# Frames every writer sample has: they say nothing about where its time goes.
GENERIC = frozenset(
    {
        "Thread._bootstrap (threading.py)",
        "Thread._bootstrap_inner (threading.py)",
        "Thread.run (threading.py)",
        "IngestService._write_loop (service.py)",
    }
)


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path) -> Path:
    """Sample *pid* for *seconds* (100 Hz, all threads, idle ones included) into raw
    collapsed stacks."""
    tool = py_spy()
    if tool is None:
        raise RuntimeError("py-spy is not installed (it is in the dev extras: make install)")
    subprocess.run(
        [
            tool,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "100",
            "--format",
            "raw",
            "--threads",
            "--idle",
            "--nonblocking",
            "--output",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=seconds + 60,
    )
    return out


def _frame_name(frame: str) -> str:
    """'store_batch (services/ingest/store.py:223)' → 'store_batch (store.py)'."""
    name, _, where = frame.partition(" (")
    file = where.split(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({file})" if file else name


# Buckets of the writer thread's time, by the first matching frame from the leaf upwards.
DB_WAIT = ("Connection.wait (", "wait_conn", "Transaction.__exit__", "Connection.commit")
CATEGORIES = (
    ("waiting for PostgreSQL (statements, COPY, commit)", DB_WAIT),
    ("parsing and validating payloads (pydantic)", ("decode (payloads.py)", "model_validate")),
    ("building rows and COPY data", ("write_row", "Rows.add", "copy_rows", "copying (")),
    ("sequence gaps and rollup bookkeeping", ("sequence_gaps", "device_hours", "_stored_")),
    ("waiting for messages (queue empty)", ("_take_batch",)),
    ("acknowledging to the broker", ("_acknowledge",)),
)


def summarise(path: Path) -> dict[str, Any]:
    """Samples per thread; for the busiest thread the share of each category and the
    functions with the most samples (inclusive)."""
    threads: Counter[str] = Counter()
    stacks: list[tuple[str, list[str], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        frames = stack.split(";")
        threads[frames[0]] += int(samples)
        stacks.append((frames[0], frames[1:], int(samples)))
    writer = next((t for t in threads if "ingest-writer" in t), None)
    writer = writer or (threads.most_common(1)[0][0] if threads else None)
    total = threads[writer] if writer else 0
    categories: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for thread, frames, count in stacks:
        if thread != writer:
            continue
        for name in {_frame_name(f) for f in frames} - GENERIC:
            functions[name] += count
        if frames:
            leaves[_frame_name(frames[-1])] += count
        joined = ";".join(_frame_name(f) for f in frames)
        label = "other Python in the writer"
        for category, needles in CATEGORIES:
            if any(n in joined for n in needles):
                label = category
                break
        categories[label] += count
    shares = {k: round(v / total, 3) for k, v in categories.most_common()} if total else {}
    top = [(name, round(n / total, 3)) for name, n in functions.most_common(TOP)] if total else []
    lines = [f"writer thread, {total} samples at 100 Hz:"]
    lines += [f"- {share:.0%} {label}" for label, share in shares.items()]
    lines += ["", "busiest functions (inclusive share of the writer thread):"]
    lines += [f"- {share:.0%} `{name}`" for name, share in top]
    own = [(name, round(n / total, 3)) for name, n in leaves.most_common(TOP)] if total else []
    lines += ["", "where the samples end (self time, waits included):"]
    lines += [f"- {share:.0%} `{name}`" for name, share in own]
    return {
        "threads": dict(threads.most_common()),
        "writer_thread": writer,
        "writer_shares": shares,
        "writer_top_functions": top,
        "writer_self_time": own,
        "summary": "\n".join(lines),
    }
