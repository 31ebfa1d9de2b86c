"""The ``Received:`` field every message gets (RFC 5321 §4.4), as a data-start check.

Untrusted input seen here: the HELO name and the recipient address, which
:func:`postoffice.trace.received_header` reduces to printable text.
"""

from __future__ import annotations

from postoffice.smtpd.context import Context
from postoffice.smtpd.verdict import ACCEPT, Verdict
from postoffice.trace import received_header


class ReceivedField:
    """Data-start stage: our ``Received:`` field, the first line of the stored message."""

    def __init__(self, hostname: str) -> None:
        self._hostname = hostname

    async def check(self, ctx: Context) -> Verdict:
        message = ctx.message
        assert message is not None  # data-start
        envelope = message.envelope
        recipients = envelope.recipients
        message.add_header(
            received_header(
                helo=envelope.helo,
                client_address=envelope.client_address,
                hostname=self._hostname,
                protocol=envelope.protocol,
                queue_id=message.queue_id,
                # "for" only with one recipient, so Bcc recipients stay private.
                recipient=recipients[0].original if len(recipients) == 1 else None,
                when=envelope.received_at,
                local=None if ctx.client.local is None else str(ctx.client.local),
            )
        )
        return ACCEPT
