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
  recipient needs an authenticated session (else ``554 5.7.1``): no open relay.
* Submission (RFC 6409; the ``submission`` and ``smtps`` listeners): MAIL needs an
  authenticated session (else ``530 5.7.0``).
* An authenticated session sends only as its user: MAIL FROM must be the user's address or
  an alias that resolves to the user (else ``553 5.7.1``, RFC 6409 §6.1), so the null sender
  is refused too. Its non-local recipients are relayed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from postoffice.accounts import Accounts
from postoffice.config import Config
from postoffice.smtp import replies
from postoffice.smtp.grammar import Mailbox, Path
from postoffice.smtp.replies import Reply


@dataclass(frozen=True, slots=True)
class RecipientVerdict:
    """The reply to a RCPT and, if accepted, where the message goes."""

    reply: Reply
    local: tuple[str, ...] = ()  # mailbox addresses on this server
    remote: tuple[str, ...] = ()  # addresses to relay to other servers


def mailbox_address(mailbox: Mailbox) -> str:
    """The canonical local mailbox for an address: local part unquoted and lower-cased.

    RFC 5321 §2.4 lets the receiving host treat local parts case-insensitively, and every
    common MTA does for its own mailboxes (Postfix lower-cases for local delivery).
    """
    return f"{mailbox.unquoted_local_part.lower()}@{mailbox.domain}"


class Policy:
    def __init__(
        self,
        config: Config,
        accounts: Accounts,
        *,
        mailbox_ok: Callable[[str], bool] | None = None,
    ) -> None:
        """``mailbox_ok(address)`` says whether a local mailbox can exist for ``address`` (the
        composition root passes the Maildir naming rules); None accepts every address."""
        self._config = config
        self._accounts = accounts
        self._mailbox_ok = mailbox_ok

    def check_sender(self, path: Path, *, authenticated_user: str | None, submission: bool = False) -> Reply:
        """The reply to MAIL FROM:<path> (see the rules in the module docstring)."""
        if authenticated_user is None:
            # RFC 6409 §4.3: submission is for authenticated users; the MX service takes mail
            # from anyone (and only for local recipients, see check_recipient).
            return replies.AUTH_REQUIRED if submission else replies.SENDER_OK
        mailbox = path.mailbox
        if mailbox is None:
            # The null sender is for bounces, which a server makes, never a user (§4.5.5).
            return replies.NULL_SENDER_REFUSED
        if not self.owns(authenticated_user, mailbox_address(mailbox)):
            return replies.SENDER_NOT_OWNED
        return replies.SENDER_OK

    def owns(self, user: str, address: str) -> bool:
        """``user`` may send as ``address``: it is theirs, or an alias that resolves to them
        (a catch-all ``@domain`` alias included)."""
        targets = self._accounts.resolve(address)
        return targets is not None and self._accounts.resolve(user) == [user] and user in targets

    def check_recipient(self, path: Path, *, authenticated_user: str | None) -> RecipientVerdict:
        config = self._config
        if path.postmaster:
            return self._postmaster(config.domains[0] if config.domains else config.hostname.lower())
        mailbox = path.mailbox
        assert mailbox is not None  # the grammar refuses <> in RCPT
        if config.capture_mode:
            address = mailbox_address(mailbox)
            if self._mailbox_ok is not None and not self._mailbox_ok(address):
                # Refused now, while the client can still be told: after a 250 the message
                # could only fail at delivery (a general address literal may hold "/").
                return RecipientVerdict(replies.BAD_DESTINATION_MAILBOX)
            return RecipientVerdict(replies.RECIPIENT_OK, local=(address,))
        address = mailbox_address(mailbox)
        if config.is_local_domain(mailbox.domain):
            targets = self._accounts.resolve(address)
            if targets is None:
                if mailbox.unquoted_local_part.lower() == "postmaster":
                    return self._postmaster(mailbox.domain)
                return RecipientVerdict(replies.USER_UNKNOWN)
            return self._split(targets)
        if authenticated_user is not None:
            return RecipientVerdict(replies.RECIPIENT_OK, remote=(str(mailbox),))
        return RecipientVerdict(replies.RELAY_DENIED)

    def _postmaster(self, domain: str) -> RecipientVerdict:
        """RFC 5321 §4.5.1: postmaster must be accepted for every domain we serve."""
        configured = self._config.postmaster
        if configured is None:
            return RecipientVerdict(replies.RECIPIENT_OK, local=(f"postmaster@{domain}",))
        targets = self._accounts.resolve(configured) or [configured]
        return self._split(targets)

    def _split(self, targets: list[str]) -> RecipientVerdict:
        local = tuple(t for t in targets if self._config.is_local_domain(t.rpartition("@")[2]))
        remote = tuple(t for t in targets if t not in local)
        return RecipientVerdict(replies.RECIPIENT_OK, local=local, remote=remote)
