"""fieldtrack's tests; they run from a source checkout."""

import subprocess
from pathlib import Path

# The checkout the tests run from (no side effects here: chaos.py imports this package too).
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The folders the program ships: running it must never write into them.
SOURCE_FOLDERS = ("services", "device_sim", "dashboards", "tests/scenarios")


def source_changes() -> set[str]:
    """Files in the source folders that git sees as new or changed, ignored ones included
    (bytecode left out: the test process compiles what it imports)."""
    done = subprocess.run(
        [
            "git",
            "status",
            "--porcelain",
            "--ignored",
            "--untracked-files=all",
            "--",
            *SOURCE_FOLDERS,
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return {line[3:] for line in done.stdout.splitlines() if "__pycache__" not in line}
