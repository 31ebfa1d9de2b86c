"""Parsing one stored message for the index and for display.

Untrusted input seen here: the whole message as a sender wrote it: headers that may be
malformed or lie, bodies in any charset, HTML written to attack whoever reads it, attachments
with hostile names and types. Parsing uses the stdlib ``email`` package with
``policy.default`` (RFC 5322/2047/2231 aware); a header the parser chokes on falls back to its
raw text, so one broken header never hides a message.

HTML is sanitised with nh3 (the ammonia sanitiser): scripts, event handlers, forms, frames,
``<meta>`` and ``<base>`` are dropped. That is the first wall; the second is that the UI shows
the result only in a sandboxed iframe under a Content-Security-Policy (see ``api.py``).
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import html as html_lib
import itertools
import mimetypes
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage, Message
from email.parser import BytesParser
from pathlib import Path
from typing import BinaryIO, cast

import nh3

# Text kept for full-text search per message: enough for any real body, bounded so one huge
# message cannot bloat the index.
MAX_INDEXED_TEXT = 256 * 1024
# Characters of body text the message list shows under a subject: more than a wide list
# pane fits on its one line, a few hundred bytes per message in the index.
SNIPPET_LENGTH = 200
# The index parses at most this much of a message: the headers, the text bodies it keeps and
# the parts' own headers come first; a 20 MB attachment need not be in memory to be counted.
INDEX_PREFIX = 512 * 1024
# Past the prefix, a MIME part that is an attachment shows itself by its header (RFC 2183
# Content-Disposition, or a leaf type other than text, RFC 2045 §5). Neither can occur inside
# base64 (no ":" in its alphabet), the encoding of nearly every attachment.
_ATTACHMENT_HEADER = re.compile(
    rb"content-disposition:[ \t]*attachment\b|content-type:[ \t]*(?!text/|multipart/)[!#$&^_.+\w-]+/"
)
_HEADER_LINE = b"\ncontent-"
_SCAN_BLOCK = 256 * 1024
# Authentication-Results fields read per message. Ours is normally the topmost (the SMTP side
# adds it on top, RFC 8601 §5); a few more are read in case a filter on this host added one above.
MAX_AUTH_FIELDS = 8
# Inline images (cid:) are embedded into the sanitised HTML as data: URLs up to this size each
# and in total, so the sandboxed view needs no request back to the server.
MAX_INLINE_IMAGE = 2 * 1024 * 1024
MAX_INLINE_TOTAL = 8 * 1024 * 1024

# Tags that make sense in mail. nh3's defaults plus the layout tags mail is built from; never
# script, iframe, object, embed, form, input, meta, base, link (the sanitiser drops them).
_TAGS = frozenset(nh3.ALLOWED_TAGS | {"font", "style", "tfoot", "center"})
# Removed together with their content.
_CLEAN_CONTENT = frozenset({"script", "title", "noscript", "template", "svg", "math", "iframe", "object"})
_GENERIC_ATTRIBUTES = frozenset(
    {"style", "class", "id", "align", "valign", "width", "height", "bgcolor", "color", "dir", "lang", "title"}
)
_ATTRIBUTES: dict[str, set[str]] = {tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()}
_ATTRIBUTES["*"] = set(_GENERIC_ATTRIBUTES)
_ATTRIBUTES.setdefault("font", set()).update({"face", "size", "color"})
_ATTRIBUTES.setdefault("table", set()).update({"border", "cellpadding", "cellspacing", "background"})
_ATTRIBUTES.setdefault("td", set()).update({"background", "nowrap"})
_ATTRIBUTES.setdefault("img", set()).update({"border"})
_URL_SCHEMES = frozenset({"http", "https", "mailto", "cid", "data"})

# What would make the browser fetch something from elsewhere once allowed: image sources,
# background images, CSS url() and @import. Links (href) load only when clicked.
_REMOTE_REFERENCE = re.compile(
    r"""(?:\b(?:src|srcset|background|poster)\s*=\s*["']?\s*(?:https?:)?//)"""
    r"""|(?:url\(\s*["']?\s*(?:https?:)?//)|(?:@import)""",
    re.IGNORECASE,
)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ ()+-]")


@dataclass(frozen=True, slots=True)
class Summary:
    """What the index keeps of a message."""

    sender: str
    recipients: str
    subject: str
    date: float | None
    has_attachments: bool
    text: str
    # Delivered-To: the envelope recipient, found by to: searches but not shown as "To".
    delivered_to: str
    # The Authentication-Results values (RFC 8601), topmost first: the index keeps the results
    # of the one our server wrote (web/authresults.py).
    auth_results: tuple[str, ...] = ()
    # The X-Tags field as written (comma-separated tags, web/tags.py); empty for none.
    x_tags: str = ""


@dataclass(frozen=True, slots=True)
class Attachment:
    name: str
    content_type: str
    size: int
    content_id: str | None


@dataclass(frozen=True, slots=True)
class MessageView:
    """One message, prepared for display: ``html`` is already sanitised."""

    headers: list[tuple[str, str]]
    text: str | None
    html: str | None
    remote_content: bool
    attachments: list[Attachment]


class _HeaderClasses(HeaderRegistry):
    """The stdlib's header registry, making each header class once.

    ``HeaderRegistry`` builds a new class (``type(...)``) every time a header is read, which
    cost more than parsing the header itself when indexing mail. The class depends only on the
    parser class chosen for the name, of which there are a dozen, so the cache stays that small
    whatever header names a message brings.
    """

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[object, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        parser = self.registry.get(name.lower(), self.default_class)
        made = self._made.get(parser)
        if made is None:
            made = self._made[parser] = super().__getitem__(name)
        return made


# policy.default (RFC 5322/2047/2231 aware), with header classes made once.
_POLICY = policy.default.clone(header_factory=_HeaderClasses())


def parse(stream: BinaryIO) -> EmailMessage:
    return BytesParser(policy=_POLICY).parse(stream)


def parse_file(path: Path) -> EmailMessage:
    with path.open("rb") as stream:
        return parse(stream)


def _unicode(text: str) -> str:
    """``text`` with any undecodable bytes (kept by the parser as lone surrogates) turned
    into U+FFFD: SQLite, JSON and browsers all refuse lone surrogates."""
    if text.isascii():  # no surrogates, and no encoded copy of a long body made to find none
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text


# Plain headers, read without the email package's parser (see _plain_header): printable ASCII
# with no encoded word (RFC 2047 "=?"), and for address fields, a list of dot-atom mailboxes,
# each bare, in angle brackets, or after a display name of atoms (RFC 5322 §3.2.3, §3.4).
_PLAIN_TEXT = re.compile(r"[\t\r\n -~]*")
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_PLAIN_MAILBOX = re.compile(
    rf"\s*(?:(?P<name>{_ATEXT}(?:\s+{_ATEXT})*)\s*<(?P<named>{_DOT_ATOM}@{_DOT_ATOM})>"
    rf"|<(?P<angled>{_DOT_ATOM}@{_DOT_ATOM})>|(?P<bare>{_DOT_ATOM}@{_DOT_ATOM}))\s*"
)
# The fields the index reads that the stdlib parses as unstructured text or as address lists.
_UNSTRUCTURED = frozenset({"subject", "delivered-to"})
_ADDRESS_LISTS = frozenset({"from", "to", "cc"})


def _plain_raw(message: Message, name: str) -> str | None:
    """The first ``name`` header as it stands in the message, if it is printable ASCII."""
    for key, value in message.raw_items():
        if key.lower() == name:
            return value if isinstance(value, str) and _PLAIN_TEXT.fullmatch(value) else None
    return None


def _plain_header(message: Message, name: str) -> str | None:
    """What :func:`header` returns for a plain header, without parsing it; None otherwise.

    Most mail has only such headers, and the stdlib's parser, which builds a token tree for
    every address, costs more than the rest of indexing a small message. The result is the
    one the parser gives (``test_web_message`` compares them): unstructured text with no encoded
    word is its own value, and a mailbox prints as ``addr`` or ``name <addr>``.
    """
    if name not in _UNSTRUCTURED and name not in _ADDRESS_LISTS:
        return None
    raw = _plain_raw(message, name)
    if raw is None or "=?" in raw:
        return None
    if name in _UNSTRUCTURED:
        return " ".join(raw.split())
    mailboxes = []
    for item in raw.split(","):
        match = _PLAIN_MAILBOX.fullmatch(item)
        if match is None:
            return None
        named = match["named"]
        if named is not None:
            mailboxes.append(f"{' '.join(match['name'].split())} <{named}>")
        else:
            mailboxes.append(match["angled"] or match["bare"])
    return ", ".join(mailboxes)


def header(message: Message, name: str) -> str:
    """The decoded value of header ``name`` (RFC 2047), or its raw text if decoding fails."""
    plain = _plain_header(message, name)
    if plain is not None:
        return plain
    try:
        value = message.get(name)
    except Exception:  # the email package raises several types on hostile headers
        value = None
        for key, raw in message.raw_items():
            if key.lower() == name.lower():
                value = raw
                break
    if value is None:
        return ""
    return _unicode(" ".join(str(value).split()))


def header_list(message: Message) -> list[tuple[str, str]]:
    result: list[tuple[str, str]] = []
    for key, raw in message.raw_items():
        try:
            text = str(message.policy.header_fetch_parse(key, raw))
        except Exception:
            text = str(raw)
        result.append((_unicode(key), _unicode(text)))
    return result


def header_date(message: Message) -> float | None:
    # The stdlib's Date header parses the text with parsedate_to_datetime and prints it again,
    # which parses back to the same time: parse a printable one once, directly.
    raw = _plain_raw(message, "date")
    value = " ".join(raw.split()) if raw is not None else header(message, "date")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def leaves(part: Message) -> Iterator[Message]:
    """Every non-multipart part in order; an attached message (message/rfc822) is one leaf."""
    if part.get_content_maintype() == "multipart":
        payload = part.get_payload()
        if isinstance(payload, list):
            for child in payload:
                if isinstance(child, Message):
                    yield from leaves(child)
        return
    yield part


def _body_parts(message: EmailMessage) -> tuple[Message | None, Message | None]:
    """The text/plain and text/html bodies as a mail reader picks them (RFC 2046 §5.1.4)."""
    if not message.is_multipart():
        # What get_body finds in a message of one part, asked once rather than twice: each
        # question reads the headers again, and most mail the index sees is one text part.
        if message.is_attachment():
            return None, None
        kind = message.get_content_type()
        return (message if kind == "text/plain" else None), (message if kind == "text/html" else None)
    try:
        text = message.get_body(preferencelist=("plain",))
        rich = message.get_body(preferencelist=("html",))
    except Exception:
        return None, None
    return text, rich


def _is_body_candidate(part: Message) -> bool:
    return (
        part.get_content_type() in ("text/plain", "text/html")
        and not part.get_filename()
        and (part.get_content_disposition() != "attachment")
    )


# Charsets in which text of ASCII octets means those characters (RFC 2046 §4.1.2: US-ASCII when
# none is named), and transfer encodings that leave octets as they are (RFC 2045 §6.2).
_ASCII_CHARSETS = frozenset({"us-ascii", "ascii", "utf-8", "utf8", "iso-8859-1", "latin1", "windows-1252"})
_IDENTITY_ENCODINGS = frozenset({"", "7bit", "8bit", "binary"})


def _plain_text_of(part: Message) -> str | None:
    """The text of ``part`` when its octets are ASCII and need no decoding: the payload itself,
    as ``get_content`` would return it, without its two copies (octets, then text) of the body.
    None when the full decoding is needed."""
    payload = part.get_payload()
    if not isinstance(payload, str) or not payload.isascii():
        return None
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    charset = str(part.get_param("charset", "us-ascii")).strip().lower()
    return payload if encoding in _IDENTITY_ENCODINGS and charset in _ASCII_CHARSETS else None


def _text_of(part: Message | None) -> str | None:
    if part is None:
        return None
    plain = _plain_text_of(part)
    if plain is not None:
        return plain
    try:
        content = cast(EmailMessage, part).get_content()
    except Exception:
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else None
    return _unicode(content) if isinstance(content, str) else None


def attachment_parts(message: EmailMessage) -> list[Message]:
    return _attachments_besides(message, *_body_parts(message))


def _attachments_besides(message: EmailMessage, text: Message | None, rich: Message | None) -> list[Message]:
    """Every leaf that is neither of the bodies ``_body_parts`` picked."""
    return [
        part
        for part in leaves(message)
        if part is not text and part is not rich and not (part is message and _is_body_candidate(part))
    ]


def attachment_bytes(part: Message) -> bytes:
    if part.get_content_type() == "message/rfc822":
        payload = part.get_payload()
        if isinstance(payload, list) and payload:
            return cast(Message, payload[0]).as_bytes(policy=policy.default)
        return b""
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def attachment_name(part: Message, number: int) -> str:
    """A file name safe for a download header and a file system: no path, no controls."""
    try:
        name = part.get_filename() or ""
    except Exception:
        name = ""
    name = _unicode(name).replace("\\", "/").rsplit("/", 1)[-1].strip().lstrip(".")
    name = "".join(char for char in name if char.isprintable())[:200]
    if not name:
        extension = mimetypes.guess_extension(part.get_content_type()) or ".bin"
        name = f"part{number + 1}{extension}"
    return name


def ascii_name(name: str) -> str:
    return _SAFE_NAME.sub("_", name) or "download"


def summarise_stream(stream: BinaryIO, size: int | None = None) -> Summary:
    """What the index keeps of the message read from ``stream``, holding at most
    :data:`INDEX_PREFIX` of it (and one scan block) in memory.

    ``size``: the message's length, when known, so the read asks for exactly what is there.
    Asked for the whole prefix, ``read`` allocates all of it first: glibc maps 512 KiB, shrinks
    the mapping to the message and unmaps it later, three system calls and fresh zeroed pages
    for every message indexed (strace shows them).
    """
    head = stream.read(INDEX_PREFIX if size is None else min(size, INDEX_PREFIX))
    parsed = _single_part(head) or BytesParser(policy=_POLICY).parsebytes(head)
    summary = summarise(parsed)
    # Only a multipart message has part headers to find past the prefix: in a one-part
    # message, text there that looks like one is body text.
    if len(head) == INDEX_PREFIX and not summary.has_attachments and parsed.is_multipart():
        summary = dataclasses.replace(summary, has_attachments=_attachment_after(stream))
    return summary


def _single_part(data: bytes) -> EmailMessage | None:
    """``data`` parsed, when it is a well-formed message of one part; None otherwise.

    Most mail is one text part. The parser reads a body line by line in Python to look for
    MIME boundaries, which one part has none of: this parses the header block alone and gives
    the message the rest as its body, exactly as the parser would (its text, decoded from
    ASCII with surrogate escapes). Anything unusual (a header block the parser would end early,
    a multipart or message/* type, no blank line) is left to the full parse.
    """
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        split = crlf + 4
    elif lf >= 0:
        split = lf + 2
    else:
        return None
    message = BytesParser(policy=_POLICY).parsebytes(data[:split], headersonly=True)
    if message.defects or message.get_payload() or message.get_content_maintype() in ("multipart", "message"):
        return None
    summarised = _summary_headers(message)
    summarised.set_payload(data[split:].decode("ascii", "surrogateescape"))
    return summarised


# The fields a summary reads (see summarise): the rest, Received, DKIM-Signature and the like,
# often most of a header block, would only lengthen every look-up, each a scan of them all.
_SUMMARY_FIELDS = frozenset(
    {
        "from",
        "to",
        "cc",
        "subject",
        "date",
        "delivered-to",
        "mime-version",
        "authentication-results",
        "x-tags",
    }
)


def _summary_headers(message: EmailMessage) -> EmailMessage:
    """A message with only the header fields a summary reads, in their order, as parsed."""
    kept = EmailMessage(policy=_POLICY)
    for name, value in message.raw_items():
        lowered = name.lower()
        if lowered in _SUMMARY_FIELDS or lowered.startswith("content-"):
            kept.set_raw(name, value)
    return kept


def _attachment_after(stream: BinaryIO) -> bool:
    # Candidates are found with bytes.find on a lower-cased block (C speed over megabytes of
    # base64); only they are matched against the pattern. Blocks overlap by a line's worth,
    # so a header split between two is still seen whole.
    tail = b""
    while block := stream.read(_SCAN_BLOCK):
        window = (tail + block).lower()
        start = window.find(_HEADER_LINE)
        while start != -1:
            if _ATTACHMENT_HEADER.match(window, start + 1):
                return True
            start = window.find(_HEADER_LINE, start + 1)
        tail = window[-200:]
    return False


def summarise(message: EmailMessage) -> Summary:
    text_part, html_part = _body_parts(message)  # looked for once: each look reads every header
    body = _text_of(text_part)
    if body is None:
        body = html_to_text(_text_of(html_part) or "")
    recipients = ", ".join(value for value in (header(message, "to"), header(message, "cc")) if value)
    return Summary(
        sender=header(message, "from"),
        recipients=recipients,
        subject=header(message, "subject"),
        date=header_date(message),
        has_attachments=bool(_attachments_besides(message, text_part, html_part)),
        text=body[:MAX_INDEXED_TEXT],
        delivered_to=header(message, "delivered-to"),
        auth_results=auth_results(message),
        x_tags=header(message, "x-tags"),
    )


def auth_results(message: Message) -> tuple[str, ...]:
    """The first MAX_AUTH_FIELDS Authentication-Results values as written, topmost first."""
    found = (value for name, value in message.raw_items() if name.lower() == "authentication-results")
    return tuple(str(value) for value in itertools.islice(found, MAX_AUTH_FIELDS))


def snippet(text: str) -> str:
    """The start of a body text as one line, for a message list (as mail clients show under
    the subject): whitespace runs become one space, and at most SNIPPET_LENGTH characters."""
    # A body of nothing but whitespace for longer than this shows no snippet, which is right.
    return " ".join(text[: SNIPPET_LENGTH * 4].split())[:SNIPPET_LENGTH].rstrip()


def html_to_text(markup: str) -> str:
    # Only for the search index: every tag goes, with script and style contents.
    stripped = nh3.clean(markup, tags=set(), clean_content_tags={"script", "style", "title"})
    return " ".join(html_lib.unescape(stripped).split())


def _inline_images(message: EmailMessage) -> dict[str, str]:
    images: dict[str, str] = {}
    total = 0
    for part in attachment_parts(message):
        content_id = header(part, "content-id").strip().strip("<>")
        if not content_id or part.get_content_maintype() != "image":
            continue
        data = attachment_bytes(part)
        if len(data) > MAX_INLINE_IMAGE or total + len(data) > MAX_INLINE_TOTAL:
            continue
        total += len(data)
        # SVG can carry script; it stays an attachment and is never inlined.
        if part.get_content_subtype() in ("png", "jpeg", "gif", "webp", "bmp"):
            encoded = base64.b64encode(data).decode("ascii")
            images[content_id] = f"data:{part.get_content_type()};base64,{encoded}"
    return images


def sanitise_html(markup: str, inline: dict[str, str] | None = None) -> tuple[str, bool]:
    """Sanitised HTML and whether it refers to remote content (images, CSS) once allowed."""
    images = inline or {}

    def rewrite(element: str, attribute: str, value: str) -> str | None:
        lowered = value.strip().lower()
        if attribute == "src" and lowered.startswith("cid:"):
            return images.get(value.strip()[4:].strip("<>"), value)
        # data: is for pictures only; a data: link would be a document made by the sender.
        if lowered.startswith("data:") and not (attribute == "src" and lowered.startswith("data:image/")):
            return None
        return value

    clean = nh3.clean(
        markup,
        tags=set(_TAGS),
        clean_content_tags=set(_CLEAN_CONTENT),
        attributes={tag: set(attrs) for tag, attrs in _ATTRIBUTES.items()},
        attribute_filter=rewrite,
        strip_comments=True,
        link_rel="noopener noreferrer",
        url_schemes=set(_URL_SCHEMES),
        # Links open in a new browsing context: the sandboxed frame itself never navigates.
        set_tag_attribute_values={"a": {"target": "_blank"}},
    )
    return clean, _REMOTE_REFERENCE.search(clean) is not None


def view(message: EmailMessage) -> MessageView:
    text_part, html_part = _body_parts(message)
    markup = _text_of(html_part)
    sanitised: str | None = None
    remote = False
    if markup is not None:
        sanitised, remote = sanitise_html(markup, _inline_images(message))
    attachments = [
        Attachment(
            name=attachment_name(part, number),
            content_type=part.get_content_type(),
            size=len(attachment_bytes(part)),
            content_id=header(part, "content-id").strip().strip("<>") or None,
        )
        for number, part in enumerate(attachment_parts(message))
    ]
    return MessageView(
        headers=header_list(message),
        text=_text_of(text_part),
        html=sanitised,
        remote_content=remote,
        attachments=attachments,
    )


def bodies(message: EmailMessage) -> tuple[str | None, str | None]:
    """The text/plain and the raw (unsanitised) text/html body, as a mail reader picks them:
    for reading links and codes out of, never for showing."""
    text_part, html_part = _body_parts(message)
    return _text_of(text_part), _text_of(html_part)
