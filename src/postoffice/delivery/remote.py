"""Remote delivery: hands a message to the next server over SMTP (RFC 5321), per recipient.

Untrusted input seen here: everything a remote server sends (greeting, EHLO keywords, reply
codes and texts) and DNS answers (:mod:`postoffice.delivery.dns`); recipient addresses and the
message content from our own clients. A remote reply only ever becomes a result (its code
decides delivered / retry / fail) and quoted, printable text in a log line or a DSN.

The client side of SMTP is aiosmtplib, chosen because it is maintained, typed, and does the
parts that are easy to get subtly wrong: the reply parser (multi-line replies, length limits),
STARTTLS (RFC 3207 §4.2: it discards plaintext buffered before the handshake, the client side
of CVE-2011-0411) and the AUTH mechanisms for a relay host. It stays behind the
:class:`~postoffice.delivery.agent.DeliveryAgent` protocol so that another client can replace
it. Two things it does not do are done here with its public ``SMTP.protocol`` object:

* the message content is streamed from the spool in blocks, dot-stuffed on the way
  (aiosmtplib's ``data()`` wants the whole message in memory, and rule 4 of the house is that
  no message is ever held whole in memory);
* MAIL and RCPT are sent as single commands and their replies read one by one. aiosmtplib
  reads one reply per read, so it cannot take the several replies of a PIPELINING batch
  (RFC 2920); each RCPT costs one round trip.

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
``smtp_connection_reuse_time_limit`` 300 s); a cached connection is checked with RSET first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

import aiosmtplib

from postoffice.delivery.agent import Delivered, DeliveryResult, PermFail, TempFail
from postoffice.delivery.dns import Endpoint, MxResolver, RouteError, address_literal
from postoffice.delivery.dot_stuffing import dot_stuff, encode_xtext, end_of_data
from postoffice.errors import SpoolError
from postoffice.smtp import replies
from postoffice.smtp.replies import Reply
from postoffice.spool.base import Spool
from postoffice.spool.envelope import QueuedMessage, Recipient

log = logging.getLogger("postoffice.delivery")

# Content is read from the spool and written to the socket in blocks of this size.
BLOCK_SIZE = 64 * 1024
# Writing pauses while more than this is waiting in the socket's buffer (flow control).
WRITE_HIGH_WATER = 256 * 1024
# RFC 5321 §4.5.3.2.6: the client waits 10 minutes for the reply to the end of data.
DATA_DONE_TIMEOUT = 600.0
# Postfix smtp_rset_timeout = 20s: the check that a cached connection still works.
RSET_TIMEOUT = 20.0
# Postfix smtp_connection_cache_time_limit = 2s: how long an idle connection is kept.
IDLE_TIMEOUT = 2.0
# Postfix smtp_connection_reuse_time_limit = 300s: a connection is not reused after this.
REUSE_TIME_LIMIT = 300.0
# QUIT is a courtesy; a server that does not answer within this is simply disconnected.
QUIT_TIMEOUT = 5.0

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")


@dataclass(frozen=True, slots=True)
class RemoteSettings:
    """What the remote agent needs from the configuration (built by the composition root)."""

    hostname: str  # our name in EHLO
    mx_port: int = 25
    relay: tuple[str, int] | None = None
    relay_tls: str = "starttls"  # none | starttls | tls
    relay_user: str | None = None
    relay_password: str | None = field(default=None, repr=False)
    tls_policy: Mapping[str, str] = field(default_factory=dict)  # domain -> none|may|require|verify
    ca_file: Path | None = None
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    data_timeout: float = DATA_DONE_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    reuse_time_limit: float = REUSE_TIME_LIMIT


class _HostFailed(Exception):
    """This endpoint cannot take the mail now; ``reply`` says why. The next one may."""

    def __init__(self, reply: Reply, remote_mta: str) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.remote_mta = remote_mta


@dataclass(slots=True)
class _Session:
    """An open, greeted (and maybe encrypted, authenticated) connection to one endpoint."""

    smtp: aiosmtplib.SMTP
    endpoint: Endpoint
    created: float
    tls: bool = False
    idle_timer: asyncio.TimerHandle | None = None

    @property
    def remote_mta(self) -> str:
        return self.endpoint.host

    def offers(self, keyword: str) -> bool:
        return self.smtp.supports_extension(keyword)


def remote_reply(response: aiosmtplib.SMTPResponse) -> Reply:
    """A server's reply as a :class:`Reply`, its RFC 3463 enhanced code split off the text."""
    lines = response.message.split("\n")
    match = _ENHANCED.match(lines[0])
    enhanced = None
    if match and match.group(1) == str(response.code)[:1]:
        enhanced = f"{match.group(1)}.{match.group(2)}.{match.group(3)}"
        prefix = re.compile(re.escape(enhanced) + r" ?")
        lines = [prefix.sub("", line, count=1) if line.startswith(enhanced) else line for line in lines]
    return replies.remote_reply(response.code, enhanced, "\n".join(lines))


def _is_positive(code: int) -> bool:
    return 200 <= code < 300


class _Pool:
    """Idle connections by destination, kept for ``idle`` seconds (Postfix's connection cache)."""

    def __init__(self, idle: float, reuse_time_limit: float) -> None:
        self._idle_time = idle
        self._reuse_time_limit = reuse_time_limit
        self._idle: dict[str, list[_Session]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def take(self, destination: str) -> _Session | None:
        sessions = self._idle.get(destination)
        while sessions:
            session = sessions.pop()
            if session.idle_timer is not None:
                session.idle_timer.cancel()
                session.idle_timer = None
            if not sessions:
                del self._idle[destination]
            if session.smtp.is_connected and time.monotonic() - session.created < self._reuse_time_limit:
                return session
            self.close(session)
            sessions = self._idle.get(destination)
        return None

    def put(self, destination: str, session: _Session) -> None:
        if not session.smtp.is_connected or time.monotonic() - session.created >= self._reuse_time_limit:
            self.close(session)
            return
        self._idle.setdefault(destination, []).append(session)
        session.idle_timer = asyncio.get_running_loop().call_later(
            self._idle_time, self._expire, destination, session
        )

    def _expire(self, destination: str, session: _Session) -> None:
        sessions = self._idle.get(destination, [])
        if session in sessions:
            sessions.remove(session)
            if not sessions:
                del self._idle[destination]
        session.idle_timer = None
        self.close(session)

    def close(self, session: _Session) -> None:
        """QUIT politely in the background (RFC 5321 §4.1.1.10), then drop the connection."""
        if not session.smtp.is_connected:
            session.smtp.close()
            return
        task = asyncio.create_task(_quit(session.smtp))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close_all(self) -> None:
        for destination in list(self._idle):
            for session in self._idle.pop(destination):
                if session.idle_timer is not None:
                    session.idle_timer.cancel()
                self.close(session)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def idle_count(self) -> int:
        return sum(len(sessions) for sessions in self._idle.values())


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
        await smtp.quit(timeout=QUIT_TIMEOUT)
    smtp.close()


class RemoteAgent:
    """:class:`~postoffice.delivery.agent.DeliveryAgent` for REMOTE recipients."""

    def __init__(self, settings: RemoteSettings, resolver: MxResolver, spool: Spool) -> None:
        self.settings = settings
        self._resolver = resolver
        self._spool = spool
        self._pool = _Pool(settings.idle_timeout, settings.reuse_time_limit)
        # Opportunistic and "require": encrypted, certificate not checked (a certificate
        # cannot be checked against an MX name that unsigned DNS gave us; Postfix "may" and
        # "encrypt" do the same). "verify" and the relay: checked against the host name.
        self._unverified = ssl.create_default_context()
        self._unverified.check_hostname = False
        self._unverified.verify_mode = ssl.CERT_NONE
        ca_file = str(settings.ca_file) if settings.ca_file is not None else None
        self._verified = ssl.create_default_context(cafile=ca_file)
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
        session = self._pool.take(destination)
        if session is not None:
            if await self._still_usable(session):
                outcome = await self._attempt(session, message, destination, recipients)
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
            return _all(recipients, exc.reply, None)
        last = _HostFailed(replies.cannot_connect(destination, "no mail server tried"), destination)
        for endpoint in endpoints:
            if self.settings.relay is None and endpoint.host == self.settings.hostname.lower():
                return _all(recipients, replies.loops_back(destination), None)
            try:
                session = await self._open(endpoint, self._tls_policy(destination))
            except _HostFailed as failure:
                log.info(
                    "queue_id=%s relay=%s status=next-host reply=%r",
                    message.queue_id,
                    endpoint,
                    str(failure.reply),
                )
                last = failure
                continue
            outcome = await self._attempt(session, message, destination, recipients)
            if not isinstance(outcome, _HostFailed):
                return outcome
            last = outcome
        return _all(recipients, last.reply, last.remote_mta)

    async def _attempt(
        self, session: _Session, message: QueuedMessage, destination: str, recipients: Sequence[Recipient]
    ) -> list[DeliveryResult] | _HostFailed:
        """One transaction; a _HostFailed when this server turned it away and the next may not."""
        try:
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

    async def _still_usable(self, session: _Session) -> bool:
        try:
            response = await session.smtp.execute_command(b"RSET", timeout=RSET_TIMEOUT)
        except (aiosmtplib.SMTPException, OSError):
            return False
        return _is_positive(response.code) and session.smtp.is_connected

    # --- opening a session --------------------------------------------------------------------

    async def _open(self, endpoint: Endpoint, policy: str, *, allow_tls: bool = True) -> _Session:
        """Connect, read the greeting, EHLO, STARTTLS and AUTH as configured."""
        settings = self.settings
        implicit = policy == "implicit"
        sock = await self._connect_socket(endpoint)
        smtp = aiosmtplib.SMTP(
            hostname=endpoint.host,
            sock=sock,
            local_hostname=settings.hostname,
            timeout=settings.command_timeout,
            use_tls=implicit,
            start_tls=False,
            tls_context=self._verified if implicit else None,
        )
        self.connections_opened += 1
        try:
            try:
                await smtp.connect(timeout=settings.connect_timeout)
            except aiosmtplib.SMTPConnectResponseError as exc:
                raise _HostFailed(
                    remote_reply(aiosmtplib.SMTPResponse(exc.code, exc.message)), endpoint.host
                ) from None
            except aiosmtplib.SMTPTimeoutError:
                raise _HostFailed(
                    replies.timed_out(str(endpoint), "waiting for the greeting"), endpoint.host
                ) from None
            except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
                raise _HostFailed(
                    replies.cannot_connect(str(endpoint), _reason(exc)), endpoint.host
                ) from None
            session = _Session(smtp, endpoint, time.monotonic(), tls=implicit)
            await self._hello(session)
            if not implicit and policy != "none" and allow_tls:
                if not await self._start_tls(session, policy):
                    # Opportunistic TLS failed in the handshake: the connection is unusable,
                    # so try again in plaintext, as Postfix does at security level "may".
                    smtp.close()
                    return await self._open(endpoint, policy, allow_tls=False)
            elif policy in ("require", "verify") and not session.tls:
                raise _HostFailed(replies.tls_not_offered(str(endpoint)), endpoint.host)
            if settings.relay is not None and settings.relay_user is not None:
                await self._authenticate(session)
        except BaseException:
            smtp.close()
            raise
        return session

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
            raise _HostFailed(replies.cannot_connect(str(endpoint), _reason(exc)), endpoint.host) from None
        return sock

    async def _hello(self, session: _Session) -> None:
        """EHLO, or HELO when the server refuses EHLO with 5xx (RFC 5321 §3.2)."""
        smtp = session.smtp
        where = str(session.endpoint)
        try:
            try:
                await smtp.ehlo()
            except aiosmtplib.SMTPHeloError as exc:
                if exc.code < 500 or not smtp.is_connected:
                    raise _HostFailed(
                        remote_reply(aiosmtplib.SMTPResponse(exc.code, exc.message)), session.remote_mta
                    ) from None
                await smtp.helo()
        except aiosmtplib.SMTPHeloError as exc:
            raise _HostFailed(
                remote_reply(aiosmtplib.SMTPResponse(exc.code, exc.message)), session.remote_mta
            ) from None
        except aiosmtplib.SMTPTimeoutError:
            raise _HostFailed(replies.timed_out(where, "sending EHLO"), session.remote_mta) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _HostFailed(
                replies.lost_connection(where, f"sending EHLO ({_reason(exc)})"), session.remote_mta
            ) from None

    async def _start_tls(self, session: _Session, policy: str) -> bool:
        """STARTTLS per policy; False when opportunistic TLS broke the connection."""
        smtp = session.smtp
        where = str(session.endpoint)
        if not session.offers("starttls"):
            if policy in ("require", "verify"):
                raise _HostFailed(replies.tls_not_offered(where), session.remote_mta)
            return True
        verify = policy == "verify"
        # The name the certificate must carry: the MX (or relay) host name; for an address
        # literal, its IP address (matched against the certificate's IP entries).
        host = session.endpoint.host
        server_name = address_literal(host) if host.startswith("[") else host
        try:
            await smtp.starttls(
                server_hostname=server_name if verify else None,
                tls_context=self._verified if verify else self._unverified,
            )
        except aiosmtplib.SMTPResponseException as exc:
            # The server refused STARTTLS: the connection is still plaintext and usable.
            if policy in ("require", "verify"):
                raise _HostFailed(
                    replies.tls_failed(where, f"STARTTLS refused: {exc.code} {exc.message}"),
                    session.remote_mta,
                ) from None
            return True
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            if policy in ("require", "verify"):
                raise _HostFailed(replies.tls_failed(where, _reason(exc)), session.remote_mta) from None
            log.info("relay=%s status=tls-failed reason=%r fallback=plaintext", where, _reason(exc))
            return False
        session.tls = True
        # RFC 3207 §4.2: forget what was learnt before TLS; EHLO again.
        await self._hello(session)
        return True

    async def _authenticate(self, session: _Session) -> None:
        settings = self.settings
        assert settings.relay_user is not None
        where = str(session.endpoint)
        if not session.offers("auth"):
            raise _HostFailed(
                replies.relay_auth_failed(where, "the relay does not offer AUTH"), session.remote_mta
            )
        smtp = session.smtp
        offered = set(smtp.supported_auth_methods)
        # One mechanism, one try: a 535 is an answer about the credentials, and asking again
        # with another mechanism only repeats it (aiosmtplib's login() would try them all).
        # PLAIN and LOGIN only inside TLS or on loopback, which the configuration enforces.
        mechanisms = {"plain": smtp.auth_plain, "login": smtp.auth_login, "cram-md5": smtp.auth_crammd5}
        chosen = next((name for name in mechanisms if name in offered), None)
        if chosen is None:
            raise _HostFailed(
                replies.relay_auth_failed(where, "no AUTH mechanism in common (PLAIN, LOGIN, CRAM-MD5)"),
                session.remote_mta,
            )
        try:
            await mechanisms[chosen](settings.relay_user, settings.relay_password or "")
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise _HostFailed(
                replies.relay_auth_failed(where, f"{exc.code} {exc.message}"), session.remote_mta
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _HostFailed(replies.relay_auth_failed(where, _reason(exc)), session.remote_mta) from None

    # --- the transaction ----------------------------------------------------------------------

    async def _transaction(
        self, session: _Session, message: QueuedMessage, recipients: Sequence[Recipient]
    ) -> tuple[list[DeliveryResult], bool]:
        """MAIL, RCPT each, DATA; results per recipient and whether the connection is reusable.

        Raises _HostFailed for a 4xx (or a lost connection) in reply to MAIL: RFC 5321 §5.1
        lets the client try the next MX then.
        """
        smtp = session.smtp
        envelope = message.envelope
        remote = session.remote_mta
        where = str(session.endpoint)

        if envelope.smtputf8 and not session.offers("smtputf8"):
            return _all(recipients, replies.smtputf8_not_offered(where), remote), True
        size_limit = _size_limit(session)
        if size_limit and message.size > size_limit:
            return _all(recipients, replies.too_big_for_peer(where, size_limit), remote), True

        try:
            response = await smtp.execute_command(
                b"MAIL", b"FROM:" + _path(envelope.mail_from), *self._mail_parameters(session, message)
            )
        except aiosmtplib.SMTPTimeoutError:
            raise _HostFailed(replies.timed_out(where, "sending MAIL FROM"), remote) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _HostFailed(
                replies.lost_connection(where, f"sending MAIL FROM ({_reason(exc)})"), remote
            ) from None
        reply = remote_reply(response)
        if not _is_positive(response.code):
            if response.code < 500:
                raise _HostFailed(reply, remote)
            return _all(recipients, reply, remote), await self._reset(session)

        results: list[DeliveryResult | None] = [None] * len(recipients)
        accepted: list[int] = []
        stage = "sending RCPT TO"
        try:
            for position, recipient in enumerate(recipients):
                response = await smtp.execute_command(
                    b"RCPT", b"TO:" + _path(recipient.address), *self._rcpt_parameters(session, recipient)
                )
                reply = remote_reply(response)
                if _is_positive(response.code):
                    accepted.append(position)
                elif response.code >= 500:
                    results[position] = PermFail(recipient, reply, remote)
                else:
                    results[position] = TempFail(recipient, reply, remote)
            if not accepted:
                return _finished(results, recipients, reply, remote), await self._reset(session)
            stage = "sending DATA"
            response = await smtp.execute_command(b"DATA")
            if response.code != 354:
                reply = remote_reply(response)
                kind = PermFail if response.code >= 500 else TempFail
                for position in accepted:
                    results[position] = kind(recipients[position], reply, remote)
                return _finished(results, recipients, reply, remote), await self._reset(session)
            stage = "sending the message"
            response = await self._send_content(session, message)
        except TimeoutError:  # a reply (aiosmtplib's SMTPTimeoutError) or the whole transfer
            failure = replies.timed_out(where, stage)
            return _finished(results, recipients, failure, remote), False
        except (aiosmtplib.SMTPException, OSError, SpoolError) as exc:
            if isinstance(exc, SpoolError):
                log.error("queue_id=%s status=spool-error error=%r", message.queue_id, str(exc))
                failure = replies.LOCAL_ERROR
                remote_name: str | None = None
            else:
                failure = replies.lost_connection(where, f"{stage} ({_reason(exc)})")
                remote_name = remote
            return _finished(results, recipients, failure, remote_name), False

        reply = remote_reply(response)
        for position in accepted:
            recipient = recipients[position]
            if _is_positive(response.code):
                results[position] = Delivered(
                    recipient,
                    detail=f"relayed to {where}: {reply}",
                    remote_mta=remote,
                    reply=reply,
                    dsn_passed_on=session.offers("dsn"),
                )
            elif response.code >= 500:
                results[position] = PermFail(recipient, reply, remote)
            else:
                results[position] = TempFail(recipient, reply, remote)
        return _finished(results, recipients, reply, remote), smtp.is_connected

    def _mail_parameters(self, session: _Session, message: QueuedMessage) -> list[bytes]:
        envelope = message.envelope
        parameters: list[str] = []
        if session.offers("size"):
            parameters.append(f"SIZE={message.size}")  # RFC 1870 §6.1
        if envelope.body == "8BITMIME" and session.offers("8bitmime"):
            parameters.append("BODY=8BITMIME")  # RFC 6152 §3
        # Without 8BITMIME the message goes as it is, as most MTAs send it: converting MIME
        # parts to 7 bits is not done here.
        if envelope.smtputf8:
            parameters.append("SMTPUTF8")  # RFC 6531 §3.4; offered, checked by the caller
        if session.offers("dsn"):
            if envelope.ret:
                parameters.append(f"RET={envelope.ret}")  # RFC 3461 §4.3
            if envelope.envid:
                parameters.append(f"ENVID={encode_xtext(envelope.envid)}")  # RFC 3461 §4.4
        return [parameter.encode("ascii") for parameter in parameters]

    def _rcpt_parameters(self, session: _Session, recipient: Recipient) -> list[bytes]:
        if not session.offers("dsn"):
            return []
        parameters: list[str] = []
        if recipient.notify:
            parameters.append("NOTIFY=" + ",".join(recipient.notify))  # RFC 3461 §4.1
        if recipient.orcpt:
            address_type, _, address = recipient.orcpt.partition(";")
            parameters.append(f"ORCPT={address_type.strip()};{encode_xtext(address.strip())}")  # §4.2
        return [parameter.encode("ascii") for parameter in parameters]

    async def _send_content(self, session: _Session, message: QueuedMessage) -> aiosmtplib.SMTPResponse:
        """Stream the content, dot-stuffed, then ``.``; return the reply to the end of data."""
        protocol = session.smtp.protocol
        # uvloop's transports implement asyncio.WriteTransport without subclassing it, so this
        # asks for the connection, not the class.
        if protocol is None or session.smtp.transport is None or not session.smtp.is_connected:
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        transport = cast(asyncio.WriteTransport, session.smtp.transport)
        content = await asyncio.to_thread(self._spool.open_content, message.queue_id)
        try:
            async with asyncio.timeout(self.settings.data_timeout):
                at_line_start = True
                while True:
                    block = await asyncio.to_thread(content.read, BLOCK_SIZE)
                    if not block:
                        break
                    stuffed, at_line_start = dot_stuff(block, at_line_start)
                    protocol.write(stuffed)
                    await _drain(transport)
            protocol.write(end_of_data(at_line_start))
            return await protocol.read_response(timeout=self.settings.data_timeout)
        finally:
            await asyncio.to_thread(_close, content)

    async def _reset(self, session: _Session) -> bool:
        """RSET after a transaction that did not complete; whether the connection is reusable."""
        try:
            response = await session.smtp.execute_command(b"RSET", timeout=RSET_TIMEOUT)
        except (aiosmtplib.SMTPException, OSError):
            return False
        return _is_positive(response.code) and session.smtp.is_connected


async def _drain(transport: asyncio.WriteTransport) -> None:
    """Wait while the socket buffer is over the high-water mark.

    aiosmtplib's protocol keeps its flow-control waiter private, so this polls the transport's
    public buffer size; a slow reader makes the loop sleep, a fast one never enters it.
    """
    delay = 0.001
    while transport.get_write_buffer_size() > WRITE_HIGH_WATER:
        if transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def _close(content: BinaryIO) -> None:
    content.close()


def _path(address: str) -> bytes:
    """``<address>`` as it goes on the wire: UTF-8 only in an SMTPUTF8 transaction, which the
    envelope says (the grammar refused non-ASCII addresses without it)."""
    return f"<{address}>".encode()


def _size_limit(session: _Session) -> int:
    value = session.smtp.esmtp_extensions.get("size", "")
    return int(value) if value.isdigit() else 0


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text or type(exc).__name__


def _all(recipients: Sequence[Recipient], reply: Reply, remote_mta: str | None) -> list[DeliveryResult]:
    kind = PermFail if reply.permanent else TempFail
    return [kind(recipient, reply, remote_mta) for recipient in recipients]


def _finished(
    results: Sequence[DeliveryResult | None],
    recipients: Sequence[Recipient],
    failure: Reply,
    remote_mta: str | None,
) -> list[DeliveryResult]:
    """Every recipient without a result yet gets a temporary ``failure`` (the transaction
    broke off before their turn came, or before the server answered for them)."""
    return [
        result if result is not None else TempFail(recipient, failure, remote_mta)
        for recipient, result in zip(recipients, results, strict=True)
    ]
