"""The commands of a registry resource, made from declarations.

`list`, `show` and `delete` come from the resource's declaration: the filters of a list are
the resource's (services/registry/resources.py), the same the API answers to, each an option
with the type of its field. `add` and `update` come from one table of `Setting`s a resource's
module declares: each option and the API field it sets, once for both commands.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from services.client.commands.common import ItemId, api, changes, done, given, print_page
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

KEYWORD = inspect.Parameter.KEYWORD_ONLY


@dataclass(frozen=True)
class Setting:
    """An option of `add` and `update`, and the API field it sets."""

    api_field: str
    value_type: type
    help: str | None = None
    option: str | None = None  # the option's name where it is not the field's
    required: bool = False  # by `add`
    fixed: bool = False  # given once, to `add` (which requires it): whose project, which key
    add_help: str | None = None  # `add`'s help instead, e.g. the default it falls back on
    limits: Mapping[str, Any] = field(default_factory=dict)  # typer.Option's: min, formats

    @property
    def name(self) -> str:
        return self.option or self.api_field

    def parameter(self, *, adding: bool) -> inspect.Parameter:
        """The option on `add` (required or not) or on `update` (never required). A flag
        is off unless given on `add`, and unchanged unless given on `update`."""
        flag = self.name.replace("_", "-")
        decls = [f"--{flag}/--no-{flag}"] if self.value_type is bool else []
        option = typer.Option(
            *decls, help=(self.add_help or self.help) if adding else self.help, **self.limits
        )
        hint: Any
        default: Any
        if adding and (self.required or self.fixed):
            hint, default = self.value_type, inspect.Parameter.empty
        elif adding and self.value_type is bool:
            hint, default = bool, False
        else:
            hint, default = self.value_type | None, None
        return inspect.Parameter(
            self.name, KEYWORD, annotation=Annotated[hint, option], default=default
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
    # how `add` names what it created, from the API's answer
    created: str = "{name}"

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

    def add_write_commands(
        self, app: typer.Typer, settings: Sequence[Setting], *, add_help: str, update_help: str
    ) -> None:
        """`add` and `update`, both from the one table of settings."""
        app.command("add", help=add_help)(self._add_command(settings))
        app.command("update", help=update_help)(self._update_command(settings))

    def _add_command(self, settings: Sequence[Setting]) -> Callable[..., None]:
        def run(**options: Any) -> None:
            body = given(**{s.api_field: options[s.name] for s in settings})
            with api() as client:
                item = client.post(self.path, body)
            done(f"created {self.label} {item['id']}: {self.created.format(**item)}", item)

        parameters = [s.parameter(adding=True) for s in settings]
        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        return run

    def _update_command(self, settings: Sequence[Setting]) -> Callable[..., None]:
        changeable = [s for s in settings if not s.fixed]

        def run(item_id: int, **options: Any) -> None:
            body = changes(**{s.api_field: options[s.name] for s in changeable})
            with api() as client:
                item = client.patch(f"{self.path}/{item_id}", body)
            done(f"updated {self.label} {item_id}", item)

        item_id = inspect.Parameter(
            "item_id", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=ItemId
        )
        parameters = [item_id, *(s.parameter(adding=False) for s in changeable)]
        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        return run

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
        value_type = self.resource.filter_type(key)
        name = self.options.get(key, key.removesuffix("_id")).replace("_", "-")
        # A renamed option says what it stands for ("--customer": customer id).
        help_text = flt.description or (
            key.replace("_", " ") if name != key.replace("_", "-") else None
        )
        decls = [f"--{name}/--no-{name}"] if value_type is bool else [f"--{name}"]
        minimum = 1 if value_type is int else None
        return Annotated[value_type | None, typer.Option(*decls, min=minimum, help=help_text)]
