"""`fieldtrack customers`: customers, through the API."""

from __future__ import annotations

from services.client.commands.crud import ResourceCommands, Setting
from services.core.console import Column
from services.registry.enums import LifecycleStage as Stage, Tier
from services.registry.resources import CUSTOMERS

COMMANDS = ResourceCommands(
    CUSTOMERS,
    plural="customers",
    help="Customers (through the API).",
    columns=(
        Column("id", "id", "right"),
        Column("name", "name"),
        Column("tier", "tier"),
        Column("industry", "industry"),
        Column("stage", "lifecycle_stage"),
        Column("created", "created_at"),
    ),
    delete_help="Delete a customer that has no projects.",
    options={"lifecycle_stage": "stage"},
)
app = COMMANDS.app()


COMMANDS.add_write_commands(
    app,
    (
        Setting("name", str, required=True, add_help="unique customer name"),
        Setting("tier", Tier, required=True, add_help="head (large), waist (mid) or tail (small)"),
        Setting("industry", str, required=True, add_help="e.g. logistics"),
        Setting(
            "lifecycle_stage",
            Stage,
            "lifecycle stage",
            option="stage",
            add_help="default: onboarding",
        ),
    ),
    add_help="Create a customer.",
    update_help="Change some fields of a customer.",
)
COMMANDS.add_standard_commands(app)
