"""The decision log: keep / iterate / cut, with frozen evidence and what happened after."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel

from services.accounts.roles import Permission, Principal
from services.analytics.decisions import (
    DECISIONS,
    Decision,
    DecisionCreate,
    get_decision,
    list_decisions,
    record_decision,
)
from services.api.auth import require
from services.api.deps import ConnDep, ListDep, ThresholdsDep
from services.api.errors import NOT_FOUND, ErrorBody, Responses
from services.api.routes.crud import ItemId, query_filters
from services.registry.models import Page

router = APIRouter(prefix="/decisions", tags=["decisions"])
DecisionReader = [Depends(require(Permission.READ_DECISIONS))]


class Problem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class InvalidBody(BaseModel):
    detail: list[Problem]


CREATE_RESPONSES: Responses = {
    404: {"model": ErrorBody, "description": "no such project or feature"},
    422: {
        "model": InvalidBody,
        "description": "invalid input, or a feature with nothing to decide on (not delivered "
        "to the project and not used there)",
    },
}


decision_filters = query_filters(DECISIONS, DecisionCreate)


@router.post(
    "",
    response_model=Decision,
    status_code=status.HTTP_201_CREATED,
    responses=CREATE_RESPONSES,
    summary="Record a keep / iterate / cut decision with the evidence as it stands",
)
def create_decision(
    body: DecisionCreate,
    conn: ConnDep,
    caller: Annotated[Principal, Depends(require(Permission.WRITE_DECISIONS))],
    thresholds: ThresholdsDep,
) -> Decision:
    # Who decided is who is logged in, whatever the body says.
    body = body.model_copy(update={"decided_by": caller.name})
    return record_decision(conn, body, thresholds)


@router.get(
    "",
    response_model=Page[Decision],
    summary="List decisions, newest first, each with what usage did after it",
    dependencies=DecisionReader,
)
def get_decisions(
    conn: ConnDep, page: ListDep, where: Annotated[dict[str, Any], Depends(decision_filters)]
) -> Page[Decision]:
    return list_decisions(
        conn,
        filters=where,
        search=page.q,
        sort=page.sort,
        limit=page.limit,
        offset=page.offset,
    )


@router.get(
    "/{item_id}",
    response_model=Decision,
    responses=NOT_FOUND,
    summary="One decision: its frozen evidence and what usage did after it",
    dependencies=DecisionReader,
)
def get_one_decision(item_id: ItemId, conn: ConnDep) -> Decision:
    return get_decision(conn, item_id)
