"""Helpers for the TLS, AUTH and submission tests: certificates made by trustme, a server with
every kind of listener, raw clients that can switch to TLS, ports of a spawned server.

Everything stays on 127.0.0.1; certificates name ``mx.test`` and ``127.0.0.1``.
"""

from __future__ import annotations

import base64
import re
import smtplib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from conftest import RawSmtp, RunningServer, ServerProcess
from postoffice.accounts import Accounts
from postoffice.config import AuthConfig, Listener, TLSConfig

DOMAIN = "example.test"
ALICE = "alice@example.test"
BOB = "bob@example.test"
ALICE_PASSWORD = "correct horse battery staple"
BOB_PASSWORD = "Tr0ub4dor&3"
SALES = "sales@example.test"  # an alias for alice
TEAM = "team@example.test"  # an alias for alice and bob
REMOTE = "carol@elsewhere.test"

ALL_KINDS = ("smtp", "submission", "smtps")


@dataclass
class Certs:
    """A CA and a server certificate it issued, written to files."""

    ca: trustme.CA
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def server_certificate_der(self) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.cert.read_text())


def make_certs(directory: Path, ca: trustme.CA | None = None) -> Certs:
    ca = ca or trustme.CA()
    leaf = ca.issue_cert("mx.test", "127.0.0.1")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return Certs(ca, cert, key)


def unverified_context() -> ssl.SSLContext:
    """For self-signed certificates, as opportunistic STARTTLS between MTAs does (RFC 7435)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def ports(server: RunningServer) -> dict[str, int]:
    found: dict[str, int] = {}
    for bound in server.app.smtp.bound:
        found.setdefault(bound.kind, bound.port)
    return found


def add_accounts(server: RunningServer) -> None:
    accounts = Accounts(server.config.accounts_file)
    accounts.add_user(ALICE, ALICE_PASSWORD)
    accounts.add_user(BOB, BOB_PASSWORD)
    accounts.add_alias(SALES, [ALICE])
    accounts.add_alias(TEAM, [ALICE, BOB])


def start_submission_server(
    server_factory: Callable[..., RunningServer], certs: Certs, **overrides: Any
) -> RunningServer:
    """An MTA for example.test with smtp, submission and smtps listeners, alice and bob."""
    settings: dict[str, Any] = {
        "listeners": tuple(Listener(kind, "127.0.0.1", 0) for kind in ALL_KINDS),
        "domains": (DOMAIN,),
        "tls": TLSConfig(cert=certs.cert, key=certs.key),
        "auth": AuthConfig(failure_delay=0.0),
    }
    settings.update(overrides)
    server = server_factory(**settings)
    add_accounts(server)
    return server


def plain_response(user: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class TlsRawSmtp(RawSmtp):
    """RawSmtp that can do STARTTLS, or start in TLS (port 465)."""

    def __init__(self, port: int, *, context: ssl.SSLContext | None = None, implicit: bool = False) -> None:
        super().__init__(port)
        if implicit:
            assert context is not None
            self.sock = context.wrap_socket(self.sock, server_hostname="mx.test")

    def starttls(self, context: ssl.SSLContext) -> bytes:
        reply = self.command("STARTTLS")
        # Nothing may follow the 220 in plaintext: the next octets are the server's handshake.
        assert self._buffer == b"", self._buffer
        self.sock = context.wrap_socket(self.sock, server_hostname="mx.test")
        return reply


def smtp_over_starttls(port: int, context: ssl.SSLContext) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10)
    client.starttls(context=context)
    client.ehlo()
    return client


def message(sender: str, recipient: str, subject: str = "hello") -> str:
    return (
        f"From: {sender}\r\nTo: {recipient}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@client.test>\r\n\r\nHello.\r\n"
    )


_LISTENING = re.compile(r"^listening (?P<kind>\w+) (?:\[[^\]]+\]|[^:]+):(?P<port>\d+)$")


def process_ports(process: ServerProcess, kinds: tuple[str, ...], timeout: float = 10.0) -> dict[str, int]:
    """The port of each listener kind a spawned server printed in its banner."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found: dict[str, int] = {}
        for line in list(process.output):
            match = _LISTENING.match(line.strip())
            if match:
                found.setdefault(match["kind"], int(match["port"]))
        if all(kind in found for kind in kinds):
            return found
        time.sleep(0.02)
    raise AssertionError("listeners not announced:\n" + "".join(process.output))


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)
