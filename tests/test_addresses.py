"""One canonical form of an address (addresses.py), and one resolution of a recipient
(recipients.py) that RCPT and reports share.

Before addresses.py, four functions canonicalised an address: ``policy.mailbox_address`` (the
parsed RCPT/MAIL mailbox: local part unquoted and lower-cased), ``accounts._fold`` (lookups:
lower-cased and NFC), ``config.normalize_address`` (configured addresses, checked; with
``fold_local`` for users and aliases) and ``delivery.mailbox_names`` (directory names: lower-cased
and NFC per part). Every form any of them accepted is here, and each caller now gets the same
answer for the same address.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import RunningServer, maildir_messages, wait_until
from postoffice.accounts import Accounts
from postoffice.addresses import (
    canonical,
    canonical_or_none,
    fold,
    join,
    normalize_address,
    normalize_domain,
    split,
)
from postoffice.config import Config
from postoffice.maildir.names import mailbox_address, mailbox_path
from postoffice.recipients import Destinations, Kind, Recipients
from postoffice.smtp.grammar import Mailbox, parse_path

# (as written, canonical form): case, NFC, IDNA U-labels, address literals, plus tags, quoted
# local parts (as the policy saw them unquoted), a final sigma, the dotted I.
FORMS = [
    ("user@example.com", "user@example.com"),
    ("User@Example.COM", "user@example.com"),
    ("JOSÉ@example.COM", "josé@example.com"),
    ("jose\u0301@example.com", "josé@example.com"),
    ("José@Example.com", "josé@example.com"),
    ("Ünïcode.User+tag@Example.com", "ünïcode.user+tag@example.com"),
    ("ΟΔΟΣ@Example.gr", "οδος@example.gr"),
    ("İ@example.com", "i\u0307@example.com"),
    ("user@Bücher.Example", "user@bücher.example"),
    ("user@[192.0.2.1]", "user@[192.0.2.1]"),
    ("user@[IPv6:2001:DB8::1]", "user@[ipv6:2001:db8::1]"),
    ("a@b@example.com", "a@b@example.com"),  # "a@b"@example.com, unquoted
    ("with space@example.com", "with space@example.com"),  # "with space"@example.com
    ("Postmaster@Example.com", "postmaster@example.com"),
]


@pytest.mark.parametrize(("written", "expected"), FORMS)
def test_the_canonical_form(written: str, expected: str) -> None:
    assert canonical(written) == canonical_or_none(written) == expected
    assert canonical(expected) == expected  # already canonical stays as it is
    local, domain = split(written)
    assert join(local, domain) == expected and f"{fold(local)}@{fold(domain)}" == expected


@pytest.mark.parametrize("address", ["nobody", "@example.com", "a@", "", "@"])
def test_no_local_part_or_no_domain_is_no_address(address: str) -> None:
    with pytest.raises(ValueError):
        canonical(address)
    assert canonical_or_none(address) is None


def test_an_empty_quoted_local_part_joins_to_an_address_nobody_has() -> None:
    """``""@example.com`` is legal on the wire; as before, it becomes ``@example.com``, which
    no lookup finds and no mailbox can be made for."""
    parsed, _ = parse_path('<""@example.com>', utf8=True, allow_null=False, allow_postmaster=False)
    assert parsed.mailbox is not None
    assert join(parsed.mailbox.unquoted_local_part, parsed.mailbox.domain) == "@example.com"


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ("<User@Example.COM>", "user@example.com"),
        ('<"a@b"@example.com>', "a@b@example.com"),
        ('<"with space"@example.com>', "with space@example.com"),
        ('<"q\\"uote"@example.com>', 'q"uote@example.com'),
        ("<jose\u0301@example.com>", "josé@example.com"),
    ],
)
def test_what_the_policy_took_from_a_parsed_path_is_the_canonical_form(wire: str, expected: str) -> None:
    parsed, _ = parse_path(wire, utf8=True, allow_null=False, allow_postmaster=False)
    mailbox = parsed.mailbox
    assert mailbox is not None
    assert join(mailbox.unquoted_local_part, mailbox.domain) == expected


@pytest.mark.parametrize(("written", "expected"), FORMS)
def test_a_mailbox_directory_names_the_canonical_form(tmp_path: Path, written: str, expected: str) -> None:
    path = mailbox_path(tmp_path, written)
    assert path == mailbox_path(tmp_path, expected)
    assert mailbox_address(path.parent.name, path.name) == expected


def test_accounts_look_users_and_aliases_up_by_the_canonical_form(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path / "accounts.json")
    assert accounts.add_user("José@Example.com", "pw") == "josé@example.com"
    assert accounts.add_alias("Sales@Example.COM", ["JOSE\u0301@example.com"]) == "sales@example.com"
    assert accounts.add_alias("@Bücher.Example", ["josé@example.com"]) == "@bücher.example"
    for variant in ("josé@example.com", "JOSÉ@example.COM", "jose\u0301@EXAMPLE.com"):
        assert accounts.has_user(variant)
        assert accounts.resolve(variant) == ["josé@example.com"]
    assert accounts.resolve("SALES@example.com") == ["josé@example.com"]
    assert accounts.resolve("anyone@BÜCHER.example") == ["josé@example.com"]
    assert accounts.resolve("nobody") is None


@pytest.mark.parametrize(
    ("written", "kept", "folded"),
    [
        ("Hostmaster@Example.ORG", "Hostmaster@example.org", "hostmaster@example.org"),
        ("Ünïcode.User+tag@Example.com", "Ünïcode.User+tag@example.com", "ünïcode.user+tag@example.com"),
        ("jose\u0301@example.com", "jose\u0301@example.com", "josé@example.com"),
        ("user@Bücher.Example", "user@bücher.example", "user@bücher.example"),
        ("o'brien.x@example.com", "o'brien.x@example.com", "o'brien.x@example.com"),
    ],
)
def test_a_configured_address_keeps_its_local_case_unless_folded(
    written: str, kept: str, folded: str
) -> None:
    assert normalize_address(written) == kept
    assert normalize_address(written, fold_local=True) == folded == canonical(written)


@pytest.mark.parametrize(
    "address",
    ["nobody", "@example.com", "a@", "a b@example.com", ".a@example.com", "a..b@example.com", "a@b@",
     "x" * 65 + "@example.com", '"quoted"@example.com', "a@[192.0.2.1]", "a@10.0.0.1", "a@-x.example"],
)  # fmt: skip
def test_a_configured_address_must_be_a_dot_atom_at_a_host_name(address: str) -> None:
    with pytest.raises(ValueError):
        normalize_address(address)


def test_domains_are_checked_through_their_ascii_form() -> None:
    assert normalize_domain("Bücher.Example") == "bücher.example"
    with pytest.raises(ValueError, match="longer than 253"):
        normalize_domain(".".join(["a" * 63] * 4) + ".x")


# --- recipients: one resolution for RCPT and for reports ------------------------------------------


@pytest.fixture
def recipients(tmp_path: Path) -> Recipients:
    accounts = Accounts(tmp_path / "accounts.json")
    accounts.add_user("ann@example.test", "pw")
    accounts.add_alias("team@example.test", ["Ann@Example.test", "far@elsewhere.test"])
    config = Config(hostname="mx.test", data_dir=tmp_path, domains=("example.test",))
    return Recipients(config, accounts)


def mailbox(address: str) -> Mailbox:
    parsed, _ = parse_path(f"<{address}>", utf8=True, allow_null=False, allow_postmaster=False)
    assert parsed.mailbox is not None
    return parsed.mailbox


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("ANN@example.test", Destinations(Kind.DELIVER, local=("ann@example.test",))),
        (
            "Team@Example.TEST",
            Destinations(Kind.DELIVER, local=("ann@example.test",), forward=("far@elsewhere.test",)),
        ),
        ("Someone@Elsewhere.test", Destinations(Kind.RELAY, remote=("Someone@elsewhere.test",))),
        ("nobody@example.test", Destinations(Kind.UNKNOWN)),
        ("PostMaster@example.test", Destinations(Kind.DELIVER, local=("postmaster@example.test",))),
    ],
)
def test_an_address_resolves_to_where_its_mail_goes(
    recipients: Recipients, address: str, expected: Destinations
) -> None:
    assert recipients.resolve(mailbox(address)) == expected


def test_the_configured_postmaster_takes_every_postmaster(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path / "accounts.json")
    accounts.add_user("boss@example.test", "pw")
    config = Config(
        hostname="mx.test", data_dir=tmp_path, domains=("example.test",), postmaster="Boss@example.test"
    )
    found = Recipients(config, accounts).resolve(mailbox("postmaster@example.test"))
    assert found == Destinations(Kind.DELIVER, local=("boss@example.test",))
    assert Recipients(config, accounts).postmaster() == found


def test_capture_mode_takes_every_address_a_mailbox_can_be_made_for(tmp_path: Path) -> None:
    config = Config(hostname="mx.test", data_dir=tmp_path)
    accounts = Accounts(tmp_path / "accounts.json")
    resolver = Recipients(config, accounts, mailbox_ok=lambda address: "/" not in address)
    assert resolver.resolve(mailbox("Any.One@Anywhere.test")) == Destinations(
        Kind.DELIVER, local=("any.one@anywhere.test",)
    )
    assert resolver.resolve(mailbox("x@[x:/etc]")).kind is Kind.UNUSABLE
    assert resolver.postmaster() == Destinations(Kind.DELIVER, local=("postmaster@mx.test",))


# --- reports go where a message to their recipient would ---------------------------------------


def _send_with_success_report(running: RunningServer, sender: str, recipient: str) -> None:
    message = f"From: {sender}\r\nTo: {recipient}\r\nSubject: report me\r\n\r\nHello.\r\n".encode()
    with smtplib.SMTP(running.host, running.port, timeout=10) as client:
        client.sendmail(sender, [recipient], message, rcpt_options=["NOTIFY=SUCCESS"])
    running.wait_idle()


def _reports(running: RunningServer, address: str) -> list[str]:
    return [
        copy.as_string()
        for copy in maildir_messages(running.config.mail_dir, address)
        if copy.get_content_type() == "multipart/report"
    ]


def test_a_report_to_the_postmaster_of_a_local_domain_reaches_the_postmaster(
    server_factory: Callable[..., RunningServer],
) -> None:
    """RCPT TO:<postmaster@example.test> is accepted with no such user (RFC 5321 §4.5.1); a
    report to that sender now goes to the same mailbox (it used to go nowhere)."""
    running = server_factory(domains=("example.test",))
    running.app.accounts.add_user("ann@example.test", "pw")
    _send_with_success_report(running, "postmaster@example.test", "ann@example.test")
    wait_until(lambda: len(_reports(running, "postmaster@example.test")) == 1, what="the report")
    assert "Action: delivered" in _reports(running, "postmaster@example.test")[0]


def test_a_report_to_an_alias_reaches_its_local_targets(server_factory: Callable[..., RunningServer]) -> None:
    running = server_factory(domains=("example.test",))
    running.app.accounts.add_user("ann@example.test", "pw")
    running.app.accounts.add_user("bob@example.test", "pw")
    running.app.accounts.add_alias("team@example.test", ["Ann@Example.test", "far@elsewhere.test"])
    _send_with_success_report(running, "Team@Example.test", "bob@example.test")
    wait_until(lambda: len(_reports(running, "ann@example.test")) == 1, what="the report")
