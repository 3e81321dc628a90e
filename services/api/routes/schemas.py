"""JSON Schemas of the device payloads, straight from the models ingest validates with."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from services.api.auth import require
from services.core.payloads import MESSAGE_MODELS
from services.core.topics import TOPIC_ROOT, MessageKind

router = APIRouter(prefix="/schemas", tags=["schemas"], dependencies=[Depends(require())])


def payload_schemas() -> dict[str, Any]:
    return {
        kind.value: {
            "topic": f"{TOPIC_ROOT}/{{serial}}/{kind.value}",
            "schema": model.model_json_schema(),
        }
        for kind, model in MESSAGE_MODELS.items()
    }


@router.get("/payloads", summary="Topic and JSON Schema of each device message kind")
def get_payload_schemas() -> dict[str, Any]:
    return payload_schemas()


@router.get("/payloads/{kind}", summary="JSON Schema of one device message kind")
def get_payload_schema(kind: MessageKind) -> dict[str, Any]:
    return MESSAGE_MODELS[kind].model_json_schema()
