"""Remote delivery: hands a message to the next server over SMTP (RFC 5321), per recipient.

Untrusted input seen here: everything a remote server sends (greeting, EHLO keywords, reply
codes and texts) and DNS answers (:mod:`postoffice.delivery.dns`); recipient addresses and the
message content from our own clients. A remote reply only ever becomes a result (its code
decides delivered / retry / fail) and quoted, printable text in a log line or a DSN.

The SMTP client is the project's own: :class:`postoffice.client.connection.SmtpClient` over the
sans-I/O :mod:`postoffice.smtp.client`. One reply parser serves both directions of the server
(bounded line length and line count, a garbled reply ends the connection), and the client does
what a library client (aiosmtplib) could not:

* PIPELINING (RFC 2920): to a server that offers it, MAIL, every RCPT and DATA go in one write
  and the replies are read in order, so a message to fifty recipients costs one round trip,
  not fifty-two; a server without it gets one command at a time;
* the content streams from the spool in blocks, dot-stuffed on the way, and writing waits
  while the socket's buffer is full, so no message is ever held whole in memory;
* STARTTLS refuses replies buffered before the handshake (RFC 3207 §4.2, the client side of
  CVE-2011-0411), and AUTH (PLAIN, LOGIN) for a relay goes only inside TLS or to loopback.

The conversation, per destination (a domain, or the relay host):

1. endpoints: the relay host, or the domain's MX hosts in order (``delivery.dns``);
2. for each endpoint until one takes the transaction: connect, greeting, EHLO (HELO when EHLO
   is refused, §3.2), STARTTLS as the destination's TLS policy says, AUTH for a relay; a
   connection failure or a 4xx to the greeting, EHLO or MAIL moves on to the next endpoint;
3. MAIL with SIZE, BODY=8BITMIME, SMTPUTF8, RET and ENVID when the server offers them; RCPT
   per recipient (with NOTIFY and ORCPT to a DSN server), whose replies are the recipients'
   results; DATA for the accepted ones, whose final reply applies to all of them.

Connections are kept for a short while after a transaction and reused for the next message to
the same destination (Postfix's connection cache: ``smtp_connection_cache_time_limit`` 2 s,
``smtp_connection_reuse_time_limit`` 300 s, :mod:`postoffice.delivery.sessions`); a cached
connection idle for more than a second is checked with RSET first.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from postoffice import defaults
from postoffice.client.connection import SmtpClient, TlsMode, Transaction
from postoffice.delivery import requiretls as rtls
from postoffice.delivery.agent import DeliveryResult, PermFail
from postoffice.delivery.content import SpoolContent
from postoffice.delivery.dns import Endpoint, MxResolver, RouteError, address_literal
from postoffice.delivery.remote_results import (
    all_failed,
    broken_off,
    judge,
    open_failure,
    printable_reply,
    reason_of,
    starttls_broke,
    unanswered_failed,
)
from postoffice.delivery.sessions import (
    IDLE_TIMEOUT,
    PROBE_AFTER_IDLE,
    REUSE_TIME_LIMIT,
    Session,
    SessionCache,
)
from postoffice.delivery.tls_policy import DomainSecurity, TransportSecurity
from postoffice.delivery.tlsrpt import NO_POLICY, TlsPolicy, TlsReportStore, local_address, note_session
from postoffice.errors import (
    LocalProtocolError,
    SmtpClientError,
    SmtpConnectError,
    SmtpMessageTooBigError,
    SmtpTlsError,
    SmtpUnsupportedError,
    SpoolError,
)
from postoffice.smtp import client as core
from postoffice.smtp import replies
from postoffice.smtp.grammar import encode_xtext
from postoffice.smtp.replies import Reply
from postoffice.spool.envelope import QueuedMessage, Recipient
from postoffice.storage import Blocking, MessageStore

log = logging.getLogger("postoffice.delivery")

# RFC 5321 §4.5.3.2.6: the client waits 10 minutes for the reply to the end of data.
DATA_DONE_TIMEOUT = 600.0
# Postfix smtp_rset_timeout = 20s: the check that a cached connection still works.
RSET_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class RemoteSettings:
    """What the remote agent needs from the configuration (built by the composition root)."""

    hostname: str  # our name in EHLO
    mx_port: int = defaults.MX_PORT
    relay: tuple[str, int] | None = None
    relay_tls: str = defaults.RELAY_TLS  # none | starttls | tls
    relay_user: str | None = None
    relay_password: str | None = field(default=None, repr=False)
    tls_policy: Mapping[str, str] = field(default_factory=dict)  # domain -> none|may|require|verify
    ca_file: Path | None = None
    connect_timeout: float = defaults.CONNECT_TIMEOUT
    command_timeout: float = defaults.REPLY_TIMEOUT
    data_timeout: float = DATA_DONE_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    reuse_time_limit: float = REUSE_TIME_LIMIT
    probe_after_idle: float = PROBE_AFTER_IDLE


class _HostFailed(Exception):
    """This endpoint cannot take the mail now; ``reply`` says why. The next one may."""

    def __init__(self, reply: Reply, remote_mta: str) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.remote_mta = remote_mta


class RemoteAgent:
    """:class:`~postoffice.delivery.agent.DeliveryAgent` for REMOTE recipients."""

    def __init__(
        self,
        settings: RemoteSettings,
        resolver: MxResolver,
        spool: MessageStore,
        security: TransportSecurity | None = None,
        *,
        tls_reports: TlsReportStore | None = None,
        blocking: Blocking = asyncio.to_thread,
    ) -> None:
        """``security``: MTA-STS and DANE (delivery/tls_policy.py); ``tls_reports``: where each
        MX session's TLS result is counted (RFC 8460); ``blocking``: where the spool is read
        (the server passes the spool's IoPool)."""
        self.settings = settings
        self._blocking = blocking
        self._tls_reports = tls_reports
        self._resolver = resolver
        self._spool = spool
        # MTA-STS and DANE (delivery/tls_policy.py); None: opportunistic TLS only.
        self.security = security
        self._pool = SessionCache(settings.idle_timeout, settings.reuse_time_limit)
        # Opportunistic and "require": encrypted, certificate not checked (a certificate
        # cannot be checked against an MX name that unsigned DNS gave us; Postfix "may" and
        # "encrypt" do the same). "verify" and the relay: checked against the host name.
        # The unverified context loads no trust store (it checks nothing against one), and the
        # verified one is made at its first use: the system's CA certificates cost about 1-2 MB
        # in every server process (each worker of several), and many never deliver remotely.
        self._unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._unverified.check_hostname = False
        self._unverified.verify_mode = ssl.CERT_NONE
        self._verified_context: ssl.SSLContext | None = None
        self.connections_opened = 0  # for tests and the log: how often the cache missed

    async def close(self) -> None:
        """Say QUIT on every cached connection (at shutdown)."""
        await self._pool.close_all()

    def idle_connections(self) -> int:
        return self._pool.idle_count()

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[Recipient], *, recovering: bool = False
    ) -> list[DeliveryResult]:
        # One transaction per destination domain; the scheduler already groups by domain, so
        # normally there is exactly one group. (A remote server cannot be asked whether an
        # earlier attempt got through, so ``recovering`` changes nothing here.)
        groups: dict[str, list[int]] = {}
        for position, recipient in enumerate(recipients):
            groups.setdefault(self.destination(recipient), []).append(position)
        results: list[DeliveryResult | None] = [None] * len(recipients)
        for destination, positions in groups.items():
            group = [recipients[position] for position in positions]
            for position, result in zip(
                positions, await self._deliver_to(message, destination, group), strict=True
            ):
                results[position] = result
        return [result for result in results if result is not None]

    def destination(self, recipient: Recipient) -> str:
        """Recipients with one destination share a transaction (and a connection cache)."""
        if self.settings.relay is not None:
            return "relay"
        return recipient.address.rpartition("@")[2].lower()

    # --- one destination ----------------------------------------------------------------------

    async def _deliver_to(
        self, message: QueuedMessage, destination: str, recipients: Sequence[Recipient]
    ) -> list[DeliveryResult]:
        # A REQUIRETLS message (RFC 8689) goes only over sessions opened for it: verified TLS.
        key = destination + rtls.CACHE_SUFFIX if message.envelope.requiretls else destination
        session = self._pool.take(key)
        if session is not None:
            if await self._still_usable(session):
                outcome = await self._attempt(session, message, key, recipients)
                if not isinstance(outcome, _HostFailed):
                    return outcome
            else:
                self._pool.close(session)
        try:
            endpoints = await self._endpoints(destination)
        except RouteError as exc:
            log.info(
                "queue_id=%s destination=%s status=no-route reply=%r", message.queue_id, destination, str(exc)
            )
            return all_failed(recipients, exc.reply, None)
        policy = await self._message_policy(message, destination)
        if policy is None:  # REQUIRETLS, and the relay is configured without TLS
            return all_failed(
                recipients, replies.requiretls_unmet(destination, "the relay is used without TLS"), None
            )
        last = _HostFailed(replies.cannot_connect(destination, "no mail server tried"), destination)
        security = await self._security_for(message, destination)
        for endpoint in endpoints:
            if self.settings.relay is None and endpoint.host == self.settings.hostname.lower():
                return all_failed(recipients, replies.loops_back(destination), None)
            try:
                session = await self._open_secured(endpoint, destination, security, policy)
            except _HostFailed as failure:
                if message.envelope.requiretls and rtls.is_tls_failure(failure.reply):
                    failure = _HostFailed(
                        replies.requiretls_unmet(str(endpoint), failure.reply.text), failure.remote_mta
                    )
                log.info(
                    "queue_id=%s relay=%s status=next-host reply=%r",
                    message.queue_id,
                    endpoint,
                    str(failure.reply),
                )
                last = failure
                continue
            outcome = await self._attempt(session, message, key, recipients)
            if not isinstance(outcome, _HostFailed):
                return outcome
            last = outcome
        return all_failed(recipients, last.reply, last.remote_mta)

    async def _attempt(
        self, session: Session, message: QueuedMessage, destination: str, recipients: Sequence[Recipient]
    ) -> list[DeliveryResult] | _HostFailed:
        """One transaction; a _HostFailed when this server turned it away and the next may not."""
        try:
            if message.envelope.requiretls and not session.offers("REQUIRETLS"):  # RFC 8689 §4.2.1
                raise _HostFailed(replies.requiretls_not_offered(str(session.endpoint)), session.remote_mta)
            results, reusable = await self._transaction(session, message, recipients)
        except _HostFailed as failure:
            log.info(
                "queue_id=%s relay=%s status=next-host reply=%r",
                message.queue_id,
                session.endpoint,
                str(failure.reply),
            )
            self._pool.close(session)
            return failure
        if reusable:
            self._pool.put(destination, session)
        else:
            self._pool.close(session)
        return results

    async def _endpoints(self, destination: str) -> list[Endpoint]:
        relay = self.settings.relay
        if relay is not None:
            return await self._resolver.host_endpoints(relay[0], relay[1])
        return await self._resolver.endpoints(destination, self.settings.mx_port)

    def _tls_policy(self, destination: str) -> str:
        if self.settings.relay is not None:
            return {"none": "none", "starttls": "verify", "tls": "implicit"}[self.settings.relay_tls]
        return self.settings.tls_policy.get(destination, "may")

    async def _message_policy(self, message: QueuedMessage, destination: str) -> str | None:
        """The destination's TLS policy as this message changes it (RFC 8689): REQUIRETLS makes
        it "verify" (None: it cannot be met), ``TLS-Required: No`` relaxes a required one."""
        policy = self._tls_policy(destination)
        if message.envelope.requiretls:
            return rtls.required_policy(policy, relay=self.settings.relay is not None)
        strict = policy in rtls.STRICT and self.settings.relay is None
        if strict and await rtls.tls_optional(self._spool, message.queue_id):
            log.info("queue_id=%s destination=%s tls-required=no policy=may", message.queue_id, destination)
            return "may"
        return policy

    async def _still_usable(self, session: Session) -> bool:
        if session.idle_for() < self.settings.probe_after_idle and session.client.is_connected:
            return True  # used a moment ago: MAIL finds out (sessions.PROBE_AFTER_IDLE)
        return await session.client.reset(timeout=RSET_TIMEOUT)

    # --- opening a session --------------------------------------------------------------------

    async def _security_for(self, message: QueuedMessage, destination: str) -> DomainSecurity | None:
        """The destination's MTA-STS and DANE requirements; None for the relay, a domain with a
        configured TLS policy (the operator's choice stands), with neither turned on, or for a
        message whose sender asked for none (``TLS-Required: No``, RFC 8689 §5)."""
        if (
            self.security is None
            or self.settings.relay is not None
            or destination in self.settings.tls_policy
        ):
            return None
        security = await self.security.for_domain(destination)
        optional = security is not None and not message.envelope.requiretls
        if optional and await rtls.tls_optional(self._spool, message.queue_id):
            log.info("queue_id=%s destination=%s tls-required=no policy=may", message.queue_id, destination)
            return None
        return security

    async def _open_secured(
        self, endpoint: Endpoint, destination: str, security: DomainSecurity | None, policy: str
    ) -> Session:
        """:meth:`_open` with the message's ``policy``, or under the host's requirement
        (delivery/tls_policy.py) when there is one; REQUIRETLS's "verify" is never weakened.
        The session's TLS is counted for the TLS report under the requirement's policy; a
        DANE session only once its certificate has been checked."""
        report = None if self.settings.relay else destination
        if security is None:
            return await self._open(endpoint, policy, report=report)
        requirement = await security.for_host(endpoint)
        if requirement.refusal is not None:
            raise _HostFailed(requirement.refusal, endpoint.host)
        tls = "verify" if policy == "verify" and requirement.tls == "may" else requirement.tls
        if requirement.reported:
            report = None
        dane = requirement.dane is not None
        try:
            session = await self._open(
                endpoint, tls, report=report, tls_policy=requirement.report, count_success=not dane
            )
        except _HostFailed as failure:
            raise _HostFailed(security.failed(endpoint, requirement, failure.reply), endpoint.host) from None
        problem = await security.check(endpoint, requirement, session.client)
        if problem is not None:
            self._pool.close(session)
            raise _HostFailed(problem, endpoint.host)
        if dane:
            await note_session(
                self._tls_reports, report, endpoint, session.local, session.client, None, requirement.report
            )
        return session

    async def _open(
        self,
        endpoint: Endpoint,
        policy: str,
        *,
        allow_tls: bool = True,
        report: str | None = None,
        tls_policy: TlsPolicy = NO_POLICY,
        count_success: bool = True,
    ) -> Session:
        """Connect, read the greeting, EHLO, STARTTLS and AUTH as configured; the TLS result
        is counted for ``report``, the policy domain (RFC 8460), under ``tls_policy`` when TLS
        was tried (a success only with ``count_success``)."""
        settings = self.settings
        sock = await self._connect_socket(endpoint)
        local = local_address(sock)
        mode, context = self._tls(policy if allow_tls else "none")
        # The name the certificate must carry: the MX (or relay) host name; for an address
        # literal, its IP address (matched against the certificate's IP entries).
        host = endpoint.host
        server_name = address_literal(host) if host.startswith("[") else host
        credentials = None
        if settings.relay is not None and settings.relay_user is not None:
            credentials = (settings.relay_user, settings.relay_password or "")
        client = SmtpClient(
            host,
            endpoint.port,
            tls=mode,
            ssl_context=context,
            server_name=server_name,
            ehlo_name=settings.hostname,
            credentials=credentials,
            timeout=settings.command_timeout,
            connect_timeout=settings.connect_timeout,
            data_timeout=settings.data_timeout,
        )
        self.connections_opened += 1
        where = str(endpoint)
        try:
            # From here the event loop owns the socket: it closes it on every failure.
            await client.connect(sock)
        except SmtpClientError as exc:
            if isinstance(exc, SmtpTlsError | SmtpConnectError) and client.greeting is not None and allow_tls:
                await note_session(self._tls_reports, report, endpoint, local, client, str(exc), tls_policy)
            if policy == "may" and starttls_broke(client, exc):
                # Opportunistic TLS failed: the connection is unusable, so try again in
                # plaintext, as Postfix does at security level "may".
                log.info("relay=%s status=tls-failed reason=%r fallback=plaintext", where, str(exc))
                return await self._open(endpoint, policy, allow_tls=False)
            raise _HostFailed(open_failure(client, where, exc), host) from None
        if allow_tls and policy != "none" and count_success:
            await note_session(self._tls_reports, report, endpoint, local, client, None, tls_policy)
        return Session(client, endpoint, time.monotonic(), local=local)

    def _tls(self, policy: str) -> tuple[TlsMode, ssl.SSLContext]:
        """The client's TLS mode and context for a policy (``none``/``may``/``require``/``verify``
        for an MX, ``implicit`` too for the relay)."""
        modes = {
            "none": TlsMode.PLAIN,
            "may": TlsMode.STARTTLS_IF_OFFERED,
            "require": TlsMode.STARTTLS,
            "verify": TlsMode.STARTTLS,
            "implicit": TlsMode.IMPLICIT,
        }
        if policy not in ("verify", "implicit"):
            return modes[policy], self._unverified
        if self._verified_context is None:
            ca_file = self.settings.ca_file
            self._verified_context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        return modes[policy], self._verified_context

    async def _connect_socket(self, endpoint: Endpoint) -> socket.socket:
        """A TCP connection to exactly this address (no resolution by the OS behind our back)."""
        family = socket.AF_INET6 if ":" in endpoint.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                await loop.sock_connect(sock, (endpoint.address, endpoint.port))
        except TimeoutError:
            sock.close()
            raise _HostFailed(replies.timed_out(str(endpoint), "connecting"), endpoint.host) from None
        except OSError as exc:
            sock.close()
            raise _HostFailed(replies.cannot_connect(str(endpoint), reason_of(exc)), endpoint.host) from None
        return sock

    # --- the transaction ----------------------------------------------------------------------

    async def _transaction(
        self, session: Session, message: QueuedMessage, recipients: Sequence[Recipient]
    ) -> tuple[list[DeliveryResult], bool]:
        """MAIL, RCPT each, DATA; results per recipient and whether the connection is reusable.

        Raises _HostFailed for a 4xx (or a lost connection) in reply to MAIL: RFC 5321 §5.1
        lets the client try the next MX then.
        """
        client = session.client
        remote = session.remote_mta
        where = str(session.endpoint)
        mail = self._mail_or_failures(session, message, recipients)
        if not isinstance(mail, bytes):
            return mail, True
        results: list[DeliveryResult | None] = [None] * len(recipients)
        sendable, lines = self._rcpt_commands(session, recipients, results)
        if not sendable:
            return unanswered_failed(results, recipients, replies.LOCAL_ERROR, None), True

        transaction = Transaction(mail, lines)
        content = SpoolContent(self._spool, message.queue_id, self._blocking)
        broken: Reply | None = None
        try:
            await client.transact(transaction, content)
        except SpoolError as exc:
            log.error("queue_id=%s status=spool-error error=%r", message.queue_id, str(exc))
            client.close()
            return unanswered_failed(results, recipients, replies.LOCAL_ERROR, None), False
        except SmtpClientError as exc:
            broken = broken_off(where, client.activity, exc)
        finally:
            await content.close()

        mail_reply = transaction.mail_reply
        if mail_reply is None:  # nothing agreed yet: the next MX may do better (§5.1)
            raise _HostFailed(broken or replies.lost_connection(where, client.activity), remote)
        if mail_reply.transient:
            raise _HostFailed(printable_reply(mail_reply), remote)
        sent = [recipients[position] for position in sendable]
        if mail_reply.positive:
            judged = judge(transaction, sent, remote, where, session.offers("DSN"))
        else:  # the sender refused for good: every recipient fails with that reply
            judged = list(all_failed(sent, printable_reply(mail_reply), remote))
        for position, result in zip(sendable, judged, strict=True):
            results[position] = result
        if broken is not None:
            client.close()
            return unanswered_failed(results, recipients, broken, remote), False
        if transaction.final_reply is None:  # refused before the content: RSET (§4.1.1.5)
            reusable = await client.reset()
        else:
            reusable = client.is_connected
        return unanswered_failed(results, recipients, replies.LOCAL_ERROR, remote), reusable

    def _mail_or_failures(
        self, session: Session, message: QueuedMessage, recipients: Sequence[Recipient]
    ) -> bytes | list[DeliveryResult]:
        """The MAIL command, or every recipient's failure when the message cannot be offered."""
        where, remote = str(session.endpoint), session.remote_mta
        try:
            return self._mail_command(session, message)
        except SmtpUnsupportedError:
            return all_failed(recipients, replies.smtputf8_not_offered(where), remote)
        except SmtpMessageTooBigError as exc:  # RFC 1870 §6.2: not even offered to the server
            return all_failed(recipients, replies.too_big_for_peer(where, exc.limit), remote)
        except LocalProtocolError as exc:
            sender = message.envelope.mail_from
            return all_failed(recipients, replies.unsendable_address(sender, str(exc), sender=True), None)

    def _rcpt_commands(
        self, session: Session, recipients: Sequence[Recipient], results: list[DeliveryResult | None]
    ) -> tuple[list[int], list[bytes]]:
        """RCPT lines, and the positions of their recipients; a recipient whose RCPT cannot be
        built (LocalProtocolError) gets its PermFail in ``results`` instead and is never sent."""
        sendable: list[int] = []
        lines: list[bytes] = []
        for position, recipient in enumerate(recipients):
            try:
                lines.append(core.rcpt(recipient.address, self._rcpt_parameters(session, recipient)))
            except LocalProtocolError as exc:  # never sent: the others still go
                failure = replies.unsendable_address(recipient.address, str(exc))
                results[position] = PermFail(recipient, failure, None)
                continue
            sendable.append(position)
        return sendable, lines

    def _mail_command(self, session: Session, message: QueuedMessage) -> bytes:
        """MAIL FROM with the parameters this server takes; raises when it cannot take the
        message (SmtpUnsupportedError, SmtpMessageTooBigError) or the line cannot be built."""
        envelope = message.envelope
        params = session.client.mail_parameters(
            message.size,
            eight_bit=envelope.body == "8BITMIME",
            smtputf8=envelope.smtputf8,
            smtputf8_required=envelope.smtputf8,  # RFC 6531 §3.2: never downgraded here
        )
        if envelope.requiretls:
            params["REQUIRETLS"] = None  # RFC 8689 §4.2.1: passed on to the next hop
        if session.offers("DSN"):
            if envelope.ret:
                params["RET"] = envelope.ret  # RFC 3461 §4.3
            if envelope.envid:
                params["ENVID"] = encode_xtext(envelope.envid)  # RFC 3461 §4.4
        return core.mail(envelope.mail_from, params)

    def _rcpt_parameters(self, session: Session, recipient: Recipient) -> dict[str, str | None]:
        parameters: dict[str, str | None] = {}
        if not session.offers("DSN"):
            return parameters
        if recipient.notify:
            parameters["NOTIFY"] = ",".join(recipient.notify)  # RFC 3461 §4.1
        if recipient.orcpt:
            address_type, _, address = recipient.orcpt.partition(";")
            parameters["ORCPT"] = f"{address_type.strip()};{encode_xtext(address.strip())}"  # §4.2
        return parameters
