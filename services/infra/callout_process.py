"""The auth callout as a background process of the local cluster (`fieldtrack broker auth`):
without it no device can log in to the cluster, so `infra up --cluster` keeps it running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from services.infra.system import pid_from_file, stop_process

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
        return pid_from_file(self.pidfile, b"broker")

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
        if not stop_process(pid, signal.SIGTERM, STOP_TIMEOUT_S):
            os.kill(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)
        return True
