"""What checks see: the client, the transaction being built, and the message once it comes.

Untrusted input seen here: everything the client said, already parsed by the SMTP core (HELO
name, MAIL and RCPT commands with their parameters) and the message content, which reaches
checks only through :class:`Message` (read back from the spool writer, never held whole here).

One :class:`Context` lives as long as the conversation; the transaction layer moves it from
stage to stage (``stage``, ``command``, ``line``) rather than making one per command, so a check
costs no allocation of ours. Checks are shared by every session of a listener: what one needs
to remember about a session or a transaction goes into ``client.notes`` or
``transaction.notes``, keyed by the check itself.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, TypeVar, cast

from postoffice.smtp import commands as c
from postoffice.smtp.server import ServerConnection
from postoffice.spool.envelope import Envelope, Recipient, Route
from postoffice.storage import MessageWriter

if TYPE_CHECKING:
    from postoffice.smtpd.stages import Check, Stage

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)

# Postfix header_size_limit: the most of a header section a check is given to read.
HEADER_SECTION_LIMIT = 102_400


@dataclass(frozen=True, slots=True)
class LocalPeer:
    """The process at the other end of the server's local socket, as the kernel says
    (SO_PEERCRED): a program of this machine, ``postoffice sendmail`` say. None where the
    kernel did not tell."""

    uid: int | None
    pid: int | None

    def __str__(self) -> str:
        unknown = "unknown"
        return (
            f"uid={unknown if self.uid is None else self.uid} pid={unknown if self.pid is None else self.pid}"
        )


class Client:
    """The client of one session, as far as it has told us (HELO name, TLS, who it logged in as)."""

    __slots__ = ("_core", "address", "id", "local", "notes", "queued", "user")

    def __init__(
        self, session_id: str, address: str, core: ServerConnection, local: LocalPeer | None = None
    ) -> None:
        self.id = session_id
        self.address = address  # its IP address (as a trusted PROXY header says, if one does)
        self._core = core
        self.user: str | None = None  # authenticated as (RFC 4954), until STARTTLS resets it
        # A program of this machine on the server's local socket, which only the server's own
        # user and root can open: trusted as local submission is (signed, never verified, may
        # relay and send as anyone), without AUTH.
        self.local = local
        self.queued = 0  # messages queued in this session so far
        self.notes: dict[object, Any] = {}

    @property
    def submits(self) -> bool:
        """Mail from this client is our users' own: it logged in, or it came through the local
        socket. Such mail is signed, never verified, and may be relayed."""
        return self.user is not None or self.local is not None

    @property
    def helo(self) -> str:
        return self._core.helo_name

    @property
    def esmtp(self) -> bool:
        return self._core.esmtp

    @property
    def tls(self) -> bool:
        return self._core.tls_active


class Transaction:
    """One mail transaction (RFC 5321 §3.3): its MAIL command and the recipients accepted."""

    __slots__ = ("_background", "_notes", "_seen", "deferred", "folder", "mail", "recipients")

    def __init__(self, mail: c.Mail | None) -> None:
        self.mail = mail
        self.recipients: list[Recipient] = []
        self._seen: set[tuple[str, Route]] | None = None
        self.deferred: tuple[Check, ...] = ()  # checks that asked to decide at the end of the message
        # Where local copies of the message are to be filed, when a check at the end of the
        # message chooses (DMARC quarantine: "Junk"); None is the inbox. It is part of the
        # transaction's result (MessageResult.folder) and of its log line.
        self.folder: str | None = None
        self._notes: dict[object, Any] | None = None
        self._background: list[Background[Any]] | None = None

    @property
    def notes(self) -> dict[object, Any]:
        """What checks keep about this transaction, keyed by the check (made when first asked)."""
        if self._notes is None:
            self._notes = {}
        return self._notes

    @property
    def mail_from(self) -> str:
        """The reverse-path as text, "" for the null sender <>."""
        return "" if self.mail is None else str(self.mail.path)

    def add_recipients(
        self,
        command: c.Rcpt,
        local: tuple[str, ...],
        remote: tuple[str, ...],
        forward: tuple[str, ...] = (),
    ) -> None:
        """The targets one RCPT resolved to; each mailbox gets one copy however often it is
        named (RFC 5321 §3.3: duplicates "SHOULD" be delivered once)."""
        original = str(command.path)
        seen = self._seen
        if seen is None:
            seen = self._seen = set()
        for route, addresses in ((Route.LOCAL, local), (Route.REMOTE, remote), (Route.FORWARD, forward)):
            for address in addresses:
                if (address, route) not in seen:
                    seen.add((address, route))
                    self.recipients.append(Recipient(address, original, route, command.notify, command.orcpt))

    def defer(self, check: Check) -> None:
        if all(check is not other for other in self.deferred):
            self.deferred = (*self.deferred, check)

    def keep(self, work: Background[Any]) -> None:
        """Work started for this transaction (Context.start), to be stopped with it."""
        if self._background is None:
            self._background = []
        self._background.append(work)

    def end(self) -> None:
        """The transaction is over: work started for it and not awaited is cancelled (a lookup
        for a message that never came), and a failure nobody awaited is taken, not logged."""
        for work in self._background or ():
            if not work.done():
                work.cancel()
            elif not work.cancelled():
                work.exception()
        self._background = None


class Message:
    """The message of the transaction, from the start of its content to its commit.

    At data-start only the envelope and ``add_header`` make sense; at data-end the content is
    complete and can be read (``header_section``, ``open``).
    """

    __slots__ = ("_writer", "envelope")

    def __init__(self, envelope: Envelope, writer: MessageWriter) -> None:
        self.envelope = envelope
        self._writer = writer

    @property
    def queue_id(self) -> str:
        return self._writer.queue_id

    def add_header(self, field: bytes) -> None:
        """Put a header field (whole lines, CRLF-terminated) at the top of the stored message.

        Fields added later go above those added earlier, as trace fields do (RFC 5322 §3.6.7).
        At the end of the message this costs no copy of the content (see MessageWriter.prepend).
        """
        if not field.endswith(b"\r\n") or b"\r\n\r\n" in field or field.startswith((b" ", b"\t")):
            raise ValueError(f"not a header field: {field[:40]!r}")
        self._writer.prepend(field)

    def overwrite(self, offset: int, data: bytes) -> None:
        """Replace octets of the stored message in place, ``offset`` from its start (as
        :meth:`open` reads it): renaming a header field to a name of the same length. Before
        any :meth:`add_header` at the end of the message."""
        self._writer.overwrite(offset, data)

    def open(self) -> BinaryIO:
        """The message as stored so far (fields added at data-start included), from its start."""
        return self._writer.read_content()

    def header_section(self) -> bytes:
        """The header section (RFC 5322 §2.1) of the stored message, without the empty line
        that ends it; at most HEADER_SECTION_LIMIT octets."""
        with self.open() as content:
            head = content.read(HEADER_SECTION_LIMIT)
        if head.startswith(b"\r\n"):
            return b""
        end = head.find(b"\r\n\r\n")
        return head if end < 0 else head[: end + 2]


class Background(Protocol[_T_co]):
    """Work running beside the conversation (an asyncio task, made by the transport's loop)."""

    def __await__(self) -> Generator[Any, None, _T_co]: ...

    def done(self) -> bool: ...

    def cancelled(self) -> bool: ...

    def cancel(self) -> bool: ...

    def exception(self) -> BaseException | None: ...


# Starts a coroutine beside the conversation: asyncio.ensure_future, given by the transport.
Spawn = Callable[[Coroutine[Any, Any, Any]], Background[Any]]


class Context:
    """Everything a check may look at, for the stage it runs in."""

    __slots__ = (
        "_forward",
        "_local",
        "_remote",
        "_spawn",
        "client",
        "command",
        "line",
        "message",
        "stage",
        "transaction",
    )

    def __init__(self, client: Client, stage: Stage, spawn: Spawn | None = None) -> None:
        self._spawn = spawn
        self.client = client
        self.stage = stage
        self.transaction = Transaction(None)
        self.command: c.Command | None = None  # HELO/EHLO, AUTH, MAIL or RCPT being decided
        self.line = ""  # the client's line as logged (AUTH secrets redacted)
        self.message: Message | None = None  # from data-start to the commit
        self._local: tuple[str, ...] = ()
        self._remote: tuple[str, ...] = ()
        self._forward: tuple[str, ...] = ()

    @property
    def mail(self) -> c.Mail:
        """The transaction's MAIL command (from the mail stage on)."""
        mail = self.transaction.mail
        if mail is None:
            raise LookupError("no MAIL command in this transaction")
        return mail

    @property
    def rcpt(self) -> c.Rcpt:
        """The RCPT command being decided (rcpt stage)."""
        command = self.command
        if not isinstance(command, c.Rcpt):
            raise LookupError("no RCPT command is being decided")
        return command

    def start(self, work: Coroutine[Any, Any, _T]) -> Background[_T]:
        """Run ``work`` beside the conversation and return a handle to await later: SPF's DNS
        lookups started at MAIL (the check then DEFERs) and awaited at data-end. Cancelled if
        the transaction ends first (RSET, a refusal, the connection lost)."""
        spawn = self._spawn
        if spawn is None:
            work.close()
            raise RuntimeError("no event loop to run background work on (Services.spawn)")
        handle = cast(Background[_T], spawn(work))
        self.transaction.keep(handle)
        return handle

    def route(
        self, *, local: tuple[str, ...] = (), remote: tuple[str, ...] = (), forward: tuple[str, ...] = ()
    ) -> None:
        """Rcpt stage: where the recipient's copies go (local mailboxes, remote addresses, and
        outside addresses an alias forwards to), once every check has accepted it."""
        self._local, self._remote, self._forward = local, remote, forward

    def take_routes(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        routes = self._local, self._remote, self._forward
        self._local = self._remote = self._forward = ()
        return routes
