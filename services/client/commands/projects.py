"""`fieldtrack projects`: customer projects, through the API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from services.client.commands.common import DATE_FORMATS, ItemId, changes, given
from services.client.commands.crud import ResourceCommands
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

Money = Annotated[str | None, typer.Option(help="amount, e.g. 480000.00")]
GoLive = Annotated[datetime | None, typer.Option(formats=DATE_FORMATS, help="YYYY-MM-DD")]
Currency = Annotated[str | None, typer.Option(help="ISO 4217 code (default: EUR)")]
Retention = Annotated[
    int | None, typer.Option(min=1, max=36500, help="days raw device data is kept")
]


@app.command("add")
def projects_add(
    *,
    customer: Annotated[int, typer.Option(min=1, help="customer id")],
    name: Annotated[str, typer.Option(help="project name (unique per customer)")],
    value: Money = None,
    currency: Currency = None,
    go_live: GoLive = None,
    status: Annotated[ProjectStatus | None, typer.Option(help="default: delivering")] = None,
    retention_days: Retention = None,
) -> None:
    """Create a project for a customer."""
    body = given(
        customer_id=customer,
        name=name,
        contract_value=value,
        currency=currency,
        go_live_date=go_live,
        status=status,
        retention_days=retention_days,
    )
    COMMANDS.create(body)


@app.command("update")
def projects_update(
    item_id: ItemId,
    *,
    name: Annotated[str | None, typer.Option()] = None,
    value: Money = None,
    currency: Currency = None,
    go_live: GoLive = None,
    status: Annotated[ProjectStatus | None, typer.Option()] = None,
    retention_days: Retention = None,
) -> None:
    """Change some fields of a project."""
    body = changes(
        name=name,
        contract_value=value,
        currency=currency,
        go_live_date=go_live,
        status=status,
        retention_days=retention_days,
    )
    COMMANDS.update(item_id, body)


COMMANDS.add_standard_commands(app)
