"""A project-owned Mosquitto: own config and port, persistence, no anonymous access,
and the dynamic-security plugin holding every device's identity.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from services.core.errors import InfraError
from services.infra.system import Reporter, chown_tree, is_root, log_tail, run, user_exists

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


def config_template() -> Template:
    """The one broker config, shared by the local services and docker-compose."""
    text = resources.files("services.infra").joinpath("mosquitto.conf.template").read_text()
    return Template(text)


def render_config(*, port: int, bind: str, data_dir: str, plugin: str, user_line: str) -> str:
    return config_template().substitute(
        port=port, bind=bind, data_dir=data_dir.rstrip("/"), plugin=plugin, user_line=user_line
    )


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

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and b"mosquitto" not in cmdline.read_bytes():
            return None  # a recycled pid
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def _run_as(self) -> str | None:
        return SERVICE_USER if is_root() and user_exists(SERVICE_USER) else None

    def configure(self, admin_user: str, admin_password: str, report: Reporter) -> bool:
        """Write the config and create the security store once; True when newly created."""
        self.data.mkdir(parents=True, exist_ok=True)
        user = self._run_as()
        self.config.write_text(
            render_config(
                port=self.port,
                bind="127.0.0.1",
                data_dir=str(self.data),
                plugin=str(dynsec_plugin()),
                user_line=f"user {user}" if user else "",
            )
        )
        created = False
        if not self.dynsec_file.exists():
            report(f"creating the broker's security store with admin {admin_user!r}")
            run(
                [MOSQUITTO_CTRL, "dynsec", "init", self.dynsec_file, admin_user, admin_password],
                what="mosquitto_ctrl dynsec init",
            )
            created = True
        if user:
            # Dynamic-security changes are written back to this file; if the broker cannot
            # write it they silently vanish at the next restart.
            chown_tree(self.data, user)
        return created

    def start(self, report: Reporter) -> bool:
        if self.running():
            return False
        report(f"starting Mosquitto on 127.0.0.1:{self.port}")
        with self.logfile.open("ab") as log:
            proc = subprocess.Popen(
                [str(MOSQUITTO), "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the command that started it
            )
        self.pidfile.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise InfraError(
                    f"Mosquitto exited at start (exit {proc.returncode})\n"
                    f"--- {self.logfile} ---\n{self.log_tail()}"
                )
            if port_open("127.0.0.1", self.port):
                return True
            time.sleep(0.1)
        raise InfraError(f"Mosquitto did not open port {self.port}\n{self.log_tail()}")

    def stop(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)  # graceful: Mosquitto saves its persistence file
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            _reap(pid)
            time.sleep(0.1)
        else:
            raise InfraError(f"Mosquitto (pid {pid}) did not stop within {STOP_TIMEOUT_S}s")
        self.pidfile.unlink(missing_ok=True)
        return True

    def log_tail(self) -> str:
        return log_tail(self.logfile)


def _reap(pid: int) -> None:
    """Collect the broker if this very process started it (tests do), so it is not a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


# The broker config docker-compose mounts; tests check the committed copy matches this.
DOCKER_DATA_DIR = "/mosquitto/data"
DOCKER_PLUGIN = "/usr/lib/mosquitto_dynamic_security.so"
DOCKER_PORT = 1883


def render_docker_config() -> str:
    return render_config(
        port=DOCKER_PORT, bind="0.0.0.0", data_dir=DOCKER_DATA_DIR,  # noqa: S104
        plugin=DOCKER_PLUGIN, user_line="",
    )  # fmt: skip


if __name__ == "__main__":
    print(render_docker_config(), end="")
