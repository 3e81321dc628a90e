"""The Jinja2 templates under dashboards/templates, shared by every page."""

from __future__ import annotations

from fastapi.templating import Jinja2Templates

from services.core.paths import DASHBOARDS_DIR

templates = Jinja2Templates(directory=DASHBOARDS_DIR / "templates")
