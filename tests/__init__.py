"""fieldtrack's tests; they run from a source checkout."""

from pathlib import Path

# The checkout the tests run from (no side effects here: chaos.py imports this package too).
PROJECT_ROOT = Path(__file__).resolve().parents[1]
