"""Drive the transaction layer (:mod:`postoffice.smtpd`) with bytes alone: no sockets.

:class:`SmtpdSession` plays the transport a real session would be (:mod:`postoffice.net.session`):
it feeds client bytes to a :class:`~postoffice.smtpd.Conversation`, does what each step asks
(awaits a :class:`~postoffice.smtpd.Wait`, "completes" a STARTTLS handshake at once, notes the
close) and keeps everything the server wrote. It runs on an event loop of its own, so handlers
that really wait (the password check's worker thread) work as in the server.

:class:`MemoryStore` is an in-memory spool: the real-socket suites cover the file spool; here
the conversation's use of the writer protocol is what is looked at.
"""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from postoffice.accounts import Accounts
from postoffice.config import Config
from postoffice.errors import SpoolError, StorageFullError
from postoffice.net.login import LoginResult
from postoffice.policy import Policy
from postoffice.smtp import replies
from postoffice.smtp.replies import Reply
from postoffice.smtp.sasl import Credentials
from postoffice.smtp.server import ServerSettings
from postoffice.smtpd import NEED_DATA, START_TLS, Close, Conversation, MessageResult, Services, Stages, Wait
from postoffice.smtpd.standard import standard_stages
from postoffice.spool.envelope import Envelope, QueuedMessage
from smtp_pair import HOST, Client, WireReply, parse_replies

CLIENT_ADDRESS = "192.0.2.7"


# --- an in-memory spool -------------------------------------------------------------------------


@dataclass
class Stored:
    queue_id: str
    envelope: Envelope
    content: bytes


@dataclass
class MemoryStore:
    """A :class:`~postoffice.storage.Receiver` keeping committed messages in a list.

    ``full``: new messages are refused as on a full disk. ``fail_writes_after``: a write
    beyond that many content octets fails as a full disk would. ``commit_waits``: the commit
    yields to the event loop once, as a real one waits for its fsync.
    """

    full: bool = False
    fail_writes_after: int | None = None
    commit_waits: bool = True
    messages: list[Stored] = field(default_factory=list)
    discarded: list[str] = field(default_factory=list)
    opened: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def put(self, envelope: Envelope) -> MemoryWriter:
        if self.full:
            raise StorageFullError("cannot create spool file: No space left on device")
        self.opened += 1
        return MemoryWriter(self, f"MEM{next(self._ids):05d}", envelope)

    @property
    def all_ended(self) -> bool:
        """Every message opened was committed or discarded: none is left half-written."""
        return self.opened == len(self.messages) + len(self.discarded)


class MemoryWriter:
    def __init__(self, store: MemoryStore, queue_id: str, envelope: Envelope) -> None:
        self._store = store
        self._queue_id = queue_id
        self._envelope = envelope
        self._fields: list[bytes] = []
        self._content = bytearray()
        self._state = "open"
        self.folder: str | None = None

    @property
    def queue_id(self) -> str:
        return self._queue_id

    def _check_open(self) -> None:
        if self._state != "open":
            raise SpoolError(f"queue_id={self._queue_id}: message is {self._state}")

    def write(self, data: bytes) -> None:
        self._check_open()
        limit = self._store.fail_writes_after
        if limit is not None and len(self._content) + len(data) > limit:
            raise StorageFullError("cannot write: No space left on device")
        self._content += data

    def prepend(self, data: bytes) -> None:
        self._check_open()
        self._fields.insert(0, data)

    def overwrite(self, offset: int, data: bytes) -> None:
        self._check_open()
        whole = bytearray(b"".join(self._fields) + self._content)
        whole[offset : offset + len(data)] = data
        self._fields, self._content = [], whole

    def file_into(self, folder: str) -> None:
        self._check_open()
        self.folder = folder

    def read_content(self) -> BinaryIO:
        self._check_open()
        return io.BytesIO(b"".join(self._fields) + self._content)

    async def commit(self) -> QueuedMessage:
        self._check_open()
        self._state = "committing"
        if self._store.commit_waits:
            await asyncio.sleep(0)
        content = b"".join(self._fields) + bytes(self._content)
        self._state = "committed"
        self._store.messages.append(Stored(self._queue_id, self._envelope, content))
        return QueuedMessage(self._queue_id, self._envelope, len(content))

    def discard(self) -> None:
        if self._state == "open":
            self._state = "discarded"
            self._store.discarded.append(self._queue_id)


# --- the transport's side -----------------------------------------------------------------------


class Observed:
    """A transcript observer that keeps the lines, as net.transcript would write them."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def client_said(self, session_id: str, peer: str, line: str) -> None:
        self.lines.append(f"C: {line}")

    def server_said(self, session_id: str, peer: str, reply: Reply) -> None:
        self.lines.append(f"S: {reply.code}")


def services(stages: Stages | None = None, store: MemoryStore | None = None, **options: object) -> Services:
    """Services for a conversation: the given stages (none by default) and an in-memory store."""
    results: list[MessageResult] = []
    return Services(
        stages=stages or Stages(),
        store=store or MemoryStore(),
        on_queued=results.append,
        spawn=asyncio.ensure_future,
        **options,  # type: ignore[arg-type]
    )


class SmtpdSession:
    """One conversation driven the way net.session drives it, with bytes alone."""

    def __init__(
        self,
        conversation_services: Services,
        settings: ServerSettings | None = None,
        *,
        address: str = CLIENT_ADDRESS,
        admitted: Reply | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.services = conversation_services
        self.conversation = Conversation(
            conversation_services, settings or ServerSettings(hostname=HOST), session_id="T1", address=address
        )
        self.transcript = bytearray()
        self.client = Client()
        self.waits: list[str] = []  # where the conversation asked to wait, in order
        self.tls_started = 0
        self.closed: Close | None = None
        self._own_loop = loop is None
        self.loop = loop or asyncio.new_event_loop()
        self.greeting = self._run(lambda: self.conversation.open(admitted or replies.greeting(HOST)))

    def close(self) -> None:
        """The connection is gone (as net.session's connection_lost says it)."""
        self.conversation.connection_lost()
        if self._own_loop:
            self.loop.close()

    def __enter__(self) -> SmtpdSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- feeding ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[WireReply]:
        """Client bytes (b"": end of file); the complete replies that came back."""
        conversation = self.conversation

        def step() -> object:
            conversation.receive_data(data)
            return conversation.process()

        return self._run(step)

    def command(self, line: str | bytes) -> WireReply:
        got = self.feed(Client.command(line))
        assert len(got) == 1, got
        return got[0]

    def pipeline(self, *lines: str | bytes) -> list[WireReply]:
        got = self.feed(b"".join(Client.command(line) for line in lines))
        assert len(got) == len(lines), got
        return got

    def message(self, content: bytes) -> WireReply:
        [reply] = self.feed(Client.data_content(content))
        return reply

    def transaction(self, sender: str, recipients: list[str], content: bytes) -> list[WireReply]:
        got = [self.command(f"MAIL FROM:<{sender}>")]
        got += [self.command(f"RCPT TO:<{rcpt}>") for rcpt in recipients]
        got.append(self.command("DATA"))
        got.append(self.message(content))
        return got

    def _run(self, first_step: Callable[[], object]) -> list[WireReply]:
        async def run() -> list[WireReply]:
            await self._follow(first_step())
            return self.client.receive_data(self._drain())

        return self.loop.run_until_complete(run())

    async def _follow(self, step: object) -> None:
        conversation = self.conversation
        while True:
            if isinstance(step, Wait):
                self.waits.append(step.where)
                await step.work
            elif step is START_TLS:
                self.tls_started += 1  # as if the handshake succeeded at once
            elif isinstance(step, Close):
                self.closed = step
                return
            else:
                assert step is NEED_DATA, step
                return
            step = conversation.process()

    def _drain(self) -> bytes:
        out = self.conversation.data_to_send()
        self.transcript += out
        return out

    @property
    def replies(self) -> list[WireReply]:
        return parse_replies(bytes(self.transcript))


# --- for the fuzzers --------------------------------------------------------------------------


class AcceptingAuthenticator:
    """Logs in ``user`` with password ``pw`` after one trip through the event loop (as the
    real check, in its worker thread); everything else fails. For fuzzing the AUTH steps."""

    def refusal(self, session_id: str, client: str) -> Reply | None:
        return None

    async def login(
        self, credentials: Credentials, *, mechanism: str, session_id: str, client: str
    ) -> LoginResult:
        await asyncio.sleep(0)
        if credentials.authcid == "user" and credentials.password == "pw":
            return LoginResult(replies.AUTH_SUCCESSFUL, user="user@x.example")
        return LoginResult(replies.AUTH_FAILED)


def fuzz_services(store: MemoryStore) -> Services:
    """The standard stages over a capture-mode policy (every recipient accepted, no file read),
    AUTH that accepts user/pw, and an in-memory store."""
    config = Config(hostname=HOST, data_dir=Path("/nonexistent"))
    policy = Policy(config, Accounts(Path("/nonexistent/accounts.json")))
    authenticator = AcceptingAuthenticator()
    stages = standard_stages(
        policy=policy, hostname=HOST, junk_commands=20, submission=False, authenticator=authenticator
    )
    return Services(
        stages=stages,
        store=store,
        on_queued=lambda result: None,
        login=authenticator,
        tls=True,
        clock=lambda: 1_700_000_000.0,  # the same Received: field however often it runs
    )
