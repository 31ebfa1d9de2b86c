"""One POP3 session over TCP: the transport under a :class:`~postoffice.pop3.server.Pop3Connection`.

Untrusted input seen here: every byte from the client's socket, handed unread to the sans-I/O
core (:mod:`postoffice.pop3.server`), which frames, parses and answers it. This module owns what
needs the event loop: the transport, flow control, the idle timeout, the TLS handshake after
STLS, and the work the core hands out (a password check, reading a message, the UPDATE state),
each in a task with reading paused meanwhile.

STLS (RFC 2595 §4): reading stops in the same callback that saw the command, and the core has
dropped whatever followed it; the next octet read comes out of the TLS layer.

The session boundary: protocol callbacks and tasks run under :meth:`Pop3Session._guard`;
whatever escapes is one log line (``event=internal-error``) and the end of that session alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import cast

from postoffice.errors import DatabaseError, MessageGone
from postoffice.net.listeners import Security, is_loopback
from postoffice.net.pop3_maildrop import Maildrop, MaildropLocks
from postoffice.net.tls import SHUTDOWN_TIMEOUT
from postoffice.pop3.events import NEED_DATA, Closed, Event, Login, Retrieve, StartTls, Update
from postoffice.pop3.server import Pop3Connection, Pop3Settings
from postoffice.smtp.sasl import Credentials
from postoffice.storage import MailboxStore

log = logging.getLogger("postoffice.pop3")

_session_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Pop3Services:
    """What a session needs from the rest of the server (built per listener by net.pop3_server)."""

    settings: Pop3Settings
    security: Security
    store: MailboxStore
    locks: MaildropLocks  # RFC 1939 §8's exclusive-access locks
    capture: bool  # capture mode: from loopback, any password opens any mailbox
    idle_timeout: float
    admit: Callable[[Pop3Session], bool]
    on_closed: Callable[[Pop3Session], None]


class Pop3Session(asyncio.Protocol):
    def __init__(self, services: Pop3Services) -> None:
        self.services = services
        self.id = f"P{next(_session_ids):06X}"
        self.peer = ""
        self.core: Pop3Connection | None = None
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._busy = False
        self._closing = False
        self._closed = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._timer: asyncio.TimerHandle | None = None
        self._last_activity = self._loop.time()
        self._maildrop: Maildrop | None = None
        self._task: asyncio.Task[None] | None = None  # kept: the loop holds tasks only weakly

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        with self._guard("connection_made"):
            self._transport = cast(asyncio.Transport, transport)
            peer = transport.get_extra_info("peername")
            self.peer = str(peer[0]) if peer else ""
            services = self.services
            log.info("session=%s event=connect client=%s", self.id, self.peer)
            if not services.admit(self):
                self._transport.write(b"-ERR [SYS/TEMP] too many connections, try again later\r\n")
                self._close_transport()
                return
            loopback = is_loopback(self.peer)
            self.core = Pop3Connection(replace(services.settings, login_in_clear=loopback))
            self._timer = self._loop.call_later(services.idle_timeout, self._on_timer)
            self._pump()

    def data_received(self, data: bytes) -> None:
        with self._guard("data_received"):
            if self.core is not None and not self._closing:
                self.core.receive_data(data)
                self._pump()

    def eof_received(self) -> bool:
        with self._guard("eof_received"):
            if self.core is not None:
                self.core.receive_data(b"")
                self._pump()
        return False

    def pause_writing(self) -> None:
        # The client is not reading: stop sending a message's bytes, and stop reading commands
        # whose answers would pile up unread (pipelining without reading).
        self._writable.clear()
        if not self._busy and self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._writable.set()
        if not self._busy and self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = self._closing = True
        self._writable.set()
        if self._timer is not None:
            self._timer.cancel()
        maildrop, self._maildrop = self._maildrop, None
        if maildrop is not None:
            maildrop.close()  # RFC 1939 §8: the lock goes with the session, UPDATE or not
        log.info("session=%s event=disconnect client=%s", self.id, self.peer)
        self.services.on_closed(self)

    # --- the session boundary -----------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self, where: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            self._fail(where, exc)

    def _fail(self, where: str, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        log.error(
            "session=%s event=internal-error client=%s where=%s error=%r", self.id, self.peer, where, error
        )
        self.abort()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.abort()
        self.connection_lost(None)

    # --- driving the core ---------------------------------------------------------------------

    def _pump(self) -> None:
        core = self.core
        if core is None or self._busy or self._closing:
            return
        handled = core.handled
        event = core.next_event()
        if core.handled != handled:
            self._last_activity = self._loop.time()
        self._flush()
        if event is NEED_DATA:
            return
        if isinstance(event, Closed):
            self._close_transport()
            return
        self._start(self._decide(event), type(event).__name__)

    def _start(self, work: Awaitable[None], where: str) -> None:
        self._busy = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

        async def guarded() -> None:
            with self._guard(where):
                await work
                if self._closing:
                    return
                self._busy = False
                if (
                    self._writable.is_set()
                    and self._transport is not None
                    and not self._transport.is_closing()
                ):
                    self._transport.resume_reading()
                self._pump()

        self._task = self._loop.create_task(guarded())

    async def _decide(self, event: Event) -> None:
        if isinstance(event, Login):
            await self._login(event)
        elif isinstance(event, StartTls):
            await self._upgrade()
        elif isinstance(event, Retrieve):
            await self._retrieve(event)
        elif isinstance(event, Update):
            await self._update(event)

    # --- AUTHORIZATION ------------------------------------------------------------------------

    async def _login(self, event: Login) -> None:
        core = self.core
        assert core is not None
        mailbox = await self._mailbox_of(event)
        if mailbox is None:
            return
        services = self.services
        try:
            drop = await asyncio.to_thread(Maildrop.open, services.store, mailbox, services.locks)
        except (OSError, ValueError, DatabaseError) as exc:
            log.error(
                "session=%s event=maildrop-error client=%s mailbox=<%s> reason=%s",
                self.id,
                self.peer,
                mailbox,
                exc,
            )
            core.login_failed("the maildrop cannot be opened now", code="SYS/TEMP")
            return
        if drop is None:
            log.info("session=%s event=maildrop-in-use client=%s mailbox=<%s>", self.id, self.peer, mailbox)
            core.login_failed("the maildrop is in use by another session", code="IN-USE")
            return
        if self._closing:
            drop.close()
            return
        self._maildrop = drop
        log.info(
            "session=%s event=maildrop client=%s mailbox=<%s> messages=%d",
            self.id,
            self.peer,
            mailbox,
            len(drop.entries),
        )
        core.logged_in(drop.entries)

    async def _mailbox_of(self, event: Login) -> str | None:
        """The mailbox ``event``'s credentials open, or None with the -ERR said."""
        core = self.core
        assert core is not None
        services = self.services
        store = services.store
        if services.capture and is_loopback(self.peer):
            # Capture mode on loopback (docs/pop3.md): any password opens any captured mailbox,
            # as the web UI is open there, so a test can read what it sent.
            mailbox = store.mailbox_name(event.user)
            if mailbox is None:
                core.login_failed("no such mailbox")
            return mailbox
        login = services.security.login
        if login is None:
            core.login_failed("no accounts to log in to", code="SYS/PERM")
            return None
        if login.refusal(self.id, self.peer) is not None:
            core.login_failed("too many failed logins; try again later", close=True)
            return None
        credentials = Credentials(event.user, event.password, event.authzid)
        result = await login.login(
            credentials, mechanism=event.mechanism, session_id=self.id, client=self.peer
        )
        if result.user is None:
            core.login_failed("authentication failed", close=result.disconnect)
            return None
        mailbox = store.mailbox_name(result.user)
        if mailbox is None:
            core.login_failed("the account has no mailbox", code="SYS/PERM")
        return mailbox

    async def _upgrade(self) -> None:
        core, transport, tls = self.core, self._transport, self.services.security.tls
        assert core is not None and transport is not None and tls is not None
        try:
            secure = await self._loop.start_tls(
                transport, self, tls.context, server_side=True, ssl_shutdown_timeout=SHUTDOWN_TIMEOUT
            )
        except Exception as exc:  # the handshake failed or timed out
            log.info(
                "session=%s event=tls-failed client=%s reason=%s", self.id, self.peer, type(exc).__name__
            )
            self.abort()
            return
        if secure is None or secure.is_closing() or self._closing:
            self.abort()
            return
        self._transport = secure
        log.info("session=%s event=tls client=%s", self.id, self.peer)
        core.tls_started()

    # --- TRANSACTION and UPDATE ---------------------------------------------------------------

    async def _retrieve(self, event: Retrieve) -> None:
        core, drop = self.core, self._maildrop
        assert core is not None and drop is not None
        try:
            pieces = await asyncio.to_thread(drop.read, event.number)
            first = await asyncio.to_thread(next, pieces, b"")
        except (MessageGone, OSError) as exc:
            log.info(
                "session=%s event=message-gone client=%s number=%d reason=%s",
                self.id,
                self.peer,
                event.number,
                exc,
            )
            core.message_unavailable(event)
            return
        core.message_begins(event)
        chunk = first
        try:
            while chunk:
                core.message_chunk(chunk)
                self._flush()
                await self._writable.wait()  # flow control: at most a chunk or two buffered
                if self._closing:
                    return
                chunk = await asyncio.to_thread(next, pieces, b"")
        except OSError as exc:
            # Half a message is on the wire: the only honest end is to drop the connection.
            log.warning(
                "session=%s event=read-failed client=%s number=%d reason=%s",
                self.id,
                self.peer,
                event.number,
                exc,
            )
            self.abort()
            return
        finally:
            await asyncio.to_thread(pieces.close)  # the file, now rather than at collection
        core.message_ends()
        if event.lines is None:
            await asyncio.to_thread(drop.seen, event.number)  # RETR: the message is read

    async def _update(self, event: Update) -> None:
        core, drop = self.core, self._maildrop
        assert core is not None and drop is not None
        removed = await asyncio.to_thread(drop.remove, event.deleted)
        log.info(
            "session=%s event=update client=%s mailbox=<%s> deleted=%d ok=%s",
            self.id,
            self.peer,
            drop.mailbox,
            len(event.deleted),
            removed,
        )
        core.updated(removed)

    # --- transport and time -------------------------------------------------------------------

    def _flush(self) -> None:
        core, transport = self.core, self._transport
        if core is None or transport is None:
            return
        data = core.data_to_send()
        if data and not transport.is_closing():
            transport.write(data)

    def _close_transport(self) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        self._closing = True
        transport.close()

    def _on_timer(self) -> None:
        with self._guard("timer"):
            if self._closing:
                return
            deadline = self._last_activity + self.services.idle_timeout
            if self._busy or self._loop.time() < deadline:
                self._timer = self._loop.call_at(max(deadline, self._loop.time() + 1.0), self._on_timer)
                return
            # RFC 1939 §3: an idle session may be closed "without sending any response";
            # we say why, and UPDATE is not entered (deletions are not applied).
            log.info("session=%s event=timeout client=%s", self.id, self.peer)
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(b"-ERR [SYS/TEMP] idle for too long, closing\r\n")
            self._close_transport()

    def close_with_goodbye(self) -> None:
        """Shutdown: say so and close, outside a command (deletions are not applied)."""
        if self._closing:
            return
        if not self._busy and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"-ERR [SYS/TEMP] server shutting down\r\n")
        self._close_transport()

    @property
    def busy(self) -> bool:
        return self._busy
