"""Pure accept/reject decisions for senders and recipients.

Untrusted input seen here: the MAIL and RCPT addresses a client gives (already parsed by the
SMTP grammar) and whether the session authenticated. Decisions are returned as replies from
:mod:`postoffice.smtp.replies`; nothing here touches sockets or disks (accounts are read
through :class:`postoffice.accounts.Accounts`, which caches its file).

The rules:

* capture mode (no local domains): every recipient is accepted into a mailbox named after it;
  nothing is relayed, because nothing leaves the machine.
* MTA mode: only configured domains are local. A local recipient must be a user or an alias
  (else ``550 5.1.1``); ``postmaster`` is always accepted (RFC 5321 §4.5.1). A non-local
  recipient needs an authenticated session (else ``554 5.7.1``): no open relay. An alias's
  outside targets are forwarded (not relayed), and a bounce to one of our SRS addresses goes
  back to the sender it encodes, from anyone; an SRS address we did not make is ``550 5.1.1``.
* Submission (RFC 6409; the ``submission`` and ``smtps`` listeners): MAIL needs an
  authenticated session (else ``530 5.7.0``).
* The server's local socket (``postoffice sendmail``; only the server's user and root can open
  it) is trusted as the local system: any sender, relaying allowed, no AUTH.
* An authenticated session sends only as its user: MAIL FROM must be the user's address or
  an alias that resolves to the user (else ``553 5.7.1``, RFC 6409 §6.1), so the null sender
  is refused too. Its non-local recipients are relayed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from postoffice.accounts import Accounts
from postoffice.addresses import join
from postoffice.config import Config
from postoffice.recipients import Kind, Recipients, SrsReverse
from postoffice.smtp import replies
from postoffice.smtp.grammar import Path
from postoffice.smtp.replies import Reply


@dataclass(frozen=True, slots=True)
class RecipientVerdict:
    """The reply to a RCPT and, if accepted, where the message goes."""

    reply: Reply
    local: tuple[str, ...] = ()  # mailbox addresses on this server
    remote: tuple[str, ...] = ()  # addresses to relay to other servers
    forward: tuple[str, ...] = ()  # outside addresses an alias forwards to


class Policy:
    def __init__(
        self,
        config: Config,
        accounts: Accounts,
        *,
        mailbox_ok: Callable[[str], bool] | None = None,
        srs: SrsReverse | None = None,
    ) -> None:
        """``mailbox_ok(address)`` says whether a local mailbox can exist for ``address`` (the
        composition root passes the Maildir naming rules); None accepts every address. ``srs``
        reverses our SRS addresses, so bounces to forwarded mail go back."""
        self._accounts = accounts
        self._recipients = Recipients(config, accounts, mailbox_ok=mailbox_ok, srs=srs)

    def check_sender(
        self, path: Path, *, authenticated_user: str | None, submission: bool = False, local: bool = False
    ) -> Reply:
        """The reply to MAIL FROM:<path> (see the rules in the module docstring); ``local``: the
        session is on the server's local socket."""
        if local:
            # As Postfix's sendmail: the local system sends as whoever it says (cron's mail,
            # a null sender from a program's bounce).
            return replies.SENDER_OK
        if authenticated_user is None:
            # RFC 6409 §4.3: submission is for authenticated users; the MX service takes mail
            # from anyone (and only for local recipients, see check_recipient).
            return replies.AUTH_REQUIRED if submission else replies.SENDER_OK
        mailbox = path.mailbox
        if mailbox is None:
            # The null sender is for bounces, which a server makes, never a user (§4.5.5).
            return replies.NULL_SENDER_REFUSED
        if not self.owns(authenticated_user, join(mailbox.unquoted_local_part, mailbox.domain)):
            return replies.SENDER_NOT_OWNED
        return replies.SENDER_OK

    def owns(self, user: str, address: str) -> bool:
        """``user`` may send as ``address``: it is theirs, or an alias that resolves to them
        (a catch-all ``@domain`` alias included)."""
        targets = self._accounts.resolve(address)
        return targets is not None and self._accounts.resolve(user) == [user] and user in targets

    def check_recipient(
        self, path: Path, *, authenticated_user: str | None, local: bool = False
    ) -> RecipientVerdict:
        """The reply to RCPT TO:<path>: where :mod:`postoffice.recipients` says the mail goes,
        if this session may send it there."""
        if path.postmaster:
            found = self._recipients.postmaster()
        else:
            assert path.mailbox is not None  # the grammar refuses <> in RCPT
            found = self._recipients.resolve(path.mailbox)
        if found.kind is Kind.RELAY and authenticated_user is None and not local:
            return RecipientVerdict(replies.RELAY_DENIED)
        if found.kind is Kind.UNKNOWN:
            return RecipientVerdict(replies.USER_UNKNOWN)
        if found.kind is Kind.UNUSABLE:
            # Refused now, while the client can still be told: after a 250 the message could
            # only fail at delivery (a general address literal may hold "/").
            return RecipientVerdict(replies.BAD_DESTINATION_MAILBOX)
        return RecipientVerdict(
            replies.RECIPIENT_OK, local=found.local, remote=found.remote, forward=found.forward
        )
