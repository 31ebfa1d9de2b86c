"""Relay and sender policy: never an open relay, and an authenticated user sends only as
themselves (RFC 6409 §6.1). The pure rules first, then one named test per rule on the wire."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import RunningServer
from postoffice.accounts import Accounts
from postoffice.config import AuthConfig, Config
from postoffice.policy import Policy
from postoffice.smtp import replies as r
from postoffice.smtp.grammar import parse_path
from postoffice.spool.envelope import Route
from submission_support import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    REMOTE,
    SALES,
    TEAM,
    Certs,
    TlsRawSmtp,
    make_certs,
    message,
    plain_response,
    ports,
    smtp_over_starttls,
    start_submission_server,
    wait_for,
)


def path(text: str, *, null: bool = False) -> object:
    parsed, _ = parse_path(text, utf8=True, allow_null=null, allow_postmaster=not null)
    return parsed


# --- the rules, pure ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    data = tmp_path_factory.mktemp("policy")
    accounts = Accounts(data / "accounts.json")
    accounts.add_user(ALICE, ALICE_PASSWORD)
    accounts.add_user(BOB, "pw")
    accounts.add_alias(SALES, [ALICE])
    accounts.add_alias(TEAM, [ALICE, BOB])
    accounts.add_alias("@catchall.test", [ALICE])
    accounts.add_alias("forward@example.test", [REMOTE])
    config = Config(hostname="mx.test", data_dir=data, domains=("example.test", "catchall.test"))
    return Policy(config, accounts)


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        pytest.param(f"<{ALICE}>", r.SENDER_OK, id="own-address"),
        pytest.param("<Alice@Example.Test>", r.SENDER_OK, id="own-address-any-case"),
        pytest.param(f"<{SALES}>", r.SENDER_OK, id="alias-of-the-user"),
        pytest.param(f"<{TEAM}>", r.SENDER_OK, id="group-alias-including-the-user"),
        pytest.param("<anything@catchall.test>", r.SENDER_OK, id="catch-all-resolving-to-the-user"),
        pytest.param(f"<{BOB}>", r.SENDER_NOT_OWNED, id="another-user"),
        pytest.param("<forward@example.test>", r.SENDER_NOT_OWNED, id="alias-of-someone-else"),
        pytest.param("<nobody@example.test>", r.SENDER_NOT_OWNED, id="unknown-local"),
        pytest.param("<alice@elsewhere.test>", r.SENDER_NOT_OWNED, id="foreign-domain"),
        pytest.param("<>", r.NULL_SENDER_REFUSED, id="null-sender"),
    ],
)
@pytest.mark.parametrize("submission", [True, False])
def test_authenticated_sender_must_be_owned(
    policy: Policy, sender: str, expected: r.Reply, submission: bool
) -> None:
    reply = policy.check_sender(path(sender, null=True), authenticated_user=ALICE, submission=submission)
    assert reply == expected


def test_unauthenticated_mail_on_submission_needs_auth(policy: Policy) -> None:
    assert policy.check_sender(path(f"<{ALICE}>", null=True), authenticated_user=None, submission=True) == (
        r.AUTH_REQUIRED
    )
    assert (
        policy.check_sender(path("<>", null=True), authenticated_user=None, submission=True)
        == r.AUTH_REQUIRED
    )


def test_unauthenticated_mail_on_mx_takes_any_sender(policy: Policy) -> None:
    for sender in (f"<{ALICE}>", "<x@elsewhere.test>", "<>"):
        assert policy.check_sender(path(sender, null=True), authenticated_user=None) == r.SENDER_OK


def test_remote_recipient_needs_authentication(policy: Policy) -> None:
    assert policy.check_recipient(path(f"<{REMOTE}>"), authenticated_user=None).reply == r.RELAY_DENIED
    verdict = policy.check_recipient(path(f"<{REMOTE}>"), authenticated_user=ALICE)
    assert verdict.reply == r.RECIPIENT_OK and verdict.remote == (REMOTE,) and verdict.local == ()


def test_a_user_who_was_removed_owns_nothing(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path / "accounts.json")
    accounts.add_user(ALICE, "pw")
    policy = Policy(Config(hostname="mx.test", data_dir=tmp_path, domains=("example.test",)), accounts)
    accounts.remove_user(ALICE)
    accounts.add_alias("@example.test", [BOB])
    assert policy.check_sender(path(f"<{ALICE}>"), authenticated_user=ALICE) == r.SENDER_NOT_OWNED


# --- on the wire ----------------------------------------------------------------------------------


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


@pytest.fixture
def server(server_factory: Callable[..., RunningServer], certs: Certs) -> RunningServer:
    return start_submission_server(server_factory, certs)


def test_open_relay_attempt_from_outside(server: RunningServer, certs: Certs) -> None:
    """Unauthenticated, to a remote domain, over the MX listener: 554 5.7.1, in plaintext and
    in TLS, whatever the sender claims to be (a local user included)."""
    port = ports(server)["smtp"]
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as client:
        for sender in ("spammer@elsewhere.test", ALICE, ""):
            client.ehlo()
            assert client.mail(sender)[0] == r.SENDER_OK.code
            code, text = client.rcpt(REMOTE)
            assert (code, text.decode()) == (r.RELAY_DENIED.code, f"5.7.1 {r.RELAY_DENIED.text}")
            client.rset()
    with smtp_over_starttls(port, certs.client_context()) as secure:
        secure.mail(ALICE)
        assert secure.rcpt(REMOTE)[0] == r.RELAY_DENIED.code
        # Local recipients are what the MX service is for.
        assert secure.rcpt(BOB)[0] == r.RECIPIENT_OK.code
    assert server.app.spool.pending() == []


@pytest.mark.parametrize("kind", ["submission", "smtps"])
def test_submission_requires_authentication_before_mail(
    server: RunningServer, certs: Certs, kind: str
) -> None:
    if kind == "smtps":
        client = smtplib.SMTP_SSL(
            "127.0.0.1", ports(server)[kind], context=certs.client_context(), timeout=10
        )
        client.ehlo()
    else:
        client = smtp_over_starttls(ports(server)[kind], certs.client_context())
    with client:
        code, text = client.mail(ALICE)
        assert (code, text.decode()) == (r.AUTH_REQUIRED.code, f"5.7.0 {r.AUTH_REQUIRED.text}")
        assert client.rcpt(BOB)[0] == r.NEED_MAIL.code


def test_sender_spoofing_after_login(server: RunningServer, certs: Certs) -> None:
    """Logged in as alice: bob's address, an unknown one and the null sender are refused with
    553 5.7.1; her own address and her aliases are accepted."""
    with smtp_over_starttls(ports(server)["submission"], certs.client_context()) as client:
        client.login(ALICE, ALICE_PASSWORD)
        for spoofed in (BOB, "ceo@example.test", "alice@elsewhere.test"):
            code, text = client.mail(spoofed)
            assert (code, text.decode()) == (r.SENDER_NOT_OWNED.code, f"5.7.1 {r.SENDER_NOT_OWNED.text}")
        assert client.mail("")[0] == r.NULL_SENDER_REFUSED.code == 553
        for own in (ALICE, SALES, TEAM):
            assert client.mail(own)[0] == r.SENDER_OK.code
            client.rset()


def test_spoofing_after_login_on_the_mx_listener_too(server: RunningServer, certs: Certs) -> None:
    with smtp_over_starttls(ports(server)["smtp"], certs.client_context()) as client:
        client.login(ALICE, ALICE_PASSWORD)
        assert client.mail(BOB)[0] == r.SENDER_NOT_OWNED.code


def test_authenticated_user_relays_and_remote_mail_waits_in_the_spool(
    server: RunningServer, certs: Certs
) -> None:
    """587 STARTTLS + PLAIN, as a mail client does: local copies are delivered at once, the
    remote recipient waits in the spool for outbound delivery."""
    with smtp_over_starttls(ports(server)["submission"], certs.client_context()) as client:
        client.login(ALICE, ALICE_PASSWORD)
        refused = client.sendmail(SALES, [BOB, REMOTE], message(SALES, f"{BOB}, {REMOTE}", "to both"))
        assert refused == {}
    [local] = server.messages(BOB)
    assert local["Subject"] == "to both"
    assert "with ESMTPSA" in local["Received"]
    [queue_id] = server.app.spool.pending()
    queued = server.app.spool.load(queue_id)
    envelope = queued.envelope
    assert envelope.mail_from == SALES and envelope.auth_user == ALICE
    assert [(rcpt.address, rcpt.route) for rcpt in envelope.recipients] == [
        (BOB, Route.LOCAL),
        (REMOTE, Route.REMOTE),
    ]


def test_implicit_tls_client_can_send(server: RunningServer, certs: Certs) -> None:
    """465 implicit TLS + LOGIN, as a mail client configured for SSL/TLS does."""
    with smtplib.SMTP_SSL(
        "127.0.0.1", ports(server)["smtps"], context=certs.client_context(), timeout=10
    ) as client:
        client.ehlo()
        client.user, client.password = ALICE, ALICE_PASSWORD  # what smtplib's auth_login reads
        client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert client.sendmail(ALICE, [BOB], message(ALICE, BOB, "over 465")) == {}
    [stored] = server.messages(BOB)
    assert stored["Subject"] == "over 465"


def test_login_does_not_survive_starttls_on_loopback_plaintext(
    server_factory: Callable[..., RunningServer], certs: Certs
) -> None:
    """Plaintext AUTH on loopback, then STARTTLS: the session starts over unauthenticated."""
    server = start_submission_server(server_factory, certs, auth=AuthConfig(allow_plaintext_on_loopback=True))
    client = TlsRawSmtp(ports(server)["submission"])
    client.ehlo()
    assert client.command(f"AUTH PLAIN {plain_response(ALICE, ALICE_PASSWORD)}") == r.AUTH_SUCCESSFUL.render(
        enhanced=True
    )
    client.starttls(certs.client_context())
    client.command("EHLO client.test")
    assert client.command(f"MAIL FROM:<{ALICE}>") == r.AUTH_REQUIRED.render(enhanced=True)
    client.close()


# --- aliases from the command line --------------------------------------------------------------


def test_alias_cli_catch_all_and_external_targets_route_mail(
    server_factory: Callable[..., RunningServer], certs: Certs, tmp_path: Path
) -> None:
    server = start_submission_server(server_factory, certs)
    data_dir = str(server.config.data_dir)

    def cli(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "postoffice", *args, "--data-dir", data_dir],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    cli("alias", "add", "@example.test", ALICE)
    cli("alias", "add", "list@example.test", BOB, REMOTE)
    assert cli("alias", "list").splitlines() == [
        f"@example.test -> {ALICE}",
        f"list@example.test -> {BOB}, {REMOTE}",
        f"{SALES} -> {ALICE}",
        f"{TEAM} -> {ALICE}, {BOB}",
    ]
    with smtplib.SMTP("127.0.0.1", ports(server)["smtp"], timeout=10) as mx:
        assert (
            mx.sendmail("x@elsewhere.test", ["whoever@example.test"], "Subject: caught\r\n\r\nhi\r\n") == {}
        )
        # An alias with an external target accepts mail from outside: the alias is ours.
        assert mx.sendmail("x@elsewhere.test", ["list@example.test"], "Subject: list\r\n\r\nhi\r\n") == {}
    assert [m["Subject"] for m in server.messages(ALICE)] == ["caught"]
    assert [m["Subject"] for m in server.messages(BOB)] == ["list"]
    wait_for(lambda: len(server.app.spool.pending()) == 1)
    [queue_id] = server.app.spool.pending()
    remote = [
        rcpt for rcpt in server.app.spool.load(queue_id).envelope.recipients if rcpt.route is Route.REMOTE
    ]
    assert [rcpt.address for rcpt in remote] == [REMOTE]
    cli("alias", "del", "@example.test")
    with smtplib.SMTP("127.0.0.1", ports(server)["smtp"], timeout=10) as mx:
        mx.ehlo()
        mx.mail("x@elsewhere.test")
        assert mx.rcpt("whoever@example.test")[0] == r.USER_UNKNOWN.code
