"""Real receivers for alert notifications: an SMTP server (aiosmtpd) and an HTTP webhook
receiver, each on a free 127.0.0.1 port, recording what they get; and `fieldtrack alerts
run` as a real process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class SmtpSink:
    host: str = "127.0.0.1"
    port: int = 0
    messages: list[Message] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.messages.append(message_from_bytes(content))
        return "250 OK"


@contextmanager
def smtp_server() -> Iterator[SmtpSink]:
    with socket.socket() as probe:  # Controller checks it is up by connecting: no port 0
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = SmtpSink(port=port)
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class WebhookSink:
    url: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    # answers to give, in order, before answering 200 (e.g. [500, 500] to force retries)
    failures: list[int] = field(default_factory=list)


@contextmanager
def webhook_receiver() -> Iterator[WebhookSink]:
    sink = WebhookSink()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            code = sink.failures.pop(0) if sink.failures else 200
            if code == 200:
                sink.deliveries.append(Delivery(dict(self.headers.items()), body))
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads what arrived, not a log of it."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()


class AlertsProcess:
    """`python -m services alerts run` against the test database, evaluating every second."""

    def __init__(self, database_url: str, smtp_port: int, log_dir: Path) -> None:
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "FIELDTRACK_DATABASE_URL": database_url,
            "FIELDTRACK_ALERTS__EVAL_INTERVAL_S": "1",
            "FIELDTRACK_ALERTS__CLEAR_AFTER_S": "2",
            # the test's receivers listen on 127.0.0.1
            "FIELDTRACK_ALERTS__WEBHOOK_ALLOW_PRIVATE": "true",
            "FIELDTRACK_ALERTS__SMTP_HOST": "127.0.0.1",
            "FIELDTRACK_ALERTS__SMTP_PORT": str(smtp_port),
            "FIELDTRACK_ALERTS__METRICS_PORT": "0",
            "FIELDTRACK_INGEST_METRICS_PORT": "0",
        }
        self.log_dir = log_dir
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.runs += 1
        with (self.log_dir / f"alerts.{self.runs}.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services", "alerts", "run"],
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def log(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.log_dir.glob("alerts.*.log"))
        )
