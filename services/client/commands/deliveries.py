"""`fieldtrack deliveries`: features delivered to projects, through the API."""

from __future__ import annotations

from datetime import datetime

from services.client.commands.common import DATE_FORMATS
from services.client.commands.crud import ResourceCommands, Setting
from services.core.console import Column
from services.registry.enums import DeliveryStatus
from services.registry.resources import DELIVERIES

COMMANDS = ResourceCommands(
    DELIVERIES,
    plural="deliveries",
    help="Features delivered to projects (through the API).",
    columns=(
        Column("id", "id", "right"),
        Column("project", "project_id", "right"),
        Column("feature", "feature_key"),
        Column("status", "status"),
        Column("delivered", "delivered_on"),
        Column("days", "cost_person_days", "right"),
        Column("line value", "contract_line_value", "right"),
        Column("score", "business_score", "right"),
        Column("strategic", "strategic"),
    ),
    delete_help="Delete a delivery.",
    created="{feature_key} for project {project_id}",
)
app = COMMANDS.app()

COMMANDS.add_write_commands(
    app,
    (
        Setting("project_id", int, "project id", option="project", fixed=True, limits={"min": 1}),
        Setting("feature_id", int, "feature id", option="feature", fixed=True, limits={"min": 1}),
        Setting("status", DeliveryStatus, add_help="default: delivered"),
        Setting("delivered_on", datetime, "YYYY-MM-DD", limits={"formats": DATE_FORMATS}),
        Setting("cost_person_days", str, "cost in person-days, e.g. 12.5", option="cost_days"),
        Setting(
            "contract_line_value", str, "contract line value, e.g. 25000.00", option="line_value"
        ),
        Setting(
            "business_score", int, "business score 1-5", option="score", limits={"min": 1, "max": 5}
        ),
        Setting("strategic", bool),
        Setting("notes", str),
    ),
    add_help="Record a feature delivered (or planned, or cut) for a project.",
    update_help="Change some fields of a delivery.",
)
COMMANDS.add_standard_commands(app)
