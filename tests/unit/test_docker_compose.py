"""docker-compose.yml against the code it runs: no Docker needed, the YAML is only parsed.

Compose cannot tell that `fieldtrack sim run --credentals` is a typo, that the mounted
broker config is stale, or that the published port is not the one the broker listens on;
each of those only shows when the stack misbehaves. These tests catch them at commit time.
"""

from __future__ import annotations

import inspect
import re
import shlex
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import typer.main
import yaml

from services.cli import app
from services.core.settings import PLACEHOLDER_SECRETS, Settings
from services.infra import nats, postgres, timescale
from services.infra.mosquitto import (
    DOCKER_DATA_DIR,
    DOCKER_PLUGIN,
    DOCKER_PORT,
    DOCKER_QUOTA_PLUGIN,
    render_docker_config,
)

try:  # recent Typer versions vendor their own copy of Click
    from typer._click import ClickException as _TyperClickException

    CLICK_ERRORS: tuple[type[Exception], ...] = (click.ClickException, _TyperClickException)
except ImportError:  # pragma: no cover - Typer on the public Click
    CLICK_ERRORS = (click.ClickException,)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DATABASE_DOCKERFILE = "deploy/timescaledb/Dockerfile"
MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
BROKER_DOCKERFILE = "deploy/mosquitto/Dockerfile"
REGENERATE = ".venv/bin/python -m services.infra.mosquitto > deploy/mosquitto/mosquitto.conf"

# What each fieldtrack-image service must run: its subcommand path(s), in order.
EXPECTED_COMMANDS: dict[str, list[tuple[str, ...]]] = {
    "broker-setup": [("broker-setup",)],
    "migrate": [("db", "migrate")],
    "ingest": [("ingest",)],
    "api": [("api",)],
    "alerts": [("alerts", "run")],
    "simulator": [("sim", "seed"), ("sim", "run")],
    "nats-issuer": [("broker", "issuer")],
    "nats-auth": [("broker", "auth")],
    "ingest-cluster": [("ingest",)],
}
CLUSTER_PROFILE = "cluster"
CLUSTER_SERVICES = ("nats-issuer", *nats.DOCKER_NODES, "nats-auth", "ingest-cluster")
NATS_CONF = ROOT / "deploy" / "nats" / "nats.conf"
REGENERATE_NATS = ".venv/bin/python -m services.infra.nats > deploy/nats/nats.conf"
# A variable is an unquoted `$NAME` value; `$` inside a quoted subject (`"$JS.API…"`) is not.
NATS_CONFIG_VARIABLE = re.compile(r"(?<![\".\w])\$([A-Z_][A-Z0-9_]*)\b(?![.\w])")
SHELL_SEPARATORS = {"&&", ";", "||"}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<modifier>[^}]*)\}")
PUBLISHED_PORT = re.compile(
    r"(?P<ip>[0-9.]+):(?:(?P<port>\d+)|\$\{FIELDTRACK_HOST_\w+_PORT:-(?P<default>\d+)\})"
    r":(?P<container>\d+)"
)
URL_PASSWORD = re.compile(r"://[^:/@]+:(?P<password>.*)@")
ALL_ADDRESSES = "0.0.0.0"  # inside a container: reachable through the published port
MOSQUITTO_UID = "1883"  # the mosquitto user of the broker image (deploy/mosquitto/Dockerfile)
GRAFANA_DIR = ROOT / "dashboards" / "grafana"
GRAFANA_ENTRYPOINT = "/run.sh"  # of the grafana/grafana-oss image
GRAFANA_PROFILE = "grafana"
DOCKERFILES = ("Dockerfile", BROKER_DOCKERFILE, DATABASE_DOCKERFILE)
BASE_IMAGE = "debian:bookworm-slim"  # built from Debian's mirror where Docker Hub is out of reach
COMPILERS = ("gcc", "cmake", "make", "build-essential", "-dev")


# --- helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict), "docker-compose.yml is not a mapping"
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose.get("services")
    assert isinstance(found, dict) and found, "docker-compose.yml has no services"
    return found


@pytest.fixture(scope="module")
def shared_env(compose: dict[str, Any]) -> dict[str, str]:
    env = compose.get("x-fieldtrack-env")
    assert isinstance(env, dict), "x-fieldtrack-env must be a mapping of variables"
    return {str(k): str(v) for k, v in env.items()}


@pytest.fixture(scope="module")
def directives() -> dict[str, list[str]]:
    """The committed broker config as directive -> values (one per occurrence)."""
    found: dict[str, list[str]] = {}
    for line in MOSQUITTO_CONF.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            key, _, value = stripped.partition(" ")
            found.setdefault(key, []).append(value.strip())
    return found


def _fieldtrack_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in services.items()
        if str(svc.get("image", "")).split(":")[0] == "fieldtrack" and name not in nats.DOCKER_NODES
    }


def _invocations(command: Any) -> list[list[str]]:
    """The argv of each program a service command runs (`sh -c "a && b"` gives two)."""
    if isinstance(command, str):
        command = shlex.split(command)
    assert isinstance(command, list), f"unexpected command {command!r}"
    if command[:2] != ["sh", "-c"]:
        return [[str(arg) for arg in command]]
    assert len(command) == 3, f"`sh -c` takes one script: {command!r}"
    lexer = shlex.shlex(command[2], posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    runs: list[list[str]] = [[]]
    for token in lexer:
        if token in SHELL_SEPARATORS:
            runs.append([])
        else:
            assert not set(token) <= set("();<>|&"), f"unsupported shell syntax {token!r}"
            runs[-1].append(token)
    assert all(runs), f"empty command in {command[2]!r}"
    return runs


def _resolve(argv: list[str]) -> tuple[tuple[str, ...], Any, list[str]]:
    """Walk the Typer app's command groups: (subcommand path, leaf command, its arguments).

    Duck-typed: Typer builds Click-compatible commands, from Click or from its vendored copy.
    """
    if argv[0] == "exec":  # the shell's last command, run in its place
        argv = argv[1:]
    assert argv[0] == "fieldtrack", f"{shlex.join(argv)!r} does not run fieldtrack"
    command: Any = typer.main.get_command(app)
    path: list[str] = []
    args = argv[1:]
    while hasattr(command, "list_commands"):
        assert args, f"{shlex.join(argv)!r} stops at a command group"
        name, args = args[0], args[1:]
        ctx = command.context_class(command)
        sub = command.get_command(ctx, name)
        assert sub is not None, (
            f"{shlex.join(argv)!r}: `{' '.join(['fieldtrack', *path])}` has no command "
            f"{name!r} (it has {sorted(command.list_commands(ctx))})"
        )
        path.append(name)
        command = sub
    return tuple(path), command, args


def _parse(argv: list[str]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Parse argv as the CLI would (unknown options and bad values fail), without running it."""
    path, command, args = _resolve(argv)
    try:
        ctx = command.make_context(" ".join(["fieldtrack", *path]), list(args))
    except CLICK_ERRORS as exc:
        pytest.fail(f"{shlex.join(argv)!r} is rejected by the CLI: {exc}")
    return path, dict(ctx.params)


def _ports(svc: dict[str, Any]) -> list[tuple[str, int, int]]:
    """Published ports as (host ip, host port, container port); short syntax only. The host
    port is its default when a FIELDTRACK_HOST_*_PORT variable may change it."""
    published = []
    for entry in svc.get("ports", []):
        match = PUBLISHED_PORT.fullmatch(str(entry))
        assert match, f"publish as HOST_IP:HOST_PORT:CONTAINER_PORT, not {entry!r}"
        host = match["port"] or match["default"]
        published.append((match["ip"], int(host), int(match["container"])))
    return published


def _volumes(svc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Mounts as (source, target, mode); short syntax only."""
    mounts = []
    for entry in svc.get("volumes", []):
        parts = str(entry).split(":")
        assert len(parts) in (2, 3), f"unexpected volume syntax {entry!r}"
        mounts.append((parts[0], parts[1], parts[2] if len(parts) == 3 else "rw"))
    return mounts


def _interpolate(value: str) -> str:
    """What compose substitutes, with a placeholder for every variable."""
    return INTERPOLATION.sub(lambda m: f"value-of-{m['name']}", value)


def _script(svc: dict[str, Any]) -> str:
    command = svc.get("command")
    assert isinstance(command, list) and command[:2] == ["sh", "-c"], "expected sh -c SCRIPT"
    return str(command[2])


def _fieldtrack_invocations(services: dict[str, dict[str, Any]]) -> list[tuple[str, list[str]]]:
    return [
        (name, argv)
        for name, svc in _fieldtrack_services(services).items()
        for argv in _invocations(svc.get("command"))
    ]


# --- the fieldtrack services -----------------------------------------------------------


def test_fieldtrack_image_services_share_image_and_env(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    ours = _fieldtrack_services(services)
    assert set(ours) == set(EXPECTED_COMMANDS)
    images = {svc.get("image") for svc in ours.values()}
    assert len(images) == 1, f"fieldtrack services use different images: {images}"
    shared = compose["x-fieldtrack-env"]
    for name, svc in ours.items():
        env = svc.get("environment") or {}
        # A service may add its own variables, but never drop or change the shared ones.
        assert {k: env.get(k) for k in shared} == shared, f"{name} does not use x-fieldtrack-env"
        extra = [k for k in env if k not in shared]
        for key in extra:
            assert key.startswith("FIELDTRACK_") and _is_setting(key), (
                f"{name} sets {key}, which is not a fieldtrack setting"
            )


def _is_setting(key: str) -> bool:
    """FIELDTRACK_NAME names a field of the settings; FIELDTRACK_GROUP__NAME a field of a
    nested group (the settings' env_nested_delimiter)."""
    path = key.removeprefix("FIELDTRACK_").lower().split("__")
    fields: dict[str, Any] = dict(Settings.model_fields)
    for i, part in enumerate(path):
        if part not in fields:
            return False
        kind = fields[part].annotation
        if i + 1 < len(path):
            if not (isinstance(kind, type) and hasattr(kind, "model_fields")):
                return False
            fields = dict(kind.model_fields)
    return True


def test_fieldtrack_is_the_typer_app() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get("fieldtrack") == "services.cli:app"


@pytest.mark.parametrize("service", sorted(EXPECTED_COMMANDS))
def test_service_commands_are_real_cli_commands(
    services: dict[str, dict[str, Any]], service: str
) -> None:
    argvs = _invocations(services[service].get("command"))
    paths = [_parse(argv)[0] for argv in argvs]
    assert paths == EXPECTED_COMMANDS[service]


@pytest.mark.parametrize("service", sorted(EXPECTED_COMMANDS))
def test_a_shell_hands_its_last_command_the_signals(
    services: dict[str, dict[str, Any]], service: str
) -> None:
    """`sh` as the container's first process ignores compose's SIGTERM: a service run through
    it would be killed only when `docker compose down` gives up waiting."""
    argvs = _invocations(services[service].get("command"))
    if len(argvs) > 1:
        assert argvs[-1][0] == "exec", f"{service}: `exec` the last command of its script"


def test_resolution_rejects_unknown_commands_and_options() -> None:
    """Guards the helpers above: a typo must fail, not pass silently."""
    assert _parse(["fieldtrack", "sim", "run", "--speed", "2"])[1]["speed"] == 2.0
    for bad in (
        ["fieldtrack", "sim", "walk"],
        ["fieldtrack", "sim"],
        ["fieldtrack", "sim", "run", "--credentals", "x"],
        ["fieldtrack", "api", "--port", "http"],
    ):
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            _parse(bad)


def test_simulator_credentials_are_shared_and_on_its_volume(
    services: dict[str, dict[str, Any]],
) -> None:
    sim = services["simulator"]
    params = dict(_parse(argv) for argv in _invocations(sim["command"]))
    written = PurePosixPath(params[("sim", "seed")]["out"])
    read = PurePosixPath(params[("sim", "run")]["credentials"])
    assert written == read, "`sim run` must read the credentials `sim seed` wrote"
    targets = [PurePosixPath(target) for _, target, _ in _volumes(sim)]
    assert any(written.is_relative_to(t) for t in targets), (
        f"{written} is on no volume of the simulator ({targets}): lost on restart"
    )


def test_api_listens_on_its_published_port(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    (argv,) = _invocations(api["command"])
    params = _parse(argv)[1]
    assert params["host"] == ALL_ADDRESSES, (
        "inside a container the API must listen on all addresses"
    )
    container_ports = [container for _, _, container in _ports(api)]
    assert container_ports == [params["port"]]
    health = " ".join(map(str, api.get("healthcheck", {}).get("test", [])))
    if health:
        assert f":{params['port']}/" in health, "the API healthcheck probes another port"


# --- environment ----------------------------------------------------------------------


def test_shared_env_only_sets_settings_fields(shared_env: dict[str, str]) -> None:
    prefix = str(Settings.model_config.get("env_prefix", ""))
    assert prefix == "FIELDTRACK_"
    fieldtrack_vars = [k for k in shared_env if k.startswith(prefix)]
    assert fieldtrack_vars == list(shared_env), "x-fieldtrack-env sets non-FIELDTRACK_ variables"
    unknown = [k for k in fieldtrack_vars if k[len(prefix) :].lower() not in Settings.model_fields]
    assert not unknown, f"not fields of services.core.settings.Settings: {unknown}"
    required = {
        f"{prefix}{name.upper()}"
        for name, field in Settings.model_fields.items()
        if field.is_required()
    }
    assert required <= set(shared_env), f"missing required settings: {required - set(shared_env)}"


def test_shared_env_points_at_the_compose_services(
    services: dict[str, dict[str, Any]], shared_env: dict[str, str]
) -> None:
    assert shared_env["FIELDTRACK_MQTT_HOST"] in services
    broker = services[shared_env["FIELDTRACK_MQTT_HOST"]]
    assert broker["build"]["dockerfile"] == BROKER_DOCKERFILE
    assert int(shared_env["FIELDTRACK_MQTT_PORT"]) == DOCKER_PORT

    url = urlsplit(_interpolate(shared_env["FIELDTRACK_DATABASE_URL"]))
    assert url.scheme in ("postgresql", "postgres")
    db = services.get(url.hostname or "")
    assert db is not None, f"database host {url.hostname!r} is not a compose service"
    db_env = db["environment"]
    assert url.username == db_env["POSTGRES_USER"]
    assert url.path.lstrip("/") == db_env["POSTGRES_DB"]
    assert url.port == 5432  # the port Postgres listens on inside its container
    url_vars = [m["name"] for m in INTERPOLATION.finditer(shared_env["FIELDTRACK_DATABASE_URL"])]
    db_vars = [m["name"] for m in INTERPOLATION.finditer(str(db_env["POSTGRES_PASSWORD"]))]
    assert url_vars == db_vars, "the URL's password is not the one the database is created with"


def test_secrets_are_required_variables_not_values(services: dict[str, dict[str, Any]]) -> None:
    checked = 0
    for name, svc in services.items():
        env = svc.get("environment") or {}
        assert isinstance(env, dict), f"{name}: use a mapping for environment"
        for key, value in env.items():
            if "PASSWORD" in key or key.endswith("_SEED"):
                secret = str(value)
            elif key.endswith("_URL") and (userinfo := URL_PASSWORD.search(str(value))):
                secret = userinfo["password"]
            else:
                continue
            checked += 1
            match = INTERPOLATION.fullmatch(secret)
            assert match and match["modifier"].startswith(":?"), (
                f"{name}: the secret in {key} must be a required variable like ${{VAR:?message}}"
            )
    assert checked >= 5  # database URL and password, admin (three times), ingest


def test_ports_are_published_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = {name: _ports(svc) for name, svc in services.items() if svc.get("ports")}
    assert {"timescaledb", "mosquitto", "api", "grafana"} <= set(published)
    for name, ports in published.items():
        assert all(ip == "127.0.0.1" for ip, _, _ in ports), f"{name} is published beyond loopback"


# --- broker ------------------------------------------------------------------------


def test_committed_mosquitto_config_is_the_rendered_one() -> None:
    assert MOSQUITTO_CONF.read_text() == render_docker_config(), (
        f"deploy/mosquitto/mosquitto.conf is stale; regenerate it with `{REGENERATE}`"
    )


def test_mosquitto_mounts_the_config_its_command_reads(
    services: dict[str, dict[str, Any]],
) -> None:
    broker = services["mosquitto"]
    umask, argv = _invocations(broker["command"])
    assert umask == ["umask", "077"], "the broker must start with a private umask"
    assert argv[:2] == ["exec", "mosquitto"] and "-c" in argv
    config_path = argv[argv.index("-c") + 1]
    mounts = {target: (source, mode) for source, target, mode in _volumes(broker)}
    assert config_path in mounts, f"nothing is mounted at {config_path}"
    source, mode = mounts[config_path]
    assert (COMPOSE_FILE.parent / source).resolve() == MOSQUITTO_CONF.resolve()
    assert mode == "ro"


def test_mosquitto_port_is_the_listener_port(
    services: dict[str, dict[str, Any]], directives: dict[str, list[str]]
) -> None:
    (listener,) = directives["listener"]
    port, bind = listener.split()
    assert int(port) == DOCKER_PORT
    assert bind == ALL_ADDRESSES, "the broker must listen beyond the container's loopback"
    assert [container for _, _, container in _ports(services["mosquitto"])] == [DOCKER_PORT]
    health = " ".join(map(str, services["mosquitto"].get("healthcheck", {}).get("test", [])))
    if health:
        assert f"-p {DOCKER_PORT}" in health, "the broker healthcheck probes another port"


def test_broker_data_volume_and_dynsec_store(
    compose: dict[str, Any],
    services: dict[str, dict[str, Any]],
    directives: dict[str, list[str]],
) -> None:
    def data_volume(service: str) -> str:
        sources = [s for s, t, _ in _volumes(services[service]) if t == DOCKER_DATA_DIR]
        assert len(sources) == 1, f"{service} does not mount one volume at {DOCKER_DATA_DIR}"
        return sources[0]

    volume = data_volume("mosquitto")
    assert volume in (compose.get("volumes") or {}), f"{volume!r} is not a named volume"
    assert data_volume("broker-init") == volume, "broker-init initialises another volume"

    (store,) = directives["plugin_opt_config_file"]
    assert PurePosixPath(store).parent == PurePosixPath(DOCKER_DATA_DIR)
    # the quota first: Mosquitto asks the plugins' ACL checks in load order, and dynamic
    # security's "allowed" would end the check before the quota saw a message or a will
    assert directives["plugin"] == [DOCKER_QUOTA_PLUGIN, DOCKER_PLUGIN]

    script = _script(services["broker-init"])
    init = re.search(r"mosquitto_ctrl dynsec init (\S+) (\S+)(?P<rest>.*)", script)
    assert init, "broker-init does not run `mosquitto_ctrl dynsec init FILE ADMIN`"
    assert "PASSWORD" not in init["rest"], "the admin password must not be on argv"
    assert init[1] == store, f"broker-init creates {init[1]}, the broker reads {store}"
    guard = re.search(r"\[ ! -f (\S+) \]", script)
    assert guard and guard[1] == store, "broker-init must only create a missing store"
    chown = re.search(r"chown (\S+) (\S+)", script)
    assert chown and chown[2] == store and chown[1].split(":")[0] in (MOSQUITTO_UID, "mosquitto")
    assert f"chmod 0600 {store}" in script, "the store (every password hash) must be private"
    assert script.index("umask 077") < script.index("mosquitto_ctrl"), "created world-readable"

    admin = Settings.model_fields["mqtt_admin_username"].default
    assert init[2] == admin, f"the store's admin is {init[2]!r}, fieldtrack logs in as {admin!r}"


def test_broker_image_builds_the_quota_plugin_the_config_loads(
    services: dict[str, dict[str, Any]],
) -> None:
    """The per-device quota is a plugin of ours: the broker image compiles it from the one
    source the local broker uses, to the path the committed config loads."""
    dockerfile = (ROOT / BROKER_DOCKERFILE).read_text()
    assert "COPY services/infra/fieldtrack_quota.c " in dockerfile
    assert f"/src/fieldtrack_quota.so {DOCKER_QUOTA_PLUGIN}" in dockerfile
    for name in ("mosquitto", "broker-init"):
        assert services[name]["build"] == {"context": ".", "dockerfile": BROKER_DOCKERFILE}


def _shell_texts(svc: dict[str, Any]) -> list[str]:
    """The command and healthcheck of a service, as text."""
    texts = [" ".join(map(str, svc.get("command") or []))]
    test = (svc.get("healthcheck") or {}).get("test") or []
    return [*texts, " ".join(map(str, test if isinstance(test, list) else [test]))]


def test_no_secret_is_passed_on_a_command_line(services: dict[str, dict[str, Any]]) -> None:
    """Arguments show in `ps` to every user of the host: a secret may reach a program only
    through its environment, stdin or a private file, written by the shell's own printf."""
    checked = 0
    for name, svc in services.items():
        for text in _shell_texts(svc):
            for simple in re.split(r"&&|\|\||;|\||\n", text):
                for secret in re.finditer(r"\$\$\{?\w*(PASSWORD|SECRET)", simple):
                    checked += 1
                    assert re.search(r"\bprintf\b", simple[: secret.start()]), (
                        f"{name}: a secret is on the command line of {simple.strip()!r}"
                    )
    assert checked >= 2  # the store's creation and the broker healthcheck


# --- the NATS cluster (`cluster` profile) -------------------------------------------------


@pytest.fixture(scope="module")
def cluster_env(compose: dict[str, Any]) -> dict[str, str]:
    env = compose.get("x-fieldtrack-cluster-env")
    assert isinstance(env, dict), "x-fieldtrack-cluster-env must be a mapping of variables"
    return {str(k): str(v) for k, v in env.items()}


def test_committed_nats_config_is_the_rendered_one() -> None:
    assert NATS_CONF.read_text() == nats.render_docker_config(), (
        f"deploy/nats/nats.conf is stale; regenerate it with `{REGENERATE_NATS}`"
    )


def test_cluster_services_start_only_under_their_profile(
    services: dict[str, dict[str, Any]],
) -> None:
    in_profile = {
        n for n, svc in services.items() if CLUSTER_PROFILE in (svc.get("profiles") or [])
    }
    assert in_profile == set(CLUSTER_SERVICES)
    for name in CLUSTER_SERVICES:
        assert services[name]["profiles"] == [CLUSTER_PROFILE], name


def test_cluster_env_points_at_the_nodes(
    cluster_env: dict[str, str], shared_env: dict[str, str], services: dict[str, dict[str, Any]]
) -> None:
    assert {k: cluster_env.get(k) for k in shared_env} == shared_env
    assert cluster_env["FIELDTRACK_BROKER"] == "nats"
    urls = [urlsplit(url) for url in cluster_env["FIELDTRACK_NATS__URLS"].split(",")]
    assert [(u.scheme, u.hostname, u.port) for u in urls] == [
        ("nats", node, nats.DOCKER_CLIENT_PORT) for node in nats.DOCKER_NODES
    ]
    assert cluster_env["FIELDTRACK_MQTT_NODES"] == ",".join(
        f"{node}:{nats.DOCKER_MQTT_PORT}" for node in nats.DOCKER_NODES
    )
    # The nodes' accounts are the settings' default names (nats.docker_users): none renamed.
    assert not [k for k in cluster_env if k.endswith("_USERNAME")]
    for name in ("nats-auth", "ingest-cluster", "nats-issuer"):
        env = services[name]["environment"]
        assert {k: env.get(k) for k in cluster_env} == cluster_env, f"{name}: not on the cluster"


def _node_command(svc: dict[str, Any]) -> tuple[str, str]:
    """(the file the node's issuer is read from, the config nats-server reads)."""
    script, variable = _script(svc), nats.config_variable("issuer")
    issuer = re.fullmatch(
        rf"{variable}=\$\$\(cat (\S+)\) && export {variable} && exec nats-server -c (\S+)",
        script,
    )
    assert issuer, f"unexpected node command {script!r}"
    return issuer[1], issuer[2]


def test_nodes_run_the_committed_config_with_their_secrets(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], cluster_env: dict[str, str]
) -> None:
    referenced = set(NATS_CONFIG_VARIABLE.findall(nats.render_docker_config()))
    # Each secret is the variable the fieldtrack processes get it from.
    same_as = {
        nats.config_variable("auth_password"): cluster_env["FIELDTRACK_NATS__AUTH_PASSWORD"],
        nats.config_variable("ingest_password"): cluster_env["FIELDTRACK_MQTT_INGEST_PASSWORD"],
        nats.config_variable("system_password"): cluster_env["FIELDTRACK_NATS__SYSTEM_PASSWORD"],
    }
    issuer_out = str(_parse(_invocations(services["nats-issuer"]["command"])[0])[1]["out"])
    [(issuer_volume, issuer_dir, _)] = _volumes(services["nats-issuer"])
    assert PurePosixPath(issuer_out).parent == PurePosixPath(issuer_dir)
    names, stores = set(), set()
    for node in nats.DOCKER_NODES:
        svc = services[node]
        env = svc["environment"]
        issuer_file, config_path = _node_command(svc)
        assert issuer_file == issuer_out, f"{node} reads its issuer where nats-issuer never writes"
        # the environment sets every variable the config refers to, the command the issuer
        assert referenced == {*env, nats.config_variable("issuer")}, (
            f"{node}: its environment and deploy/nats/nats.conf's variables differ"
        )
        for variable, value in same_as.items():
            assert env[variable] == value, f"{node}: {variable} is not {value}"
        names.add(env[nats.SERVER_NAME_VARIABLE])
        mounts = {target: (source, mode) for source, target, mode in _volumes(svc)}
        source, mode = mounts[config_path]
        assert (COMPOSE_FILE.parent / source).resolve() == NATS_CONF.resolve() and mode == "ro"
        assert mounts[issuer_dir] == (issuer_volume, "ro"), node
        store, _ = mounts[nats.DOCKER_STORE]
        assert store in (compose.get("volumes") or {}), f"{node}: its store is not a named volume"
        stores.add(store)
        assert {c for _, _, c in _ports(svc)} == {nats.DOCKER_MQTT_PORT, nats.DOCKER_CLIENT_PORT}
        health = " ".join(map(str, svc["healthcheck"]["test"]))
        assert f"127.0.0.1:{nats.DOCKER_MONITOR_PORT}/healthz" in health, node
        assert svc["image"] == services["api"]["image"], f"{node}: not the app image"
    assert len(names) == len(stores) == nats.NODES, "each node needs its own name and store"


def test_nats_config_routes_to_every_node_on_the_compose_network() -> None:
    config = nats.render_docker_config()
    routes = re.search(r"routes: \[(.*)\]", config)
    assert routes
    hosts = [urlsplit(r.strip()) for r in routes[1].split(",")]
    assert [(u.hostname, u.port) for u in hosts] == [
        (node, nats.DOCKER_ROUTE_PORT) for node in nats.DOCKER_NODES
    ]
    for port in (nats.DOCKER_CLIENT_PORT, nats.DOCKER_MQTT_PORT, nats.DOCKER_MONITOR_PORT):
        assert f"{ALL_ADDRESSES}:{port}" in config, "a node must listen beyond its loopback"
    assert f'store_dir: "{nats.DOCKER_STORE}"' in config


def test_image_gives_the_nodes_their_folders() -> None:
    """Compose's named volumes take the owner of the folder they are mounted on."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    owned = re.search(r"chown fieldtrack:fieldtrack ([^\n]*)", dockerfile)
    assert owned
    for folder in (nats.DOCKER_STORE, "/nats/issuer"):
        assert folder in owned[1].split(), f"{folder} is not the service user's"


# --- Grafana ------------------------------------------------------------------------


def _env_var(value: Any) -> str:
    """The variable a required `${VAR:?…}` value names."""
    match = INTERPOLATION.fullmatch(str(value))
    assert match and match["modifier"].startswith(":?"), f"{value!r} is not ${{VAR:?…}}"
    return match["name"]


def _mounts_from(svc: dict[str, Any]) -> dict[str, tuple[Path, str]]:
    """Bind mounts of files in this repository: container path -> (local path, mode)."""
    return {
        target: ((COMPOSE_FILE.parent / source).resolve(), mode)
        for source, target, mode in _volumes(svc)
        if source.startswith("./")
    }


@pytest.fixture(scope="module")
def grafana_datasource() -> dict[str, Any]:
    loaded = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/fieldtrack.yaml").read_text())
    [datasource] = loaded["datasources"]
    return dict(datasource)


def test_grafana_mounts_its_provisioning_and_dashboards(
    services: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    grafana = services["grafana"]
    assert str(grafana["image"]).startswith("grafana/grafana-oss:")
    mounts = _mounts_from(grafana)
    assert mounts["/etc/grafana/provisioning"] == ((GRAFANA_DIR / "provisioning").resolve(), "ro")
    [provider] = yaml.safe_load(
        (GRAFANA_DIR / "provisioning/dashboards/fieldtrack.yaml").read_text()
    )["providers"]
    path = provider["options"]["path"]
    assert mounts.get(path) == ((GRAFANA_DIR / "dashboards").resolve(), "ro"), (
        f"the dashboard provider reads {path}, where the dashboards are not mounted"
    )
    assert list((GRAFANA_DIR / "dashboards").glob("*.json")), "no dashboards to provision"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert PurePosixPath(home).parent == PurePosixPath(path)
    assert (GRAFANA_DIR / "dashboards" / PurePosixPath(home).name).is_file()
    data = [s for s, t, _ in _volumes(grafana) if t == "/var/lib/grafana"]
    assert data and data[0] in (compose.get("volumes") or {}), "Grafana's state needs a volume"
    assert [container for _, _, container in _ports(grafana)] == [3000]


def test_grafana_datasource_is_the_compose_database_as_the_reader_role(
    services: dict[str, dict[str, Any]], grafana_datasource: dict[str, Any]
) -> None:
    host, port = grafana_datasource["url"].split(":")
    db = services[host]
    assert db["build"]["dockerfile"] == DATABASE_DOCKERFILE
    assert int(port) == 5432
    assert grafana_datasource["jsonData"]["database"] == db["environment"]["POSTGRES_DB"]
    created = re.search(r"CREATE ROLE (\w+)", (GRAFANA_DIR / "reader.sql").read_text())
    assert created and grafana_datasource["user"] == created[1], "Grafana logs in as another role"
    assert grafana_datasource["user"] != db["environment"]["POSTGRES_USER"], "not as the owner"
    # The password Grafana expands from its environment is the one the role gets.
    secret = re.fullmatch(r"\$\{?(\w+)\}?", grafana_datasource["secureJsonData"]["password"])
    assert secret, "the data source password must come from the environment"
    grafana_var = _env_var(services["grafana"]["environment"][secret[1]])
    setup = services["grafana-db-setup"]
    assert _env_var(setup["environment"][secret[1]]) == grafana_var
    assert f"\\getenv reader_password {secret[1]}" in _script(setup)


def test_grafana_db_setup_runs_reader_sql_as_the_database_owner(
    services: dict[str, dict[str, Any]],
) -> None:
    setup, db = services["grafana-db-setup"], services["timescaledb"]
    argv = shlex.split(_script(setup))
    assert argv[0] == "psql"
    options = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert options["-h"] == "timescaledb"
    assert options["-U"] == db["environment"]["POSTGRES_USER"]
    assert options["-d"] == db["environment"]["POSTGRES_DB"]
    assert "ON_ERROR_STOP=1" in argv
    script = _mounts_from(setup).get(argv[argv.index("-f") + 1])
    assert script == ((GRAFANA_DIR / "reader.sql").resolve(), "ro")
    assert _env_var(setup["environment"]["PGPASSWORD"]) == _env_var(
        db["environment"]["POSTGRES_PASSWORD"]
    )


@pytest.mark.parametrize("password", sorted(PLACEHOLDER_SECRETS | {"ADMIN", "ChangeMe"}))
def test_grafana_refuses_a_placeholder_admin_password(
    services: dict[str, dict[str, Any]], password: str
) -> None:
    assert _grafana_start(services, password).returncode == 1


def test_grafana_starts_with_a_real_admin_password(services: dict[str, dict[str, Any]]) -> None:
    started = _grafana_start(services, "tr0ub4dor-and-3")
    assert started.returncode == 0, started.stderr
    env = services["grafana"]["environment"]
    assert _env_var(env["GF_SECURITY_ADMIN_PASSWORD"]) == "FIELDTRACK_GRAFANA_ADMIN_PASSWORD"


def _grafana_start(services: dict[str, dict[str, Any]], password: str) -> Any:
    """Grafana's entrypoint script under sh, with Grafana itself replaced by `exit 0`."""
    entrypoint = services["grafana"]["entrypoint"]
    assert entrypoint[:2] == ["sh", "-c"], "the password check runs before Grafana"
    script = str(entrypoint[2]).replace("$$", "$")
    assert f"exec {GRAFANA_ENTRYPOINT}" in script
    script = script.replace(f"exec {GRAFANA_ENTRYPOINT}", "exit 0")
    return subprocess.run(
        ["sh", "-c", script],
        env={"PATH": "/usr/bin:/bin", "GF_SECURITY_ADMIN_PASSWORD": password},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


# --- ordering ----------------------------------------------------------------------


def test_dependencies_can_be_satisfied(services: dict[str, dict[str, Any]]) -> None:
    expected = {
        ("mosquitto", "broker-init"): "service_completed_successfully",
        ("broker-setup", "mosquitto"): None,
        ("migrate", "timescaledb"): "service_healthy",
        ("ingest", "migrate"): "service_completed_successfully",
        ("ingest", "broker-setup"): "service_completed_successfully",
        ("grafana-db-setup", "migrate"): "service_completed_successfully",
        ("grafana", "grafana-db-setup"): "service_completed_successfully",
        **{(node, "nats-issuer"): "service_completed_successfully" for node in nats.DOCKER_NODES},
        **{
            (name, node): "service_healthy"
            for name in ("nats-auth", "ingest-cluster")
            for node in nats.DOCKER_NODES
        },
        ("nats-auth", "migrate"): "service_completed_successfully",
        ("ingest-cluster", "migrate"): "service_completed_successfully",
    }
    for (service, dependency), condition in expected.items():
        deps = services[service].get("depends_on") or {}
        assert dependency in deps, f"{service} does not wait for {dependency}"
        if condition:
            assert deps[dependency]["condition"] == condition, f"{service} -> {dependency}"

    for name, svc in services.items():
        for dependency, spec in (svc.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = spec.get("condition")
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
            if condition == "service_completed_successfully":
                # A restarting service never "completes"; compose would wait forever.
                assert services[dependency].get("restart", "no") == "no", dependency


# --- image -------------------------------------------------------------------------


def test_image_runs_unprivileged_from_a_regular_install() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    workdir = re.findall(r"^WORKDIR\s+(\S+)", dockerfile, flags=re.MULTILINE)[-1]
    # The package data (templates, static files, scenarios) is read from site-packages:
    # the image installs the wheel, never the source tree in editable mode.
    assert not re.search(r"pip install[^\n]*\s(-e|--editable)\s", dockerfile), "editable install"
    assert re.search(r"\bpip install [^\n]*/wheels/\*\.whl", dockerfile)
    # The working directory holds ./.state: the service user's own, outside the code.
    assert re.search(rf"chown fieldtrack:fieldtrack [^\n]*{re.escape(workdir)}\b", dockerfile)
    ignored = [
        line.strip().strip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".state" in ignored, ".state holds local secrets and must not enter the image"
    for needed in ("services", "device_sim", "dashboards", "pyproject.toml"):
        assert needed not in ignored and f"**/{needed}" not in ignored, needed


def _stages(dockerfile: str) -> list[tuple[str, str]]:
    """Each build stage as (base image, its instructions)."""
    parts = re.split(r"^FROM\s+(\S+)[^\n]*\n", dockerfile, flags=re.MULTILINE)
    return list(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.parametrize("path", DOCKERFILES)
def test_images_build_from_debian_in_stages_and_run_unprivileged(path: str) -> None:
    """Built from debian:bookworm-slim only (Docker Hub need not be reachable); compilers and
    headers stay in a build stage; the runtime runs as a user of its own."""
    dockerfile = (ROOT / path).read_text()
    assert "# syntax=" not in dockerfile, "a syntax directive pulls a frontend from Docker Hub"
    stages = _stages(dockerfile)
    assert len(stages) >= 2, f"{path}: build in a stage of its own"
    assert {base for base, _ in stages} == {BASE_IMAGE}
    runtime = stages[-1][1]
    installs = " ".join(re.findall(r"apt-get install ([^\n&]*)", runtime))
    assert installs, f"{path}: the runtime installs nothing from Debian"
    for compiler in COMPILERS:
        assert compiler not in installs, f"{path}: the runtime image installs {compiler}"
    assert "rm -rf /var/lib/apt/lists/*" in runtime, f"{path}: apt's lists stay in the image"
    users = re.findall(r"^USER\s+(\S+)", runtime, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), f"{path} must not run as root"


def test_only_grafana_is_pulled(services: dict[str, dict[str, Any]]) -> None:
    """Every image of the stack is built here; Grafana's (and the set-up of its database
    role) only start under their profile."""
    for name, svc in services.items():
        if GRAFANA_PROFILE in (svc.get("profiles") or []):
            continue
        assert "build" in svc, f"{name} pulls {svc.get('image')} instead of building it"
    assert services["grafana"]["profiles"] == [GRAFANA_PROFILE]
    assert services["grafana-db-setup"]["profiles"] == [GRAFANA_PROFILE]
    for name in ("timescaledb", "grafana-db-setup"):
        assert services[name]["build"] == {"context": ".", "dockerfile": DATABASE_DOCKERFILE}


def test_committed_database_config_is_the_rendered_one() -> None:
    committed = ROOT / postgres.DOCKER_CONFIG
    assert committed.read_text() == postgres.render_docker_config(), (
        f"{postgres.DOCKER_CONFIG} is stale; regenerate it with "
        f"`.venv/bin/python -m services.infra.postgres > {postgres.DOCKER_CONFIG}`"
    )
    copied = re.search(
        rf"^COPY {re.escape(postgres.DOCKER_CONFIG)} (\S+)",
        (ROOT / DATABASE_DOCKERFILE).read_text(),
        flags=re.MULTILINE,
    )
    assert copied, f"{DATABASE_DOCKERFILE} does not install {postgres.DOCKER_CONFIG}"
    entrypoint = (ROOT / "deploy" / "timescaledb" / "entrypoint.sh").read_text()
    assert f"include = '{copied[1]}'" in entrypoint, "the cluster does not include the settings"


def test_database_image_builds_timescaledb_as_infra_up_does() -> None:
    """The image runs services/infra/timescale.py itself: same source, flags and version as
    the local services the test suite uses. Its stage copies only what that module imports."""
    dockerfile = (ROOT / DATABASE_DOCKERFILE).read_text()
    build = _stages(dockerfile)[0][1]
    assert re.search(r"^RUN python3 -m services\.infra\.timescale ", build, flags=re.MULTILINE)
    copied = {
        PurePosixPath(source)
        for line in re.findall(r"^COPY ([^\n]+)", build, flags=re.MULTILINE)
        for source in line.split()[:-1]
    }
    needed = {PurePosixPath("services/infra/timescale.py")}
    for module in re.findall(r"^from (services\.\S+) import", inspect.getsource(timescale), re.M):
        needed.add(PurePosixPath(module.replace(".", "/") + ".py"))
    for path in list(needed):
        needed |= {parent / "__init__.py" for parent in path.parents if parent.parts}
    assert needed <= copied, f"the build stage misses {sorted(map(str, needed - copied))}"


def test_broker_image_user_owns_the_store() -> None:
    dockerfile = (ROOT / BROKER_DOCKERFILE).read_text()
    assert f"--uid {MOSQUITTO_UID} " in dockerfile, "broker-init gives the store to another uid"
    assert "/usr/lib/mosquitto_dynamic_security.so" in dockerfile
