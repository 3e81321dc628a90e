from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.core.errors import ConfigError
from services.core.settings import Settings, get_settings

VALID = {
    "FIELDTRACK_DATABASE_URL": "postgresql://u:p@localhost:5432/db",
    "FIELDTRACK_MQTT_ADMIN_PASSWORD": "a-real-secret",
    "FIELDTRACK_MQTT_INGEST_PASSWORD": "another-real-secret",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("FIELDTRACK_STATE_DIR", str(tmp_path))  # no env file there
    for key, value in VALID.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_valid_environment_loads(env: pytest.MonkeyPatch) -> None:
    settings = get_settings()
    assert isinstance(settings, Settings)
    assert settings.mqtt_port == 1883


@pytest.mark.parametrize(
    ("key", "value", "mentions"),
    [
        ("FIELDTRACK_MQTT_ADMIN_PASSWORD", "changeme", "FIELDTRACK_MQTT_ADMIN_PASSWORD"),
        ("FIELDTRACK_DATABASE_URL", "mysql://x", "FIELDTRACK_DATABASE_URL"),
        ("FIELDTRACK_MQTT_PORT", "70000", "FIELDTRACK_MQTT_PORT"),
        ("FIELDTRACK_INGEST_CLIENT_ID", "bad/id#", "FIELDTRACK_INGEST_CLIENT_ID"),
    ],
)
def test_bad_values_fail_fast_naming_the_variable(
    env: pytest.MonkeyPatch, key: str, value: str, mentions: str
) -> None:
    env.setenv(key, value)
    with pytest.raises(ConfigError, match=mentions):
        get_settings()


def test_missing_required_value_says_how_to_fix(env: pytest.MonkeyPatch) -> None:
    env.delenv("FIELDTRACK_DATABASE_URL")
    with pytest.raises(ConfigError, match="fieldtrack infra up"):
        get_settings()
