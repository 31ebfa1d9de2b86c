"""Independent peers on loopback for outbound delivery tests: an MTA (aiosmtpd), a recording MTA
that shows how the client grouped its commands on the wire, and a DNS server (dnslib).

Every peer listens on 127.0.0.0/8 only. Several fake MX hosts of one test share one port number
on different loopback addresses (127.0.0.2, 127.0.0.3, ...; Linux routes the whole /8 to lo),
because postoffice reaches every MX on the same port (``--mx-port``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, LoginPassword, Session
from dnslib import AAAA, MX, QTYPE, RCODE, RR, TLSA, TXT, A, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from postoffice.smtp import replies
from postoffice.smtp.replies import Reply


def free_port(*hosts: str) -> int:
    """A TCP port free on every one of ``hosts`` (loopback addresses)."""
    for _ in range(50):
        probe = socket.socket()
        probe.bind((hosts[0], 0))
        port = probe.getsockname()[1]
        probe.close()
        try:
            for host in hosts:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no common free port")


# --- the remote MTA ---------------------------------------------------------------------------


@dataclass
class Received:
    """One message as the peer got it."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_options: list[str]
    rcpt_options: list[str]
    tls: bool = False
    login: bytes | None = None


RcptRule = Callable[[str], str | None]  # address -> reply to send instead of accepting, or None


@dataclass
class Behaviour:
    """How the peer answers; a test changes it while the peer runs."""

    mail_reply: str | None = None  # reply to MAIL instead of 250
    rcpt: RcptRule = lambda address: None
    data_reply: str | None = None  # reply to the end of data instead of 250
    drop_in_data: bool = False  # close the connection right after 354
    refuse_ehlo: bool = False  # answer EHLO with 502, as a pre-ESMTP server would
    data_delay: float = 0.0  # seconds to think before answering the end of data
    pipelining: bool = False  # advertise PIPELINING (RFC 2920); aiosmtpd reads commands in order anyway


class PeerHandler:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.received: list[Received] = []
        self.hellos = 0  # EHLO/HELO commands: one per connection, two with STARTTLS
        self.active = 0  # transactions at the end of data right now
        self.most_active = 0
        self.lock = threading.Lock()

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        with self.lock:
            self.hellos += 1
        if self.behaviour.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if self.behaviour.mail_reply is not None:
            return self.behaviour.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = self.behaviour.rcpt(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            await asyncio.sleep(self.behaviour.data_delay)
            return self._data(server, session, envelope)
        finally:
            with self.lock:
                self.active -= 1

    def _data(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.behaviour.data_reply is not None:
            return self.behaviour.data_reply
        content = envelope.original_content or b""
        with self.lock:
            self.received.append(
                Received(
                    envelope.mail_from or "",
                    list(envelope.rcpt_tos),
                    content,
                    list(envelope.mail_options),
                    list(envelope.rcpt_options),
                    # STARTTLS sets session.ssl; implicit TLS shows only on the transport.
                    tls=server.transport is not None
                    and server.transport.get_extra_info("ssl_object") is not None,
                    login=session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None,
                )
            )
        return "250 2.0.0 Ok: queued by peer"


class _PeerSMTP(SMTP):
    """aiosmtpd's server, able to refuse EHLO and to die in the middle of DATA (it has no
    hooks for those)."""

    behaviour: Behaviour

    async def smtp_EHLO(self, hostname: str) -> None:
        if self.behaviour.refuse_ehlo:
            await self.push("502 5.5.1 Command not implemented")
            return
        await super().smtp_EHLO(hostname)

    async def smtp_DATA(self, arg: str) -> None:
        if self.behaviour.drop_in_data and self.envelope is not None and self.envelope.rcpt_tos:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            assert self.transport is not None
            self.transport.close()  # the peer dies while the message is coming in
            return
        await super().smtp_DATA(arg)


class _PeerController(Controller):
    def __init__(self, handler: PeerHandler, behaviour: Behaviour, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.behaviour = behaviour

    def factory(self) -> SMTP:
        server = _PeerSMTP(self.handler, **self.SMTP_kwargs)
        server.behaviour = self.behaviour
        return server


@dataclass
class Peer:
    host: str
    port: int
    handler: PeerHandler
    controller: Controller
    behaviour: Behaviour = field(default_factory=Behaviour)

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    def recipients(self) -> list[str]:
        return [address for message in self.received for address in message.rcpt_tos]

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.controller.stop()


def start_peer(host: str, port: int, behaviour: Behaviour | None = None, **smtp_options: Any) -> Peer:
    behaviour = behaviour or Behaviour()
    handler = PeerHandler(behaviour)
    controller = _PeerController(
        handler, behaviour, hostname=host, port=port, server_hostname=f"peer-{host}", **smtp_options
    )
    controller.start()
    return Peer(host, port, handler, controller, behaviour)


@contextlib.contextmanager
def peers(*hosts: str, **smtp_options: Any) -> Iterator[list[Peer]]:
    port = free_port(*hosts)
    started = [start_peer(host, port, **smtp_options) for host in hosts]
    try:
        yield started
    finally:
        for peer in started:
            peer.stop()


# --- a recording MTA: which commands arrived before each reply ----------------------------------

# The recording peer answers a command group when the client waits for it: after this long with
# nothing more arriving. A pipelining client has sent the whole group well before then.
HOLD_REPLIES = 0.3
# Commands that end a group (RFC 2920 §3.1: EHLO, DATA, RSET, QUIT, NOOP wait for their reply).
_GROUP_ENDS = {"EHLO", "HELO", "DATA", "RSET", "QUIT", "NOOP"}


@dataclass
class RecordingScript:
    """How the recording peer answers."""

    pipelining: bool = True  # advertise PIPELINING
    refuse: Mapping[str, Reply] = field(default_factory=dict)  # recipient -> refusal
    data_anyway: bool = False  # 354 to DATA even with no recipient accepted (a lax server)
    hang_up_after: int | None = None  # in a group with MAIL, close after this many replies
    starttls_answer: bytes | None = None  # offer STARTTLS, answer it with these bytes and hang up


@dataclass
class RecordingPeer:
    """An SMTP server in the test's event loop that holds its replies until the client stops
    sending, so ``groups`` shows exactly which commands the client sent before it waited."""

    port: int
    script: RecordingScript = field(default_factory=RecordingScript)
    groups: list[list[str]] = field(default_factory=list)
    messages: list[tuple[list[str], bytes]] = field(default_factory=list)  # (recipients, content)

    def verbs(self) -> list[list[str]]:
        return [[command.split()[0].upper() for command in group] for group in self.groups]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self._session(reader, writer)
        writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(replies.greeting("peer.test").render(enhanced=False))
        group: list[str] = []
        pending: list[Reply] = []
        recipients: list[str] = []
        while True:
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\r\n"), HOLD_REPLIES if pending else 30)
            except TimeoutError:
                if not self._flush(writer, group, pending):
                    return
                continue
            command = line.decode().rstrip("\r\n")
            verb = command.split()[0].upper() if command else ""
            group.append(command)
            if verb == "STARTTLS" and self.script.starttls_answer is not None:
                self.groups.append([command])
                writer.write(self.script.starttls_answer)
                return
            if verb == "MAIL":
                recipients = []
            if verb == "RCPT":
                address = command.partition("<")[2].partition(">")[0]
                refusal = self.script.refuse.get(address)
                if refusal is None:
                    recipients.append(address)
                pending.append(refusal or replies.RECIPIENT_OK)
            else:
                pending.append(self._reply(verb, recipients))
            if (verb in _GROUP_ENDS or not self.script.pipelining) and not self._flush(
                writer, group, pending
            ):
                return
            if verb == "QUIT":
                return
            if verb == "DATA" and (recipients or self.script.data_anyway):
                content = await _read_content(reader)
                self.messages.append((recipients, content))
                done = replies.queued("PEER") if recipients else replies.NO_VALID_RECIPIENTS
                writer.write(done.render(enhanced=True))

    def _reply(self, verb: str, recipients: list[str]) -> Reply:
        if verb == "EHLO":
            keywords = ["PIPELINING", "8BITMIME", "DSN"] if self.script.pipelining else ["8BITMIME", "DSN"]
            if self.script.starttls_answer is not None:
                keywords.append("STARTTLS")
            return replies.ehlo_ok("peer.test", "client", keywords)
        if verb == "DATA":
            ready = recipients or self.script.data_anyway
            return replies.START_MAIL_INPUT if ready else replies.NO_VALID_RECIPIENTS
        return {"MAIL": replies.SENDER_OK, "QUIT": replies.CLOSING}.get(verb, replies.OK)

    def _flush(self, writer: asyncio.StreamWriter, group: list[str], pending: list[Reply]) -> bool:
        """Send the replies held for ``group``; False when the script hangs up instead."""
        self.groups.append(list(group))
        limit = self.script.hang_up_after
        hang_up = limit is not None and any(command.upper().startswith("MAIL") for command in group)
        answered = pending[:limit] if hang_up else pending
        writer.write(b"".join(reply.render(enhanced=True) for reply in answered))
        group.clear()
        pending.clear()
        return not hang_up


async def _read_content(reader: asyncio.StreamReader) -> bytes:
    """The message after 354, un-dot-stuffed (RFC 5321 §4.5.2), up to the lone "."."""
    content = bytearray()
    while (line := await reader.readuntil(b"\r\n")) != b".\r\n":
        content += line[1:] if line.startswith(b".") else line
    return bytes(content)


@contextlib.asynccontextmanager
async def recording_peers(
    *scripts: tuple[str, RecordingScript], port: int | None = None
) -> AsyncIterator[list[RecordingPeer]]:
    """Recording peers on the given loopback addresses, all on one port (every MX shares it)."""
    port = port or free_port(*(host for host, _ in scripts))
    started = [RecordingPeer(port, script) for _, script in scripts]
    servers = [
        await asyncio.start_server(peer.serve, host, port)
        for (host, _), peer in zip(scripts, started, strict=True)
    ]
    try:
        yield started
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


# --- the DNS server -----------------------------------------------------------------------------


class Zone(BaseResolver):  # type: ignore[misc]
    """Answers from a table the test fills; unknown names are NXDOMAIN."""

    def __init__(self) -> None:
        self.records: dict[str, list[RR]] = {}
        self.servfail: set[str] = set()
        self.slow: set[str] = set()  # never answered in time
        self.queries: list[tuple[str, str]] = []
        # Zones whose answers carry the AD bit, as a validating resolver marks them (RFC 4035).
        self.authenticated: set[str] = set()

    def _name(self, name: str) -> str:
        return name.lower().rstrip(".") + "."

    def mx(self, domain: str, *exchangers: tuple[int, str]) -> None:
        for preference, host in exchangers:
            target = "." if host == "." else self._name(host)
            self.records.setdefault(self._name(domain), []).append(
                RR(self._name(domain), QTYPE.MX, rdata=MX(DNSLabel(target), preference), ttl=60)
            )

    def a(self, host: str, *addresses: str) -> None:
        for address in addresses:
            rdata = AAAA(address) if ":" in address else A(address)
            rtype = QTYPE.AAAA if ":" in address else QTYPE.A
            self.records.setdefault(self._name(host), []).append(
                RR(self._name(host), rtype, rdata=rdata, ttl=60)
            )

    def exists(self, name: str) -> None:
        """The name exists, with no records (so every lookup gets NOERROR, no answer)."""
        self.records.setdefault(self._name(name), [])

    def txt(self, name: str, text: str) -> None:
        self.records.setdefault(self._name(name), []).append(
            RR(self._name(name), QTYPE.TXT, rdata=TXT(text.encode()), ttl=60)
        )

    def tlsa(self, name: str, usage: int, selector: int, matching: int, data: bytes) -> None:
        self.records.setdefault(self._name(name), []).append(
            RR(self._name(name), QTYPE.TLSA, rdata=TLSA(usage, selector, matching, data), ttl=60)
        )

    def _authenticated(self, name: str) -> bool:
        return any(name == zone or name.endswith("." + zone) for zone in map(self._name, self.authenticated))

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        name = self._name(str(request.q.qname))
        qtype = QTYPE[request.q.qtype]
        self.queries.append((name, qtype))
        reply = request.reply()
        # dnslib's reply() copies the query's flags, AD included (RFC 6840 §5.7 lets a query set it).
        reply.header.ad = 1 if self._authenticated(name) else 0
        if name in self.slow:
            time.sleep(1.5)
        if name in self.servfail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if name not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for record in self.records[name]:
            if QTYPE[record.rtype] == qtype:
                reply.add_answer(record)
        return reply


@dataclass
class Dns:
    zone: Zone
    server: DNSServer
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


@contextlib.contextmanager
def dns_server() -> Iterator[Dns]:
    zone = Zone()
    quiet = DNSLogger(log="-request,-reply,-truncated,-data,-recv,-send", prefix=False)
    server = DNSServer(zone, address="127.0.0.1", port=0, logger=quiet)
    server.start_thread()
    port = server.server.server_address[1]
    try:
        yield Dns(zone, server, port)
    finally:
        server.stop()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
