"""Parsing and sanitising messages for display: hostile HTML, broken headers, odd charsets,
attachment names that try to be paths, inline images."""

from __future__ import annotations

import base64
import io
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.web import message


def parse(raw: bytes) -> EmailMessage:
    return message.parse(io.BytesIO(raw))


HOSTILE = """
<meta http-equiv="refresh" content="0;url=http://evil.example/">
<base href="http://evil.example/">
<link rel="stylesheet" href="http://evil.example/s.css">
<script>alert(1)</script><noscript><img src=x></noscript>
<p onclick="alert(2)" style="color:red">text</p>
<img src="x" onerror="alert(3)">
<a href="javascript:alert(4)">js</a><a href="vbscript:x">vb</a><a href="data:text/html,<script>alert(5)</script>">data</a>
<iframe src="http://evil.example/"></iframe><object data="x"></object><embed src="x">
<form action="http://evil.example/"><input name=q><button formaction="http://evil.example/">go</button></form>
<svg onload="alert(6)"><script>alert(7)</script></svg><math><mi xlink:href="javascript:alert(8)">m</mi></math>
<template><script>alert(9)</script></template>
"""


def test_sanitiser_removes_everything_active() -> None:
    clean, _ = message.sanitise_html(HOSTILE)
    lowered = clean.lower()
    for forbidden in (
        "<script",
        "onclick",
        "onerror",
        "onload",
        "javascript:",
        "vbscript:",
        "data:text/html",
        "<iframe",
        "<object",
        "<embed",
        "<form",
        "<input",
        "<button",
        "<meta",
        "<base",
        "<link",
        "<svg",
        "<math",
        "<template",
        "alert(",
    ):
        assert forbidden not in lowered, forbidden
    assert '<p style="color:red">text</p>' in clean
    assert 'target="_blank"' in clean and 'rel="noopener noreferrer"' in clean


@pytest.mark.parametrize(
    ("markup", "remote"),
    [
        ('<img src="https://t.example/p.gif">', True),
        ('<img src="//t.example/p.gif">', True),
        ('<table background="http://t.example/b.png"><tr><td>x</td></tr></table>', True),
        ('<div style="background:url(https://t.example/b.png)">x</div>', True),
        ("<style>@import url(x.css);</style>", True),
        ('<a href="https://example.org/">a link loads nothing until clicked</a>', False),
        ('<img src="data:image/png;base64,AAAA">', False),
        ("<p>plain</p>", False),
    ],
)
def test_remote_content_is_detected(markup: str, remote: bool) -> None:
    assert message.sanitise_html(markup)[1] is remote


def related_message(image_type: str = "png") -> bytes:
    outer = EmailMessage()
    outer["Subject"] = "inline"
    outer.set_content("text")
    outer.add_alternative('<p>logo: <img src="cid:logo@x"></p>', subtype="html")
    html_part = outer.get_payload()[1]
    html_part.add_related(b"\x89PNG fake", maintype="image", subtype=image_type, cid="<logo@x>")
    return outer.as_bytes()


def test_inline_images_become_data_urls() -> None:
    view = message.view(parse(related_message()))
    expected = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()
    assert view.html is not None and f'src="{expected}"' in view.html
    assert view.remote_content is False
    assert [a.content_id for a in view.attachments] == ["logo@x"]


def test_svg_is_never_inlined() -> None:
    view = message.view(parse(related_message("svg+xml")))
    assert view.html is not None and "data:image/svg" not in view.html


def test_broken_headers_do_not_hide_a_message() -> None:
    raw = (
        b"From: =?utf-8?q?broken\r\n"
        b"To: <<<>>>@@@\r\n"
        b"Subject: =?unknown-charset?b?SGVsbG8=?= world\r\n"
        b"Date: not a date\r\n"
        b"Content-Type: text/plain; charset=x-no-such-charset\r\n"
        b"\r\n"
        b"caf\xe9\r\n"
    )
    parsed = parse(raw)
    summary = message.summarise(parsed)
    assert summary.date is None
    assert "world" in summary.subject
    assert "caf" in summary.text
    view = message.view(parsed)
    assert [name for name, _ in view.headers] == ["From", "To", "Subject", "Date", "Content-Type"]


def test_latin1_body_is_decoded() -> None:
    raw = b"Subject: x\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\ncaf\xe9 cr\xe8me\r\n"
    assert message.summarise(parse(raw)).text.strip() == "café crème"


def test_html_only_message_is_searchable_as_text() -> None:
    raw = b"Subject: x\r\nContent-Type: text/html\r\n\r\n<style>p{color:red}</style><p>Hello&nbsp;<b>there</b></p>\r\n"
    summary = message.summarise(parse(raw))
    assert summary.text == "Hello\xa0there" or summary.text == "Hello there"
    assert "color" not in summary.text


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Windows\\evil.exe", "evil.exe"),
        (".bashrc", "bashrc"),
        ("na\x07me.txt", "name.txt"),
        ("", "part1.pdf"),
    ],
)
def test_attachment_names_are_only_names(filename: str, expected: str) -> None:
    outer = EmailMessage()
    outer.set_content("x")
    outer.add_attachment(b"data", maintype="application", subtype="pdf", filename=filename or None)
    (part,) = message.attachment_parts(outer)
    assert message.attachment_name(part, 0) == expected


def test_attached_message_is_one_attachment() -> None:
    inner = EmailMessage()
    inner["Subject"] = "forwarded"
    inner.set_content("inner text")
    inner.add_attachment(b"x", maintype="application", subtype="octet-stream", filename="inner.bin")
    outer = EmailMessage()
    outer["Subject"] = "fwd"
    outer.set_content("see attached")
    outer.add_attachment(inner)
    parsed = parse(outer.as_bytes())
    parts = message.attachment_parts(parsed)
    assert [p.get_content_type() for p in parts] == ["message/rfc822"]
    assert b"Subject: forwarded" in message.attachment_bytes(parts[0])
    assert message.summarise(parsed).has_attachments is True


def test_indexed_text_is_bounded() -> None:
    raw = b"Subject: big\r\n\r\n" + b"word " * (message.MAX_INDEXED_TEXT // 2)
    assert len(message.summarise(parse(raw)).text) == message.MAX_INDEXED_TEXT


def test_undecodable_bytes_become_replacement_characters() -> None:
    raw = (
        b"Subject: h\xe9llo\r\nX-Raw: \xff\xfe\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nb\xe9dy\r\n"
    )
    parsed = parse(raw)
    summary = message.summarise(parsed)
    view = message.view(parsed)
    for text in (summary.subject, summary.text, *(value for _, value in view.headers)):
        text.encode("utf-8")  # no lone surrogates: SQLite and JSON take it
    assert "\ufffd" in summary.subject


def test_header_classes_are_made_once_and_parse_as_the_default_policy() -> None:
    from email import policy
    from email.parser import BytesParser

    raw = (
        b'From: "Joe Q" <joe@example.com>\r\nTo: a@example.com, =?utf-8?q?J=C3=B6rg?= <j@example.com>\r\n'
        b"Subject: =?utf-8?q?h=C3=A9llo?=\r\nDate: Sun, 29 Nov 2026 03:00:00 +0000\r\nX-Any: 1\r\n\r\nbody\r\n"
    )
    first, second = (message.parse(io.BytesIO(raw)) for _ in range(2))
    assert type(first["from"]) is type(second["from"]) and type(first["x-any"]) is type(second["x-any"])
    reference = BytesParser(policy=policy.default).parse(io.BytesIO(raw))
    assert message.summarise(first) == message.summarise(reference)


ADDRESS_FIELDS = [
    "<sender@example.com>",
    "sender@example.com",
    "Joe Q <joe@example.com>",
    "Joe   Q  <joe@example.com>",
    "Joe<joe@example.com>",
    "a@example.com, <c@example.com>, Name <e@example.org>",
    "a@example.com,\r\n c@example.com",
    "x!#$%&'*+-/=?^_`{|}~@y.example",
    "J!m <j@example.com>",
    "a@b, ",
    "a@b,,c@d",
    "Joe.Q <j@example.com>",
    '"Joe" <j@example.com>',
    "<j@example.com> (comment)",
    "undisclosed-recipients:;",
    "a..b@example.com",
    "<a@[192.0.2.1]>",
    "=?utf-8?q?J=C3=B6rg?= <j@example.com>",
    "a@b c@d",
    "<>",
]
TEXT_FIELDS = [
    "hello world",
    "  hi   there ",
    "a\r\n b",
    "x=?y",
    "=?utf-8?q?h=C3=A9llo?=",
    "(comment) text",
    '"q"',
]
DATES = [
    "Sun, 29 Nov 2026 03:52:05 +0000 (UTC)",
    "29 Nov 26 03:52 -0000",
    "Sun, 29 Nov 2026 03:52:05 +0530",
    "not a date",
    "Sun, 31 Feb 2026 03:52:05 +0000",
]


@pytest.mark.parametrize(
    ("field", "value"),
    [(field, value) for field in ("From", "To", "Cc") for value in ADDRESS_FIELDS]
    + [(field, value) for field in ("Subject", "Delivered-To") for value in TEXT_FIELDS + ADDRESS_FIELDS]
    + [("Date", value) for value in DATES],
)
def test_plain_headers_read_without_the_parser_read_as_the_parser_reads_them(field: str, value: str) -> None:
    import email.utils
    from email import policy
    from email.parser import BytesParser

    raw = f"{field}: {value}\r\n\r\nbody\r\n".encode()
    reference = BytesParser(policy=policy.default).parse(io.BytesIO(raw))
    parsed = message.parse(io.BytesIO(raw))
    assert message.summarise(parsed) == message.summarise(reference)
    # The reference result, read through the parser alone.
    expected = " ".join(str(reference.get(field) or "").split())
    if field == "Date":
        try:
            want: float | None = email.utils.parsedate_to_datetime(expected).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            want = None
        assert message.header_date(parsed) == want
    else:
        assert message.header(parsed, field.lower()) == expected


# --- large messages: the index reads a bounded prefix -------------------------------------------


def _large(body_octets: int, attachment: bytes | None) -> bytes:
    """A message with a text body of ``body_octets`` and, after it, an optional attachment."""
    mail = EmailMessage()
    mail["From"] = "big@example.test"
    mail["Subject"] = "big"
    mail.set_content(("lorem ipsum dolor sit amet\n" * (body_octets // 27 + 1))[:body_octets])
    if attachment is not None:
        mail.add_attachment(attachment, maintype="application", subtype="pdf", filename="report.pdf")
    return mail.as_bytes()


@pytest.mark.parametrize(
    ("body_octets", "attachment", "has_attachments"),
    [
        (1000, b"%PDF small", True),  # everything inside the prefix
        (3 * message.INDEX_PREFIX, b"%PDF after the prefix", True),  # found by the scan
        (3 * message.INDEX_PREFIX, None, False),  # long text only
    ],
)
def test_large_messages_are_summarised_from_a_prefix(
    body_octets: int, attachment: bytes | None, has_attachments: bool
) -> None:
    raw = _large(body_octets, attachment)
    summary = message.summarise_stream(io.BytesIO(raw))
    assert summary.subject == "big" and summary.sender == "big@example.test"
    assert summary.has_attachments is has_attachments
    assert summary.text.startswith("lorem ipsum")
    assert len(summary.text) <= message.MAX_INDEXED_TEXT


def test_a_long_one_part_message_has_no_attachments_whatever_its_text_says() -> None:
    body = b"lorem ipsum\r\n" * (message.INDEX_PREFIX // 13 + 1)
    body += b"--x\r\nContent-Disposition: attachment; filename=x.pdf\r\nContent-Type: application/pdf\r\n"
    raw = b"Subject: quoted\r\nContent-Type: text/plain\r\n\r\n" + body
    summary = message.summarise_stream(io.BytesIO(raw))
    assert summary.has_attachments is False  # as the full parser sees it: one text part
    assert message.summarise(BytesParser(policy=message._POLICY).parsebytes(raw)).has_attachments is False


def test_indexing_a_20_mb_message_does_not_hold_it_in_memory() -> None:
    import tracemalloc

    raw = _large(1000, b"\0" * (15 * 1024 * 1024))  # 20 MB once base64-encoded
    stream = io.BytesIO(raw)
    tracemalloc.start()
    try:
        summary = message.summarise_stream(stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.has_attachments
    # The parser's own objects take several times the text they hold: a bounded multiple of
    # the prefix, a fraction of the message.
    assert peak < 12 * message.INDEX_PREFIX < len(raw) / 3


ONE_PART_SAMPLES = [
    b"From: a@example.test\r\nTo: b@example.test\r\nSubject: plain\r\n\r\nHello.\r\n",
    b"From: a@example.test\nSubject: lf only\n\nline one\nline two\n",
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\nContent-Type: text/plain; charset=latin-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9 au lait\r\n",
    b"Subject: b64\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes("déjà vu".encode()).replace(b"\n", b"\r\n"),
    b"Subject: html\r\nContent-Type: text/html\r\n\r\n<p>Hi <b>there</b></p>\r\n",
    b"Subject: a file\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=x.pdf\r\n\r\n%PDF\r\n",
    b"Subject: raw 8bit\r\n\r\n\xff\xfe caf\xc3\xa9\r\n",
    b"Subject: no body\r\n\r\n",
    b"Subject: no blank line\r\n",
    b"Subject: broken\r\nthis is not a header\r\nTo: b@example.test\r\n\r\nbody\r\n",
    b"Subject: mixed\n\r\nbody with a blank line\n\nlater\n",
    b"Subject: multi\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\n"
    b"inner\r\n--XX--\r\n",
    b"Subject: fwd\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nx\r\n",
    b" folded first line\r\nSubject: s\r\n\r\nbody\r\n",
    # Fields a summary never reads, around and between the ones it does (they are left out).
    b"Received: from a\r\n\tby b; Sun, 29 Nov 2026 08:00:00 +0000\r\nDKIM-Signature: v=1; a=rsa\r\n"
    b"From: Ann <ann@example.test>\r\nX-Mailer: m\r\nSubject: kept\r\nSubject: second\r\n"
    b"To: Bo <bo@example.test>\r\nCc: cy@example.test\r\nDelivered-To: bo@example.test\r\n"
    b"Content-Disposition: attachment; filename=notes.txt\r\nDate: Sun, 29 Nov 2026 08:00:00 +0000\r\n"
    b"\r\ntext\r\n",
]


# Which samples the one-part reading takes; the rest go to the full parser.
READ_AS_ONE_PART = [
    True,
    True,
    True,
    True,
    True,
    True,
    True,
    True,
    False,
    False,
    False,
    False,
    False,
    False,
    True,
]


@pytest.mark.parametrize(("data", "one_part"), list(zip(ONE_PART_SAMPLES, READ_AS_ONE_PART, strict=True)))
def test_one_part_messages_summarise_as_the_full_parser_does(data: bytes, one_part: bool) -> None:
    full = message.summarise(BytesParser(policy=message._POLICY).parsebytes(data))
    assert (message._single_part(data) is not None) is one_part
    assert message.summarise_stream(io.BytesIO(data)) == full


@given(
    st.lists(
        st.sampled_from(
            [
                b"Subject: s",
                b"To: b@example.test",
                b" folded",
                b"no colon",
                b"",
                b"Content-Type: text/plain",
                b"Content-Type: multipart/mixed; boundary=b",
                b"--b",
                b"body",
                b"\xe9t\xe9",
                b"=?utf-8?q?x?=",
                b"Received: from x",
                b"Content-Disposition: attachment; filename=a.txt",
                b"Cc: c@example.test",
            ]
        ),
        max_size=12,
    ),
    st.sampled_from([b"\r\n", b"\n", b"\r"]),
)
def test_any_message_summarises_as_the_full_parser_does(lines: list[bytes], ending: bytes) -> None:
    data = ending.join(lines)
    full = message.summarise(BytesParser(policy=message._POLICY).parsebytes(data))
    assert message.summarise_stream(io.BytesIO(data)) == full


@given(
    kind=st.sampled_from(
        ["text/plain", "text/html", "text/enriched", "application/pdf", "multipart/mixed", ""]
    ),
    disposition=st.sampled_from(["", "inline", "attachment", 'attachment; filename="a.txt"']),
)
def test_the_bodies_of_a_one_part_message_are_those_get_body_finds(kind: str, disposition: str) -> None:
    raw = "Subject: one part\r\n"
    raw += f"Content-Type: {kind}\r\n" if kind else ""
    raw += f"Content-Disposition: {disposition}\r\n" if disposition else ""
    parsed = BytesParser(policy=message._POLICY).parsebytes((raw + "\r\nsome text\r\n").encode())
    assert not parsed.is_multipart()
    expected = (parsed.get_body(preferencelist=("plain",)), parsed.get_body(preferencelist=("html",)))
    assert message._body_parts(parsed) == expected


@given(
    body=st.binary(max_size=200)
    | st.text(alphabet=st.characters(max_codepoint=127), max_size=200).map(str.encode),
    charset=st.sampled_from(["", "us-ascii", "UTF-8", '"utf-8"', "iso-8859-1", "utf-16", "koi8-r", "bogus"]),
    encoding=st.sampled_from(["", "7bit", "8bit", "binary", "quoted-printable", "base64"]),
)
def test_a_text_part_reads_as_get_content_decodes_it(body: bytes, charset: str, encoding: str) -> None:
    # ASCII text in an ASCII-compatible charset is read as it stands (no decoded copies made).
    raw = "Content-Type: text/plain" + (f"; charset={charset}" if charset else "") + "\r\n"
    raw += f"Content-Transfer-Encoding: {encoding}\r\n" if encoding else ""
    parsed = BytesParser(policy=message._POLICY).parsebytes(raw.encode() + b"\r\n" + body)
    try:
        expected: str | None = message._unicode(parsed.get_content())
    except Exception:
        expected = None  # _text_of falls back to its own decoding then
    if expected is not None:
        assert message._text_of(parsed) == expected
