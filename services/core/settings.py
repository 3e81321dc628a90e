"""One typed configuration for every fieldtrack process.

Values come from the environment (prefix ``FIELDTRACK_``) and, below that, from the
file that ``fieldtrack infra up`` writes for the local services. A user who runs their
own TimescaleDB and broker sets the connection values and skips the local services.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.core.errors import ConfigError
from services.core.paths import local_env_file
from services.core.thresholds import AnalyticsThresholds
from services.core.topics import SERIAL_RE, is_reserved_name, nats_client_id
from services.core.windows import MAX_WINDOW_DAYS

# A broker node's address: (host, port).
BrokerNode = tuple[str, int]

MIN_SESSION_SECRET = 32
PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "password", "secret", "admin"})


def check_ingest_client_id(value: str) -> str:
    """Ingest's client id must be in fieldtrack's reserved namespace: no device can be
    provisioned under such a name, so none can log in with it and take ingest's persistent
    session (its subscription and queued messages) over."""
    if not SERIAL_RE.fullmatch(value):
        raise ValueError(
            "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if not is_reserved_name(value):
        raise ValueError(
            f"{value!r} is outside fieldtrack's reserved namespace (`fieldtrack-…`, e.g. "
            "fieldtrack-ingest-1), where a device could be provisioned under the same name "
            "and take ingest's session over"
        )
    return value


def parse_broker_nodes(text: str) -> list[BrokerNode]:
    """Broker nodes from a comma-separated `host:port` list (an IPv6 host in brackets:
    `[::1]:1883`); an empty text is no nodes."""
    if not text.strip():
        return []
    nodes: list[BrokerNode] = []
    for item in (part.strip() for part in text.split(",")):
        host, colon, port = item.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        valid_port = port.isascii() and port.isdigit() and 1 <= int(port) <= 65535
        if not colon or not host or not valid_port:
            raise ValueError(
                f"{item!r} is not a broker node: give a comma-separated list of host:port, "
                "e.g. 10.0.0.1:1883,10.0.0.2:1883"
            )
        nodes.append((host, int(port)))
    return nodes


def node_name(node: BrokerNode) -> str:
    """A broker node as `host:port`, the form `parse_broker_nodes` reads."""
    host, port = node
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class AlertSettings(BaseModel):
    """`fieldtrack alerts run`: how often it evaluates, and where its notifications go."""

    eval_interval_s: int = Field(
        default=30, ge=1, le=3600, description="seconds between two evaluations of every rule"
    )
    clear_after_s: int = Field(
        default=120,
        ge=0,
        le=86400,
        description="a condition must stay clear this long before its alert resolves (one good "
        "reading in a bad spell does not close it, nor notify twice)",
    )
    public_url: str = Field(
        default="http://127.0.0.1:8000",
        pattern=r"^https?://",
        description="the dashboards' address, for the links in notifications",
    )
    smtp_host: str = Field(default="", description="SMTP server for email channels; empty: none")
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_starttls: bool = Field(default=False, description="upgrade the connection with STARTTLS")
    smtp_username: str = ""
    smtp_password: SecretStr | None = None
    smtp_from: str = "fieldtrack@localhost"
    webhook_allow_private: bool = Field(
        default=False,
        description="let webhooks reach loopback and private addresses (a receiver on the "
        "same host or network); off, such a target is refused at every attempt",
    )
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(
        default=9109, ge=0, le=65535, description="Prometheus /metrics of `alerts run`; 0: off"
    )


class NatsSettings(BaseModel):
    """The NATS cluster, when `broker` is `nats`: devices speak MQTT to any node; fieldtrack's
    own processes speak NATS to the cluster."""

    urls: str = Field(
        default="nats://127.0.0.1:4222",
        description="comma-separated nats:// URLs of the cluster's nodes (any one suffices)",
    )
    auth_username: str = "fieldtrack-auth"
    auth_password: SecretStr | None = Field(
        default=None, description="the auth-callout service's own account (AUTH)"
    )
    issuer_seed: SecretStr | None = Field(
        default=None,
        description="account nkey seed (SA…) that signs the device identities the callout "
        "grants; its public key is the `issuer` in every node's auth_callout block",
    )
    system_username: str = "fieldtrack-sys"
    system_password: SecretStr | None = Field(
        default=None, description="system account: finds and disconnects a revoked device"
    )
    consumer: str = Field(
        default="fieldtrack-ingest",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="durable JetStream consumer every ingest process shares",
    )
    callout_metrics_host: str = "127.0.0.1"
    callout_metrics_port: int = Field(
        default=9110,
        ge=0,
        le=65535,
        description="Prometheus /metrics of `fieldtrack broker auth` (logins accepted, "
        "refused, unreadable); 0: off",
    )
    ack_wait_s: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="a message an ingest process took and did not acknowledge (it died) goes to "
        "another after this long; every process of one consumer must use the same value",
    )

    def url_list(self) -> list[str]:
        return [url.strip() for url in self.urls.split(",") if url.strip()]

    def require(self) -> None:
        """The callout and revocation cannot work without their secrets: fail at start."""
        missing = [
            f"FIELDTRACK_NATS__{name.upper()}"
            for name in ("auth_password", "issuer_seed", "system_password")
            if getattr(self, name) is None
        ]
        if missing:
            raise ConfigError(
                f"broker is nats but {', '.join(missing)} is not set; run "
                "`fieldtrack infra up --cluster` for the local cluster"
            )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FIELDTRACK_",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
    )

    database_url: SecretStr = Field(
        description="libpq URL of the TimescaleDB database, e.g. postgresql://user:pw@host:5432/db",
    )
    database_read_url: SecretStr | None = Field(
        default=None,
        description="libpq URL of a read replica (a hot standby of database_url): the API's "
        "analytics, pages and exports read there, falling back to the primary; none: all on "
        "the primary",
    )
    db_pool_min: Annotated[int, Field(ge=1, le=64)] = 1
    db_pool_max: Annotated[int, Field(ge=1, le=256)] = 8

    broker: Literal["mosquitto", "nats"] = Field(
        default="mosquitto",
        description="mosquitto: one broker, device identities in its dynamic security; nats: a "
        "NATS cluster, devices authenticated by fieldtrack's auth callout, ingest consuming "
        "the cluster's replicated MQTT stream",
    )
    nats: NatsSettings = Field(
        default_factory=NatsSettings,
        description="FIELDTRACK_NATS__<NAME>, e.g. FIELDTRACK_NATS__URLS=nats://n1:4222,nats://n2:4222",
    )

    mqtt_host: str = "127.0.0.1"
    mqtt_port: Annotated[int, Field(ge=1, le=65535)] = 1883
    # NoDecode: the variable is a host:port list, not the JSON pydantic-settings expects.
    mqtt_nodes: Annotated[list[BrokerNode], NoDecode] = Field(
        default_factory=list,
        description="the broker nodes of a cluster the simulated devices spread over and fail "
        "over between, as host:port,host:port; empty: mqtt_host:mqtt_port alone",
    )
    mqtt_admin_username: str = "fieldtrack-admin"
    mqtt_admin_password: SecretStr = Field(
        description="broker account allowed to use $CONTROL/dynamic-security/v1 (provisioning)",
    )
    mqtt_ingest_username: str = "fieldtrack-ingest"
    mqtt_ingest_password: SecretStr

    ingest_client_id: str = Field(
        default="fieldtrack-ingest-1",
        description="stable per process: the broker keeps this client's session across "
        "restarts. Must be in the reserved fieldtrack-* namespace (services/core/topics.py): "
        "no device can be provisioned under such a name, so none can take this session over",
    )
    # A plain subscription by default: Mosquitto 2.0.11 forgets shared subscriptions when it
    # restarts and drops what arrives before ingest re-subscribes (measured by make chaos).
    ingest_share_group: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9._-]{0,64}$",
        description="shared-subscription group for several ingest processes; empty: a plain "
        "subscription (one ingest process, loss-free across broker restarts)",
    )
    ingest_batch_max: Annotated[int, Field(ge=1, le=50_000)] = 2000
    ingest_batch_wait_ms: Annotated[int, Field(ge=1, le=10_000)] = 200
    ingest_keepalive_s: int = Field(
        default=30, ge=2, le=3600, description="MQTT keepalive of the ingest connection (seconds)"
    )
    ingest_max_future_skew_s: Annotated[int, Field(ge=0, le=86_400)] = 600
    ingest_late_data_days: int = Field(
        default=30, ge=1, le=3650, description="default late-data window; a project may set its own"
    )
    ingest_quarantine_retention_days: Annotated[int, Field(ge=1, le=3650)] = 30
    raw_retention_days: int = Field(
        default=MAX_WINDOW_DAYS,
        ge=1,
        le=36_500,
        description="raw usage events, metric samples and status history older than this are "
        "deleted (rollups are kept); a project's `retention_days` overrides it. The default is "
        "the longest window any page or route reads",
    )
    retention_every_s: int = Field(
        default=600, ge=1, le=86_400, description="how often ingest runs the retention job"
    )
    retention_batch_rows: int = Field(
        default=5000,
        ge=1,
        le=100_000,
        description="rows the retention job deletes per transaction (one project, one chunk)",
    )
    ingest_metrics_host: str = "127.0.0.1"
    ingest_metrics_port: int = Field(
        default=9108, ge=0, le=65535, description="Prometheus /metrics of ingest; 0 turns it off"
    )

    analytics: AnalyticsThresholds = Field(
        default_factory=AnalyticsThresholds,
        description="FIELDTRACK_ANALYTICS__<NAME>, e.g. FIELDTRACK_ANALYTICS__CUT_ADOPTION=0.03",
    )

    alerts: AlertSettings = Field(
        default_factory=AlertSettings,
        description="FIELDTRACK_ALERTS__<NAME>, e.g. FIELDTRACK_ALERTS__SMTP_HOST=mail.example.com",
    )

    api_host: str = "127.0.0.1"
    api_port: Annotated[int, Field(ge=1, le=65535)] = 8000
    session_secret: SecretStr | None = Field(
        default=None,
        description="signs dashboard cookies (at least 32 characters); required by the API",
    )
    session_cookie_secure: bool = Field(
        default=True,
        description="send cookies over HTTPS only; browsers also accept them on http://127.0.0.1",
    )

    @field_validator("mqtt_admin_password", "mqtt_ingest_password")
    @classmethod
    def _not_placeholder(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError("is empty or a placeholder; set a real secret")
        return value

    @field_validator("mqtt_nodes", mode="before")
    @classmethod
    def _node_list(cls, value: object) -> object:
        return parse_broker_nodes(value) if isinstance(value, str) else value

    def broker_nodes(self) -> list[BrokerNode]:
        """The broker nodes devices connect to: mqtt_nodes, or mqtt_host:mqtt_port alone."""
        return list(self.mqtt_nodes) or [(self.mqtt_host, self.mqtt_port)]

    def device_client_id(self, serial: str) -> str:
        """The MQTT client id a device logs in with on the configured broker."""
        return nats_client_id(serial) if self.broker == "nats" else serial

    @field_validator("ingest_client_id")
    @classmethod
    def _reserved_client_id(cls, value: str) -> str:
        return check_ingest_client_id(value)

    def with_ingest_client_id(self, client_id: str) -> Settings:
        """A copy under another ingest client id, checked as the setting is (`model_copy`
        alone validates nothing)."""
        try:
            check_ingest_client_id(client_id)
        except ValueError as exc:
            raise ConfigError(f"ingest client id: {exc}") from exc
        return self.model_copy(update={"ingest_client_id": client_id})

    @field_validator("session_secret")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = value.get_secret_value().strip()
        if text.lower() in PLACEHOLDER_SECRETS or len(text) < MIN_SESSION_SECRET:
            raise ValueError(f"must be a random secret of at least {MIN_SESSION_SECRET} characters")
        return value

    def require_session_secret(self) -> None:
        """The API cannot sign sessions without it: fail at start-up, not at first login."""
        if self.session_secret is None:
            raise ConfigError(
                "FIELDTRACK_SESSION_SECRET is not set. Run `fieldtrack infra up` for local "
                "services, or set it to a random value (e.g. `openssl rand -base64 33`)."
            )

    @field_validator("database_url", "database_read_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("must be a postgresql:// URL")
        return value


def child_environment(settings: Settings) -> dict[str, str]:
    """The FIELDTRACK_* variables that make a child fieldtrack process use *settings*' database
    and broker (they override its connection file)."""
    env = {
        "FIELDTRACK_DATABASE_URL": settings.database_url.get_secret_value(),
        "FIELDTRACK_BROKER": settings.broker,
        "FIELDTRACK_MQTT_HOST": settings.mqtt_host,
        "FIELDTRACK_MQTT_PORT": str(settings.mqtt_port),
        "FIELDTRACK_MQTT_NODES": ",".join(node_name(node) for node in settings.mqtt_nodes),
        "FIELDTRACK_MQTT_ADMIN_USERNAME": settings.mqtt_admin_username,
        "FIELDTRACK_MQTT_ADMIN_PASSWORD": settings.mqtt_admin_password.get_secret_value(),
        "FIELDTRACK_MQTT_INGEST_USERNAME": settings.mqtt_ingest_username,
        "FIELDTRACK_MQTT_INGEST_PASSWORD": settings.mqtt_ingest_password.get_secret_value(),
        "FIELDTRACK_NATS__URLS": settings.nats.urls,
        "FIELDTRACK_NATS__CONSUMER": settings.nats.consumer,
        "FIELDTRACK_NATS__ACK_WAIT_S": str(settings.nats.ack_wait_s),
        "FIELDTRACK_NATS__CALLOUT_METRICS_PORT": str(settings.nats.callout_metrics_port),
    }
    for name in ("auth_password", "issuer_seed", "system_password"):
        value: SecretStr | None = getattr(settings.nats, name)
        if value is not None:
            env[f"FIELDTRACK_NATS__{name.upper()}"] = value.get_secret_value()
    return env


def variable_problems(exc: ValidationError) -> str:
    """What is wrong with the settings, each named by its environment variable."""
    return "; ".join(
        f"FIELDTRACK_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
        for err in exc.errors()
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; raises ConfigError with every problem listed."""
    try:
        # The file is found at call time, so FIELDTRACK_STATE_DIR set by a test or a
        # wrapper script applies.
        return Settings(_env_file=local_env_file())
    except ValidationError as exc:
        raise ConfigError(
            f"configuration is incomplete or invalid ({variable_problems(exc)}). "
            f"Run `fieldtrack infra up` for local services, or set these variables."
        ) from exc
