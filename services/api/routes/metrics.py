"""The API's Prometheus metrics: reads served by the replica or the primary, and the
replica's lag, measured at each scrape."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from services.accounts.roles import Permission
from services.api.auth import require
from services.api.deps import ConnDep
from services.api.reads import REPLICA_FALLBACKS, REPLICA_READS, lag_of

router = APIRouter(tags=["ingest"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
    summary="Prometheus metrics of the API: reads by the replica, fallbacks to the primary, "
    "the replica's lag (only with a replica configured)",
    dependencies=[Depends(require(Permission.READ_INGEST))],
)
def metrics(request: Request, conn: ConnDep) -> Response:
    scrape = CollectorRegistry(auto_describe=True)
    lag = lag_of(request.app.state.reads, conn)
    if lag.configured:
        scrape.register(REPLICA_READS)
        scrape.register(REPLICA_FALLBACKS)
        up = Gauge("fieldtrack_api_replica_up", "1 when the replica answered", registry=scrape)
        up.set(1 if lag.reachable else 0)
        if lag.lag_seconds is not None and lag.lag_bytes is not None:
            seconds = Gauge(
                "fieldtrack_api_replica_lag_seconds",
                "since the last replayed transaction, while WAL is still to replay",
                registry=scrape,
            )
            seconds.set(lag.lag_seconds)
            size = Gauge("fieldtrack_api_replica_lag_bytes", "WAL still to replay", registry=scrape)
            size.set(lag.lag_bytes)
    return Response(generate_latest(scrape), media_type=CONTENT_TYPE_LATEST)
