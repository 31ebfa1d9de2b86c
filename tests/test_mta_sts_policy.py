"""The MTA-STS policy file and TXT record (RFC 8461 §3.1, §3.2), parsed strictly, and MX patterns
(§4.1); a Hypothesis fuzz holds the parser to its contract: a policy or StsSyntaxError, nothing
else, and what it writes it reads back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.mailauth.mta_sts import (
    MAX_AGE_LIMIT,
    StsPolicy,
    StsSyntaxError,
    mx_matches,
    parse_policy,
    parse_record,
    policy_id,
    render_policy,
    render_record,
)

GOOD = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n"


def test_the_rfc_example_parses() -> None:
    policy = parse_policy(GOOD)
    assert policy == StsPolicy("enforce", 604800, ("mail.example.com", "*.example.net"))


def test_lf_line_ends_spaces_unknown_fields_and_a_missing_last_line_end() -> None:
    text = "version: STSv1\nmode:testing  \nmx: MX.Example.COM.\nfuture_field: some-value\nmax_age: 0"
    assert parse_policy(text) == StsPolicy("testing", 0, ("mx.example.com",))


def test_the_first_of_repeated_fields_counts() -> None:
    policy = parse_policy(GOOD + "mode: none\r\nmax_age: 1\r\n")
    assert (policy.mode, policy.max_age) == ("enforce", 604800)


def test_mode_none_needs_no_mx() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n").mx == ()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "version is not STSv1"),
        ("version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", "version is not STSv1"),
        ("version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n", "mode is missing"),
        ("version: STSv1\nmode: enforce\nmx: a.example\n", "max_age is missing"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: ١٢\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmax_age: 86400\n", "without any mx"),
        ("version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n", "not a host name pattern"),
        ("version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n", "not a host name pattern"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n\n", "line 5"),
        ("<html>version: STSv1</html>\n", "line 1"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\nx: a=b\n", "extension x"),
    ],
)
def test_malformed_policies_are_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(StsSyntaxError, match=problem):
        parse_policy(text)


def test_mx_patterns_match_one_label_only() -> None:
    assert mx_matches("mail.example.com", "MAIL.example.com.")
    assert mx_matches("*.example.com", "mx1.example.com")
    assert not mx_matches("*.example.com", "a.mx1.example.com")
    assert not mx_matches("*.example.com", "example.com")
    assert not mx_matches("mail.example.com", "mail.example.com.evil.test")


@pytest.mark.parametrize(
    ("text", "identifier"),
    [
        ("v=STSv1; id=20160831085700Z;", "20160831085700Z"),
        ("v=STSv1;id=abc", "abc"),
        ("v=STSv1; id=a; x=y ", "a"),
    ],
)
def test_txt_records(text: str, identifier: str) -> None:
    assert parse_record(text).id == identifier


@pytest.mark.parametrize(
    "text", ["v=STSv1;", "v=STSv2; id=a", "id=a; v=STSv1", "v=STSv1; id=" + "a" * 33, "v=STSv1; id=a b"]
)
def test_bad_txt_records(text: str) -> None:
    with pytest.raises(StsSyntaxError):
        parse_record(text)


def test_our_record_names_the_policy_it_describes() -> None:
    text = render_policy("enforce", 604800, ("mx.example.org",))
    assert parse_policy(text) == StsPolicy("enforce", 604800, ("mx.example.org",))
    assert parse_record(render_record(text)).id == policy_id(text)
    assert policy_id(render_policy("testing", 604800, ("mx.example.org",))) != policy_id(text)


# --- fuzz -------------------------------------------------------------------------------------

_LINES = st.sampled_from(
    [
        "version: STSv1",
        "version: STSv2",
        "mode: enforce",
        "mode: testing",
        "mode: none",
        "mode: x",
        "mx: mx.example.com",
        "mx: *.example.com",
        "mx: -bad.example",
        "max_age: 86400",
        "max_age: 99999999999",
        "ext: value",
        "",
        ":",
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(max_size=300), st.lists(st.one_of(_LINES, st.text(max_size=40)), max_size=12).map("\n".join)
    )
)
def test_the_parser_returns_a_policy_or_says_why(text: str) -> None:
    try:
        policy = parse_policy(text)
    except StsSyntaxError as exc:
        assert str(exc)
        return
    assert policy.mode in ("enforce", "testing", "none") and 0 <= policy.max_age <= MAX_AGE_LIMIT
    assert policy.mode == "none" or policy.mx
    assert parse_policy(render_policy(policy.mode, policy.max_age, policy.mx)) == policy


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_the_record_parser_returns_a_record_or_says_why(text: str) -> None:
    try:
        record = parse_record(text)
    except StsSyntaxError:
        return
    assert record.id.isascii() and record.id.isalnum() and 1 <= len(record.id) <= 32
