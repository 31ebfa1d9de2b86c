"""DKIM signatures on mail our users send (RFC 6376), as a data-end check.

Untrusted input seen here: the message of an authenticated user, whose From field chooses the
key (only a local domain's: :meth:`~postoffice.mailauth.dkim_signer.Signer.for_author`).

Which sessions are ours: those that authenticated (RFC 4954), and those on the server's local
socket (``postoffice sendmail``; only the server's user and root can open it). A client that
did not log in on a TCP listener is anyone on the Internet, loopback included (a plain session on the MX port may carry mail
relayed from anywhere), so its mail is never signed whatever its From says. Mail with no
recipient outside (it does not leave) is not signed either: signatures are for the next hop.

Signing reads the whole message (the body hash, RFC 6376 §3.7), so it runs through ``blocking``
(a worker thread) rather than on the event loop; the session waits for it at data-end, so
nothing else touches the message meanwhile.
"""

from __future__ import annotations

import logging

from postoffice.errors import DkimError
from postoffice.mailauth.dkim_signer import Signed, Signer, signature_fields
from postoffice.smtpd.context import Context
from postoffice.smtpd.verdict import ACCEPT, Verdict
from postoffice.spool.envelope import Route
from postoffice.storage import Blocking

log = logging.getLogger("postoffice.dkim")


class DkimSigning:
    """Data-end stage: the DKIM-Signature fields of the From domain's keys, above the message."""

    def __init__(self, signer: Signer, blocking: Blocking) -> None:
        self._signer = signer
        self._blocking = blocking

    async def check(self, ctx: Context) -> Verdict:
        message = ctx.message
        assert message is not None  # data-end
        signer = self._signer
        if not signer.enabled or not ctx.client.submits:
            return ACCEPT
        if all(recipient.route is Route.LOCAL for recipient in ctx.transaction.recipients):
            return ACCEPT
        domain = signer.for_author(message.header_section())
        if domain is None:
            return ACCEPT
        what = f"session={ctx.client.id} queue_id={message.queue_id}"

        def sign() -> Signed | None:
            with message.open() as content:
                return signer.sign(content, domain, what=what)

        try:
            signed = await self._blocking(sign)
        except DkimError as exc:
            # Accepted unsigned: the message is the user's, and a receiver treats an unsigned
            # message as it would one whose signature failed (RFC 6376 §6.1).
            log.warning("%s event=dkim-not-signed domain=%s reason=%r", what, domain, str(exc))
            return ACCEPT
        for field in signature_fields(signed):
            message.add_header(field)
        return ACCEPT
