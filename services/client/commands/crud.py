"""`list`, `show` and `delete` of a registry resource, made from its declaration.

The filters of a list are the resource's (services/registry/resources.py), the same the API
answers to: a filter declared there is an option here, with the type of its field.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Union, get_args, get_origin

import typer

from services.client.commands.common import ItemId, api, done, given, print_page
from services.core.console import Column, command_group, console, print_record
from services.registry.repository import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Filter, Resource

# The options every list has besides its filters: (name, annotation, default).
PAGING: tuple[tuple[str, Any, Any], ...] = (
    (
        "q",
        Annotated[str | None, typer.Option("--q", help="case-insensitive search")],
        None,
    ),
    (
        "sort",
        Annotated[
            str | None,
            typer.Option(help="field to sort by; prefix - for descending, e.g. -created_at"),
        ],
        None,
    ),
    (
        "limit",
        Annotated[int, typer.Option(min=1, max=MAX_PAGE_SIZE, help="how many to show")],
        DEFAULT_PAGE_SIZE,
    ),
    ("offset", Annotated[int, typer.Option(min=0, help="how many to skip")], 0),
)


@dataclass(frozen=True)
class ResourceCommands:
    """How a registry resource appears on the command line."""

    resource: Resource[Any]
    plural: str  # the command group and the API's path
    help: str
    columns: tuple[Column, ...]
    delete_help: str
    # option names that differ from the filter's; an `_id` filter is named without `_id`
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"/{self.plural}"

    @property
    def label(self) -> str:
        return self.resource.label

    def app(self) -> typer.Typer:
        """The resource's command group, without commands yet."""
        return command_group(self.help)

    def add_standard_commands(self, app: typer.Typer) -> None:
        """`list` (with the resource's filters), `show` and `delete`."""
        app.command("list", help=f"List {self.plural} (filters combine).")(self._list_command())
        app.command("show", help=f"One {self.label}.")(self._show)
        app.command("delete", help=self.delete_help)(self._delete)

    def create(self, body: Mapping[str, Any], *, name: str = "name", context: str = "") -> None:
        """POST one item; say which, by its *name* field, and show it."""
        with api() as client:
            item = client.post(self.path, body)
        done(f"created {self.label} {item['id']}: {item[name]}{context}", item)

    def update(self, item_id: int, body: Mapping[str, Any]) -> None:
        """PATCH one item and show it as it is now."""
        with api() as client:
            item = client.patch(f"{self.path}/{item_id}", body)
        done(f"updated {self.label} {item_id}", item)

    def _show(self, item_id: ItemId) -> None:
        with api() as client:
            item = client.get(f"{self.path}/{item_id}")
        print_record(item)

    def _delete(self, item_id: ItemId) -> None:
        with api() as client:
            client.delete(f"{self.path}/{item_id}")
        console.print(f"deleted {self.label} {item_id}")

    def _list_command(self) -> Callable[..., None]:
        filters = self.resource.filters

        def run(**options: Any) -> None:
            params = {
                **given(**{key: options[key] for key in filters}),
                **{name: options[name] for name, _, _ in PAGING},
            }
            with api() as client:
                page = client.get(self.path, params)
            print_page(page, self.plural, self.columns)

        parameters = [
            inspect.Parameter(
                key,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=self._filter_option(key, flt),
                default=None,
            )
            for key, flt in filters.items()
        ]
        parameters += [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=hint, default=value)
            for name, hint, value in PAGING
        ]
        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        return run

    def _filter_option(self, key: str, flt: Filter) -> Any:
        """The option for one filter: typed as the field it narrows, ids at least 1."""
        value_type = _value_type(self.resource.out.model_fields[flt.column].annotation, flt.op)
        name = self.options.get(key, key.removesuffix("_id")).replace("_", "-")
        # A renamed option says what it stands for ("--customer": customer id).
        help_text = flt.description or (
            key.replace("_", " ") if name != key.replace("_", "-") else None
        )
        decls = [f"--{name}/--no-{name}"] if value_type is bool else [f"--{name}"]
        minimum = 1 if value_type is int else None
        return Annotated[value_type | None, typer.Option(*decls, min=minimum, help=help_text)]


def _value_type(annotation: Any, op: str) -> type:
    """`X | None` is X; a contains filter compares one element of a `list[X]`."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    if op == "contains":
        (annotation,) = get_args(annotation)
    assert isinstance(annotation, type)  # noqa: S101 - declarations are checked at import
    return annotation
