"""What a check answers: go on, refuse with a reply, or decide at the end of the message.

Untrusted input seen here: none; verdicts are made by our own checks.

A check returns :data:`ACCEPT` (the next check decides, and when none is left the command gets
its usual positive reply), a :class:`~postoffice.smtp.replies.Reply` (the command's answer; the
checks after it are not asked; a 421 also ends the session, RFC 5321 §3.8), or :data:`DEFER`:
"go on for now, and ask me again at the end of the message". A deferred check is called again,
with the same method, at the data-end stage, before that stage's own checks: SPF, say, starts
its DNS lookups at MAIL (:meth:`~postoffice.smtpd.context.Context.start`) and waits for their
result only once the content is in, and a refusal it makes then refuses the whole message.
"""

from __future__ import annotations

from typing import Final

from postoffice.smtp.replies import Reply


class Accept:
    """Nothing against it: the next check decides."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ACCEPT"


class Defer:
    """Decide at the end of the message (outside a transaction, and at data-end, it accepts)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFER"


ACCEPT: Final = Accept()
DEFER: Final = Defer()

Verdict = Reply | Accept | Defer
