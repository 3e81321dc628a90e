"""`fieldtrack customers`: customers, through the API."""

from __future__ import annotations

from typing import Annotated

import typer

from services.client.commands.common import ItemId, changes, given
from services.client.commands.crud import ResourceCommands
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


@app.command("add")
def customers_add(
    *,
    name: Annotated[str, typer.Option(help="unique customer name")],
    tier: Annotated[Tier, typer.Option(help="head (large), waist (mid) or tail (small)")],
    industry: Annotated[str, typer.Option(help="e.g. logistics")],
    stage: Annotated[Stage | None, typer.Option(help="default: onboarding")] = None,
) -> None:
    """Create a customer."""
    body = given(name=name, tier=tier, industry=industry, lifecycle_stage=stage)
    COMMANDS.create(body)


@app.command("update")
def customers_update(
    item_id: ItemId,
    *,
    name: Annotated[str | None, typer.Option()] = None,
    tier: Annotated[Tier | None, typer.Option()] = None,
    industry: Annotated[str | None, typer.Option()] = None,
    stage: Annotated[Stage | None, typer.Option(help="lifecycle stage")] = None,
) -> None:
    """Change some fields of a customer."""
    body = changes(name=name, tier=tier, industry=industry, lifecycle_stage=stage)
    COMMANDS.update(item_id, body)


COMMANDS.add_standard_commands(app)
