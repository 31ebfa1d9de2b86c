"""An independent SMTP server for client tests: aiosmtpd on an ephemeral 127.0.0.1 port.

:class:`Peer` runs aiosmtpd's ``Controller`` (its own thread and loop) with a handler that
collects every envelope and answers MAIL, RCPT and end of data as a test scripts it, so our
client meets a server it did not grow up with. ``trustme`` certificates give it STARTTLS or
implicit TLS; an authenticator gives it AUTH PLAIN and LOGIN.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword

USER = "alice"
PASSWORD = "correct horse battery staple"


class EphemeralController(Controller):
    """aiosmtpd's Controller bound to port 0: the real port is read back before it is probed."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_options: list[str]


@dataclass
class Handler:
    """Accepts everything unless told otherwise; keeps what it accepted."""

    mail_reply: str | None = None
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str = "250 2.0.0 Ok: queued"
    messages: list[Received] = field(default_factory=list)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.mail_reply is not None:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        if self.data_reply.startswith("250"):
            content = envelope.original_content or b""
            self.messages.append(
                Received(
                    str(envelope.mail_from), list(envelope.rcpt_tos), content, list(envelope.mail_options)
                )
            )
        return self.data_reply


def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


@dataclass
class Peer:
    controller: EphemeralController
    handler: Handler

    @property
    def port(self) -> int:
        return int(self.controller.port)

    def stop(self) -> None:
        self.controller.stop()


@dataclass
class Tls:
    """A trustme CA and a certificate for 127.0.0.1 and localhost."""

    ca: trustme.CA
    server_context: ssl.SSLContext
    cafile: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    cafile = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    return Tls(ca, server_context, cafile)


@pytest.fixture
def peer_factory() -> Iterator[Any]:
    """``peer_factory(handler=Handler(...), **aiosmtpd SMTP options)``; stopped afterwards."""
    peers: list[Peer] = []

    def start(handler: Handler | None = None, **options: Any) -> Peer:
        handler = handler or Handler()
        options.setdefault("enable_SMTPUTF8", True)
        controller = EphemeralController(handler, hostname="127.0.0.1", port=0, **options)
        controller.start()
        peer = Peer(controller, handler)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.stop()


@pytest.fixture
def peer(peer_factory: Any) -> Peer:
    result: Peer = peer_factory()
    return result


def auth_options(tls: Tls | None) -> dict[str, Any]:
    """aiosmtpd options for AUTH PLAIN/LOGIN; over STARTTLS when ``tls`` is given."""
    options: dict[str, Any] = {"authenticator": authenticate}
    if tls is None:
        options["auth_require_tls"] = False
    else:
        options["tls_context"] = tls.server_context
    return options
