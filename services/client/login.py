"""`fieldtrack login` / `logout`: a personal token for the CLI, kept in a private file."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.markup import escape

from services.core.console import console, err_console
from services.core.errors import FieldtrackError


def _write_private(text: str) -> str:
    from services.client.settings import cli_config_file  # noqa: PLC0415 - fast --help

    path = cli_config_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return str(path)


def login(
    username: Annotated[str, typer.Option(prompt=True, help="your fieldtrack username")],
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, help="prompted for when left out")
    ],
    url: Annotated[
        str | None, typer.Option(help="API base URL; default FIELDTRACK_API_URL or the saved one")
    ] = None,
    # the API's limits for personal tokens (services/accounts/store.py; not imported: it
    # hashes a password at import, and `--help` must stay fast)
    expires_in_days: Annotated[int, typer.Option(min=1, max=365)] = 90,
) -> None:
    """Log in: exchange your password for a personal token and save it for later commands."""
    from services.client.http import FieldtrackClient  # noqa: PLC0415
    from services.client.settings import ClientSettings, load_client_settings  # noqa: PLC0415

    settings = load_client_settings()
    if url:
        settings = ClientSettings(api_url=url, api_timeout_s=settings.api_timeout_s)
    with FieldtrackClient(settings.api_url, timeout_s=settings.api_timeout_s) as client:
        token = client.post(
            "/auth/token",
            {
                "username": username,
                "password": password,
                "name": "cli",
                "expires_in_days": expires_in_days,
            },
        )
    path = _write_private(
        "# written by `fieldtrack login`; environment variables override these\n"
        f"FIELDTRACK_API_URL={settings.api_url}\nFIELDTRACK_API_TOKEN={token['token']}\n"
    )
    console.print(
        f"logged in to {settings.api_url} as [bold]{escape(username)}[/] ({token['role']}); "
        f"token {token['prefix']}… saved in {path}, expires {token['expires_at'] or 'never'}"
    )


def logout() -> None:
    """Revoke the saved token and forget it."""
    from services.client.http import FieldtrackClient  # noqa: PLC0415
    from services.client.settings import cli_config_file, load_client_settings  # noqa: PLC0415

    path = cli_config_file()
    try:
        settings = load_client_settings()
        if settings.api_token is not None:
            with FieldtrackClient.from_settings(settings) as client:
                mine = client.get("/auth/tokens")
                secret = settings.api_token.get_secret_value()
                for token in mine:
                    if secret.startswith(token["prefix"]) and token["revoked_at"] is None:
                        client.post(f"/auth/tokens/{token['id']}/revoke")
    except FieldtrackError as exc:
        err_console.print(f"[yellow]could not revoke the token:[/] {escape(str(exc))}")
    if path.exists():
        path.unlink()
        console.print(f"logged out; removed {path}")
    else:
        console.print("no saved login")
