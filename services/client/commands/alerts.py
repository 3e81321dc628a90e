"""`fieldtrack alerts …` through the API: see and acknowledge alerts; rules, channels and the
notification outbox for admins and ops. (`alerts run` and `alerts evaluate`, the process,
are in services/cli.py.)"""

from __future__ import annotations

import json
from datetime import time
from typing import Annotated, Any

import typer

from services.alerts.enums import AlertState, ChannelKind, NotificationState
from services.alerts.rules import RuleKind
from services.client.commands.common import ItemId, api, changes, done, given, print_page
from services.core.console import Column, command_group, console, fail, print_record, print_rows

app = command_group("Alert rules, alerts and notifications.")
rules_app = command_group("Alert rules: the defaults and each project's own.")
channels_app = command_group("Where notifications go: webhooks and email.")
notifications_app = command_group("The notification outbox: pending, sent, dead.")
app.add_typer(rules_app, name="rules")
app.add_typer(channels_app, name="channels")
app.add_typer(notifications_app, name="notifications")

ALERT_COLUMNS = (
    Column("id", "id", "right"),
    Column("state", "state"),
    Column("kind", "kind"),
    Column("project", "project_name"),
    Column("summary", "summary"),
    Column("fired", "fired_at"),
    Column("by", "acknowledged_by"),
)
RULE_COLUMNS = (
    Column("id", "id", "right"),
    Column("kind", "kind"),
    Column("project", "project_id", "right"),
    Column("on", "enabled"),
    Column("parameters", "effective_params"),
    Column("channels", "channels"),
)
CHANNEL_COLUMNS = (
    Column("id", "id", "right"),
    Column("name", "name"),
    Column("kind", "kind"),
    Column("target", "target"),
    Column("signed", "signed"),
    Column("quiet from", "quiet_start"),
    Column("quiet to", "quiet_end"),
)
NOTIFICATION_COLUMNS = (
    Column("id", "id", "right"),
    Column("alert", "alert_id", "right"),
    Column("event", "event"),
    Column("channel", "channel"),
    Column("state", "state"),
    Column("attempts", "attempts", "right"),
    Column("next", "next_attempt_at"),
    Column("last error", "last_error"),
)


def _params(pairs: list[str] | None) -> dict[str, Any] | None:
    """`name=value` pairs as rule parameters (values as JSON: numbers stay numbers)."""
    if not pairs:
        return None
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise fail(f"--set {pair!r}: expected NAME=VALUE, e.g. --set silent_s=600")
        try:
            params[name] = json.loads(text)
        except json.JSONDecodeError:
            params[name] = text
    return params


@app.command("list")
def list_alerts(
    all_: Annotated[bool, typer.Option("--all", help="resolved ones too")] = False,
    state: Annotated[AlertState | None, typer.Option(help="only this state")] = None,
    project: Annotated[int | None, typer.Option(min=1, help="only this project's")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 100,
    offset: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Open alerts you may see (firing, then acknowledged); --all adds the history."""
    query = given(state=state, project_id=project, limit=limit, offset=offset)
    if not all_ and state is None:
        query["open"] = "true"
    with api() as client:
        page = client.get("/alerts", query)
    print_page(page, "alerts", ALERT_COLUMNS)


@app.command("show")
def show_alert(alert_id: ItemId) -> None:
    """One alert with its evidence."""
    with api() as client:
        print_record(client.get(f"/alerts/{alert_id}"))


@app.command("ack")
def acknowledge(alert_id: ItemId) -> None:
    """Acknowledge a firing alert (it resolves by itself when the condition clears)."""
    with api() as client:
        done(f"acknowledged alert {alert_id}", client.post(f"/alerts/{alert_id}/acknowledge"))


@app.command("kinds")
def kinds() -> None:
    """Every rule kind: who sees it, what it watches, its parameters and defaults."""
    with api() as client:
        for kind in client.get("/alerts/kinds"):
            console.print(f"[bold]{kind['kind']}[/] ({kind['audience']}): {kind['description']}")
            for name, spec in kind["params"].items():
                console.print(
                    f"  {name} = {spec.get('default')}  {spec.get('description', '')}",
                    highlight=False,
                )


@rules_app.command("list")
def list_rules() -> None:
    """Every rule; project "-" is the portfolio-wide default of its kind."""
    with api() as client:
        print_rows(client.get("/alerts/rules"), RULE_COLUMNS)


SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="a parameter, NAME=VALUE (repeatable); see `alerts kinds`"),
]
ChannelsOpt = Annotated[
    list[int] | None, typer.Option("--channel", help="a channel id to notify (repeatable)")
]


@rules_app.command("add")
def add_rule(
    kind: Annotated[RuleKind, typer.Argument(help="a rule kind (`fieldtrack alerts kinds`)")],
    project: Annotated[int, typer.Option(min=1, help="the project the rule is for")],
    set_: SetOpt = None,
    channel: ChannelsOpt = None,
    disabled: Annotated[bool, typer.Option(help="silence this kind for the project")] = False,
) -> None:
    """A project's own rule of a kind, replacing the default for that project."""
    body: dict[str, Any] = {"kind": kind.value, "project_id": project}
    body["params"] = _params(set_) or {}
    body |= {"channels": channel or [], "enabled": not disabled}
    with api() as client:
        done("rule added", client.post("/alerts/rules", body))


@rules_app.command("update")
def update_rule(
    rule_id: ItemId,
    set_: SetOpt = None,
    channel: ChannelsOpt = None,
    enabled: Annotated[bool | None, typer.Option("--enabled/--disabled")] = None,
) -> None:
    """Change a rule's parameters (all of them: what is left out takes the default),
    channels or whether it is on."""
    body = changes(params=_params(set_), channels=channel, enabled=enabled)
    with api() as client:
        done(f"rule {rule_id} updated", client.patch(f"/alerts/rules/{rule_id}", body))


@rules_app.command("delete")
def delete_rule(rule_id: ItemId) -> None:
    """Delete a project's own rule (the default applies again)."""
    with api() as client:
        client.delete(f"/alerts/rules/{rule_id}")
    done(f"rule {rule_id} deleted")


@channels_app.command("list")
def list_channels() -> None:
    with api() as client:
        print_rows(client.get("/alerts/channels"), CHANNEL_COLUMNS)


@channels_app.command("add")
def add_channel(
    name: str,
    kind: ChannelKind,
    target: Annotated[str, typer.Argument(help="webhook URL, or comma-separated addresses")],
    *,
    secret: Annotated[
        str | None, typer.Option(envvar="FIELDTRACK_WEBHOOK_SECRET", help="HMAC key (webhook)")
    ] = None,
    quiet_start: Annotated[str | None, typer.Option(help="quiet hours from HH:MM (UTC)")] = None,
    quiet_end: Annotated[str | None, typer.Option(help="quiet hours until HH:MM (UTC)")] = None,
) -> None:
    """A webhook (signed with --secret) or an email channel; rules name it by id."""
    for value in (quiet_start, quiet_end):
        if value is not None:
            try:
                time.fromisoformat(value)
            except ValueError:
                raise fail(f"{value!r} is not a time of day, e.g. 22:00") from None
    body = given(name=name, kind=kind, target=target, secret=secret)
    body |= given(quiet_start=quiet_start, quiet_end=quiet_end)
    with api() as client:
        done("channel added", client.post("/alerts/channels", body))


@channels_app.command("delete")
def delete_channel(channel_id: ItemId) -> None:
    with api() as client:
        client.delete(f"/alerts/channels/{channel_id}")
    done(f"channel {channel_id} deleted")


@notifications_app.command("list")
def list_notifications(
    state: Annotated[
        NotificationState | None, typer.Option(help="e.g. dead: the dead letters")
    ] = None,
    alert: Annotated[int | None, typer.Option(min=1, help="only this alert's")] = None,
) -> None:
    with api() as client:
        rows = client.get("/alerts/notifications", given(state=state, alert_id=alert))
    if rows:
        print_rows(rows, NOTIFICATION_COLUMNS)
    console.print(f"{len(rows)} notification{'s' if len(rows) != 1 else ''}", highlight=False)


@notifications_app.command("retry")
def retry(notification_id: ItemId) -> None:
    """Send a dead notification again."""
    with api() as client:
        client.post(f"/alerts/notifications/{notification_id}/retry")
    done(f"notification {notification_id} queued again")
