"""`fieldtrack features`: features that can be delivered, through the API."""

from __future__ import annotations

from typing import Annotated

import typer

from services.client.commands.common import ItemId, changes, given
from services.client.commands.crud import ResourceCommands
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
)
app = COMMANDS.app()

Kind = Annotated[FeatureKind | None, typer.Option(help=FEATURES.filters["kind"].description)]


@app.command("add")
def features_add(
    *,
    key: Annotated[str, typer.Option(help="stable key devices report, e.g. remote_unlock")],
    name: Annotated[str, typer.Option(help="display name")],
    product_line: Annotated[str | None, typer.Option()] = None,
    description: Annotated[str | None, typer.Option()] = None,
    kind: Kind = None,
) -> None:
    """Create a feature."""
    body = given(key=key, name=name, product_line=product_line, description=description, kind=kind)
    COMMANDS.create(body, name="key")


@app.command("update")
def features_update(
    item_id: ItemId,
    *,
    name: Annotated[str | None, typer.Option()] = None,
    product_line: Annotated[str | None, typer.Option()] = None,
    description: Annotated[str | None, typer.Option()] = None,
    kind: Kind = None,
) -> None:
    """Change some fields of a feature."""
    body = changes(name=name, product_line=product_line, description=description, kind=kind)
    COMMANDS.update(item_id, body)


COMMANDS.add_standard_commands(app)
