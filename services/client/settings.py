"""Where the API is and how to reach it, for the command-line client.

Deliberately apart from `services.core.settings`: the client needs no database or broker
settings, so it runs on any machine that can reach the API. Values come from the
environment and, below that, from the file `fieldtrack login` writes (`cli_config_file()`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.core.errors import ConfigError
from services.core.settings import variable_problems

DEFAULT_API_URL = "http://127.0.0.1:8000"


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FIELDTRACK_", extra="ignore")

    api_url: str = Field(
        default=DEFAULT_API_URL,
        description="base URL of the fieldtrack API, e.g. https://fieldtrack.example.com",
    )
    api_token: SecretStr | None = Field(
        default=None, description="sent as `Authorization: Bearer <token>` when set"
    )
    api_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = value.strip()
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return url.rstrip("/")

    @field_validator("api_token")
    @classmethod
    def _empty_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            return None
        return value


def cli_config_file() -> Path:
    """Where `fieldtrack login` keeps the API URL and token (mode 0600)."""
    if explicit := os.environ.get("FIELDTRACK_CLI_CONFIG"):
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "fieldtrack" / "cli.env"


def load_client_settings() -> ClientSettings:
    """Settings from the environment, then the login file; raises ConfigError naming every
    bad variable."""
    try:
        return ClientSettings(_env_file=cli_config_file())
    except ValidationError as exc:
        raise ConfigError(f"client configuration is invalid ({variable_problems(exc)})") from exc
