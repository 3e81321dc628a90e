"""Where fieldtrack finds its files: what it ships is package data (read through
importlib.resources, so an installed copy works from any folder), what it writes goes to the
state folder of the working directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jinja2 import BaseLoader

# The top-level `dashboards` folder is a package of data only: templates/, static/ and
# grafana/ (pyproject.toml ships them in the wheel).
DASHBOARDS_PACKAGE = "dashboards"


def template_loader() -> BaseLoader:
    """The Jinja loader of dashboards/templates, for the pages and the printable report."""
    from jinja2 import PackageLoader  # noqa: PLC0415 - lazy: `fieldtrack --help` stays fast

    return PackageLoader(DASHBOARDS_PACKAGE, "templates")


def state_dir() -> Path:
    """The folder holding local services' data, logs, generated secrets and ground truths:
    FIELDTRACK_STATE_DIR, else .state in the working directory (never inside the install)."""
    return Path(os.environ.get("FIELDTRACK_STATE_DIR", ".state")).resolve()


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
