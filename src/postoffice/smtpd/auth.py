"""AUTH (RFC 4954): the SASL exchange of one session, and what checks the password.

Untrusted input seen here: the AUTH command's mechanism and initial response and every line
the client sends after a 334, handed to :mod:`postoffice.smtp.sasl` (which decodes them) and,
as :class:`~postoffice.smtp.sasl.Credentials`, to the :class:`Authenticator`. Nothing here logs
them; the conversation logs AUTH lines redacted.

The password check runs in a worker thread (argon2 is slow on purpose), so a successful
exchange is the one AUTH step that suspends; the conversation hands it to the transport.
"""

from __future__ import annotations

from typing import Protocol

from postoffice.smtp import events as ev
from postoffice.smtp import replies, sasl
from postoffice.smtp.replies import Reply
from postoffice.smtpd.context import Context


class LoginOutcome(Protocol):
    @property
    def reply(self) -> Reply: ...  # 235, 535, 454 or a 421 that ends the session

    @property
    def user(self) -> str | None: ...  # who logged in, on success


class Authenticator(Protocol):
    """Checks credentials (:class:`postoffice.net.login.Authenticator`)."""

    def refusal(self, session_id: str, client: str) -> Reply | None:
        """A 421 before any exchange when ``client`` is locked out; None to go on."""
        ...

    async def login(
        self, credentials: sasl.Credentials, *, mechanism: str, session_id: str, client: str
    ) -> LoginOutcome: ...


class AuthExchange:
    """The AUTH steps of one session: start an exchange, take responses, check the result."""

    __slots__ = ("_authenticator", "_ctx", "_exchange")

    def __init__(self, authenticator: Authenticator | None, ctx: Context) -> None:
        self._authenticator = authenticator
        self._ctx = ctx
        self._exchange: sasl.Exchange | None = None

    @property
    def offered(self) -> bool:
        return self._authenticator is not None

    async def start(self, event: ev.AuthRequested) -> Reply:
        """The answer to AUTH (after the auth stage's checks accepted it)."""
        exchange = sasl.start(event.command.mechanism)
        if exchange is None:
            return replies.AUTH_UNKNOWN_MECHANISM
        return await self._step(exchange, exchange.begin(event.command.initial_response))

    async def respond(self, event: ev.AuthResponse) -> Reply:
        """The answer to a line following our 334."""
        exchange = self._exchange
        if exchange is None:  # the core reads a response only after our 334
            return replies.BAD_SEQUENCE
        return await self._step(exchange, exchange.respond(event.data))

    async def _step(self, exchange: sasl.Exchange, step: sasl.Step) -> Reply:
        if isinstance(step, Reply):
            self._exchange = exchange if step.code == 334 else None
            return step
        self._exchange = None
        authenticator = self._authenticator
        assert authenticator is not None  # start() is only called when AUTH is offered
        client = self._ctx.client
        result = await authenticator.login(
            step, mechanism=exchange.mechanism, session_id=client.id, client=client.address
        )
        if result.user is not None and result.reply.code == 235:
            client.user = result.user
        return result.reply
