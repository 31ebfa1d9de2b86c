"""FETCH data of one message (RFC 9051 §7.5.2), read from the store without reading it whole.

Untrusted input seen here: message bytes (through :mod:`postoffice.imap.structure`), and the
client's items, already parsed. A ``BODY[...]<origin.count>`` reads only the octets asked for
(one seek, one bounded read); ENVELOPE and BODYSTRUCTURE need one streaming pass over the file,
made once per message and FETCH.
"""

from __future__ import annotations

import binascii
import io
import quopri
from collections.abc import Sequence
from typing import BinaryIO

from postoffice.imap import describe, responses
from postoffice.imap.fetch_items import FetchItem, Section
from postoffice.imap.grammar import flag_names, format_date_time
from postoffice.imap.responses import FileLiteral, Literal, Segment, Value
from postoffice.imap.structure import Part, parse_structure, resolve
from postoffice.imapd.session import No
from postoffice.storage import StoredMessage

# Literals at least this long are not read here: the transport copies them from the file in
# blocks as it sends them, so a 20 MB BODY[] never sits in memory whole.
STREAM_AT = 256 * 1024
# Items answered from the listing alone, without opening the message.
_CHEAP = frozenset({"FLAGS", "UID", "INTERNALDATE", "MODSEQ"})


class MessageView:
    """One message's file and structure, opened and parsed only when an item needs them."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self._structure: Part | None = None
        # Set once a FileLiteral refers to the stream: its reader, not this view, closes it.
        self.streamed = False

    @property
    def structure(self) -> Part:
        if self._structure is None:
            self.stream.seek(0)
            self._structure = parse_structure(self.stream)
        return self._structure

    @property
    def size(self) -> int:
        return self.stream.seek(0, io.SEEK_END)

    def literal(self, start: int, end: int, partial: tuple[int, int] | None) -> Value:
        """The octets from ``start`` to ``end`` (``partial`` of them) as a literal: read now
        when small, else a FileLiteral the transport copies from the file in blocks."""
        if partial is not None:
            start, end = min(start + partial[0], end), min(start + partial[0] + partial[1], end)
        if end - start < STREAM_AT:
            return Literal(self.range(start, end, None))
        self.streamed = True
        return FileLiteral(end - start, (self.stream, start))

    def range(self, start: int, end: int, partial: tuple[int, int] | None) -> bytes:
        if partial is not None:
            start, end = min(start + partial[0], end), min(start + partial[0] + partial[1], end)
        self.stream.seek(start)
        return self.stream.read(max(0, end - start))


def needs_file(items: list[FetchItem]) -> bool:
    return any(item.name not in _CHEAP for item in items)


def fetch_values(
    uid: int,
    message: StoredMessage,
    items: list[FetchItem],
    view: MessageView | None,
    modseq: int = 1,
    keywords: Sequence[str] = (),
) -> list[Value]:
    """The FETCH data list for ``items`` (UID first, as UID FETCH must include it)."""
    out: list[Value] = []
    for item in items:
        name = item.name
        if name == "UID":
            continue
        out.append(item.label())
        if name == "FLAGS":
            out.append(flag_names(message.flags, keywords))
        elif name == "INTERNALDATE":
            out.append(format_date_time(message.received).encode("ascii"))
        elif name == "MODSEQ":
            out.append((modseq,))
        else:
            assert view is not None
            out.append(_from_file(item, view))
    return ["UID", uid, *out]


def _from_file(item: FetchItem, view: MessageView) -> Value:
    name = item.name
    if name == "RFC822.SIZE":
        return view.size
    if name == "ENVELOPE":
        return describe.envelope(view.structure.header)
    if name in ("BODYSTRUCTURE", "BODY") and item.section is None:
        return describe.bodystructure(view.structure, extended=name == "BODYSTRUCTURE")
    if name == "RFC822":
        return view.literal(0, view.size, None)
    if name == "RFC822.HEADER":
        return Literal(view.range(0, view.structure.body_start, None))
    if name == "RFC822.TEXT":
        return view.literal(view.structure.body_start, view.size, None)
    assert item.section is not None
    if name == "BINARY.SIZE":
        return len(binary_bytes(view, item.section.part))
    if name == "BINARY":
        decoded = binary_bytes(view, item.section.part)
        if item.partial is not None:
            decoded = decoded[item.partial[0] : item.partial[0] + item.partial[1]]
        # RFC 3516 §4.3: octets a literal may not hold (NUL) go in a literal8.
        return Literal(decoded, binary=b"\0" in decoded)
    return section_value(view, item.section, item.partial)


def binary_bytes(view: MessageView, numbers: tuple[int, ...]) -> bytes:
    """A part's content with its transfer encoding undone (RFC 3516 BINARY); the whole part is
    read (and decoded) in memory. No [UNKNOWN-CTE] for an encoding we cannot undo."""
    part = resolve(view.structure, numbers) if numbers else view.structure
    if part is None:
        return b""
    if part.children or part.message is not None:
        raise No("BINARY is for parts that are not multipart or message", "UNKNOWN-CTE")
    raw = view.range(part.body_start, part.end, None)
    encoding = (describe.field_value(part.header, "content-transfer-encoding") or b"7bit").strip().lower()
    if encoding in (b"7bit", b"8bit", b"binary"):
        return raw
    if encoding == b"base64":
        try:
            return binascii.a2b_base64(b"".join(raw.split()))
        except binascii.Error:
            raise No("the part's base64 is broken; fetch it with BODY[] instead", "PARSE") from None
    if encoding == b"quoted-printable":
        return quopri.decodestring(raw)
    raise No("unknown Content-Transfer-Encoding", "UNKNOWN-CTE")


def section_span(view: MessageView, section: Section) -> tuple[int, int] | bytes:
    """Where ``section`` is (RFC 9051 §6.4.5): its offsets, or its octets when they are not
    one range of the file (HEADER.FIELDS), or nothing for a part that does not exist (as
    Dovecot answers)."""
    if not section.part and not section.text:
        return (0, view.size)
    node = resolve(view.structure, section.part)
    if node is None:
        return b""
    if section.text == "MIME":
        return (node.start, node.body_start)
    if section.text == "":
        return (node.body_start, node.end)
    target = node
    if section.part:
        if node.message is None:
            return b""
        target = node.message
    if section.text == "TEXT":
        return (target.body_start, target.end)
    if section.text == "HEADER":
        return (target.start, target.body_start)
    return describe.select_fields(target.header, section.fields, exclude=section.text == "HEADER.FIELDS.NOT")


def section_bytes(view: MessageView, section: Section, partial: tuple[int, int] | None) -> bytes:
    """The octets of ``section``, ``partial`` only when asked."""
    span = section_span(view, section)
    if isinstance(span, tuple):
        return view.range(*span, partial)
    return span if partial is None else span[partial[0] : partial[0] + partial[1]]


def section_value(view: MessageView, section: Section, partial: tuple[int, int] | None) -> Value:
    span = section_span(view, section)
    if isinstance(span, tuple):
        return view.literal(*span, partial)
    return Literal(span if partial is None else span[partial[0] : partial[0] + partial[1]])


def fetch_response(seq: int, values: list[Value]) -> list[Segment]:
    return responses.untagged_segments(seq, "FETCH", values)
