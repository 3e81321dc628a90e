"""`fieldtrack features`: features that can be delivered, through the API."""

from __future__ import annotations

from services.client.commands.crud import ResourceCommands, Setting
from services.core.console import Column
from services.registry.enums import FeatureKind
from services.registry.resources import FEATURES

COMMANDS = ResourceCommands(
    FEATURES,
    plural="features",
    help="Features that can be delivered (through the API).",
    columns=(
        Column("id", "id", "right"),
        Column("key", "key"),
        Column("name", "name"),
        Column("product line", "product_line"),
        Column("kind", "kind"),
    ),
    delete_help="Delete a feature that was never delivered.",
    created="{key}",
)
app = COMMANDS.app()

COMMANDS.add_write_commands(
    app,
    (
        Setting("key", str, "stable key devices report, e.g. remote_unlock", fixed=True),
        Setting("name", str, required=True, add_help="display name"),
        Setting("product_line", str),
        Setting("description", str),
        Setting("kind", FeatureKind, FEATURES.filters["kind"].description),
    ),
    add_help="Create a feature.",
    update_help="Change some fields of a feature.",
)
COMMANDS.add_standard_commands(app)
