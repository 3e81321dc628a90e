"""`make bench`: fieldtrack measured against the ceilings of the machine it runs on.

Ingest: run.py and its phases; the analytics queries at 10 and 50 M events: queries.py.
"""

from pathlib import Path

# The bench runs from a source checkout (it is not installed): its state, reports and
# docs/performance.md are the checkout's.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
