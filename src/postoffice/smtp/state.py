"""The one SMTP transition table: which command is allowed in which state, and where it leads.

Untrusted input seen here: none directly; the server core looks up (state, command) pairs here
for every command a client sends. Nothing else in the code decides "did they say HELO yet".

RFC 5321 §4.1.4 gives the order: HELO/EHLO, then MAIL, one or more RCPT, then DATA (or BDAT
chunks, RFC 3030); RSET, NOOP, VRFY, HELP and QUIT are allowed at any time. A command leads to
its target state only when the reply to it is positive. The core sets its state only from here:
:func:`after` for an answered command, :func:`after_bdat` for an answered chunk and
:func:`after_content` once a message's content has been answered.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from postoffice.smtp import commands as c
from postoffice.smtp import replies
from postoffice.smtp.replies import Reply


class State(enum.Enum):
    INIT = "init"  # greeted; no HELO/EHLO yet (or reset by STARTTLS, RFC 3207 §4.2)
    READY = "ready"  # HELO/EHLO done; no transaction
    MAIL = "mail"  # sender accepted
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # receiving DATA content
    BDAT = "bdat"  # at least one BDAT chunk accepted, LAST not yet seen
    CLOSED = "closed"

    # Members are singletons compared by identity: hash them so too (in C), not by Enum's
    # hash(self._name_) (a Python call), for the table lookups made for every command.
    __hash__ = object.__hash__


_GREETED = (State.READY, State.MAIL, State.RCPT, State.BDAT)
_OPEN = (State.INIT, *_GREETED)

_table: dict[tuple[State, type[c.Command]], State] = {}
for _state in _OPEN:
    # §4.1.4: EHLO/HELO may be sent again; it resets the transaction as RSET does.
    _table[_state, c.Helo] = State.READY
    _table[_state, c.Ehlo] = State.READY
    _table[_state, c.Rset] = State.INIT if _state is State.INIT else State.READY
    _table[_state, c.Quit] = State.CLOSED
    for _anytime in (c.Noop, c.Vrfy, c.Help):
        _table[_state, _anytime] = _state
_table[State.READY, c.Mail] = State.MAIL
_table[State.MAIL, c.Rcpt] = State.RCPT
_table[State.RCPT, c.Rcpt] = State.RCPT
_table[State.RCPT, c.Data] = State.DATA
# RFC 3030 §2: BDAT chunks follow RCPT; the LAST one returns to READY (see after_bdat).
_table[State.RCPT, c.Bdat] = State.BDAT
_table[State.BDAT, c.Bdat] = State.BDAT
# RFC 3207 §4: STARTTLS outside a transaction; RFC 4954 §4: AUTH is not permitted during one.
_table[State.INIT, c.StartTls] = State.INIT
_table[State.READY, c.StartTls] = State.INIT
_table[State.READY, c.Auth] = State.READY

TRANSITIONS: Mapping[tuple[State, type[c.Command]], State] = _table

# The most helpful reply for a command out of sequence, where a specific one exists.
_SEQUENCE_ERRORS: Mapping[tuple[State, type[c.Command]], Reply] = {
    (State.INIT, c.Mail): replies.NEED_HELO,
    (State.INIT, c.Rcpt): replies.NEED_HELO,
    (State.INIT, c.Data): replies.NEED_HELO,
    (State.INIT, c.Bdat): replies.NEED_HELO,
    (State.INIT, c.Auth): replies.NEED_HELO,
    (State.READY, c.Rcpt): replies.NEED_MAIL,
    (State.READY, c.Data): replies.NEED_MAIL,
    (State.READY, c.Bdat): replies.NEED_MAIL,
    (State.MAIL, c.Mail): replies.NESTED_MAIL,
    (State.RCPT, c.Mail): replies.NESTED_MAIL,
    (State.BDAT, c.Mail): replies.NESTED_MAIL,
    (State.MAIL, c.Data): replies.NEED_RCPT,
    (State.MAIL, c.Bdat): replies.NEED_RCPT,
    (State.BDAT, c.Data): replies.DATA_AFTER_BDAT,
}


def target(state: State, command: c.Command) -> State | None:
    """The state a positive reply to ``command`` leads to, or None if it is out of sequence."""
    return TRANSITIONS.get((state, type(command)))


def sequence_error(state: State, command: c.Command) -> Reply:
    return _SEQUENCE_ERRORS.get((state, type(command)), replies.BAD_SEQUENCE)


def after(state: State, command: type[c.Command]) -> State:
    """Where a positive reply to a ``command`` taken in ``state`` leads (it was in sequence)."""
    return TRANSITIONS[state, command]


def after_bdat(*, last: bool, accepted: bool) -> State:
    """RFC 3030 §2: after the LAST chunk is answered the transaction is over, and so it is after
    a refused one ("the transaction should be considered failed"; chunks already pipelined
    after it are refused as out of sequence)."""
    return State.BDAT if accepted and not last else State.READY


def after_content() -> State:
    """RFC 5321 §4.1.1.4: once the content's end is answered (stored or refused), the
    transaction is over and the buffers are cleared."""
    return State.READY


def in_transaction(state: State) -> bool:
    return state in (State.MAIL, State.RCPT, State.DATA, State.BDAT)
