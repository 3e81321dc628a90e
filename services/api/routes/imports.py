from __future__ import annotations

import asyncio
import logging
import queue
from typing import Annotated, Literal

import psycopg
from fastapi import APIRouter, Body, Depends, Request, status
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from starlette.concurrency import run_in_threadpool

from services.accounts.roles import Permission
from services.api.auth import require
from services.api.deps import ConnDep
from services.api.errors import IMPORT_REJECTED, ErrorBody, UnsupportedMediaType
from services.core.errors import InvalidInputError
from services.ingest.history import (
    CsvHeaderError,
    HistoryImporter,
    HistoryReport,
    csv_text,
    lines_of,
)
from services.registry import imports

log = logging.getLogger(__name__)
router = APIRouter(prefix="/imports", tags=["imports"])

NDJSON = "application/x-ndjson"
CSV = "text/csv"
# Chunks buffered between the request stream and the importing thread: backpressure.
HISTORY_QUEUE = 64
PUT_POLL_S = 0.5

MAX_CSV_BYTES = 5 * 1024 * 1024
STOPPED = (
    "the import stopped (503: the database failed; 500: a fault of fieldtrack's own): the "
    "report says line by line what was committed before; importing the file again adds "
    "nothing twice"
)


@router.post(
    "/history",
    response_model=HistoryReport,
    status_code=status.HTTP_201_CREATED,
    responses={
        415: {"model": ErrorBody, "description": "neither NDJSON nor CSV"},
        422: {"description": "a CSV header the importer cannot use (detail names what is missing)"},
        500: {"model": HistoryReport, "description": STOPPED},
        503: {"model": HistoryReport, "description": STOPPED},
    },
    summary="Import historical device data (NDJSON or CSV), streamed; re-importing adds nothing",
    description=(
        "`Content-Type: application/x-ndjson`: one device message per line plus `device` and "
        "`kind` (usage|telemetry). `Content-Type: text/csv`: one reading per row, columns "
        "device,kind,seq,ts,feature,count,duration_ms,metric,value,unit and optionally boot; "
        "the rows with the same device, kind, boot, seq and ts form one message wherever they "
        "are in the file. Every record goes through the live ingest checks (except the "
        "late-data window); rejects are quarantined with a reason, never dropped. The report "
        "says what became of every line (`lines`: stored, duplicate, quarantined with its "
        "reason, blank, header)."
    ),
    openapi_extra={"requestBody": {"content": {NDJSON: {}, CSV: {}}, "required": True}},
    dependencies=[Depends(require(Permission.MANAGE_DEVICES))],
)
async def import_history(request: Request, checked: ConnDep) -> HistoryReport | JSONResponse:
    # The access check's connection (FastAPI hands the route the same one) stays checked out
    # until the route returns: end its transaction now, so a long import neither holds a
    # snapshot open nor fails at the end on a commit its connection cannot make any more.
    await run_in_threadpool(checked.commit)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in (NDJSON, CSV):
        raise UnsupportedMediaType(f"send {NDJSON} or {CSV}, not {kind or 'nothing'}")
    pool = request.app.state.pool
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=HISTORY_QUEUE)

    def work() -> HistoryReport | JSONResponse:
        importer: HistoryImporter | None = None
        try:
            with pool.connection() as conn:
                importer = HistoryImporter(conn)
                stream = iter(chunks.get, None)
                if kind == CSV:
                    importer.add_csv(csv_text(stream))
                else:
                    importer.add_ndjson(lines_of(stream))
                for _ in stream:  # drain whatever the client still sends after an early stop
                    pass
                return importer.finish()
        except CsvHeaderError:
            raise
        except Exception as exc:
            if importer is None:
                raise  # no connection: nothing was done, the app's handlers answer
            # Batches are committed as they go: say which lines were, never a bare 500.
            report = importer.stopped(exc)
            log.exception("history import stopped after line %d", report.lines_read)
            down = isinstance(exc, psycopg.OperationalError | PoolTimeout)
            code = (
                status.HTTP_503_SERVICE_UNAVAILABLE
                if down
                else status.HTTP_500_INTERNAL_SERVER_ERROR
            )
            return JSONResponse(report.model_dump(mode="json"), status_code=code)

    worker = asyncio.ensure_future(run_in_threadpool(work))

    def put(item: bytes | None) -> None:
        while not worker.done():
            try:
                chunks.put(item, timeout=PUT_POLL_S)
            except queue.Full:
                continue
            return

    try:
        async for chunk in request.stream():
            if chunk:
                await run_in_threadpool(put, chunk)
    finally:
        await run_in_threadpool(put, None)
    try:
        return await worker
    except CsvHeaderError as exc:
        raise InvalidInputError(str(exc), field=None) from exc


IMPORT_DESCRIPTION = (
    "The header names the fields (as in the create request). Empty cells are not given; "
    "lists are separated by `;`. Projects may give `customer` (name) instead of "
    "`customer_id`, deliveries `feature_key` instead of `feature_id`. Devices are "
    "imported with `POST /devices/import`, which returns their credentials."
)
CsvBody = Annotated[str, Body(media_type="text/csv", max_length=MAX_CSV_BYTES)]


# Declared before /{kind}: deliveries are written by product managers, the rest by admins.
@router.post(
    "/deliveries",
    response_model=imports.ImportReport,
    status_code=status.HTTP_201_CREATED,
    responses=IMPORT_REJECTED,
    summary="Import deliveries from CSV; all rows or none",
    description=IMPORT_DESCRIPTION,
    dependencies=[Depends(require(Permission.WRITE_DELIVERIES))],
)
def import_deliveries(body: CsvBody, conn: ConnDep) -> imports.ImportReport:
    return imports.import_csv(conn, "deliveries", body)


@router.post(
    "/{kind}",
    response_model=imports.ImportReport,
    status_code=status.HTTP_201_CREATED,
    responses=IMPORT_REJECTED,
    summary="Import customers, projects or features from CSV; all rows or none",
    description=IMPORT_DESCRIPTION,
    dependencies=[Depends(require(Permission.WRITE_REGISTRY))],
)
def import_csv(
    kind: Literal["customers", "projects", "features"], body: CsvBody, conn: ConnDep
) -> imports.ImportReport:
    return imports.import_csv(conn, kind, body)
