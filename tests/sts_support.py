"""An MTA-STS policy host for tests: HTTPS (or plain HTTP) on loopback, in a thread, answering
``/.well-known/mta-sts.txt`` with whatever the test sets: a status, a content type, a body, a
delay before answering. Its certificate comes from a trustme CA the client is told to trust.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trustme


@dataclass
class Answer:
    body: bytes = b""
    status: int = 200
    content_type: str = "text/plain"
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class PolicyHost:
    port: int
    answer: Answer
    requests: list[tuple[str, str]] = field(default_factory=list)  # (Host, path)


def _handler(host: PolicyHost) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host.requests.append((self.headers.get("Host", ""), self.path))
            answer = host.answer
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            if answer.delay:
                self.wfile.write(answer.body[:10])
                self.wfile.flush()
                time.sleep(answer.delay)
            with contextlib.suppress(OSError):
                self.wfile.write(answer.body[10:] if answer.delay else answer.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextlib.contextmanager
def policy_host(
    address: str, ca: trustme.CA | None, *names: str, answer: Answer | None = None
) -> Iterator[PolicyHost]:
    """Serve on ``address`` (an ephemeral port); TLS with a certificate for ``names`` unless
    ``ca`` is None (plain HTTP)."""
    host = PolicyHost(0, answer or Answer())
    server = ThreadingHTTPServer((address, 0), _handler(host))
    server.daemon_threads = True
    if ca is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*names).configure_cert(context)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    host.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield host
    finally:
        server.shutdown()
        server.server_close()


def policy(mode: str = "enforce", *mx: str, max_age: int = 86400) -> bytes:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {host}" for host in mx), f"max_age: {max_age}"]
    return "".join(f"{line}\r\n" for line in lines).encode()
