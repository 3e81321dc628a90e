"""The auth callout as a background process of the local cluster (`fieldtrack broker auth`):
without it no device can log in to the cluster, so `infra up --cluster` keeps it running."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

STOP_TIMEOUT_S = 10.0
PRIVATE_FILE_MODE = 0o600


@dataclass(frozen=True)
class CalloutProcess:
    root: Path

    @property
    def pidfile(self) -> Path:
        return self.root / "auth-callout.pid"

    @property
    def logfile(self) -> Path:
        return self.root / "auth-callout.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and b"broker" not in cmdline.read_bytes():
            return None  # a recycled pid
        return pid

    def start(self, env: dict[str, str] | None = None) -> bool:
        """Start it unless it runs; it reads the connection settings just written, or *env*
        (a test's cluster beside the suite's Mosquitto)."""
        if self.pid() is not None:
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services", "broker", "auth"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        self.pidfile.write_text(f"{proc.pid}\n")
        return True

    def stop(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)
        return True
