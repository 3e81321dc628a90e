"""`fieldtrack projects`: customer projects, through the API."""

from __future__ import annotations

from datetime import datetime

from services.client.commands.common import DATE_FORMATS
from services.client.commands.crud import ResourceCommands, Setting
from services.core.console import Column
from services.registry.enums import ProjectStatus
from services.registry.resources import PROJECTS

COMMANDS = ResourceCommands(
    PROJECTS,
    plural="projects",
    help="Customer projects (through the API).",
    columns=(
        Column("id", "id", "right"),
        Column("name", "name"),
        Column("customer", "customer_name"),
        Column("status", "status"),
        Column("value", "contract_value", "right"),
        Column("cur", "currency"),
        Column("go-live", "go_live_date"),
        Column("devices", "devices", "right"),
    ),
    delete_help="Delete a project without devices or deliveries.",
)
app = COMMANDS.app()

COMMANDS.add_write_commands(
    app,
    (
        Setting(
            "customer_id", int, "customer id", option="customer", fixed=True, limits={"min": 1}
        ),
        Setting("name", str, required=True, add_help="project name (unique per customer)"),
        Setting("contract_value", str, "amount, e.g. 480000.00", option="value"),
        Setting("currency", str, "ISO 4217 code (default: EUR)"),
        Setting(
            "go_live_date",
            datetime,
            "YYYY-MM-DD",
            option="go_live",
            limits={"formats": DATE_FORMATS},
        ),
        Setting("status", ProjectStatus, add_help="default: delivering"),
        Setting(
            "retention_days", int, "days raw device data is kept", limits={"min": 1, "max": 36500}
        ),
    ),
    add_help="Create a project for a customer.",
    update_help="Change some fields of a project.",
)
COMMANDS.add_standard_commands(app)
