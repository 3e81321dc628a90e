"""The Alerts page (firing, acknowledged, history), one alert's page with its evidence, and
the Acknowledge form.

Which alerts a caller sees is the store's rule (services/alerts/store.py); notifications link
to one alert's page (services/alerts/notify.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal
from urllib.parse import urlencode

import psycopg
from fastapi import APIRouter, Depends, Form, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.accounts.roles import Permission, Principal
from services.alerts import store
from services.alerts.enums import AlertState
from services.alerts.notify import ALERTS_PAGE
from services.alerts.rules import DESCRIPTIONS
from services.alerts.store import Alert
from services.api.auth import require
from services.api.deps import ConnDep
from services.api.pages_support import render
from services.api.routes.crud import ItemId
from services.core.errors import ConflictError

router = APIRouter(include_in_schema=False)
AlertReader = Annotated[Principal, Depends(require(Permission.READ_ALERTS, kind="page"))]
Acknowledger = Annotated[Principal, Depends(require(Permission.ACK_ALERTS, kind="form"))]
# Resolved alerts per page of history; open alerts are all shown (up to the store's limit).
HISTORY_PAGE = 50
# Devices named per alert on the list; one alert's page names every device its evidence lists.
LISTED_DEVICES = 5


@dataclass(frozen=True)
class AlertView:
    """An alert with the devices its evidence names: (serial, device id when the caller may
    open the device's page)."""

    alert: Alert
    devices: list[tuple[str, int | None]]


def _views(conn: psycopg.Connection, caller: Principal, alerts: list[Alert]) -> list[AlertView]:
    named = {a.id: store.named_serials(a) for a in alerts}
    ids = store.device_ids(conn, caller, sorted({s for serials in named.values() for s in serials}))
    return [AlertView(a, [(s, ids.get(s)) for s in named[a.id]]) for a in alerts]


@router.get(ALERTS_PAGE, response_class=HTMLResponse)
def alerts_page(
    request: Request,
    conn: ConnDep,
    caller: AlertReader,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="history to skip")] = 0,
    error: Annotated[str | None, Query(max_length=500)] = None,
) -> HTMLResponse:
    open_alerts = store.list_alerts(conn, caller, open_only=True, limit=store.MAX_LIMIT)
    history = store.list_alerts(
        conn, caller, state=AlertState.RESOLVED, limit=HISTORY_PAGE + 1, offset=offset
    )
    views = _views(conn, caller, open_alerts + history[:HISTORY_PAGE])
    return render(
        request,
        conn,
        "alerts.html",
        caller,
        firing=[v for v in views if v.alert.state is AlertState.FIRING],
        acknowledged=[v for v in views if v.alert.state is AlertState.ACKNOWLEDGED],
        history=views[len(open_alerts) :],
        open_cut=len(open_alerts) == store.MAX_LIMIT,
        offset=offset,
        older=offset + HISTORY_PAGE if len(history) > HISTORY_PAGE else None,
        newer=max(offset - HISTORY_PAGE, 0) if offset else None,
        listed_devices=LISTED_DEVICES,
        descriptions=DESCRIPTIONS,
        error=error,
    )


@router.get(ALERTS_PAGE + "/{item_id}", response_class=HTMLResponse)
def alert_page(
    request: Request,
    item_id: ItemId,
    conn: ConnDep,
    caller: AlertReader,
    error: Annotated[str | None, Query(max_length=500)] = None,
) -> HTMLResponse:
    """One alert, from the list or a notification's link: another customer's is a 404."""
    [view] = _views(conn, caller, [store.get_alert(conn, caller, item_id)])
    return render(
        request, conn, "alert.html", caller, view=view, descriptions=DESCRIPTIONS, error=error
    )


@router.post(ALERTS_PAGE + "/{item_id}/acknowledge")
def acknowledge(
    item_id: ItemId,
    conn: ConnDep,
    caller: Acknowledger,
    back: Annotated[Literal["list", "alert"], Form()] = "list",
) -> Response:
    """The Acknowledge button: firing → acknowledged by the caller, then back to the page it
    was pressed on (with the reason when someone else got there first)."""
    page, anchor = (
        (ALERTS_PAGE, f"#alert-{item_id}") if back == "list" else (f"{ALERTS_PAGE}/{item_id}", "")
    )
    try:
        store.acknowledge(conn, caller, item_id, datetime.now(UTC))
    except ConflictError as exc:
        target = f"{page}?{urlencode({'error': str(exc)})}{anchor}"
        return RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)
    return RedirectResponse(page + anchor, status_code=status.HTTP_303_SEE_OTHER)
