"""The envelope sender of a forwarded copy, and where a bounce to it goes back to.

Untrusted input seen here: the envelope sender of mail being forwarded (anyone's, parsed by the
SMTP grammar) and the recipient of a bounce (anyone may send to an SRS address; only one whose
hash our secret made and whose timestamp is recent reverses).

When an alias sends a message on to an outside address, the next hop checks SPF for the
envelope sender's domain against our address, and fails it (RFC 7208 §1.2: forwarding breaks
SPF). So the copy leaves with an SRS address in the alias's domain, whose SPF names us, and a
bounce to that address is sent on to the original sender (:mod:`postoffice.mailauth.srs`).
Not rewritten: the null sender (RFC 5321 §4.5.5: nobody to bounce to) and senders in our own
domains, whose SPF already names us.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from postoffice.mailauth.srs import Srs, SrsError
from postoffice.mailauth.srs_secrets import SrsSecrets

_TAGS = ("SRS0", "SRS1")


class SenderRewriting:
    """SRS under ``secrets``, for the domains ``is_local`` says are ours."""

    def __init__(
        self, secrets: SrsSecrets, is_local: Callable[[str], bool], *, clock: Callable[[], float] = time.time
    ) -> None:
        self._secrets = secrets
        self._is_local = is_local
        self._clock = clock

    def sender_for(self, sender: str, domain: str) -> str:
        """The envelope sender for a copy of mail from ``sender`` that an alias in ``domain``
        forwards. Raises SrsSecretError when no secret can be read or made."""
        if not sender or self._is_local(sender.rpartition("@")[2]):
            return sender
        return self._srs(domain).forward(sender)

    def reverse(self, address: str) -> str | None:
        """The address a bounce to ``address`` goes back to; None when it is no SRS address.
        Raises SrsError (a ValueError) for an SRS address that is not a valid one of ours."""
        local = address.rpartition("@")[0]
        # As libsrs2 reads it: the tag, then one of its separators.
        if len(local) < 5 or local[:4].upper() not in _TAGS or local[4] not in "=+-":
            return None
        reversed_to = self._srs(address.rpartition("@")[2]).reverse(address)
        if "@" not in reversed_to:
            raise SrsError("SRS address reverses to no address")
        return reversed_to

    def _srs(self, domain: str) -> Srs:
        return Srs(self._secrets.current(), domain, clock=self._clock)
