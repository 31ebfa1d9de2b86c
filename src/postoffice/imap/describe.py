"""ENVELOPE, BODYSTRUCTURE and header field selections (RFC 9051 §7.5.2) from a message's parts.

Untrusted input seen here: header fields as senders wrote them. Values go out as the message
has them (encoded words stay encoded, as RFC 9051 asks), as strings that :mod:`.responses`
quotes or sends as literals; addresses are split with :func:`email.utils.getaddresses`.
"""

from __future__ import annotations

import email.utils
import re

from postoffice.imap.responses import Value
from postoffice.imap.structure import Part

_CONTINUATION = (b" ", b"\t")
_ENVELOPE_ADDRESSES = ("from", "sender", "reply-to", "to", "cc", "bcc")
_FIELD_NAME_RE = re.compile(rb"([!-9;-~]+)[ \t]*:")


def fields(header: bytes) -> list[tuple[bytes, bytes]]:
    """``(name, raw field)`` of each field in a header block, the raw field with its folding
    and line breaks (what HEADER.FIELDS returns)."""
    out: list[tuple[bytes, bytes]] = []
    for line in header.splitlines(keepends=True):
        if line.startswith(_CONTINUATION) and out:
            name, raw = out[-1]
            out[-1] = (name, raw + line)
            continue
        match = _FIELD_NAME_RE.match(line)
        if match is not None:
            out.append((match.group(1).lower(), line))
    return out


def field_value(header: bytes, name: str) -> bytes | None:
    """The first ``name`` field's value, unfolded and trimmed; None if there is none."""
    wanted = name.lower().encode("ascii")
    for field_name, raw in fields(header):
        if field_name == wanted:
            value = raw.split(b":", 1)[1]
            return re.sub(rb"\r?\n(?=[ \t])", b"", value).strip()
    return None


def select_fields(header: bytes, names: tuple[str, ...], *, exclude: bool) -> bytes:
    """HEADER.FIELDS (or .NOT with ``exclude``): the matching fields, then the blank line."""
    wanted = {name.lower().encode("ascii") for name in names}
    kept = b"".join(raw for name, raw in fields(header) if (name in wanted) != exclude)
    return kept + b"\r\n"


def _addresses(value: bytes | None) -> Value:
    if value is None:
        return None
    text = value.decode("utf-8", "surrogateescape")
    found: list[Value] = []
    for name, address in email.utils.getaddresses([text]):
        local, _, domain = address.rpartition("@") if "@" in address else (address, "", "")
        if not local and not domain:
            continue
        found.append(
            (_bytes(name) if name else None, None, _bytes(local), _bytes(domain) if domain else None)
        )
    return found or None


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def envelope(header: bytes) -> Value:
    """RFC 9051 §7.5.2 ENVELOPE: date, subject, from, sender, reply-to, to, cc, bcc,
    in-reply-to, message-id. Sender and reply-to default to from (RFC 3501 §7.4.2)."""
    addresses = {name: _addresses(field_value(header, name)) for name in _ENVELOPE_ADDRESSES}
    for name in ("sender", "reply-to"):
        if addresses[name] is None:
            addresses[name] = addresses["from"]
    return (
        field_value(header, "date"),
        field_value(header, "subject"),
        *(addresses[name] for name in _ENVELOPE_ADDRESSES),
        field_value(header, "in-reply-to"),
        field_value(header, "message-id"),
    )


def _params(part: Part) -> Value:
    if not part.params:
        return None
    return [item for key, value in part.params for item in (_bytes(key), _bytes(value))]


def _disposition(part: Part) -> Value:
    value = field_value(part.header, "content-disposition")
    if value is None:
        return None
    kind, *rest = value.split(b";")
    params: list[Value] = []
    for item in rest:
        key, equals, raw = item.partition(b"=")
        if equals:
            params += [key.strip(), raw.strip().strip(b'"')]
    return (kind.strip(), params or None)


def bodystructure(part: Part, *, extended: bool = True) -> Value:
    """BODYSTRUCTURE (``extended``) or BODY of ``part``."""
    # Types, parameters and encodings as the message writes them (Dovecot does the same).
    maintype, subtype = part.written_type
    if part.children:
        inner: list[Value] = [bodystructure(child, extended=extended) for child in part.children]
        if not extended:
            return (*inner, _bytes(subtype))
        return (*inner, _bytes(subtype), _params(part), _disposition(part), None, None)
    encoding = field_value(part.header, "content-transfer-encoding") or b"7bit"
    basic: list[Value] = [
        _bytes(maintype),
        _bytes(subtype),
        _params(part),
        field_value(part.header, "content-id"),
        field_value(part.header, "content-description"),
        encoding,
        part.size,
    ]
    if part.message is not None:
        inner_message = part.message
        basic += [envelope(inner_message.header), bodystructure(inner_message, extended=extended), part.lines]
    elif maintype == "text":
        basic.append(part.lines)
    if extended:
        basic += [field_value(part.header, "content-md5"), _disposition(part), None, None]
    return basic
