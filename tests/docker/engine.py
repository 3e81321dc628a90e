"""The Docker engine the stack test runs on, prepared as a new user of a Debian machine would:
Debian's `docker.io`, `docker-compose` and `mmdebstrap`, a daemon, and the base image built
from Debian's mirror (Docker Hub need not be reachable).

Whatever this module starts, `Engine.stop` stops; images stay, as the next run's build cache.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from services.core.errors import InfraError
from services.infra.system import Reporter, await_ready, ensure_packages, run

PACKAGES = ("docker.io", "docker-compose", "mmdebstrap")
BASE_IMAGE = "debian:bookworm-slim"  # what every Dockerfile of fieldtrack starts from
SUITE = "bookworm"
DAEMON_START_TIMEOUT_S = 60
DAEMON_STOP_TIMEOUT_S = 30
BASE_IMAGE_TIMEOUT_S = 600
# CA bundles: the machine's, and the certificates Debian ships. A certificate in the first
# and not in the second was added locally (a TLS-intercepting proxy's, say): pip needs it
# inside the image build too.
MACHINE_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_CA_DIR = Path("/usr/share/ca-certificates")
PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", flags=re.DOTALL
)


@dataclass
class Engine:
    """A Docker daemon that answers, and the compose command installed beside it."""

    compose: list[str]
    daemon: subprocess.Popen[bytes] | None  # the daemon this process started, if any

    def stop(self) -> None:
        """Stop the daemon if it was started here (its containers are gone by then)."""
        if self.daemon is None or self.daemon.poll() is not None:
            return
        self.daemon.terminate()
        try:
            self.daemon.wait(DAEMON_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait(DAEMON_STOP_TIMEOUT_S)


def prepare(state: Path, report: Reporter) -> Engine:
    """Install what is missing, start a daemon unless one answers, build the base image
    unless it exists; raise InfraError saying which step failed and why."""
    ensure_packages(PACKAGES, report)
    daemon = None if daemon_answers() else start_daemon(state / "dockerd.log", report)
    engine = Engine(compose_command(), daemon)
    try:
        if not image_exists(BASE_IMAGE):
            build_base_image(state, report)
    except BaseException:
        engine.stop()
        raise
    return engine


def daemon_answers() -> bool:
    done = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30)
    return done.returncode == 0


def start_daemon(logfile: Path, report: Reporter) -> subprocess.Popen[bytes]:
    if shutil.which("dockerd") is None:
        raise InfraError("dockerd is not installed (Debian's docker.io package provides it)")
    report(f"starting dockerd (log: {logfile})")
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("wb") as log:  # this start's log only: its end is the reason
        daemon = subprocess.Popen(
            ["dockerd"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        await_ready(
            daemon,
            daemon_answers,
            name="dockerd",
            logfile=logfile,
            timeout_s=DAEMON_START_TIMEOUT_S,
            waiting_for="answer",
            interval_s=0.5,
        )
    except InfraError as exc:
        daemon.terminate()
        raise InfraError(
            "this machine cannot run a Docker daemon (it needs root, cgroups and an overlay "
            f"or vfs storage driver): {exc}"
        ) from exc
    return daemon


def compose_command() -> list[str]:
    """`docker compose` (the plugin) when installed, else Debian's `docker-compose`."""
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if plugin.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise InfraError("neither `docker compose` nor `docker-compose` is installed")


def image_exists(image: str) -> bool:
    done = subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False)
    return done.returncode == 0


def build_base_image(state: Path, report: Reporter) -> None:
    """debian:bookworm-slim from Debian's mirror: a minimal bookworm, imported."""
    report(f"building {BASE_IMAGE} with mmdebstrap (about 30 s)")
    state.mkdir(parents=True, exist_ok=True)
    tarball = state / f"{SUITE}.tar"
    try:
        run(
            ["mmdebstrap", "--variant=minbase", SUITE, tarball],
            what="mmdebstrap",
            timeout=BASE_IMAGE_TIMEOUT_S,
        )
        run(["docker", "import", tarball, BASE_IMAGE], what="docker import")
    finally:
        tarball.unlink(missing_ok=True)


def local_ca_certificates() -> str:
    """The certificates this machine trusts beyond Debian's (PEM; empty when none)."""
    if not MACHINE_CA_BUNDLE.is_file():
        return ""

    def normal(pem: str) -> str:
        return "".join(pem.split())

    debian = {
        normal(pem)
        for path in DEBIAN_CA_DIR.rglob("*.crt")
        for pem in PEM_CERTIFICATE.findall(path.read_text(errors="replace"))
    }
    bundle = PEM_CERTIFICATE.findall(MACHINE_CA_BUNDLE.read_text(errors="replace"))
    return "\n".join(pem for pem in bundle if normal(pem) not in debian)
