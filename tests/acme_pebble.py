"""Pebble, Let's Encrypt's RFC 8555 test CA (Debian's ``pebble``), on loopback for the tests.

Pebble serves its ACME directory over HTTPS with a certificate from a trustme CA made here,
asks the tests' dnslib server (``-dnsserver``) for the addresses of the names it validates,
and fetches HTTP-01 challenges from ``httpPort``: postoffice's ``[listen] acme_http`` port.
Its own root and intermediate are made anew at each start and fetched from its management
port.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trustme
from cryptography import x509

from conftest import require_tool


def free_port() -> int:
    """A TCP port nothing listens on now (for a server that is told its port up front)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Pebble:
    process: subprocess.Popen[str]
    port: int
    management_port: int
    ca_file: Path
    output: list[str] = field(default_factory=list)

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def _get(self, path: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        url = f"https://127.0.0.1:{self.management_port}{path}"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            body: bytes = response.read()
            return body

    def root(self) -> bytes:
        return self._get("/roots/0")

    def intermediate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self._get("/intermediates/0"))

    def client_context(self) -> ssl.SSLContext:
        """Trusts certificates Pebble issued (and nothing else)."""
        return ssl.create_default_context(cadata=self.root().decode())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _drain(process: subprocess.Popen[str], output: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line)


@contextlib.contextmanager
def pebble(
    workdir: Path,
    *,
    dns_port: int,
    http_port: int,
    port: int | None = None,
    validity: int | None = None,
    tls_port: int | None = None,
) -> Iterator[Pebble]:
    """Run Pebble until the block ends; ``validity``: its certificates' lifetime in seconds."""
    binary = require_tool("pebble")
    workdir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    served = ca.issue_cert("127.0.0.1", "localhost")
    served.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
    served.private_key_pem.write_to_path(str(workdir / "key.pem"))
    ca_file = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    port = port or free_port()
    management = free_port()
    settings: dict[str, object] = {
        "listenAddress": f"127.0.0.1:{port}",
        "managementListenAddress": f"127.0.0.1:{management}",
        "certificate": str(workdir / "cert.pem"),
        "privateKey": str(workdir / "key.pem"),
        "httpPort": http_port,
        "tlsPort": tls_port or free_port(),  # TLS-ALPN-01 (RFC 8737) validations connect here
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }
    if validity is not None:
        settings["certificateValidityPeriod"] = validity
    config = workdir / "pebble-config.json"
    config.write_text(json.dumps({"pebble": settings}), encoding="utf-8")
    env = {
        "PEBBLE_VA_NOSLEEP": "1",  # validate at once, not after a random sleep
        "PEBBLE_WFE_NONCEREJECT": "0",  # no random badNonce errors
        "PEBBLE_AUTHZREUSE": "0",  # every order validates again
        "PATH": "/usr/bin:/bin",
    }
    process = subprocess.Popen(
        [binary, "-config", str(config), "-dnsserver", f"127.0.0.1:{dns_port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=workdir,
    )
    running = Pebble(process, port, management, ca_file)
    threading.Thread(target=_drain, args=(process, running.output), daemon=True).start()
    try:
        _wait_listening(running)
        yield running
    finally:
        running.stop()


def _wait_listening(running: Pebble, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise AssertionError("pebble exited:\n" + "".join(running.output))
        for port in (running.port, running.management_port):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                break
        else:
            return
        time.sleep(0.05)
    raise AssertionError("pebble did not listen:\n" + "".join(running.output))
