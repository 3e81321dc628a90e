"""The dashboards' files, shipped as package data: the pages' Jinja templates (templates/),
their CSS and scripts (static/) and the Grafana provisioning (grafana/). No code: fieldtrack
reads them through importlib.resources (services/core/paths.py)."""
