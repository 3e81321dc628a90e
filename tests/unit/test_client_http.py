"""The API client's error translation and headers, against canned responses (no network)."""

from __future__ import annotations

import csv
import json
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner, Result

from services.cli import app as cli_app
from services.client.http import (
    ApiError,
    Conflict,
    FieldtrackClient,
    Invalid,
    NotFound,
    Unauthorized,
    Unavailable,
)
from services.client.settings import ClientSettings, load_client_settings
from services.core.errors import ConfigError
from services.registry import models

BASE = "http://api.test"
Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, token: str | None = None) -> FieldtrackClient:
    return FieldtrackClient(BASE, token=token, transport=httpx.MockTransport(handler))


def answer(status: int, body: Any = None, text: str | None = None) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text)
        return httpx.Response(status, json=body)

    return handle


def test_json_text_and_empty_bodies() -> None:
    assert client(answer(200, {"id": 1})).get("/customers/1") == {"id": 1}
    assert client(answer(201, text="serial,password\n")).post("/x", csv="a") == "serial,password\n"
    assert client(lambda r: httpx.Response(204)).delete("/customers/1") is None


def test_none_params_are_not_sent_and_csv_has_its_content_type() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    api = client(handle)
    api.get("/customers", {"tier": "head", "q": None, "strategic": True, "limit": 5})
    api.post("/imports/customers", csv="name\nä\n")
    assert dict(seen[0].url.params) == {"tier": "head", "strategic": "true", "limit": "5"}
    assert seen[1].headers["content-type"].startswith("text/csv")
    assert seen[1].content == "name\nä\n".encode()


def test_404_is_not_found_with_the_api_message() -> None:
    with pytest.raises(NotFound) as info:
        client(answer(404, {"detail": "customer 42 not found"})).get("/customers/42")
    assert info.value.status == 404
    assert str(info.value) == "customer 42 not found"
    assert isinstance(info.value.__cause__, httpx.HTTPStatusError)


def test_409_is_conflict() -> None:
    detail = "a customer with name = Acme exists already"
    with pytest.raises(Conflict, match="exists already") as info:
        client(answer(409, {"detail": detail})).post("/customers", {"name": "Acme"})
    assert isinstance(info.value, ApiError)
    assert info.value.status == 409


def test_422_field_errors_read_as_field_and_message() -> None:
    body = {
        "detail": [
            {
                "loc": ["body", "name"],
                "msg": "String should have at least 1 character",
                "type": "string_too_short",
            },
            {"loc": ["body", 0, "serial"], "msg": "String should match pattern", "type": "x"},
            {"loc": ["query", "sort"], "msg": "cannot sort customers by 'x'", "type": "x"},
            {"loc": ["body"], "msg": "Field required", "type": "missing"},
        ]
    }
    with pytest.raises(Invalid) as info:
        client(answer(422, body)).post("/customers", {})
    exc = info.value
    assert [str(e) for e in exc.field_errors] == [
        "name: String should have at least 1 character",
        "0.serial: String should match pattern",
        "sort: cannot sort customers by 'x'",
        "body: Field required",
    ]
    assert str(exc).splitlines() == [
        "invalid input; nothing was changed",
        "  name: String should have at least 1 character",
        "  0.serial: String should match pattern",
        "  sort: cannot sort customers by 'x'",
        "  body: Field required",
    ]


def test_422_import_rows_read_as_line_field_and_message() -> None:
    body = {
        "detail": "2 row error(s); nothing was imported",
        "errors": [
            {"row": 3, "field": "tier", "message": "Input should be 'head', 'waist' or 'tail'"},
            {"row": 1, "field": None, "message": "unknown column(s) 'colour'"},
        ],
    }
    with pytest.raises(Invalid) as info:
        client(answer(422, body)).post("/imports/customers", csv="x")
    assert str(info.value).splitlines() == [
        "2 row error(s); nothing was imported",
        "  line 3, tier: Input should be 'head', 'waist' or 'tail'",
        "  line 1: unknown column(s) 'colour'",
    ]
    assert [e.row for e in info.value.row_errors] == [3, 1]


def test_503_is_unavailable_with_the_api_message() -> None:
    detail = "broker did not answer; nothing was changed"
    with pytest.raises(Unavailable, match="nothing was changed") as info:
        client(answer(503, {"detail": detail})).post("/devices/batch", [])
    assert info.value.status == 503


def test_unauthorised_says_which_variable_to_set() -> None:
    with pytest.raises(Unauthorized, match="FIELDTRACK_API_TOKEN"):
        client(answer(401, {"detail": "Not authenticated"})).get("/customers")


def test_a_server_error_without_json_is_still_readable() -> None:
    with pytest.raises(ApiError) as info:
        client(answer(500, text="Internal Server Error")).get("/customers")
    assert info.value.status == 500
    assert "HTTP 500" in str(info.value)
    assert "Internal Server Error" in str(info.value)
    assert type(info.value) is ApiError


def test_connection_refused_says_how_to_start_the_api() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(Unavailable) as info:
        client(refuse).get("/customers")
    message = str(info.value)
    assert info.value.status is None
    assert f"not reachable at {BASE}" in message
    assert "fieldtrack api" in message
    assert "make demo" in message
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_a_timeout_on_a_write_warns_the_change_may_have_happened() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(Unavailable, match="may or may not have been made"):
        client(slow).post("/devices/batch", [])
    with pytest.raises(Unavailable) as info:
        client(slow).get("/devices")
    assert "may or may not" not in str(info.value)


@pytest.mark.parametrize("token", [None, "s3cret-token"])
def test_bearer_header_only_when_a_token_is_set(token: str | None) -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    settings = ClientSettings(api_url=BASE, api_token=SecretStr(token) if token else None)
    with FieldtrackClient.from_settings(settings, transport=httpx.MockTransport(handle)) as api:
        api.get("/customers")
        api.post("/imports/customers", csv="name\n")
    for request in seen:
        if token:
            assert request.headers["authorization"] == f"Bearer {token}"
        else:
            assert "authorization" not in request.headers


def test_client_settings_need_no_database_or_broker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("FIELDTRACK_STATE_DIR", str(tmp_path))
    for key in (
        "FIELDTRACK_DATABASE_URL",
        "FIELDTRACK_MQTT_ADMIN_PASSWORD",
        "FIELDTRACK_MQTT_INGEST_PASSWORD",
        "FIELDTRACK_API_URL",
        "FIELDTRACK_API_TOKEN",
    ):
        monkeypatch.delenv(key, raising=False)
    settings = load_client_settings()
    assert settings.api_url == "http://127.0.0.1:8000"
    assert settings.api_token is None
    monkeypatch.setenv("FIELDTRACK_API_URL", "https://fieldtrack.example.com/")
    monkeypatch.setenv("FIELDTRACK_API_TOKEN", "tok")
    settings = load_client_settings()
    assert settings.api_url == "https://fieldtrack.example.com"
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == "tok"
    monkeypatch.setenv("FIELDTRACK_API_TOKEN", "")
    assert load_client_settings().api_token is None


@pytest.mark.parametrize("url", ["ftp://host", "127.0.0.1:8000", "http://", "http://h/?x=1"])
def test_client_settings_refuse_urls_that_are_not_http(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("FIELDTRACK_API_URL", url)
    with pytest.raises(ConfigError, match="FIELDTRACK_API_URL"):
        load_client_settings()


@pytest.mark.parametrize(
    ("command", "option", "api"),
    [
        ("customers add", "tier", models.Tier),
        ("customers list", "stage", models.LifecycleStage),
        ("projects add", "status", models.ProjectStatus),
        ("deliveries list", "status", models.DeliveryStatus),
        ("devices list", "status", models.DeviceStatus),
    ],
)
def test_cli_choices_match_the_api(command: str, option: str, api: type[Any]) -> None:
    """The choices an option offers are the API's values (read from the command's help)."""
    shown = CliRunner().invoke(cli_app, [*command.split(), "--help"], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    line = next(line for line in shown.output.splitlines() if f"--{option} " in line)
    assert f"<{'|'.join(m.value for m in api)}>" in line, line


# --- `devices provision` against a scripted API -------------------------------------------


class ScriptedApi:
    """Answers GET /projects/{id} and POST /devices/batch; batch answers follow a script."""

    def __init__(self, batch_answers: list[int | dict[str, Any]]) -> None:
        self.batch_answers = batch_answers
        self.batches: list[list[dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"id": 7})
        body = json.loads(request.content)
        self.batches.append(body)
        answer = self.batch_answers.pop(0) if self.batch_answers else 201
        if isinstance(answer, dict):
            return httpx.Response(422, json=answer)
        if answer != 201:
            return httpx.Response(answer, json={"detail": "broker down; nothing was changed"})
        start = sum(len(b) for b in self.batches[:-1])
        return httpx.Response(
            201,
            json=[
                {
                    "device": {
                        "id": start + i + 1,
                        "serial": d["serial"],
                        "project_id": d["project_id"],
                    },
                    "password": f"pw-{start + i + 1}",
                }
                for i, d in enumerate(body)
            ],
        )


def provision(monkeypatch: pytest.MonkeyPatch, api: ScriptedApi, *args: str) -> Result:
    def scripted(
        cls: type[FieldtrackClient], settings: ClientSettings, transport: object = None
    ) -> FieldtrackClient:
        return cls(settings.api_url, transport=httpx.MockTransport(api))

    monkeypatch.setattr(FieldtrackClient, "from_settings", classmethod(scripted))
    return CliRunner().invoke(
        cli_app,
        ["devices", "provision", "--project", "7", *args],
        env={"FIELDTRACK_API_URL": BASE},
    )


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_provision_writes_chunks_of_100(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    api, out = ScriptedApi([]), tmp_path / "creds.csv"
    result = provision(monkeypatch, api, "--count", "250", "--prefix", "lk", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert [len(b) for b in api.batches] == [100, 100, 50]
    rows = read_rows(out)
    assert list(rows[0]) == ["serial", "password", "project_id", "device_id"]
    assert len({r["serial"] for r in rows}) == 250
    assert all(re.fullmatch(r"lk-[0-9a-f]{10}", r["serial"]) for r in rows)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_provision_failing_part_way_keeps_what_was_provisioned(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    api, out = ScriptedApi([201, 201, 503]), tmp_path / "creds.csv"
    result = provision(monkeypatch, api, "--count", "350", "--out", str(out))
    assert result.exit_code == 1
    assert "error: broker down; nothing was changed" in result.stderr
    assert f"200 of 350 devices were provisioned before this; their credentials are in {out}" in (
        result.stderr
    )
    assert [r["password"] for r in read_rows(out)] == [f"pw-{i}" for i in range(1, 201)]


def test_provision_failing_at_once_leaves_no_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "creds.csv"
    result = provision(monkeypatch, ScriptedApi([503]), "--count", "10", "--out", str(out))
    assert result.exit_code == 1
    assert "no device credentials were received" in result.stderr
    assert not out.exists()


def test_provision_replaces_random_serials_that_exist_already(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    exists = {
        "detail": [
            {
                "loc": ["body", "serial"],
                "msg": "item 3: device exists already",
                "type": "invalid_input",
            }
        ]
    }
    api, out = ScriptedApi([exists]), tmp_path / "creds.csv"
    result = provision(monkeypatch, api, "--count", "5", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert len(api.batches) == 2
    assert not {d["serial"] for d in api.batches[0]} & {d["serial"] for d in api.batches[1]}
    assert len(read_rows(out)) == 5


def test_provision_refuses_to_overwrite_without_force(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "creds.csv"
    out.write_text("serial,password\nold,secret\n")
    api = ScriptedApi([])
    result = provision(monkeypatch, api, "--count", "1", "--out", str(out))
    assert result.exit_code == 1
    assert "--force" in result.stderr
    assert api.batches == []
    assert out.read_text() == "serial,password\nold,secret\n"
