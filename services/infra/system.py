"""Running system tools and installing Debian packages for the local services."""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from services.core.errors import InfraError

log = logging.getLogger(__name__)

# How much of a failing tool's output goes into the error: enough to see the cause.
ERROR_TAIL_CHARS = 2000

Reporter = Callable[[str], None]


def run(
    cmd: Sequence[str | Path],
    *,
    what: str,
    as_user: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 900,
    stdin: str | None = None,
    umask: int = -1,
) -> str:
    """Run a command and return its stdout; raise InfraError naming *what* failed.

    A secret goes in on *stdin*, never in *cmd*: arguments show in `ps` to every user, and
    in this function's error messages. *umask* applies to the files the command creates
    (-1: inherited)."""
    argv = [str(c) for c in cmd]
    if as_user and os.geteuid() == 0 and as_user != "root":
        argv = ["runuser", "-u", as_user, "--", *argv]
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            umask=umask,
        )
    except FileNotFoundError as exc:
        raise InfraError(f"{what}: command not found: {argv[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"{what}: timed out after {timeout:.0f}s: {' '.join(argv)}") from exc
    if done.returncode != 0:
        output = (done.stderr or "") + (done.stdout or "")
        raise InfraError(
            f"{what} failed (exit {done.returncode}): {' '.join(argv)}\n"
            f"{output[-ERROR_TAIL_CHARS:]}"
        )
    return done.stdout


def log_tail(path: Path, lines: int = 30) -> str:
    """The end of a service's log, for error messages."""
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def await_ready(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    *,
    name: str,
    logfile: Path,
    timeout_s: float,
    waiting_for: str = "be ready",
    interval_s: float = 0.1,
) -> None:
    """Wait until *ready()* says a started service answers; raise InfraError with the end of
    its log if it exits first or *timeout_s* passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise InfraError(
                f"{name} exited at start (exit {proc.returncode})\n"
                f"--- {logfile} ---\n{log_tail(logfile)}"
            )
        if ready():
            return
        time.sleep(interval_s)
    raise InfraError(f"{name} did not {waiting_for} within {timeout_s:g}s\n{log_tail(logfile)}")


def is_root() -> bool:
    return os.geteuid() == 0


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def chown_tree(path: Path, user: str) -> None:
    """Give *path* and everything under it to *user* (only meaningful as root)."""
    if not is_root():
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(Path(root) / name, entry.pw_uid, entry.pw_gid)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def missing_packages(packages: Sequence[str]) -> list[str]:
    """Debian packages from *packages* that are not installed."""
    missing = []
    for package in packages:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or "install ok installed" not in done.stdout:
            missing.append(package)
    return missing


def ensure_packages(packages: Sequence[str], report: Reporter) -> list[str]:
    """Install what is missing of *packages* from Debian's packages; return what was installed."""
    missing = missing_packages(packages)
    if not missing:
        return []
    if not is_root():
        raise InfraError(
            "these Debian packages are missing and installing them needs root: "
            f"sudo apt-get install -y {' '.join(missing)}"
        )
    if shutil.which("apt-get") is None:
        raise InfraError(f"apt-get is not available to install: {' '.join(missing)}")
    report(f"installing Debian packages: {', '.join(missing)} (one-time, about a minute)")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-q"], what="apt-get update", env=env)
    run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        what="apt-get install",
        env=env,
    )
    return missing


def pid_from_file(pidfile: Path, program: bytes) -> int | None:
    """The pid a service wrote, if that process still runs and is *program* (not a recycled
    pid of something else)."""
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists() and program not in cmdline.read_bytes():
        return None
    return pid


def stop_process(pid: int, sig: int, timeout_s: float) -> bool:
    """Send *sig* and wait until the process is gone (collecting it if this process started
    it); False if it still runs after *timeout_s*."""
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    return False
