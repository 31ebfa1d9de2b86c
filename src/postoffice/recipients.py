"""Where mail for an address goes: the one resolution of a recipient, for RCPT and for reports.

Untrusted input seen here: recipient addresses from SMTP clients and the senders of queued
messages (a report goes back to them), both parsed by the SMTP grammar first. Accounts are read
through :class:`~postoffice.accounts.Accounts`; nothing here touches a socket or a mailbox.

An address resolves to one of four things (:class:`Kind`):

* capture mode (no local domains): a mailbox named after the address, if one can be made for
  it (``mailbox_ok``; a general address literal may hold a "/"); nothing leaves the machine;
* a local domain: the user, or an alias's targets (each local, or forwarded when its domain is
  not ours), or for an unknown ``postmaster`` the configured postmaster (RFC 5321 §4.5.1: it
  must be accepted for every domain we serve); an SRS address of ours (a bounce to mail we
  forwarded) goes back to the address it encodes, and an SRS address our secret did not make,
  or made too long ago, is unknown, like anyone else there;
* any other domain: the address itself, relayed (an SMTP session may relay only once
  authenticated, which :mod:`postoffice.policy` decides).

The SMTP policy (:meth:`~postoffice.policy.Policy.check_recipient`) answers RCPT from this, and
the queue's reports (DSNs, RFC 3464) are addressed from it: a report goes where a message to its
recipient would.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from postoffice.accounts import Accounts
from postoffice.addresses import domain_of, join, local_part
from postoffice.config import Config
from postoffice.smtp.grammar import GrammarError, Mailbox, parse_path
from postoffice.spool.envelope import Recipient, Route

# What reverses our SRS addresses (postoffice.mailauth.forwarding, handed in by the composition
# root): the original address; None for an address that is not SRS at all; ValueError for one
# that is SRS but not valid (not our hash, expired, malformed).
SrsReverse = Callable[[str], str | None]


class Kind(enum.Enum):
    DELIVER = "deliver"  # to ``local`` mailboxes and ``remote`` addresses
    RELAY = "relay"  # not ours: ``remote`` is the address itself
    UNKNOWN = "unknown"  # a local domain, and nobody of that name
    UNUSABLE = "unusable"  # capture mode, and no mailbox can be made for the address


@dataclass(frozen=True, slots=True)
class Destinations:
    """What an address resolved to: its kind, the local mailboxes (canonical addresses), the
    remote addresses the mail goes to as it is, and the outside addresses an alias forwards
    it to (a copy of its own, :mod:`postoffice.delivery.forward`)."""

    kind: Kind
    local: tuple[str, ...] = ()
    remote: tuple[str, ...] = ()
    forward: tuple[str, ...] = ()


class Recipients:
    """Resolves addresses against ``config`` (capture mode, local domains, postmaster) and
    ``accounts`` (users, aliases). ``mailbox_ok(address)`` says whether a mailbox can exist
    for ``address`` in capture mode (None: every address); ``srs`` reverses our SRS addresses
    (None: there are none)."""

    def __init__(
        self,
        config: Config,
        accounts: Accounts,
        *,
        mailbox_ok: Callable[[str], bool] | None = None,
        srs: SrsReverse | None = None,
    ) -> None:
        self._config = config
        self._accounts = accounts
        self._mailbox_ok = mailbox_ok
        self._srs = srs

    def resolve(self, mailbox: Mailbox) -> Destinations:
        """Where mail for ``mailbox`` goes (see the module docstring)."""
        config = self._config
        address = join(mailbox.unquoted_local_part, mailbox.domain)
        if config.capture_mode:
            if self._mailbox_ok is not None and not self._mailbox_ok(address):
                return Destinations(Kind.UNUSABLE)
            return Destinations(Kind.DELIVER, local=(address,))
        if not config.is_local_domain(mailbox.domain):
            return Destinations(Kind.RELAY, remote=(str(mailbox),))
        bounced = self._bounce(address)
        if bounced is not None:
            return bounced
        targets = self._accounts.resolve(address)
        if targets is not None:
            return self._split(targets)
        if local_part(address) == "postmaster":
            return self.postmaster(mailbox.domain)
        return Destinations(Kind.UNKNOWN)

    def postmaster(self, domain: str | None = None) -> Destinations:
        """Where mail for the postmaster of ``domain`` goes (None: the bare ``<Postmaster>`` of
        RFC 5321 §4.1.1.3, which is the first local domain's, or the host's)."""
        config = self._config
        configured = config.postmaster
        if configured is None:
            if domain is None:
                domain = config.domains[0] if config.domains else config.hostname.lower()
            return Destinations(Kind.DELIVER, local=(f"postmaster@{domain}",))
        return self._split(self._accounts.resolve(configured) or [configured])

    def _bounce(self, address: str) -> Destinations | None:
        """Where mail to our SRS ``address`` goes (checked before aliases, so a catch-all does
        not swallow it); None when it is no SRS address."""
        if self._srs is None:
            return None
        try:
            original = self._srs(address)
        except ValueError:
            return Destinations(Kind.UNKNOWN)
        if original is None:
            return None
        if self._config.is_local_domain(domain_of(original)):
            return Destinations(Kind.DELIVER, local=(original,))
        # Back as it is: a bounce's sender is null, and it must not be rewritten again.
        return Destinations(Kind.DELIVER, remote=(original,))

    def _split(self, targets: Sequence[str]) -> Destinations:
        local = tuple(t for t in targets if self._config.is_local_domain(domain_of(t)))
        forward = tuple(t for t in targets if t not in local)
        return Destinations(Kind.DELIVER, local=local, forward=forward)


def report_recipients(recipients: Recipients, address: str) -> tuple[Recipient, ...]:
    """Where a report (a DSN to a sender, a TLS report to a rua address) goes: where a message
    to ``address`` would; nowhere for an address the grammar refuses."""
    try:
        path, rest = parse_path(f"<{address}>", utf8=True, allow_null=False, allow_postmaster=False)
    except GrammarError:
        return ()
    if path.mailbox is None or rest:
        return ()
    found = recipients.resolve(path.mailbox)
    if found.kind is Kind.RELAY:
        return (Recipient(address, address, Route.REMOTE),)
    return (
        *(Recipient(local, address, Route.LOCAL) for local in found.local),
        # A report's sender is null and it has nothing to seal: forwarded as it is.
        *(Recipient(remote, address, Route.REMOTE) for remote in (*found.remote, *found.forward)),
    )
