"""Where fieldtrack keeps its files on disk."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS_DIR = PROJECT_ROOT / "dashboards"


def state_dir() -> Path:
    """The git-ignored folder holding local services' data, logs and generated secrets."""
    return Path(os.environ.get("FIELDTRACK_STATE_DIR", PROJECT_ROOT / ".state")).resolve()


def local_env_file() -> Path:
    """Connection settings written by `fieldtrack infra up` for the local services."""
    return state_dir() / "fieldtrack.env"


def chart_library_dir() -> Path:
    """Where the plotly package keeps plotly.min.js: the dashboards serve it themselves."""
    from importlib.util import find_spec  # noqa: PLC0415

    spec = find_spec("plotly")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("plotly is not installed: run `make install`")
    return Path(spec.origin).parent / "package_data"
