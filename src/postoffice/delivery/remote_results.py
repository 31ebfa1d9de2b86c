"""What an outbound SMTP conversation came to, for each recipient (delivery/remote.py).

Untrusted input seen here: the remote server's replies, already parsed by the SMTP client
core; a reply's text is made printable and bounded (:func:`printable_reply`) before it reaches
a log or a delivery status notification.
"""

from __future__ import annotations

from collections.abc import Sequence

from postoffice.client.connection import SmtpClient, Transaction
from postoffice.delivery.agent import Delivered, DeliveryResult, PermFail, TempFail
from postoffice.errors import (
    SmtpAuthError,
    SmtpClientError,
    SmtpConnectError,
    SmtpProtocolError,
    SmtpReplyError,
    SmtpTimeoutError,
    SmtpTlsError,
)
from postoffice.smtp import replies
from postoffice.smtp.replies import Reply
from postoffice.spool.envelope import Recipient


def judge(
    transaction: Transaction, recipients: Sequence[Recipient], remote: str, where: str, dsn: bool
) -> list[DeliveryResult | None]:
    """Each recipient's result from the replies the transaction got (None: no answer for it).

    MAIL was accepted (the caller checked). A refused RCPT is that recipient's result; for the
    accepted ones, the reply to the end of the content, or the refusal of DATA, decides.
    """
    results: list[DeliveryResult | None] = [None] * len(recipients)
    for position, reply in enumerate(transaction.rcpt_replies):
        if not reply.positive:
            results[position] = failed(recipients[position], printable_reply(reply), remote)
    decisive = transaction.final_reply if transaction.ready_for_content else transaction.data_reply
    if decisive is None:
        return results
    reply = printable_reply(decisive)
    for position in transaction.accepted:
        recipient = recipients[position]
        if transaction.final_reply is not None and reply.positive:
            results[position] = Delivered(
                recipient,
                detail=f"relayed to {where}: {reply}",
                remote_mta=remote,
                reply=reply,
                dsn_passed_on=dsn,
            )
        else:
            results[position] = failed(recipient, reply, remote)
    return results


def starttls_broke(client: SmtpClient, exc: SmtpClientError) -> bool:
    """The handshake after STARTTLS failed, or the connection broke during it. A garbled or
    injected reply (:class:`SmtpProtocolError`) is not a reason to go on in plaintext."""
    tls_trouble = isinstance(exc, SmtpTlsError | SmtpConnectError)
    return tls_trouble and "STARTTLS" in client.extensions and not client.tls_active


def open_failure(client: SmtpClient, where: str, exc: SmtpClientError) -> Reply:
    """Why a session could not be opened, as the reply the recipients' results carry."""
    if isinstance(exc, SmtpReplyError):  # the greeting, EHLO or HELO refused
        return printable_reply(exc.reply)
    if isinstance(exc, SmtpAuthError):
        return replies.relay_auth_failed(where, str(exc))
    if isinstance(exc, SmtpTlsError):
        if client.greeting is not None and "STARTTLS" not in client.extensions:
            return replies.tls_not_offered(where)
        return replies.tls_failed(where, str(exc))
    return broken_off(where, client.activity, exc)


def printable_reply(reply: Reply) -> Reply:
    """A server's reply as data: at most ten lines, each printable (it reaches logs and DSNs)."""
    return replies.remote_reply(reply.code, reply.enhanced, reply.text)


def broken_off(where: str, activity: str, exc: SmtpClientError) -> Reply:
    """The reply for a conversation that broke off while doing ``activity``."""
    if isinstance(exc, SmtpTimeoutError):
        return replies.timed_out(where, activity)
    if isinstance(exc, SmtpProtocolError):  # a garbled reply: say what was wrong with it
        return replies.lost_connection(where, f"{activity} ({exc})")
    return replies.lost_connection(where, activity)


def reason_of(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def failed(recipient: Recipient, reply: Reply, remote_mta: str | None) -> DeliveryResult:
    return (
        PermFail(recipient, reply, remote_mta) if reply.permanent else TempFail(recipient, reply, remote_mta)
    )


def all_failed(recipients: Sequence[Recipient], reply: Reply, remote_mta: str | None) -> list[DeliveryResult]:
    return [failed(recipient, reply, remote_mta) for recipient in recipients]


def unanswered_failed(
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
