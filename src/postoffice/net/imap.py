"""The IMAP listeners: one asyncio connection per client around the sans-I/O IMAP core.

Untrusted input seen here: every byte an IMAP client sends (framed by
:class:`~postoffice.imap.reader.CommandReader`, parsed by :mod:`postoffice.imap.tokens`),
user names and passwords (checked by the same :class:`~postoffice.net.login.Authenticator`,
throttle included, as SMTP AUTH). This module owns what needs the event loop: the socket, TLS
(implicit on ``imaps``, STARTTLS on ``imap``, RFC 8314 and RFC 9051 §6.2.1), timeouts, IDLE's
wait for changes, and the states before login. Logged-in commands run one at a time in a
worker thread (:func:`postoffice.imapd.dispatch.execute`): the store blocks.

Passwords are taken only inside TLS or from loopback (``LOGINDISABLED`` otherwise, RFC 9051
§6.2.3). In capture mode, from loopback, any password opens the mailbox of the address given
as the user name, so a test can read what the server captured for ``alice@localhost``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import itertools
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from postoffice.config import Config, Limits, Listener
from postoffice.errors import ConfigError, ListenError
from postoffice.imap import ImapParseError, responses
from postoffice.imap.grammar import mailbox_name
from postoffice.imap.reader import Command, CommandReader, Continue, Line, LiteralSink, Refused
from postoffice.imap.tokens import Parsed, parse_command
from postoffice.imapd.dispatch import execute
from postoffice.imapd.session import No, Session
from postoffice.net.imap_output import send_segments
from postoffice.net.listeners import Security, is_loopback
from postoffice.net.login import Authenticator
from postoffice.net.server import BoundAddress, BoundSocket
from postoffice.net.tls import SHUTDOWN_TIMEOUT, ServerTls
from postoffice.smtp import replies, sasl
from postoffice.storage import MailboxStore

log = logging.getLogger("postoffice.imap")

# RFC 9051 §5.4: an idle client may be logged out after at least 30 minutes; before login,
# a minute is plenty. (Module settings, so a test can shorten them.)
IDLE_TIMEOUT = 30 * 60.0
LOGIN_TIMEOUT = 60.0
# Up to this much is taken from the stream at once: more than asyncio's StreamReader ever
# buffers (it stops reading the socket past twice its 64 KiB limit), so what a client sent in
# plaintext before STARTTLS is all in our reader when the handshake starts, and dropped with
# it (CVE-2011-0411's family); bytes still in the kernel then fail as TLS records.
READ_SIZE = 1024 * 1024
# How often an IDLE-ing session looks at its folder: new mail is announced within a second.
IDLE_POLL = 0.25
_BASE = (
    "IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ENABLE ID IDLE MOVE NAMESPACE SPECIAL-USE UIDPLUS"
    " UNSELECT ESEARCH CHILDREN CONDSTORE QRESYNC LIST-EXTENDED LIST-STATUS BINARY"
)
_ids = itertools.count(1)


# Sessions one user may have open at once (Dovecot's mail_max_userip_connections is 10 per
# user and address; a phone, a laptop and a desktop with a few folders open each fit in 20).
SESSIONS_PER_USER = 20


@dataclass(frozen=True, slots=True)
class ImapServices:
    store: MailboxStore
    login: Authenticator
    tls: ServerTls | None
    capture_mode: bool
    max_literal: int
    limits: Limits = field(default_factory=Limits)


def imap_server(config: Config, security: Security, store: MailboxStore, *, serve: bool = True) -> ImapServer:
    """The IMAP listeners ``config`` asks for (none without ``serve``: with workers, only the
    first serves IMAP), with the SMTP listeners' TLS, password check, throttle and limits."""
    assert security.login is not None
    services = ImapServices(
        store=store,
        login=security.login,
        tls=security.tls,
        capture_mode=config.capture_mode,
        max_literal=config.limits.message_size,
        limits=config.limits,
    )
    return ImapServer(services, config.imap_listeners if serve else ())


class ImapServer:
    """Every IMAP listener of the process."""

    def __init__(self, services: ImapServices, listeners: Sequence[Listener]) -> None:
        self.services = services
        self.listeners = listeners
        self.bound: list[BoundAddress] = []
        self._servers: list[asyncio.Server] = []
        self._connections: dict[Connection, asyncio.Task[None]] = {}
        self._per_client: Counter[str] = Counter()
        self._per_user: Counter[str] = Counter()

    async def start(self, *, sockets: Sequence[BoundSocket] | None = None) -> list[BoundAddress]:
        """Listen on every IMAP listener; ListenError if one cannot. ``sockets``: bound already
        (as root, before the server became its user), listened on instead of binding."""
        pairs: Sequence[tuple[Listener, socket.socket | None]] = (
            [(listener, None) for listener in self.listeners] if sockets is None else sockets
        )
        for listener, sock in pairs:
            context = None
            if listener.kind == "imaps":
                if self.services.tls is None:
                    raise ConfigError("implicit TLS needs a certificate", key="listen.imaps")
                context = self.services.tls.context
            callback = functools.partial(self._connected, kind=listener.kind)
            timeout = SHUTDOWN_TIMEOUT if context else None
            try:
                if sock is not None:
                    server = await asyncio.start_server(
                        callback, sock=sock, ssl=context, ssl_shutdown_timeout=timeout
                    )
                else:
                    server = await asyncio.start_server(
                        callback,
                        listener.host,
                        listener.port,
                        ssl=context,
                        family=socket.AF_UNSPEC,
                        reuse_address=True,
                        ssl_shutdown_timeout=timeout,
                    )
            except OSError as exc:
                raise ListenError.from_os_error(listener.kind, listener.host, listener.port, exc) from None
            self._servers.append(server)
            for listening in server.sockets:
                host, port = listening.getsockname()[:2]
                self.bound.append(BoundAddress(listener.kind, host, port))
        return self.bound

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, kind: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        connection = Connection(
            self.services, reader, writer, secure=kind == "imaps", admit_user=self._admit_user
        )
        refusal = self._refusal(connection.peer)
        if refusal is not None:
            log.warning(
                "session=%s event=refused reason=%s client=%s", connection.id, refusal, connection.peer
            )
            writer.write(f"* BYE too many connections ({refusal})\r\n".encode())
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()
            return
        self._connections[connection] = task
        self._per_client[connection.peer] += 1
        try:
            await connection.run()
        except TimeoutError:
            log.info("session=%s event=timeout client=%s", connection.id, connection.peer)
            with contextlib.suppress(Exception):
                writer.write(b"* BYE autologout, idle too long\r\n")
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            log.info("session=%s event=disconnected reason=%s", connection.id, type(exc).__name__)
        except asyncio.CancelledError:
            # The server is stopping: the session ends here, as a finished task (asyncio's
            # stream callback would log a cancelled one with a traceback).
            log.info("session=%s event=dropped reason=shutdown", connection.id)
        except Exception as exc:  # the boundary: one line, never a traceback
            log.error("session=%s event=imap-failed reason=%r", connection.id, str(exc))
        finally:
            self._connections.pop(connection, None)
            self._forget(connection)
            with contextlib.suppress(Exception):
                writer.close()

    @property
    def open_sessions(self) -> int:
        return len(self._connections)

    def _refusal(self, peer: str) -> str | None:
        """Why a new connection from ``peer`` is refused (the SMTP listeners' limits, counted
        for IMAP on its own); None to serve it."""
        limits = self.services.limits
        if len(self._connections) >= limits.connections:
            return "connections"
        if self._per_client[peer] >= limits.connections_per_client and not limits.is_trusted(peer):
            return "per-client"
        return None

    def _admit_user(self, connection: Connection, user: str, most: int) -> bool:
        if self._per_user[user] >= most:
            return False
        self._per_user[user] += 1
        connection.counted_user = user
        return True

    def _forget(self, connection: Connection) -> None:
        for counter, key in ((self._per_client, connection.peer), (self._per_user, connection.counted_user)):
            if key is not None:
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        # RFC 9051 §7.1.5: BYE, then the connection closes; a session in a command ends at once.
        for connection in list(self._connections):
            connection.send(b"* BYE server shutting down\r\n")
            connection.writer.close()
        for task in list(self._connections.values()):
            task.cancel()
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=SHUTDOWN_TIMEOUT)


class Connection:
    """One client: the states before login here, the rest in :mod:`postoffice.imapd`."""

    def __init__(
        self,
        services: ImapServices,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        secure: bool,
        admit_user: Callable[[Connection, str, int], bool],
    ) -> None:
        self.services = services
        self.reader = reader
        self.writer = writer
        self.secure = secure
        self.id = f"I{next(_ids)}"
        peer = writer.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else "unknown"
        self.commands = CommandReader(max_literal=services.max_literal, spool=self._spool)
        self.session: Session | None = None
        self.done = False
        self._admit_user = admit_user
        self.counted_user: str | None = None  # counted against SESSIONS_PER_USER

    @property
    def may_login(self) -> bool:
        return login_allowed(secure=self.secure, peer=self.peer)

    def capabilities(self) -> str:
        words = [_BASE]
        if self.session is None:
            if not self.secure and self.services.tls is not None:
                words.append("STARTTLS")
            words.append("AUTH=PLAIN" if self.may_login else "LOGINDISABLED")
        return " ".join(words)

    def send(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.writer.write(chunk)

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.commands.close()  # a big APPEND cut off halfway: its tmp/ file goes

    def _spool(self, segments: tuple[bytes, ...], size: int) -> LiteralSink | None:
        """A big APPEND literal goes to a file in the folder's ``tmp/`` as it arrives, to be
        published by rename (Maildir); None (kept in memory) for anything else."""
        session = self.session
        if session is None:
            return None
        try:
            parsed = parse_command(Command((*segments, b"", b"")))
            if parsed.name != "APPEND" or len(parsed.args) < 2:
                return None
            folder = session.folder_of(mailbox_name(parsed.args[0]))
            return self.services.store.begin_append(session.user, folder)
        except (ImapParseError, ValueError):
            return None
        except OSError as exc:
            log.warning("session=%s event=imap-spool-failed reason=%r", self.id, exc.strerror or str(exc))
            return None

    async def _run(self) -> None:
        log.info("session=%s event=imap-connect client=%s tls=%s", self.id, self.peer, self.secure)
        self.send(responses.status(None, "OK", "postoffice IMAP ready", f"CAPABILITY {self.capabilities()}"))
        while not self.done:
            await self.writer.drain()
            event = self.commands.next_event()
            if event is None:
                await self._read()
                continue
            if isinstance(event, Continue):
                self.send(responses.continuation())
            elif isinstance(event, Refused):
                code = "TOOBIG" if event.too_big else None
                self.send(responses.status(event.tag, "BAD", event.reason, code))
            elif isinstance(event, Command):
                await self._command(event)
            elif isinstance(event, Line):
                self.send(responses.status(None, "BAD", "unexpected line"))
        await self.writer.drain()

    async def _read(self) -> None:
        timeout = IDLE_TIMEOUT if self.session is not None else LOGIN_TIMEOUT
        data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
        if not data:
            self.done = True
            return
        self.commands.receive_data(data)

    async def _line(self) -> bytes | None:
        """One raw line (AUTHENTICATE, IDLE); None when the client went away."""
        self.commands.raw = True
        try:
            while True:
                event = self.commands.next_event()
                if isinstance(event, Line):
                    return event.text
                if event is not None:
                    return b""
                await self._read()
                if self.done:
                    return None
        finally:
            self.commands.raw = False

    async def _command(self, command: Command) -> None:
        try:
            await self._parsed_command(command)
        finally:
            if command.spooled is not None:
                command.spooled.discard()  # not stored (NO, BAD): its tmp/ file goes

    async def _parsed_command(self, command: Command) -> None:
        try:
            parsed = parse_command(command)
        except ImapParseError as exc:
            self.send(responses.status(exc.tag, "BAD", str(exc)))
            return
        try:
            await self._dispatch(parsed)
        except ImapParseError as exc:
            self.send(responses.status(parsed.tag, "BAD", str(exc)))
        except No as exc:
            self.send(responses.status(parsed.tag, "NO", str(exc), exc.code))
        except OSError as exc:
            log.error("session=%s event=imap-storage-error reason=%r", self.id, exc.strerror or str(exc))
            self.send(responses.status(parsed.tag, "NO", "storage trouble, try again", "SERVERBUG"))
        except (ValueError, LookupError, UnicodeError) as exc:
            # A message or name no check foresaw: this command fails, the session goes on.
            log.error(
                "session=%s event=imap-command-failed command=%s reason=%r", self.id, parsed.name, str(exc)
            )
            self.send(responses.status(parsed.tag, "NO", "the server could not do that", "SERVERBUG"))

    async def _dispatch(self, parsed: Parsed) -> None:
        name, tag = parsed.name, parsed.tag
        simple = _ANY_STATE.get(name)
        if simple is not None:
            await simple(self, parsed)
            return
        if self.session is None:
            if name == "LOGIN":
                await self._login(parsed)
            elif name == "AUTHENTICATE":
                await self._authenticate(parsed)
            elif name == "STARTTLS":
                await self._starttls(parsed)
            else:
                raise ImapParseError("log in first")
            return
        if name == "IDLE":
            await self._idle(parsed)
            return
        session = self.session
        session.last_code, session.tag = None, tag
        untagged = await asyncio.to_thread(execute, session, parsed)
        await send_segments(self.writer, untagged)
        self.send(responses.status(tag, "OK", f"{name} completed", session.last_code))

    # --- any state ----------------------------------------------------------------------------

    async def _capability(self, parsed: Parsed) -> None:
        self.send(
            f"* CAPABILITY {self.capabilities()}\r\n".encode(), responses.status(parsed.tag, "OK", "done")
        )

    async def _noop(self, parsed: Parsed) -> None:
        if self.session is not None:
            self.send(*await asyncio.to_thread(self.session.refresh))
        self.send(responses.status(parsed.tag, "OK", f"{parsed.name} completed"))

    async def _logout(self, parsed: Parsed) -> None:
        self.send(b"* BYE logging out\r\n", responses.status(parsed.tag, "OK", "LOGOUT completed"))
        self.done = True

    async def _id(self, parsed: Parsed) -> None:
        self.send(b'* ID ("name" "postoffice")\r\n', responses.status(parsed.tag, "OK", "ID completed"))

    # --- before login -------------------------------------------------------------------------

    async def _starttls(self, parsed: Parsed) -> None:
        tls = self.services.tls
        if self.secure or tls is None:
            raise ImapParseError("TLS is already on, or not offered")
        self.send(responses.status(parsed.tag, "OK", "Begin TLS negotiation now"))
        await self.writer.drain()
        await self.writer.start_tls(tls.context)
        self.secure = True
        # RFC 9051 §6.2.1 / CVE-2011-0411: what came in plaintext before the handshake is dropped.
        self.commands = CommandReader(max_literal=self.services.max_literal, spool=self._spool)

    async def _login(self, parsed: Parsed) -> None:
        if len(parsed.args) != 2 or isinstance(parsed.args[0], list) or isinstance(parsed.args[1], list):
            raise ImapParseError("LOGIN takes a user name and a password")
        user, password = (_text(arg) for arg in parsed.args)
        await self._check(parsed.tag, sasl.Credentials(user, password), "LOGIN")

    async def _authenticate(self, parsed: Parsed) -> None:
        args = parsed.args
        if not args or not isinstance(args[0], str) or args[0].upper() != "PLAIN" or len(args) > 2:
            raise No("only AUTHENTICATE PLAIN is offered", "CANNOT")
        if len(args) == 2:
            response = _text(args[1]).encode("ascii", "replace")  # SASL-IR (RFC 4959)
        else:
            self.send(b"+ \r\n")
            await self.writer.drain()
            line = await self._line()
            if line is None:
                return
            response = line
        if response.strip() == b"*":
            raise ImapParseError("authentication cancelled")
        try:
            message = base64.b64decode(b"" if response.strip() == b"=" else response, validate=True)
        except (binascii.Error, ValueError):
            raise ImapParseError("not base64") from None
        credentials = sasl.parse_plain(message)
        if not isinstance(credentials, sasl.Credentials):
            raise ImapParseError("malformed PLAIN response")
        await self._check(parsed.tag, credentials, "PLAIN")

    async def _check(self, tag: str, credentials: sasl.Credentials, mechanism: str) -> None:
        if not self.may_login:
            raise No("log in inside TLS (STARTTLS, or port 993)", "PRIVACYREQUIRED")
        services = self.services
        refusal = services.login.refusal(self.id, self.peer)
        if refusal is not None:
            self.send(b"* BYE too many failed logins\r\n")
            self.done = True
            return
        if services.capture_mode and is_loopback(self.peer):
            user = services.store.mailbox_name(credentials.authcid)
            if user is None:
                raise No("no mailbox for that address", "AUTHENTICATIONFAILED")
            log.info("session=%s event=imap-login client=%s user=<%s> capture=yes", self.id, self.peer, user)
        else:
            result = await services.login.login(
                credentials, mechanism=mechanism, session_id=self.id, client=self.peer
            )
            if result.disconnect:
                self.send(b"* BYE too many failed logins\r\n")
                self.done = True
                return
            if result.reply == replies.AUTH_TEMPORARY_FAILURE:
                raise No("temporary failure, try again", "UNAVAILABLE")
            if result.user is None:
                raise No("wrong user name or password", "AUTHENTICATIONFAILED")
            user = result.user
        if not self._admit_user(self, user, SESSIONS_PER_USER):
            raise No(f"{SESSIONS_PER_USER} sessions of this user are open already", "LIMIT")
        session = Session(services.store, user)
        await asyncio.to_thread(session.prepare)
        self.session = session
        self.send(responses.status(tag, "OK", "logged in", f"CAPABILITY {self.capabilities()}"))

    # --- IDLE ---------------------------------------------------------------------------------

    async def _idle(self, parsed: Parsed) -> None:
        """RFC 2177: announce changes as they happen until the client says DONE."""
        session = self.session
        assert session is not None
        self.send(responses.continuation("idling"))
        self.commands.raw = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + IDLE_TIMEOUT
        try:
            while True:
                if loop.time() > deadline:
                    # RFC 9051 §5.4: clients re-issue IDLE well within 30 minutes.
                    raise TimeoutError
                self.send(*await asyncio.to_thread(session.refresh))
                await self.writer.drain()
                event = self.commands.next_event()
                if isinstance(event, Line):
                    if event.text.upper() != b"DONE":
                        raise ImapParseError("IDLE ends with DONE")
                    break
                try:
                    data = await asyncio.wait_for(self.reader.read(READ_SIZE), IDLE_POLL)
                except TimeoutError:
                    continue
                if not data:
                    self.done = True
                    return
                self.commands.receive_data(data)
        finally:
            self.commands.raw = False
        self.send(responses.status(parsed.tag, "OK", "IDLE terminated"))


def login_allowed(*, secure: bool, peer: str) -> bool:
    """Passwords only inside TLS, or from loopback where nobody can listen (RFC 9051 §6.2.3)."""
    return secure or is_loopback(peer)


def _text(token: object) -> str:
    if isinstance(token, bytes):
        return token.decode("utf-8", "replace")
    if isinstance(token, str):
        return token
    raise ImapParseError("a string expected")


_ANY_STATE = {
    "CAPABILITY": Connection._capability,
    "NOOP": Connection._noop,
    "LOGOUT": Connection._logout,
    "ID": Connection._id,
}
