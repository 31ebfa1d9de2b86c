"""RFC 5321 §4.1.2 paths, ESMTP parameters and RFC 3461 xtext, as tables of accepted and refused text."""

from __future__ import annotations

import pytest

from postoffice.smtp.grammar import (
    MAX_DOMAIN,
    MAX_LOCAL_PART,
    MAX_PATH,
    NULL_PATH,
    GrammarError,
    Mailbox,
    Path,
    decode_xtext,
    encode_xtext,
    is_helo_name,
    parse_mailbox,
    parse_parameters,
    parse_path,
)


# A domain of exactly ``n`` octets: 63-octet labels joined by dots, then a shorter last label.
def domain_of(n: int) -> str:
    labels: list[str] = []
    while n > 64:
        labels.append("d" * 63)
        n -= 64
    labels.append("e" * n)
    return ".".join(labels)


def test_limits_are_the_rfc_values() -> None:
    """§4.5.3.1.1-3: 64-octet local part, 255-octet domain, 256-octet path."""
    assert (MAX_LOCAL_PART, MAX_DOMAIN, MAX_PATH) == (64, 255, 256)
    assert len(domain_of(255)) == 255 and len(domain_of(100)) == 100


# --- parse_mailbox ----------------------------------------------------------------------------------

MAILBOXES = {
    "plain": ("user@example.org", False, Mailbox("user", "example.org")),
    "dotted-local": ("first.last@example.org", False, Mailbox("first.last", "example.org")),
    "atext-specials": (
        "a+b!#$%&'*/=?^_`{|}~-@x.example",
        False,
        Mailbox("a+b!#$%&'*/=?^_`{|}~-", "x.example"),
    ),
    "domain-lower-cased": ("User@Example.ORG", False, Mailbox("User", "example.org")),
    "quoted-space": ('"john doe"@example.org', False, Mailbox('"john doe"', "example.org")),
    "quoted-at-and-angle": ('"a@b>c"@example.org', False, Mailbox('"a@b>c"', "example.org")),
    "quoted-pair": ('"a\\"b"@example.org', False, Mailbox('"a\\"b"', "example.org")),
    "empty-quoted": ('""@example.org', False, Mailbox('""', "example.org")),
    "ipv4-literal": ("u@[192.0.2.1]", False, Mailbox("u", "[192.0.2.1]")),
    "ipv6-literal": ("u@[IPv6:2001:db8::1]", False, Mailbox("u", "[ipv6:2001:db8::1]")),
    "ipv6-loopback": ("u@[IPv6:::1]", False, Mailbox("u", "[ipv6:::1]")),
    "ipv6-v4-mapped": ("u@[IPv6:::ffff:192.0.2.1]", False, Mailbox("u", "[ipv6:::ffff:192.0.2.1]")),
    "general-literal": ("u@[x-tag:some.thing]", False, Mailbox("u", "[x-tag:some.thing]")),
    "local-64": ("a" * 64 + "@x.example", False, Mailbox("a" * 64, "x.example")),
    "domain-255": ("u@" + domain_of(255), False, Mailbox("u", domain_of(255))),
    "digits-and-hyphens": ("u@1-2.3com", False, Mailbox("u", "1-2.3com")),
    "utf8-local": ("pelé@example.org", True, Mailbox("pelé", "example.org")),
    "utf8-both": ("用户@例子.广告", True, Mailbox("用户", "例子.广告")),
    "utf8-quoted": ('"jöhn doe"@example.org', True, Mailbox('"jöhn doe"', "example.org")),
}


@pytest.mark.parametrize(("text", "utf8", "expected"), MAILBOXES.values(), ids=MAILBOXES.keys())
def test_parse_mailbox_accepts(text: str, utf8: bool, expected: Mailbox) -> None:
    assert parse_mailbox(text, utf8=utf8) == expected


def test_unquoted_local_part() -> None:
    assert parse_mailbox('"a\\"b\\\\c d"@x', utf8=False).unquoted_local_part == 'a"b\\c d'
    assert parse_mailbox("plain@x", utf8=False).unquoted_local_part == "plain"


def test_is_ascii() -> None:
    assert parse_mailbox("a@b", utf8=False).is_ascii
    assert not parse_mailbox("ä@b", utf8=True).is_ascii
    assert not parse_mailbox("a@bä", utf8=True).is_ascii


BAD_MAILBOXES = {
    "empty": ("", False),
    "no-at": ("user", False),
    "no-local": ("@example.org", False),
    "no-domain": ("user@", False),
    "two-ats": ("a@b@c", False),
    "leading-dot": (".user@x", False),
    "trailing-dot": ("user.@x", False),
    "double-dot": ("us..er@x", False),
    "space": ("us er@x", False),
    "unbalanced-quote": ('"a"b"@x', False),
    "quoted-control": ('"a\tb"@x', False),
    "domain-leading-hyphen": ("u@-x.example", False),
    "domain-trailing-hyphen": ("u@x-.example", False),
    "domain-empty-label": ("u@x..example", False),
    "domain-trailing-dot": ("u@x.example.", False),
    "domain-underscore": ("u@x_y.example", False),
    "local-65": ("a" * 65 + "@x", False),
    "local-65-quoted": ('"' + "a" * 63 + '"@x', False),  # quotes count: 65 octets
    "local-65-octets-utf8": ("é" * 33 + "@x", True),  # 33 characters, 66 octets
    "domain-256": ("u@" + domain_of(256), False),
    "ipv4-octet-256": ("u@[192.0.2.256]", False),
    "ipv4-three-parts": ("u@[192.0.2]", False),
    "ipv4-five-parts": ("u@[1.2.3.4.5]", False),
    "ipv4-leading-zero": ("u@[01.2.3.4]", False),
    "ipv6-bad-hex": ("u@[IPv6:::g]", False),
    "ipv6-two-gaps": ("u@[IPv6:1::2::3]", False),
    "ipv6-bare-ipv4": ("u@[IPv6:192.0.2.1]", False),
    "ipv6-zone-id": ("u@[IPv6:fe80::1%eth0]", False),
    "ipv6-without-tag": ("u@[::1]", False),
    "empty-literal": ("u@[]", False),
    "literal-space": ("u@[a b]", False),
    "literal-empty-tag": ("u@[:x]", False),
    "literal-nested-bracket": ("u@[[1.2.3.4]]", False),
    "utf8-local-without-utf8": ("pelé@example.org", False),
    "utf8-domain-without-utf8": ("u@bücher.example", False),
}


@pytest.mark.parametrize(("text", "utf8"), BAD_MAILBOXES.values(), ids=BAD_MAILBOXES.keys())
def test_parse_mailbox_refuses(text: str, utf8: bool) -> None:
    with pytest.raises(GrammarError):
        parse_mailbox(text, utf8=utf8)


def test_non_ascii_without_utf8_says_so() -> None:
    with pytest.raises(GrammarError, match="SMTPUTF8"):
        parse_mailbox("pelé@example.org", utf8=False)


# --- parse_path ---------------------------------------------------------------------------------------

MAILBOX_254 = "a" * 64 + "@" + domain_of(189)  # the longest mailbox a 256-octet path can hold
assert len(MAILBOX_254) == 254

PATHS = {
    "null": ("<>", dict(allow_null=True), NULL_PATH, ""),
    "null-with-parameters": ("<> SIZE=10", dict(allow_null=True), NULL_PATH, " SIZE=10"),
    "mailbox": ("<a@example.org>", {}, Path(Mailbox("a", "example.org")), ""),
    "mailbox-with-parameters": (
        "<a@example.org> SIZE=1 BODY=7BIT",
        {},
        Path(Mailbox("a", "example.org")),
        " SIZE=1 BODY=7BIT",
    ),
    "postmaster": ("<postmaster>", dict(allow_postmaster=True), Path(None, postmaster=True), ""),
    "postmaster-mixed-case": ("<PostMaster>", dict(allow_postmaster=True), Path(None, postmaster=True), ""),
    "postmaster-with-domain": (
        "<postmaster@example.org>",
        dict(allow_postmaster=True),
        Path(Mailbox("postmaster", "example.org")),
        "",
    ),
    "source-route": ("<@a.example,@b.example:u@c.example>", {}, Path(Mailbox("u", "c.example")), ""),
    "one-hop-route": ("<@a.example:u@c.example>", {}, Path(Mailbox("u", "c.example")), ""),
    "quoted-closing-bracket": ('<"a>b"@x> X=1', {}, Path(Mailbox('"a>b"', "x")), " X=1"),
    "quoted-escaped-quote": ('<"a\\">"@x>', {}, Path(Mailbox('"a\\">"', "x")), ""),
    "path-256-octets": (f"<{MAILBOX_254}>", {}, Path(parse_mailbox(MAILBOX_254, utf8=False)), ""),
    "utf8": ("<用户@例子.广告>", dict(utf8=True), Path(Mailbox("用户", "例子.广告")), ""),
}


@pytest.mark.parametrize(("text", "options", "path", "rest"), PATHS.values(), ids=PATHS.keys())
def test_parse_path_accepts(text: str, options: dict[str, bool], path: Path, rest: str) -> None:
    kwargs = {"utf8": False, "allow_null": False, "allow_postmaster": False, **options}
    assert parse_path(text, **kwargs) == (path, rest)


def test_path_properties() -> None:
    assert NULL_PATH.is_null and str(NULL_PATH) == ""
    postmaster = Path(None, postmaster=True)
    assert not postmaster.is_null and str(postmaster) == "postmaster"
    assert str(Path(Mailbox("a", "b"))) == "a@b"


BAD_PATHS = {
    "no-brackets": ("a@example.org", {}),
    "no-closing-bracket": ("<a@example.org", {}),
    "text-after-path": ("<a@example.org>SIZE=1", {}),
    "null-not-allowed": ("<>", {}),
    "postmaster-not-allowed": ("<postmaster>", {}),
    "empty-after-route": ("<@a.example:>", {}),
    "route-without-at": ("<@a.example,b.example:u@c>", {}),
    "route-without-colon": ("<@a.example u@c>", {}),
    "unterminated-quote": ('<"a@x>', {}),
    "path-257-octets": (f"<a{MAILBOX_254}>", {}),
    "path-258-octets": (f"<ab{MAILBOX_254}>", {}),
    "utf8-not-allowed": ("<用户@例子.广告>", {}),
    "bad-literal": ("<u@[300.1.1.1]>", {}),
}


@pytest.mark.parametrize(("text", "options"), BAD_PATHS.values(), ids=BAD_PATHS.keys())
def test_parse_path_refuses(text: str, options: dict[str, bool]) -> None:
    kwargs = {"utf8": False, "allow_null": False, "allow_postmaster": False, **options}
    with pytest.raises(GrammarError):
        parse_path(text, **kwargs)


def test_path_length_counts_the_angle_brackets() -> None:
    """§4.5.3.1.3: "256 octets (including the punctuation and element separators)"."""
    with pytest.raises(GrammarError, match="256"):
        parse_path(f"<x{MAILBOX_254}>", utf8=False, allow_null=False, allow_postmaster=False)


# --- parse_parameters ---------------------------------------------------------------------------------

PARAMETERS = {
    "none": ("", False, {}),
    "only-spaces": ("   ", False, {}),
    "two": (" SIZE=10 BODY=8BITMIME", False, {"SIZE": "10", "BODY": "8BITMIME"}),
    "no-value": (" SMTPUTF8", False, {"SMTPUTF8": None}),
    "keyword-upper-cased-value-kept": (" body=8bitmime", False, {"BODY": "8bitmime"}),
    "repeated-spaces": ("  A=1   B", False, {"A": "1", "B": None}),
    "hyphen-and-digit-keyword": (" X-1=v", False, {"X-1": "v"}),
    "value-punctuation": (" ORCPT=rfc822;a+40b", False, {"ORCPT": "rfc822;a+40b"}),
    "utf8-value": (" X=ü", True, {"X": "ü"}),
}


@pytest.mark.parametrize(("text", "utf8", "expected"), PARAMETERS.values(), ids=PARAMETERS.keys())
def test_parse_parameters_accepts(text: str, utf8: bool, expected: dict[str, str | None]) -> None:
    assert parse_parameters(text, utf8=utf8) == expected


BAD_PARAMETERS = {
    "empty-keyword": (" =x", False),
    "keyword-starts-with-hyphen": (" -A=1", False),
    "keyword-underscore": (" A_B=1", False),
    "empty-value": (" A=", False),
    "equals-in-value": (" A=b=c", False),
    "duplicate": (" SIZE=1 size=2", False),
    "utf8-value-without-utf8": (" X=ü", False),
    "utf8-keyword": (" Ü=1", True),
    "control-in-value": (" X=a\x7fb", False),
}


@pytest.mark.parametrize(("text", "utf8"), BAD_PARAMETERS.values(), ids=BAD_PARAMETERS.keys())
def test_parse_parameters_refuses(text: str, utf8: bool) -> None:
    with pytest.raises(GrammarError):
        parse_parameters(text, utf8=utf8)


# --- decode_xtext (RFC 3461 §4) ----------------------------------------------------------------------

XTEXT = {
    "empty": ("", ""),
    "plain": ("abc", "abc"),
    "plus": ("a+2Bb", "a+b"),
    "equals": ("+3D", "="),
    "address": ("rfc822;user+40example.org", "rfc822;user@example.org"),
    "space": ("a+20b", "a b"),
    "all-xchar-punctuation": ("!\"#$%&'()*,-./:;<>?@[\\]^_`{|}~", "!\"#$%&'()*,-./:;<>?@[\\]^_`{|}~"),
}


@pytest.mark.parametrize(("text", "decoded"), XTEXT.values(), ids=XTEXT.keys())
def test_decode_xtext(text: str, decoded: str) -> None:
    assert decode_xtext(text) == decoded


BAD_XTEXT = {
    "lower-case-hex": "a+2b",
    "plus-at-end": "a+",
    "one-hex-digit": "a+2",
    "not-hex": "a+G0",
    "raw-equals": "a=b",
    "space": "a b",
    "non-ascii": "ü",
    "delete": "a\x7f",
}


@pytest.mark.parametrize("text", BAD_XTEXT.values(), ids=BAD_XTEXT.keys())
def test_decode_xtext_refuses(text: str) -> None:
    with pytest.raises(GrammarError):
        decode_xtext(text)


@pytest.mark.parametrize(
    ("text", "xtext"),
    [("abc", "abc"), ("a+b=c", "a+2Bb+3Dc"), ("two words", "two+20words"), ("rfc822;x@y", "rfc822;x@y")],
)
def test_xtext_round_trips(text: str, xtext: str) -> None:
    assert encode_xtext(text) == xtext
    assert decode_xtext(xtext) == text


# --- is_helo_name (§4.1.1.1) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("example.com", True),
        ("localhost", True),
        ("mx.example.", True),
        ("[192.0.2.1]", True),
        ("[IPv6:::1]", True),
        ("例子.广告", True),
        ("", False),
        ("-bad.example", False),
        ("a b", False),
        ("[999.1.1.1]", False),
        ("[IPv6:nope]", False),
        (domain_of(256), False),
    ],
)
def test_is_helo_name(name: str, valid: bool) -> None:
    assert is_helo_name(name) is valid
