"""The transaction layer: a sans-I/O SMTP conversation run through named stages of checks.

Untrusted input seen here: everything a client sends, through the SMTP core's events.

Between the transport (:mod:`postoffice.net.session`: bytes, flow control, timeouts, TLS,
closing) and the SMTP core (:mod:`postoffice.smtp.server`: bytes to events) sits
:class:`~postoffice.smtpd.conversation.Conversation`, which takes the core's events and runs
each through its stage (:mod:`postoffice.smtpd.stages`): connect, helo, auth, mail, rcpt,
data-start, data-end, and replied for what the core answered itself. Each stage is a tuple of
small checks (:mod:`postoffice.smtpd.checks`); each says accept, a reply, or "decide at the end
of the message" (:mod:`postoffice.smtpd.verdict`). At data-end a check can read the header
section and the stored content, add header fields at the top of the stored message, and choose
the folder its local copies go to (:mod:`postoffice.smtpd.context`). The message itself goes
through :mod:`postoffice.smtpd.content` into the spool writer, and is answered 250 only once
committed.

Nothing here opens a socket or creates a task: handlers are coroutines started by
:func:`~postoffice.smtpd.drive.drive`, and only one that really waits is handed to the
transport to finish.
"""

from postoffice.smtpd.content import MessageResult
from postoffice.smtpd.context import Client, Context, LocalPeer, Message, Transaction
from postoffice.smtpd.conversation import (
    NEED_DATA,
    START_TLS,
    Close,
    Conversation,
    Observer,
    Services,
    Step,
    Wait,
)
from postoffice.smtpd.stages import Check, Stage, Stages
from postoffice.smtpd.verdict import ACCEPT, DEFER, Verdict

__all__ = [
    "ACCEPT",
    "DEFER",
    "NEED_DATA",
    "START_TLS",
    "Check",
    "Client",
    "Close",
    "Context",
    "Conversation",
    "LocalPeer",
    "Message",
    "MessageResult",
    "Observer",
    "Services",
    "Stage",
    "Stages",
    "Step",
    "Transaction",
    "Verdict",
    "Wait",
]
