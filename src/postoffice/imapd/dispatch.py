"""Which handler a command of a logged-in session goes to, and what its failures become.

Untrusted input seen here: parsed commands (their names pick the handler; unknown names are
``BAD``). A message or folder that another program removed meanwhile is ``NO`` with the
response code RFC 9051 §7.1 names for it, never an exception that ends the session.
"""

from __future__ import annotations

from collections.abc import Iterable

from postoffice.errors import MessageGone
from postoffice.imap import ImapParseError
from postoffice.imap.responses import Segment
from postoffice.imap.tokens import Parsed
from postoffice.imapd.messages import APPEND, SELECTED
from postoffice.imapd.session import AUTHENTICATED, No, Session


def execute(session: Session, command: Parsed) -> Iterable[Segment]:
    """Run ``command``; its untagged responses. No and ImapParseError for NO and BAD.

    A list for most commands; FETCH's may be made as they are taken (an iterator, run in the
    same worker thread as the rest of the session, one piece after another), so errors of a
    message met on the way come while it is read (the transport answers NO then)."""
    try:
        handler = AUTHENTICATED.get(command.name)
        if handler is not None:
            return handler(session, command.args)
        if command.name == "APPEND":
            return APPEND(session, command.args, command.spooled)
        selected_handler = SELECTED.get(command.name)
        if selected_handler is None:
            raise ImapParseError(f"unknown command {command.name[:30]}")
        if session.selected is None:
            raise ImapParseError("no folder selected")
        return selected_handler(session, session.selected, command.args)
    except MessageGone:
        raise No("a message was removed meanwhile; try again", "EXPUNGEISSUED") from None
    except FileNotFoundError:
        raise No("no such folder", "NONEXISTENT") from None
    except ValueError as exc:  # a folder name the store cannot have
        raise No(str(exc), "CANNOT") from None
