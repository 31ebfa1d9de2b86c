"""The envelope of one accepted message: who sent it, to whom it goes, how it arrived.

Untrusted input seen here: addresses and the HELO name come from the SMTP client; they were
parsed by :mod:`postoffice.smtp.grammar` before they reach an Envelope, and are stored as data
(JSON), never interpreted as paths — :mod:`postoffice.maildir.names` does that safely.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any


class Route(enum.Enum):
    """Where a recipient is delivered: a local mailbox, another mail server, or another mail
    server through a forwarded copy (an alias's outside target: a copy of its own with an SRS
    envelope sender and an ARC set, :mod:`postoffice.delivery.forward`)."""

    LOCAL = "local"
    REMOTE = "remote"
    FORWARD = "forward"


@dataclass(frozen=True, slots=True)
class Recipient:
    """One delivery target.

    ``address`` is the final address (after alias expansion; for LOCAL the mailbox address),
    ``original`` the address the client gave in RCPT TO (RFC 3461 ORCPT defaults to it).
    """

    address: str
    original: str
    route: Route
    notify: tuple[str, ...] = ()
    orcpt: str | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """RFC 5321 §2.3.1: the originator and recipient addresses plus how the mail arrived."""

    mail_from: str  # "" is the null reverse-path <> (bounces, §4.5.5)
    recipients: tuple[Recipient, ...]
    received_at: float
    client_address: str = ""
    helo: str = ""
    protocol: str = "ESMTP"  # the WITH keyword of Received (RFC 3848): SMTP, ESMTP, ESMTPSA, UTF8SMTP...
    body: str = "7BIT"  # RFC 6152 BODY=
    smtputf8: bool = False  # RFC 6531 SMTPUTF8 parameter
    declared_size: int | None = None  # RFC 1870 SIZE=
    auth_user: str | None = None  # RFC 4954: who authenticated the submission
    ret: str | None = None  # RFC 3461 RET=
    envid: str | None = None  # RFC 3461 ENVID=
    # RFC 8689 REQUIRETLS: relayed only over verified TLS to a server that offers it (a spool
    # file written before this field existed reads as False).
    requiretls: bool = False
    # Where local copies are filed (a Maildir++ folder, ".Junk"), as a check at the end of the
    # message chose (DMARC quarantine); None: the inbox.
    folder: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        # Field by field rather than dataclasses.asdict, whose deep copy costs more than the
        # rest of writing a small message to the spool.
        data = {name: getattr(self, name) for name in _ENVELOPE_FIELDS}
        data["recipients"] = [
            {
                **{name: getattr(r, name) for name in _RECIPIENT_FIELDS},
                "route": r.route.value,
                "notify": list(r.notify),
            }
            for r in self.recipients
        ]
        data["extra"] = dict(self.extra)
        return data

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> Envelope:
        recipients = tuple(
            Recipient(
                address=r["address"],
                original=r["original"],
                route=Route(r["route"]),
                notify=tuple(r.get("notify", ())),
                orcpt=r.get("orcpt"),
            )
            for r in data["recipients"]
        )
        fields = {k: v for k, v in data.items() if k != "recipients" and k in cls.__dataclass_fields__}
        return cls(recipients=recipients, **fields)


_ENVELOPE_FIELDS = tuple(f.name for f in fields(Envelope))
_RECIPIENT_FIELDS = tuple(f.name for f in fields(Recipient))


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message the spool holds durably: its queue ID, envelope and content size in octets.

    ``delivered``: already in its one recipient's mailbox before the 250
    (:mod:`postoffice.delivery.direct`); the spool does not hold it and nothing is left to do.
    """

    queue_id: str
    envelope: Envelope
    size: int
    delivered: bool = False
