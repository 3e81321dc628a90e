"""One router factory for the registry resources that are plain create/read/update/delete.

Deliberately without `from __future__ import annotations`: FastAPI reads the request and
response models from these annotations at runtime, and here they are the factory's
arguments.
"""

import inspect
from collections.abc import Callable
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, Path, Query, status
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from services.accounts.roles import Permission, Principal, Role
from services.api.auth import require
from services.api.deps import ConnDep, ListDep, ListParams
from services.api.errors import CONFLICT, NOT_FOUND
from services.registry import repository
from services.registry.models import MAX_BIGINT, Page
from services.registry.repository import Filter, Resource, value_annotation

# the keywords of Query that a field's metadata may carry over to a filter (_limits)
LIMITS = ("max_length", "ge", "le", "pattern")
ItemId = Annotated[int, Path(ge=1, le=MAX_BIGINT, description="the item's id")]


def query_filters(
    resource: Resource[Any], bounds: type[BaseModel] | None = None
) -> Callable[..., dict[str, Any]]:
    """A dependency reading the resource's filters from the query, each typed as the field it
    narrows and bounded as `bounds` (the create model) bounds that field; it returns them by
    name, None for those not given."""

    def where(**values: Any) -> dict[str, Any]:
        return values

    where.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                key,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[
                    resource.filter_type(key) | None,
                    Query(description=flt.description, **_limits(bounds, flt)),
                ],
                default=None,
            )
            for key, flt in resource.filters.items()
        ]
    )
    return where


def _limits(bounds: type[BaseModel] | None, flt: Filter) -> dict[str, Any]:
    """The bounds and the pattern a stored value keeps to (ids from 1, text up to its length):
    a filter value beyond them could match nothing. Not a minimum length: a blank filter
    stays an empty page, not a 422."""
    field = bounds.model_fields.get(flt.column) if bounds else None
    if field is None:
        return {}
    # a list's own limits (how many tags) are not those of the element a contains compares
    metadata = [] if flt.op == "contains" else list(field.metadata)
    metadata += FieldInfo.from_annotation(value_annotation(field.annotation, flt.op)).metadata
    return {
        limit: getattr(item, limit)
        for item in metadata
        for limit in LIMITS
        if getattr(item, limit, None) is not None
    }


def list_page(
    conn: psycopg.Connection,
    resource: Resource[Any],
    page: ListParams,
    where: dict[str, Any],
    customer_scope: int | None,
) -> Page[Any]:
    """The page of a resource's list that the query asks for, within the caller's scope."""
    return repository.list_items(
        conn,
        resource,
        filters=where,
        search=page.q,
        sort=page.sort,
        limit=page.limit,
        offset=page.offset,
        customer_id=customer_scope,
    )


def crud_router(
    *,
    resource: Resource[Any],
    create: type[BaseModel],
    update: type[BaseModel],
    plural: str,
    read: Permission = Permission.READ_REGISTRY,
    write: Permission = Permission.WRITE_REGISTRY,
) -> APIRouter:
    """GET list / GET one / POST / PATCH / DELETE for one resource; reads are scoped to the
    caller's customer (and a customer viewer reads the viewer model), writes need `write`."""
    out, viewed = resource.out, resource.for_viewers()
    view = viewed.out
    router = APIRouter(prefix=f"/{plural}", tags=[plural])
    Reader = Annotated[Principal, Depends(require(read))]
    writer = [Depends(require(write))]
    Where = Annotated[dict[str, Any], Depends(query_filters(resource, create))]

    def readable(caller: Principal) -> Resource[Any]:
        return viewed if caller.role is Role.VIEWER else resource

    # Both shapes are documented. The repository returns an instance of exactly one of them,
    # and pydantic's union keeps an exact instance as it is, so a viewer's item is never
    # widened to the staff model (nor a staff item narrowed): test_access checks the keys.
    @router.get(
        "",
        response_model=Page[out] | Page[view],  # type: ignore[valid-type]
        summary=f"List {plural}",
    )
    def list_items(
        conn: ConnDep,
        caller: Reader,
        page: ListDep,
        where: Where,
    ) -> Any:
        return list_page(conn, readable(caller), page, where, caller.customer_scope)

    @router.get(
        "/{item_id}",
        response_model=out | view,
        responses=NOT_FOUND,
        summary=f"One {resource.label}",
    )
    def get_item(item_id: ItemId, conn: ConnDep, caller: Reader) -> Any:
        return repository.get_item(conn, readable(caller), item_id, caller.customer_scope)

    @router.post(
        "",
        response_model=out,
        status_code=status.HTTP_201_CREATED,
        responses=CONFLICT,
        summary=f"Create a {resource.label}",
        dependencies=writer,
    )
    def create_item(body: create, conn: ConnDep) -> Any:  # type: ignore[valid-type]
        return repository.create_item(conn, resource, body)

    @router.patch(
        "/{item_id}",
        response_model=out,
        responses={**NOT_FOUND, **CONFLICT},
        summary=f"Change some fields of a {resource.label}",
        dependencies=writer,
    )
    def update_item(item_id: ItemId, body: update, conn: ConnDep) -> Any:  # type: ignore[valid-type]
        return repository.update_item(conn, resource, item_id, body)

    @router.delete(
        "/{item_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        responses={**NOT_FOUND, **CONFLICT},
        summary=f"Delete a {resource.label} that nothing depends on",
        dependencies=writer,
    )
    def delete_item(item_id: ItemId, conn: ConnDep) -> None:
        repository.delete_item(conn, resource, item_id)

    return router
