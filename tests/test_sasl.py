"""SASL PLAIN (RFC 4616) and LOGIN for SMTP AUTH (RFC 4954 §4), on text alone."""

from __future__ import annotations

import base64

import pytest

from postoffice.errors import LocalProtocolError
from postoffice.smtp import replies as r
from postoffice.smtp import sasl
from postoffice.smtp.sasl import Credentials


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def plain(authzid: str, authcid: str, password: str) -> str:
    return b64(f"{authzid}\0{authcid}\0{password}")


def begin(mechanism: str, initial: str | None) -> tuple[sasl.Exchange, sasl.Step]:
    exchange = sasl.start(mechanism)
    assert exchange is not None
    return exchange, exchange.begin(initial)


# --- PLAIN ------------------------------------------------------------------------------------


def test_plain_initial_response() -> None:
    _, step = begin("PLAIN", plain("", "alice@example.test", "s3cret"))
    assert step == Credentials("alice@example.test", "s3cret", "")


def test_plain_mechanism_name_is_case_insensitive() -> None:
    _, step = begin("plain", plain("", "alice@example.test", "s3cret"))
    assert isinstance(step, Credentials)


def test_plain_without_initial_response_gets_an_empty_challenge() -> None:
    exchange, step = begin("PLAIN", None)
    assert step == r.auth_challenge("")
    assert step.render(enhanced=True) == b"334 \r\n"
    assert exchange.respond(plain("", "alice@example.test", "pw")) == Credentials("alice@example.test", "pw")


def test_plain_keeps_the_authorization_identity() -> None:
    """RFC 4616 §2: whether the authzid is allowed is the server's decision, not the parser's."""
    _, step = begin("PLAIN", plain("bob@example.test", "alice@example.test", "pw"))
    assert step == Credentials("alice@example.test", "pw", "bob@example.test")


def test_plain_password_keeps_spaces_and_unicode() -> None:
    _, step = begin("PLAIN", plain("", "alice@example.test", " pässwörd \t"))
    assert isinstance(step, Credentials) and step.password == " pässwörd \t"


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(b"alice\0pw", id="one-nul"),
        pytest.param(b"\0\0alice\0pw", id="three-nuls"),
        pytest.param(b"\0\0pw", id="empty-authcid"),
        pytest.param(b"\0alice\0", id="empty-password"),
        pytest.param(b"\0alice\0\xff\xfe", id="not-utf8"),
        pytest.param(b"", id="empty"),
    ],
)
def test_malformed_plain_message_is_501(message: bytes) -> None:
    _, step = begin("PLAIN", b64(message))
    assert step == r.AUTH_MALFORMED


def test_equals_is_an_empty_initial_response() -> None:
    """RFC 4954 §4: "=" stands for a zero-length initial response (malformed for PLAIN)."""
    _, step = begin("PLAIN", "=")
    assert step == r.AUTH_MALFORMED
    _, login_step = begin("LOGIN", "=")
    assert login_step == r.auth_challenge("UGFzc3dvcmQ6")  # empty user name; the password next


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("AGFsaWNlAHB", id="missing-padding"),
        pytest.param("AGFs aWNl", id="inner-space"),
        pytest.param("AGFsaWNlAHB3==", id="excess-padding"),
        pytest.param("=AGFsaWNl", id="leading-padding"),
        pytest.param("AGFsaWNlAHB3\t", id="trailing-tab"),
        pytest.param("ÄGFsaWNl", id="non-ascii"),
        pytest.param("not base64!", id="alphabet"),
        pytest.param("YR==", id="non-canonical-bits"),
        pytest.param("AGFsaWM=AA==", id="data-after-padding"),
    ],
)
def test_response_that_is_not_strict_base64_is_501_5_5_2(text: str) -> None:
    _, step = begin("PLAIN", text)
    assert step == r.AUTH_BAD_BASE64
    assert step.code == 501 and step.enhanced == "5.5.2"


def test_star_cancels_a_plain_exchange() -> None:
    exchange, _ = begin("PLAIN", None)
    step = exchange.respond("*")
    assert step == r.AUTH_CANCELLED
    assert step.code == 501 and step.enhanced == "5.0.0"


def test_star_as_initial_response_cancels() -> None:
    _, step = begin("PLAIN", "*")
    assert step == r.AUTH_CANCELLED


# --- LOGIN ------------------------------------------------------------------------------------


def test_login_asks_for_user_name_then_password() -> None:
    exchange, step = begin("LOGIN", None)
    assert step == r.auth_challenge("VXNlcm5hbWU6")  # "Username:"
    assert exchange.respond(b64("alice@example.test")) == r.auth_challenge("UGFzc3dvcmQ6")  # "Password:"
    assert exchange.respond(b64("s3cret")) == Credentials("alice@example.test", "s3cret")


def test_login_initial_response_is_the_user_name() -> None:
    exchange, step = begin("LOGIN", b64("alice@example.test"))
    assert step == r.auth_challenge("UGFzc3dvcmQ6")
    assert exchange.respond(b64("s3cret")) == Credentials("alice@example.test", "s3cret")


@pytest.mark.parametrize("at", ["user", "password"])
def test_login_can_be_cancelled_at_each_prompt(at: str) -> None:
    exchange, _ = begin("LOGIN", None)
    if at == "password":
        exchange.respond(b64("alice@example.test"))
    assert exchange.respond("*") == r.AUTH_CANCELLED


@pytest.mark.parametrize("at", ["user", "password"])
def test_login_bad_base64_at_each_prompt(at: str) -> None:
    exchange, _ = begin("LOGIN", None)
    if at == "password":
        exchange.respond(b64("alice@example.test"))
    assert exchange.respond("%%%") == r.AUTH_BAD_BASE64


def test_login_password_that_is_not_utf8_is_malformed() -> None:
    exchange, _ = begin("LOGIN", b64("alice@example.test"))
    assert exchange.respond(b64(b"\xff\xfe")) == r.AUTH_MALFORMED


# --- the exchange as a whole ------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["CRAM-MD5", "GSSAPI", "XOAUTH2", ""])
def test_unknown_mechanisms_are_not_started(mechanism: str) -> None:
    assert sasl.start(mechanism) is None


def test_a_response_after_the_exchange_ended_is_a_bug_of_the_caller() -> None:
    exchange, _ = begin("PLAIN", plain("", "alice@example.test", "pw"))
    with pytest.raises(LocalProtocolError):
        exchange.respond(plain("", "alice@example.test", "pw"))


def test_the_password_is_not_in_the_credentials_repr() -> None:
    credentials = Credentials("alice@example.test", "hunter2-secret")
    assert "hunter2-secret" not in repr(credentials)
    assert "alice@example.test" in repr(credentials)


def test_mechanisms_offered() -> None:
    assert sasl.MECHANISMS == ("PLAIN", "LOGIN")
