"""Authentication-Results (RFC 8601): the field we build (read back by our parser and by the
independent ``authres`` package), the parser, and the test that finds fields forged in our name."""

from __future__ import annotations

import contextlib
import io

import authres
import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.mailauth import results
from postoffice.mailauth.results import AuthResultsError, MethodResult, Property
from postoffice.mailauth.verdicts import DkimVerdict, SpfVerdict

OURS = "mx.postoffice.test"


def _sample() -> list[MethodResult]:
    return [
        results.spf_result(SpfVerdict("pass", "example.com")),
        results.spf_result(SpfVerdict("none", "helo.example.com", "helo")),
        results.dkim_result(DkimVerdict("pass", "example.com", "sel2026", "abc/def+ghi=jkl")),
        results.dmarc_result("fail", "example.com", "reject", "quarantine"),
        results.arc_result("pass", 2, 0),
    ]


def test_built_field_reads_back() -> None:
    value = results.build(OURS, _sample())
    assert value == (
        "mx.postoffice.test;\r\n"
        "\tspf=pass smtp.mailfrom=example.com;\r\n"
        "\tspf=none smtp.helo=helo.example.com;\r\n"
        '\tdkim=pass header.d=example.com header.s=sel2026 header.b="abc/def+";\r\n'
        "\tdmarc=fail (p=reject dis=quarantine) header.from=example.com;\r\n"
        "\tarc=pass (i=2) header.oldest-pass=0"
    )
    parsed = results.parse(value)
    assert parsed.authserv_id == OURS
    assert [(r.method, r.result) for r in parsed.results] == [
        ("spf", "pass"),
        ("spf", "none"),
        ("dkim", "pass"),
        ("dmarc", "fail"),
        ("arc", "pass"),
    ]
    assert parsed.results[2].properties[2] == Property("header", "b", "abc/def+")
    # The comment after a result comes back too: it carries the DMARC policy.
    assert [r.comment for r in parsed.results] == [None, None, None, "p=reject dis=quarantine", "i=2"]


@pytest.mark.parametrize(
    ("value", "comment"),
    [
        (
            "mx.google.com; dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=gmail.com",
            "p=REJECT sp=REJECT dis=NONE",
        ),
        ("x.example; dkim=pass (a (nested) one) (second) header.d=a.example", "a (nested) one"),
        (r"x.example; dkim=fail (bad \) sig\(nature) header.d=a.example", "bad ) sig(nature"),
        ("x.example; spf=pass smtp.mailfrom=a.example (after a property)", None),
    ],
)
def test_the_comment_after_a_result_is_kept(value: str, comment: str | None) -> None:
    assert results.parse(value).results[0].comment == comment


def test_authres_package_reads_our_field() -> None:
    """An independent RFC 8601 parser (authres, which dkimpy's ARC uses) reads what we write."""
    field = results.header_field(OURS, _sample()).decode().replace("\r\n\t", " ").strip()
    parsed = authres.AuthenticationResultsHeader.parse(field)
    assert parsed.authserv_id == OURS
    assert [(r.method, r.result) for r in parsed.results] == [
        ("spf", "pass"),
        ("spf", "none"),
        ("dkim", "pass"),
        ("dmarc", "fail"),
        ("arc", "pass"),
    ]
    dkim = parsed.results[2]
    assert (dkim.header_d, dkim.header_s) == ("example.com", "sel2026")
    assert [(p.type, p.name, p.value) for p in dkim.properties][2] == ("header", "b", "abc/def+")


def test_no_results_is_none() -> None:
    assert results.build(OURS, []) == f"{OURS};\r\n\tnone"
    assert results.parse(results.build(OURS, [])).results == ()


def test_values_cannot_add_lines_or_fields() -> None:
    """A domain or selector a sender chose never ends our field or starts another."""
    hostile = DkimVerdict("pass", "evil.example\r\nAuthentication-Results: x; dkim=pass", 's"el\\', "b")
    field = results.header_field(OURS, [results.dkim_result(hostile)])
    assert field.count(b"\r\n") == 2  # one fold, one end
    parsed = results.parse(field.decode().partition(":")[2])
    assert parsed.results[0].properties[0].value == "evil.exampleAuthentication-Results: x; dkim=pass"
    assert parsed.results[0].properties[1].value == 's"el\\'


def test_methods_must_be_keywords() -> None:
    with pytest.raises(AuthResultsError):
        results.build(OURS, [MethodResult("dkim pass", "x")])


@pytest.mark.parametrize(
    "value",
    [
        "example.org; dkim=pass (good signature) header.d=example.com header.i=@example.com",
        "example.org 1; spf=pass smtp.mailfrom=user@example.net",
        "example.org; auth=pass (cram-md5) smtp.auth=sender@example.com; spf=pass smtp.mailfrom=example.com",
        "example.org; sender-id=fail header.from=example.com; dkim=pass (good signature) header.d=example.com",
        'example.org; dkim=pass reason="good signature" header.i=@mail-router.example.net; '
        'dkim=fail reason="bad signature" header.i=@newyork.example.com',
        "example.com; iprev=pass policy.iprev=192.0.2.200",
        'example.com; dkim/2=pass (xxx) header.b="abc/+=" smtp.mailfrom=@example.com',
        "(a (nested) comment) example.net ; none",
    ],
)
def test_parses_rfc_8601_examples(value: str) -> None:
    parsed = results.parse(value)
    assert parsed.authserv_id in ("example.org", "example.com", "example.net")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "example.org",
        "example.org; ",
        "example.org; dkim",
        "example.org; dkim=",
        "(unclosed example.org; none",
        'example.org; dkim=pass header.d="open',
        "example.org; dkim=pass header=x",
        "example.org; =pass",
    ],
)
def test_rejects_malformed(value: str) -> None:
    with pytest.raises(AuthResultsError):
        results.parse(value)


# --- fields forged in our name (RFC 8601 §5) ----------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        b"Authentication-Results: mx.postoffice.test; spf=pass smtp.mailfrom=example.com\r\n",
        b"authentication-results: MX.PostOffice.Test; dkim=pass\r\n",
        b"Authentication-Results: mx.postoffice.test.; dkim=pass\r\n",
        b"Authentication-Results:(forged) mx.postoffice.test (still us) 1; dmarc=pass\r\n",
        b'Authentication-Results: "mx.postoffice.test"; dmarc=pass\r\n',
        b"Authentication-Results :\r\n mx.postoffice.test;\r\n\tdmarc=pass header.from=example.com\r\n",
        b"Authentication-Results: mx.postoffice.test; dmarc=pass (unterminated\r\n",
        b"Authentication-Results: mx.postoffice.test\r\n",
        b"Authentication-Results: mx.postoffice.test; x=\xff\xfe\r\n",
    ],
)
def test_fields_claiming_our_id(field: bytes) -> None:
    assert results.claims_authserv_id(field, OURS)


@pytest.mark.parametrize(
    "field",
    [
        b"Authentication-Results: mx.example.org; spf=pass\r\n",
        b"Authentication-Results: mx.postoffice.test.evil; spf=pass\r\n",
        b"Authentication-Results: postoffice.test; spf=pass\r\n",
        b"ARC-Authentication-Results: i=1; mx.postoffice.test; spf=pass\r\n",
        b"X-Authentication-Results: mx.postoffice.test; spf=pass\r\n",
        b"Subject: Authentication-Results: mx.postoffice.test; spf=pass\r\n",
    ],
)
def test_fields_not_claiming_our_id(field: bytes) -> None:
    assert not results.claims_authserv_id(field, OURS)


def test_streamed_header_section_loses_only_forged_fields() -> None:
    message = (
        b"Received: from a\r\n\tby b; Tue, 1 Dec 2026 10:00:00 +0000\r\n"
        b"Authentication-Results: mx.postoffice.test;\r\n\tdkim=pass header.d=bank.example\r\n"
        b"Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=example.org\r\n"
        b"From: a@example.org\r\n"
        b"\r\n"
        b"Authentication-Results: mx.postoffice.test; in the body, not a field\r\n"
    )
    lines = io.BytesIO(message).readlines()
    kept = list(results.strip_claims(results.header_fields(lines), OURS))
    assert kept == [
        b"Received: from a\r\n\tby b; Tue, 1 Dec 2026 10:00:00 +0000\r\n",
        b"Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=example.org\r\n",
        b"From: a@example.org\r\n",
    ]


# --- fuzzing -------------------------------------------------------------------------------------

_AR_ALPHABET = st.sampled_from([*list('abc.-=;()"\\ \t\r\n@/1'), "spf", "dkim", "pass", "header.d", "none"])


@given(st.one_of(st.text(max_size=120), st.lists(_AR_ALPHABET, max_size=40).map("".join)))
def test_parser_raises_only_its_error(value: str) -> None:
    with contextlib.suppress(AuthResultsError):
        results.parse(value)


@given(st.binary(max_size=200))
def test_claims_never_raise(field: bytes) -> None:
    results.claims_authserv_id(b"Authentication-Results:" + field, OURS)
    results.claims_authserv_id(field, OURS)


@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=40))
def test_anything_we_build_parses_back(domain: str, selector: str, signature: str) -> None:
    built = results.build(OURS, [results.dkim_result(DkimVerdict("pass", domain, selector, signature))])
    assert "\r" not in built.replace("\r\n\t", "") and "\n" not in built.replace("\r\n\t", "")
    parsed = results.parse(built)
    values = [prop.value for prop in parsed.results[0].properties]
    clean = ["".join(ch for ch in text if ch >= " " and ch != "\x7f") for text in (domain, selector)]
    assert values[:2] == clean
