"""`fieldtrack deliveries`: features delivered to projects, through the API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from services.client.commands.common import DATE_FORMATS, ItemId, changes, given
from services.client.commands.crud import ResourceCommands
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
)
app = COMMANDS.app()

DeliveredOn = Annotated[datetime | None, typer.Option(formats=DATE_FORMATS, help="YYYY-MM-DD")]
CostDays = Annotated[str | None, typer.Option(help="cost in person-days, e.g. 12.5")]
LineValue = Annotated[str | None, typer.Option(help="contract line value, e.g. 25000.00")]
Score = Annotated[int | None, typer.Option(min=1, max=5, help="business score 1-5")]
Notes = Annotated[str | None, typer.Option()]


@app.command("add")
def deliveries_add(
    *,
    project: Annotated[int, typer.Option(min=1, help="project id")],
    feature: Annotated[int, typer.Option(min=1, help="feature id")],
    status: Annotated[DeliveryStatus | None, typer.Option(help="default: delivered")] = None,
    delivered_on: DeliveredOn = None,
    cost_days: CostDays = None,
    line_value: LineValue = None,
    score: Score = None,
    strategic: Annotated[bool, typer.Option("--strategic/--no-strategic")] = False,
    notes: Notes = None,
) -> None:
    """Record a feature delivered (or planned, or cut) for a project."""
    body = given(
        project_id=project,
        feature_id=feature,
        status=status,
        delivered_on=delivered_on,
        cost_person_days=cost_days,
        contract_line_value=line_value,
        business_score=score,
        strategic=strategic,
        notes=notes,
    )
    COMMANDS.create(body, name="feature_key", context=f" for project {project}")


@app.command("update")
def deliveries_update(
    item_id: ItemId,
    *,
    status: Annotated[DeliveryStatus | None, typer.Option()] = None,
    delivered_on: DeliveredOn = None,
    cost_days: CostDays = None,
    line_value: LineValue = None,
    score: Score = None,
    strategic: Annotated[bool | None, typer.Option("--strategic/--no-strategic")] = None,
    notes: Notes = None,
) -> None:
    """Change some fields of a delivery."""
    body = changes(
        status=status,
        delivered_on=delivered_on,
        cost_person_days=cost_days,
        contract_line_value=line_value,
        business_score=score,
        strategic=strategic,
        notes=notes,
    )
    COMMANDS.update(item_id, body)


COMMANDS.add_standard_commands(app)
