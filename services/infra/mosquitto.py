"""A project-owned Mosquitto: own config and port, persistence, no anonymous access,
and the dynamic-security plugin holding every device's identity.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import IO

from services.core.errors import InfraError
from services.core.payloads import MAX_PAYLOAD_BYTES
from services.core.topics import TOPIC_ROOT
from services.infra.system import (
    Reporter,
    await_ready,
    chown_tree,
    is_root,
    log_tail,
    pid_from_file,
    run,
    stop_process,
    user_exists,
)

MOSQUITTO = Path("/usr/sbin/mosquitto")
MOSQUITTO_CTRL = "mosquitto_ctrl"
PLUGIN_CANDIDATES = (
    Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"),
    Path("/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so"),
    Path("/usr/lib/mosquitto_dynamic_security.so"),
    Path("/usr/lib/mosquitto/mosquitto_dynamic_security.so"),
)
SERVICE_USER = "mosquitto"  # Mosquitto started as root drops to this user
START_TIMEOUT_S = 15
STOP_TIMEOUT_S = 15
# A PUBLISH carries, besides its payload, a fixed header (<= 5 bytes), the topic (2 + <= 88
# bytes for a device topic), a packet id and MQTT 5 properties: 1 KiB covers them.
MQTT_OVERHEAD_BYTES = 1024
# The broker refuses (disconnects) any packet a device could not get stored anyway.
MAX_PACKET_BYTES = MAX_PAYLOAD_BYTES + MQTT_OVERHEAD_BYTES
# The security store holds every password hash and the log names every client: broker only.
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
# Files the broker creates itself (the security store is rewritten on every change) inherit
# this from the process that starts it.
BROKER_UMASK = 0o077
DYNSEC_INIT_TIMEOUT_S = 30

# fieldtrack's per-device quota plugin (services/infra/fieldtrack_quota.c): Mosquitto 2.0.11
# limits queues per subscriber session only, so without it one flooding device fills ingest's
# queue and the broker then drops every device's acknowledged messages.
QUOTA_SOURCE = "fieldtrack_quota.c"
QUOTA_LIBRARY = "fieldtrack_quota.so"
QUOTA_BUILD_PACKAGES = ("gcc", "libc6-dev", "mosquitto-dev", "libmosquitto-dev")
# "on" (default); "load": for `make bench`, whose few load accounts each stand for a fleet
# (every limit × LOAD_FACTOR: the plugin runs, as in production, but never refuses); "off".
QUOTA_SWITCH = "FIELDTRACK_BROKER_DEVICE_QUOTA"
QUOTA_MODES = ("on", "load", "off")
LOAD_FACTOR = 10_000
# Per device account. Far above an honest device (one message every few seconds, a backlog of
# hours after an outage, `make bench`'s ceiling publishers: 130,000 messages each) and far
# below one flooding device (measured here: 7,800 msgs/s of small messages or 730 MB/s of
# 256 KiB ones from one Python client). With the queue budget in the template, one device at
# its quota needs (1 GiB - 64 MiB) / 1 MiB/s = 16 minutes to fill ingest's queue on its own
# (by count: 750,000 / 200 msgs/s, an hour): that bounds how long ingest may be away.
DEVICE_MSGS_PER_S = 200
DEVICE_BURST_MSGS = 250_000
DEVICE_BYTES_PER_S = 1024 * 1024
DEVICE_BURST_BYTES = 64 * 1024 * 1024
RETAIN_SUFFIX = "/status"  # the one kind whose last message is kept (online / offline)
# What an MQTT 5 last will is charged beyond its payload. A plugin of Mosquitto 2.0.11 can
# neither see nor strip a will's properties (user properties and the like, which ingest never
# reads and the broker's queue limits never count), and they ride in the CONNECT packet: so a
# will is charged as if they filled it. A device reconnecting to send will after will gets
# about 4 a second after a burst of about 250 (DEVICE_BYTES_PER_S, DEVICE_BURST_BYTES).
WILL_PROPERTIES_BYTES = MAX_PACKET_BYTES


def config_template() -> Template:
    """The one broker config, shared by the local services and docker-compose."""
    text = resources.files("services.infra").joinpath("mosquitto.conf.template").read_text()
    return Template(text)


def render_config(
    *,
    port: int,
    bind: str,
    data_dir: str,
    plugin: str,
    user_line: str,
    quota_plugin: str | None,
    quota_scale: int = 1,
) -> str:
    values = {"port": port, "bind": bind, "data_dir": data_dir.rstrip("/"), "plugin": plugin}
    return config_template().substitute(
        values,
        user_line=user_line,
        max_packet_size=MAX_PACKET_BYTES,
        quota=quota_directives(quota_plugin, quota_scale),
    )


def quota_directives(library: str | None, scale: int = 1) -> str:
    """The quota plugin's lines of the broker config (its limits × *scale*); none when it is
    switched off."""
    if library is None:
        return "# per-device quota: off (FIELDTRACK_BROKER_DEVICE_QUOTA=off)"
    return "\n".join(
        (
            f"plugin {library}",
            f"plugin_opt_topic_prefix {TOPIC_ROOT}/",
            f"plugin_opt_retain_suffix {RETAIN_SUFFIX}",
            f"plugin_opt_msgs_per_s {DEVICE_MSGS_PER_S * scale}",
            f"plugin_opt_burst_msgs {DEVICE_BURST_MSGS * scale}",
            f"plugin_opt_bytes_per_s {DEVICE_BYTES_PER_S * scale}",
            f"plugin_opt_burst_bytes {DEVICE_BURST_BYTES * scale}",
            f"plugin_opt_will_properties_bytes {WILL_PROPERTIES_BYTES}",
        )
    )


def quota_mode() -> str:
    """How the local broker applies the per-device quota (QUOTA_SWITCH)."""
    mode = os.environ.get(QUOTA_SWITCH, "on").strip().lower()
    if mode not in QUOTA_MODES:
        raise InfraError(f"{QUOTA_SWITCH}={mode!r}: use one of {', '.join(QUOTA_MODES)}")
    return mode


def build_quota_plugin(target: Path) -> Path:
    """Compile the quota plugin against the installed broker headers when it is missing or
    older than its source (about a second)."""
    source = resources.files("services.infra").joinpath(QUOTA_SOURCE)
    with resources.as_file(source) as path:
        if target.exists() and target.stat().st_mtime >= path.stat().st_mtime:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".so.partial")
        flags = ["-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC"]
        run(
            ["gcc", *flags, "-o", partial, path],
            what="compiling the broker's quota plugin (services/infra/fieldtrack_quota.c)",
        )
        partial.chmod(0o755)
        partial.replace(target)
    return target


def dynsec_plugin() -> Path:
    for candidate in PLUGIN_CANDIDATES:
        if candidate.exists():
            return candidate
    raise InfraError(
        "mosquitto_dynamic_security.so not found; install Debian's `mosquitto` package"
    )


@dataclass(frozen=True)
class LocalMosquitto:
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.root / "mosquitto.conf"

    @property
    def dynsec_file(self) -> Path:
        return self.data / "dynamic-security.json"

    @property
    def logfile(self) -> Path:
        return self.root / "mosquitto.log"

    @property
    def pidfile(self) -> Path:
        return self.root / "mosquitto.pid"

    @property
    def quota_library(self) -> Path:
        return self.root / QUOTA_LIBRARY

    def pid(self) -> int | None:
        return pid_from_file(self.pidfile, b"mosquitto")

    def running(self) -> bool:
        return self.pid() is not None

    def _run_as(self) -> str | None:
        return SERVICE_USER if is_root() and user_exists(SERVICE_USER) else None

    def configure(self, admin_user: str, admin_password: str, report: Reporter) -> bool:
        """Write the config and create the security store once; True when newly created."""
        self.data.mkdir(parents=True, exist_ok=True)
        user = self._run_as()
        mode = quota_mode()
        quota = None if mode == "off" else str(build_quota_plugin(self.quota_library))
        self.config.write_text(
            render_config(
                port=self.port,
                bind="127.0.0.1",
                data_dir=str(self.data),
                plugin=str(dynsec_plugin()),
                user_line=f"user {user}" if user else "",
                quota_plugin=quota,
                quota_scale=LOAD_FACTOR if mode == "load" else 1,
            )
        )
        created = False
        if not self.dynsec_file.exists():
            report(f"creating the broker's security store with admin {admin_user!r}")
            init_dynsec(self.dynsec_file, admin_user, admin_password)
            created = True
        if user:
            # Dynamic-security changes are written back to this file; if the broker cannot
            # write it they silently vanish at the next restart.
            chown_tree(self.data, user)
        self.data.chmod(PRIVATE_DIR_MODE)
        self.dynsec_file.chmod(PRIVATE_FILE_MODE)
        return created

    def start(self, report: Reporter) -> bool:
        if self.running():
            return False
        report(f"starting Mosquitto on 127.0.0.1:{self.port}")
        with self._open_log() as log:
            proc = subprocess.Popen(
                [str(MOSQUITTO), "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the command that started it
                umask=BROKER_UMASK,
            )
        self.pidfile.write_text(f"{proc.pid}\n")
        await_ready(
            proc,
            lambda: port_open("127.0.0.1", self.port),
            name="Mosquitto",
            logfile=self.logfile,
            timeout_s=START_TIMEOUT_S,
            waiting_for=f"open port {self.port}",
        )
        return True

    def stop(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        # graceful: Mosquitto saves its persistence file
        if not stop_process(pid, signal.SIGTERM, STOP_TIMEOUT_S):
            raise InfraError(f"Mosquitto (pid {pid}) did not stop within {STOP_TIMEOUT_S}s")
        self.pidfile.unlink(missing_ok=True)
        return True

    def log_tail(self) -> str:
        return log_tail(self.logfile)

    def _open_log(self) -> IO[bytes]:
        """The broker's log, readable by its owner only (it names every client and address)."""
        fd = os.open(self.logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
        os.fchmod(fd, PRIVATE_FILE_MODE)  # a log left by an older version may be wider
        user = self._run_as()
        if user:
            entry = pwd.getpwnam(user)
            os.fchown(fd, entry.pw_uid, entry.pw_gid)
        return os.fdopen(fd, "ab")


def init_dynsec(path: Path, admin_user: str, admin_password: str) -> None:
    """`mosquitto_ctrl dynsec init` with the password on stdin (it asks twice when the
    argument is left out), never on argv; the file is created private."""
    run(
        [MOSQUITTO_CTRL, "dynsec", "init", path, admin_user],
        what="mosquitto_ctrl dynsec init",
        stdin=f"{admin_password}\n{admin_password}\n",
        umask=BROKER_UMASK,
        timeout=DYNSEC_INIT_TIMEOUT_S,
    )


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


# The broker config docker-compose mounts; tests check the committed copy matches this.
DOCKER_DATA_DIR = "/mosquitto/data"
DOCKER_PLUGIN = "/usr/lib/mosquitto_dynamic_security.so"
DOCKER_QUOTA_PLUGIN = "/usr/lib/fieldtrack_quota.so"  # built by deploy/mosquitto/Dockerfile
DOCKER_PORT = 1883


def render_docker_config() -> str:
    return render_config(
        port=DOCKER_PORT,
        bind="0.0.0.0",  # noqa: S104 — inside a container the broker listens on its own network
        data_dir=DOCKER_DATA_DIR,
        plugin=DOCKER_PLUGIN,
        user_line="",
        quota_plugin=DOCKER_QUOTA_PLUGIN,
    )


if __name__ == "__main__":
    print(render_docker_config(), end="")
