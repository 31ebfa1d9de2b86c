"""Mail transactions of the asyncio SMTP client: MAIL, RCPT and DATA, pipelined (RFC 2920) or
one by one, the dot-stuffed content, RSET, and what :meth:`SmtpClient.send` makes of the replies.

Part of :mod:`postoffice.client.connection`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field

from postoffice.client.session import ClientSession
from postoffice.client.transport import TranscriptLine
from postoffice.errors import (
    LocalProtocolError,
    SmtpClientError,
    SmtpConnectError,
    SmtpDataRefused,
    SmtpMessageTooBigError,
    SmtpRecipientsRefused,
    SmtpReplyError,
    SmtpSenderRefused,
    SmtpTimeoutError,
    SmtpUnsupportedError,
)
from postoffice.smtp import client as core
from postoffice.smtp.replies import Reply

# Reply codes a transaction acts on (RFC 5321 §4.2.2-3).
_CLOSING_CHANNEL = 421
_START_MAIL_INPUT = 354
# Octets handed to the transport per write while streaming the message; writing waits whenever
# the transport's buffer is full, so a large message never piles up in memory twice.
_CONTENT_CHUNK = 64 * 1024

# The message content: the whole of it, or its chunks (a file read in blocks, maybe off the loop).
Content = bytes | Iterable[bytes] | AsyncIterable[bytes]


@dataclass(frozen=True, slots=True)
class SendResult:
    """What happened to one message: the reply to each RCPT TO and the final reply."""

    accepted: dict[str, Reply]
    refused: dict[str, Reply]
    reply: Reply  # the reply to the end of the data: "250 ... queued as ..."


@dataclass(slots=True)
class Transaction:
    """One mail transaction: its command lines, and the server's replies as they arrive.

    :meth:`SmtpClient.transact` records the replies in order (MAIL, each RCPT, DATA, the end of
    the content), so after an exception it still says how far the transaction got. A reply
    that was never asked for stays None (no RCPT after a refused MAIL without PIPELINING).
    """

    mail: bytes  # the MAIL FROM line (core.mail)
    recipients: Sequence[bytes]  # one RCPT TO line each (core.rcpt)
    mail_reply: Reply | None = None
    rcpt_replies: list[Reply] = field(default_factory=list)
    data_reply: Reply | None = None
    final_reply: Reply | None = None  # the reply to the end of the content

    @property
    def accepted(self) -> list[int]:
        """Positions of the recipients whose RCPT was accepted."""
        return [position for position, reply in enumerate(self.rcpt_replies) if reply.positive]

    @property
    def ready_for_content(self) -> bool:
        """MAIL, at least one RCPT and DATA accepted: the server waits for the message."""
        mail, data = self.mail_reply, self.data_reply
        return (
            mail is not None
            and mail.positive
            and bool(self.accepted)
            and data is not None
            and data.code == _START_MAIL_INPUT
        )

    def record(self, reply: Reply) -> None:
        """The next reply, in the order the commands went out."""
        if self.mail_reply is None:
            self.mail_reply = reply
        elif len(self.rcpt_replies) < len(self.recipients):
            self.rcpt_replies.append(reply)
        elif self.data_reply is None:
            self.data_reply = reply
        else:
            self.final_reply = reply


class ClientTransactions(ClientSession):
    """Mail transactions on an open session: :meth:`send` and the layer below it, :meth:`transact`."""

    # --- the mail transaction -----------------------------------------------------------------

    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        message: Content,
        *,
        size: int | None = None,
        eight_bit: bool | None = None,
        smtputf8: bool | None = None,
    ) -> SendResult:
        """Send one message: MAIL, RCPT for each recipient, DATA and the dot-stuffed content.

        ``message`` is the whole message or an iterable of its chunks (a file read in blocks);
        for chunks, give ``size`` (for RFC 1870 SIZE) and say whether it has 8-bit octets
        (``eight_bit``, RFC 6152) or UTF-8 headers (``smtputf8``, RFC 6531). For bytes, all
        three are worked out. Line endings become CRLF on the way out. A non-ASCII address
        needs the server's SMTPUTF8; UTF-8 in the headers asks for it when offered.

        Raises :class:`SmtpSenderRefused`, :class:`SmtpRecipientsRefused` (every recipient
        refused), :class:`SmtpDataRefused`, or another :class:`SmtpClientError`; after a refusal
        the connection is reset (RSET) and can carry the next message.
        """
        unique = list(dict.fromkeys(recipients))
        if not unique:
            raise LocalProtocolError("a message needs at least one recipient")
        for address in unique:
            core.check_address(address)
        if isinstance(message, bytes):
            size = _wire_size(message) if size is None else size
            eight_bit = not message.isascii() if eight_bit is None else eight_bit
            head = core.header_section(message)
        else:
            head = b""
        utf8 = core.needs_smtputf8([], head) if smtputf8 is None else smtputf8
        utf8_addresses = core.needs_smtputf8([sender, *unique])
        params = self.mail_parameters(
            size, eight_bit=bool(eight_bit), smtputf8=utf8 or utf8_addresses, smtputf8_required=utf8_addresses
        )
        transaction = Transaction(core.mail(sender, params), [core.rcpt(address) for address in unique])
        await self.transact(transaction, message)
        try:
            return _send_result(sender, unique, transaction)
        except SmtpReplyError:
            await self.reset()
            raise

    def mail_parameters(
        self, size: int | None, *, eight_bit: bool, smtputf8: bool, smtputf8_required: bool
    ) -> dict[str, str | None]:
        """The MAIL parameters this server takes for a message; refuses what it cannot take.

        Raises :class:`SmtpMessageTooBigError` when ``size`` is over the server's SIZE and
        :class:`SmtpUnsupportedError` when SMTPUTF8 is required and not offered: both before
        anything is sent.
        """
        params: dict[str, str | None] = {}
        ext = self.extensions
        limit = ext.size_limit
        if size is not None and limit is not None and size > limit:
            raise SmtpMessageTooBigError(
                f"the message is {size} octets; {self._where} takes at most {limit} (SIZE)",
                size=size,
                limit=limit,
            )
        if size is not None and "SIZE" in ext:
            params["SIZE"] = str(size)  # RFC 1870 §6.1
        # RFC 6531 §3.4: a non-ASCII address cannot be sent without SMTPUTF8. UTF-8 only in the
        # headers is sent anyway when the server does not offer it, as Postfix does: it is a
        # request to preserve them, and the server that cannot will still deliver the message.
        if smtputf8 and "SMTPUTF8" in ext:
            params["SMTPUTF8"] = None
        elif smtputf8_required:
            raise SmtpUnsupportedError(
                f"a non-ASCII address needs SMTPUTF8 and {self._where} does not offer it"
            )
        # RFC 6152 §3: BODY=8BITMIME tells the server the content has 8-bit octets. A server
        # without 8BITMIME gets the message as it is, as Postfix does by default: rewriting
        # it as 7-bit would break signatures, and nearly every server accepts it.
        if eight_bit and "8BITMIME" in ext:
            params["BODY"] = "8BITMIME"
        return params

    async def transact(self, transaction: Transaction, content: Content) -> Transaction:
        """Run one mail transaction, recording every reply in ``transaction``.

        Refusals are recorded, not raised: the caller reads them per recipient. The content is
        sent only when MAIL, at least one RCPT and DATA were accepted
        (:attr:`Transaction.ready_for_content`); after a refusal the caller says RSET
        (:meth:`reset`) to use the connection again. Raises :class:`SmtpClientError` only when
        the conversation breaks: a lost connection, a timeout, a garbled reply.
        """
        if "PIPELINING" in self.extensions:
            await self._envelope_pipelined(transaction)
        else:
            await self._envelope_one_by_one(transaction)
        if transaction.ready_for_content:
            await self._send_content(content)
            transaction.record(await self._reply("the end of the message", timeout=self.data_timeout))
        return transaction

    async def _envelope_pipelined(self, transaction: Transaction) -> None:
        # RFC 2920 §3.1: MAIL and the RCPTs may go anywhere in a group, DATA only last; the
        # client "MUST check ALL statuses associated with each command in a group".
        lines = [transaction.mail, *transaction.recipients, core.DATA]
        for line in lines:
            self._client_line(line)
        self._write(b"".join(lines))
        for line in lines:
            try:
                transaction.record(await self._reply(core.redacted(line)))
            except SmtpConnectError:
                # A 421 comes just before the server hangs up (§3.8): the rest go unanswered.
                last = (
                    transaction.mail_reply if not transaction.rcpt_replies else transaction.rcpt_replies[-1]
                )
                if last is None or last.code != _CLOSING_CHANNEL:
                    raise
                while transaction.data_reply is None:
                    transaction.record(last)
                return
        data = transaction.data_reply
        if data is not None and data.code == _START_MAIL_INPUT and not transaction.ready_for_content:
            # §3.1: "if the DATA command was accepted the client SMTP should send a single
            # dot": an empty message, ended, so the RSET that follows is read as a command.
            await self._finish_empty_data()

    async def _envelope_one_by_one(self, transaction: Transaction) -> None:
        mail = await self._command(transaction.mail, "MAIL")
        transaction.record(mail)
        if not mail.positive:
            return
        for line in transaction.recipients:
            transaction.record(await self._command(line, "RCPT"))
        if transaction.accepted:
            transaction.record(await self._command(core.DATA, "DATA"))

    async def _finish_empty_data(self) -> None:
        self._client_line(core.END_OF_DATA)
        self._write(core.END_OF_DATA)
        await self._reply("the end of an empty message", timeout=self.data_timeout)

    async def _send_content(self, content: Content) -> None:
        """The content, dot-stuffed, then ``.``; a server that stops reading times out."""
        self.activity = "sending the message"
        try:
            async with asyncio.timeout(self.data_timeout):
                await self._stream(_chunks(content))
        except TimeoutError:
            self.close()
            raise SmtpTimeoutError(
                f"{self._where} took no more of the message within {self.data_timeout:g}s"
            ) from None

    async def _stream(self, chunks: AsyncIterator[bytes]) -> None:
        stuffer = core.DotStuffer()
        partial = bytearray()  # a line split across writes, kept for the transcript only
        # Each block goes out once the next one is read, the last with the end of data: a
        # message of one block is one write (one system call, one segment) instead of two.
        held = b""
        async for chunk in chunks:
            data = stuffer.feed(chunk)
            if data:
                if held:
                    self._write(held)
                    await self._drain()
                held = data
                self._content_lines(partial, data)
        tail = stuffer.finish()
        self._content_lines(partial, tail[: -len(core.END_OF_DATA)])
        self._client_line(core.END_OF_DATA)
        self._write(held + tail if held else tail)
        await self._drain()

    def _content_lines(self, partial: bytearray, data: bytes) -> None:
        if self._transcript is None:
            return
        partial += data
        *lines, rest = bytes(partial).split(b"\r\n")
        partial[:] = rest
        for line in lines:
            self._transcript(TranscriptLine("C", line.decode("utf-8", "replace"), content=True))

    async def reset(self, *, timeout: float | None = None) -> bool:
        """RSET (§4.1.1.5): end a refused transaction, or check that an idle connection works.

        True when the server answered 250; otherwise the connection is closed.
        """
        if self.is_connected:
            try:
                if (await self._command(core.RSET, "RSET", timeout=timeout)).positive:
                    return True
            except SmtpClientError:
                pass
        self.close()
        return False


def _wire_size(message: bytes) -> int:
    """The size after line endings become CRLF (RFC 1870 §6.1 asks for an estimate at least)."""
    return len(message) + message.count(b"\n") - message.count(b"\r\n")


async def _chunks(content: Content) -> AsyncIterator[bytes]:
    """The content in chunks: bytes cut to size, an iterable's chunks as they come."""
    if isinstance(content, bytes):
        for start in range(0, len(content), _CONTENT_CHUNK):
            yield content[start : start + _CONTENT_CHUNK]
    elif isinstance(content, AsyncIterable):
        async for chunk in content:
            yield chunk
    else:
        for chunk in content:
            yield chunk


def _send_result(sender: str, recipients: list[str], transaction: Transaction) -> SendResult:
    """What :meth:`SmtpClient.send` returns for a transaction, or the refusal it raises."""
    mail = transaction.mail_reply
    if mail is not None and not mail.positive:
        raise SmtpSenderRefused(f"sender <{sender}> refused: {mail}", mail, command="MAIL")
    accepted, refused = _split(recipients, transaction.rcpt_replies)
    if not accepted:
        raise _all_refused(refused)
    data = transaction.data_reply
    if data is not None and data.code != _START_MAIL_INPUT:
        raise SmtpDataRefused(f"DATA refused: {data}", data, command="DATA")
    reply = transaction.final_reply
    assert reply is not None  # transact() returns with one once the content went
    if not reply.positive:
        raise SmtpDataRefused(f"message refused: {reply}", reply, command="DATA")
    return SendResult(accepted, refused, reply)


def _split(recipients: list[str], replies: list[Reply]) -> tuple[dict[str, Reply], dict[str, Reply]]:
    accepted: dict[str, Reply] = {}
    refused: dict[str, Reply] = {}
    for address, reply in zip(recipients, replies, strict=True):
        (accepted if reply.positive else refused)[address] = reply
    return accepted, refused


def _all_refused(refused: dict[str, Reply]) -> SmtpRecipientsRefused:
    first_address, first = next(iter(refused.items()))
    more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
    return SmtpRecipientsRefused(
        f"recipient <{first_address}> refused: {first}{more}", first, results=dict(refused)
    )
