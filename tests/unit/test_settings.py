from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.core.errors import ConfigError
from services.core.settings import Settings, get_settings, parse_broker_nodes

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


def test_broker_nodes_default_to_the_one_broker(env: pytest.MonkeyPatch) -> None:
    env.setenv("FIELDTRACK_MQTT_HOST", "broker.example")
    env.setenv("FIELDTRACK_MQTT_PORT", "1884")
    settings = get_settings()
    assert settings.mqtt_nodes == []
    assert settings.broker_nodes() == [("broker.example", 1884)]


def test_broker_nodes_come_from_a_host_port_list(env: pytest.MonkeyPatch) -> None:
    env.setenv("FIELDTRACK_MQTT_NODES", " 10.0.0.1:1883, nats-2:1884,[::1]:1885 ")
    assert get_settings().broker_nodes() == [
        ("10.0.0.1", 1883),
        ("nats-2", 1884),
        ("::1", 1885),
    ]


@pytest.mark.parametrize(
    "value", ["nats-1", "nats-1:", ":1883", "nats-1:0", "nats-1:70000", "a:1883,,b:1883", "a:x"]
)
def test_a_malformed_node_list_fails_naming_the_variable(
    env: pytest.MonkeyPatch, value: str
) -> None:
    env.setenv("FIELDTRACK_MQTT_NODES", value)
    with pytest.raises(ConfigError, match=r"FIELDTRACK_MQTT_NODES: .*host:port"):
        get_settings()


def test_parse_broker_nodes_of_empty_text_is_no_nodes() -> None:
    assert parse_broker_nodes("") == parse_broker_nodes("  ") == []
