"""Building a message to send from what a person typed: addresses, subject, text, files.

Untrusted input seen here: addresses, header lines, text and file names from the command line
or a terminal. Every address is checked against the RFC 5321 Mailbox grammar before it reaches
an envelope, and no header name or value may carry a line break, so nothing typed can add a
header or an SMTP command of its own (header injection).

The message is built by the standard library's :class:`email.message.EmailMessage`: MIME
structure, RFC 2047 encoded words for non-ASCII text in headers, and raw UTF-8 headers
(RFC 6532) only when an address needs them, which is also when SMTPUTF8 is needed to send it.
"""

from __future__ import annotations

import email.policy
import email.utils
import mimetypes
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path

from postoffice.errors import LocalProtocolError, MessageError
from postoffice.smtp import client as core

# RFC 5322 §3.6.8: ftext = %d33-57 / %d59-126, printable ASCII except the colon.
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
# Headers that must agree with the envelope, so only --from, --to, --cc and --bcc set them.
_ENVELOPE_FIELDS = frozenset({"from", "to", "cc", "bcc"})


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One address as typed: an optional display name and the address itself."""

    name: str
    address: str

    def header(self) -> Address:
        local, _, domain = self.address.rpartition("@")
        return Address(self.name, local, domain)


def parse_mailboxes(text: str, *, what: str) -> list[Mailbox]:
    """``alice@example.com``, ``Alice <alice@example.com>`` or several, comma-separated."""
    if not text.isprintable():
        raise MessageError(f"{what}: {text!r} contains a line break or control character")
    found = [Mailbox(name, address) for name, address in email.utils.getaddresses([text])]
    try:
        for box in found:
            core.check_address(box.address)
    except LocalProtocolError:
        # The whole text, as typed: getaddresses keeps only part of what it cannot parse
        # ("not an address" gives "not").
        if len(found) > 1:
            raise MessageError(
                f"{what}: {text!r} has an address that is not valid (local-part@domain, commas between several)"
            ) from None
        raise MessageError(f"{what}: {text!r} is not a valid address (local-part@domain)") from None
    if not found:
        raise MessageError(f"{what}: {text!r} is not an address")
    return found


def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` from ``--header``; the name is RFC 5322 field-name text."""
    name, colon, value = text.partition(":")
    name = name.strip()
    if not colon or not _FIELD_NAME.fullmatch(name):
        raise MessageError(f'--header: {text!r} is not "Name: value"')
    if not value.isprintable():
        raise MessageError(f"--header: the value of {name} contains a line break or control character")
    return name, value.strip()


@dataclass(frozen=True, slots=True)
class Draft:
    """A message as a person describes it; :func:`build` turns it into bytes and an envelope."""

    sender: Mailbox
    to: tuple[Mailbox, ...] = ()
    cc: tuple[Mailbox, ...] = ()
    bcc: tuple[Mailbox, ...] = ()  # envelope only: a Bcc header would tell every recipient
    subject: str = ""
    text: str = ""
    html: str | None = None
    attachments: tuple[Path, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def recipients(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(box.address for box in (*self.to, *self.cc, *self.bcc)))


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message ready for SMTP: envelope sender, envelope recipients, the bytes (CRLF lines)."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes


def build(draft: Draft) -> Outgoing:
    """The message for ``draft``, with Date and Message-ID (RFC 5322 §3.6.1, §3.6.4)."""
    if not draft.recipients:
        raise MessageError("no recipients: give at least one --to, --cc or --bcc")
    if not draft.subject.isprintable():
        raise MessageError("the subject contains a line break or control character")
    boxes = (draft.sender, *draft.to, *draft.cc)
    utf8 = not all(box.address.isascii() for box in (*boxes, *draft.bcc))
    # RFC 6532 UTF-8 headers only when an address needs them; otherwise RFC 2047 encoded
    # words, which every reader understands. Both policies write CRLF line endings.
    policy = email.policy.SMTPUTF8 if utf8 else email.policy.SMTP
    message = EmailMessage(policy=policy)
    message["From"] = draft.sender.header()
    if draft.to:
        message["To"] = [box.header() for box in draft.to]
    if draft.cc:
        message["Cc"] = [box.header() for box in draft.cc]
    if draft.subject:
        message["Subject"] = draft.subject
    message["Date"] = email.utils.formatdate(localtime=True)
    domain = draft.sender.address.rpartition("@")[2]
    message["Message-ID"] = email.utils.make_msgid(domain=domain)
    message["MIME-Version"] = "1.0"
    _set_body(message, draft)
    _add_headers(message, draft.headers)
    return Outgoing(draft.sender.address, draft.recipients, message.as_bytes(policy=policy))


def _set_body(message: EmailMessage, draft: Draft) -> None:
    text = draft.text if draft.text.endswith("\n") or not draft.text else draft.text + "\n"
    if draft.html is not None and not draft.text:
        message.set_content(draft.html, subtype="html")
    else:
        message.set_content(text)
        if draft.html is not None:
            message.add_alternative(draft.html, subtype="html")  # RFC 2046 §5.1.4
    for path in draft.attachments:
        _attach(message, path)


def _attach(message: EmailMessage, path: Path) -> None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MessageError(f"--attach: {path}: {exc.strerror or exc}") from None
    kind, encoding = mimetypes.guess_type(path.name)
    # A compressed file (".tar.gz": encoding "gzip") is sent as the bytes it is.
    if kind is None or encoding is not None:
        kind = "application/octet-stream"
    maintype, _, subtype = kind.partition("/")
    message.add_attachment(data, maintype=maintype, subtype=subtype, filename=path.name)


def _add_headers(message: EmailMessage, headers: Iterable[tuple[str, str]]) -> None:
    replaced: set[str] = set()
    for name, value in headers:
        key = name.lower()
        if key in _ENVELOPE_FIELDS:
            raise MessageError(f"--header: set {name} with --{key}, so the envelope matches it")
        # The first --header of a name we set ourselves (Subject, Date, Message-ID...) replaces
        # ours; later ones, and names we do not set, are added.
        if key not in replaced and key in (existing.lower() for existing in message):
            del message[name]
        replaced.add(key)
        try:
            message[name] = value
        except (ValueError, TypeError) as exc:
            raise MessageError(f"--header: {name}: {exc}") from None


def mailboxes(values: Sequence[str], *, what: str) -> tuple[Mailbox, ...]:
    """Every address in ``values`` (each may hold several, comma-separated)."""
    return tuple(box for value in values for box in parse_mailboxes(value, what=what))
