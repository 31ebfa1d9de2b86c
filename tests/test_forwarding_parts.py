"""The pieces of forwarding, each alone: the SRS secret file, the sender rewriting, where an
alias's outside target and an SRS address resolve to, the ARC sealer and the forwarding agent
over a real spool. End to end (real sockets, DNS, dkimpy) is tests/test_forwarding.py."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from conftest import make_config
from postoffice.accounts import Accounts
from postoffice.app import srs_secrets
from postoffice.config import AuthenticationSettings, Config, load_config
from postoffice.delivery.agent import Delivered, TempFail
from postoffice.delivery.forward import ForwardAgent
from postoffice.errors import ConfigError
from postoffice.mailauth import dkim_keys, results
from postoffice.mailauth.arc_sealer import ArcSealer
from postoffice.mailauth.dkim_signer import Signer
from postoffice.mailauth.forwarding import SenderRewriting
from postoffice.mailauth.srs import Srs, SrsError
from postoffice.mailauth.srs_secrets import SrsSecretError, SrsSecrets
from postoffice.policy import Policy
from postoffice.qmgr.dispatch import destination_of
from postoffice.recipients import Kind, Recipients
from postoffice.smtp import replies
from postoffice.smtp.grammar import Mailbox, parse_path
from postoffice.spool.envelope import Envelope, QueuedMessage, Recipient, Route
from postoffice.spool.files import FileSpool

LOCAL = "local.test"
CAROL = "carol@sender.test"


def rewriting(tmp_path: Path, *, create: bool = True) -> SenderRewriting:
    return SenderRewriting(SrsSecrets(tmp_path / "srs.secret", create=create), lambda d: d.lower() == LOCAL)


# --- the secret file ----------------------------------------------------------------------------


def test_the_secret_is_made_on_first_use_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "data" / "srs.secret"
    secrets = SrsSecrets(path)
    first = secrets.current()
    assert len(first) == 1 and len(first[0]) >= 40
    assert path.stat().st_mode & 0o777 == 0o600
    assert SrsSecrets(path).current() == first  # another process reads the same one
    assert not list(path.parent.glob(".*tmp"))


def test_secrets_are_read_again_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "srs.secret"
    path.write_text("# rotated on 2026-12-01\nold-secret\n")
    secrets = SrsSecrets(path, create=False)
    assert secrets.current() == (b"old-secret",)
    path.write_text("new-secret-on-top\n\nold-secret\n")
    assert secrets.current() == (b"new-secret-on-top", b"old-secret")


def test_a_given_secret_file_that_is_missing_or_empty_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SrsSecretError, match="no such file"):
        SrsSecrets(tmp_path / "missing", create=False).current()
    (tmp_path / "empty").write_text("# nothing yet\n")
    with pytest.raises(SrsSecretError, match="holds no secret"):
        SrsSecrets(tmp_path / "empty", create=False).current()


def test_the_setting_names_the_file(tmp_path: Path) -> None:
    config_file = tmp_path / "postoffice.toml"
    config_file.write_text(
        f'data_dir = "{tmp_path}"\n[authentication]\nsrs_secret_file = "/etc/srs.secret"\n'
    )
    assert load_config(config_file).srs_secret_file == Path("/etc/srs.secret")
    assert make_config(tmp_path).srs_secret_file == tmp_path / "srs.secret"


# --- rewriting and reversing --------------------------------------------------------------------


def test_outside_senders_are_rewritten_into_the_alias_domain(tmp_path: Path) -> None:
    srs = rewriting(tmp_path)
    rewritten = srs.sender_for(CAROL, LOCAL)
    assert rewritten.startswith("SRS0=") and rewritten.endswith("=sender.test=carol@local.test")
    assert srs.reverse(rewritten) == CAROL
    assert srs.sender_for("", LOCAL) == ""  # a bounce stays a bounce
    assert srs.sender_for("alice@LOCAL.test", LOCAL) == "alice@LOCAL.test"  # ours: SPF names us


def test_reversing_tells_apart_no_srs_and_bad_srs(tmp_path: Path) -> None:
    srs = rewriting(tmp_path)
    assert srs.reverse("alice@local.test") is None
    assert srs.reverse("srs0x@local.test") is None  # no separator: an ordinary name
    for bad in ("SRS0=abcd=AA=sender.test=carol@local.test", "SRS0=x@local.test"):
        with pytest.raises(SrsError):
            srs.reverse(bad)
    secret = (tmp_path / "srs.secret").read_bytes().strip()
    old = Srs([secret], LOCAL, clock=lambda: time.time() - 22 * 86400).forward(CAROL)
    with pytest.raises(SrsError, match="expired"):
        srs.reverse(old)


def test_an_old_secret_still_reverses_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "srs.secret"
    path.write_text("first\n")
    srs = rewriting(tmp_path, create=False)
    before = srs.sender_for(CAROL, LOCAL)
    path.write_text("second\nfirst\n")
    after = srs.sender_for(CAROL, LOCAL)
    assert before != after and srs.reverse(before) == srs.reverse(after) == CAROL
    path.write_text("second\n")
    with pytest.raises(SrsError):
        srs.reverse(before)


# --- where addresses go -------------------------------------------------------------------------


def config_and_accounts(tmp_path: Path) -> tuple[Config, Accounts]:
    config = make_config(tmp_path, domains=(LOCAL,))
    accounts = Accounts(config.accounts_file)
    accounts.add_user("alice@local.test", "password")
    accounts.add_alias("fwd@local.test", ["bob@remote.test", "alice@local.test"])
    accounts.add_alias("@local.test", ["alice@local.test"])  # a catch-all
    return config, accounts


def test_an_alias_target_outside_is_forwarded_and_srs_goes_back(tmp_path: Path) -> None:
    config, accounts = config_and_accounts(tmp_path)
    srs = rewriting(tmp_path)
    recipients = Recipients(config, accounts, srs=srs.reverse)
    found = recipients.resolve(Mailbox("fwd", LOCAL))
    assert (found.local, found.remote, found.forward) == (("alice@local.test",), (), ("bob@remote.test",))
    rewritten = srs.sender_for(CAROL, LOCAL)
    local_part = rewritten.rpartition("@")[0]
    back = recipients.resolve(Mailbox(local_part, LOCAL))
    assert (back.kind, back.remote, back.forward) == (Kind.DELIVER, (CAROL,), ())
    # A forged one is unknown, even though the catch-all would take any other name.
    forged = recipients.resolve(Mailbox("SRS0=abcd=AA=sender.test=carol", LOCAL))
    assert forged.kind is Kind.UNKNOWN
    assert recipients.resolve(Mailbox("anyone", LOCAL)).local == ("alice@local.test",)


def test_an_unauthenticated_bounce_to_srs_is_accepted_for_the_original_sender(tmp_path: Path) -> None:
    config, accounts = config_and_accounts(tmp_path)
    srs = rewriting(tmp_path)
    policy = Policy(config, accounts, srs=srs.reverse)
    path, _ = parse_path(
        f"<{srs.sender_for(CAROL, LOCAL)}>", utf8=False, allow_null=False, allow_postmaster=True
    )
    verdict = policy.check_recipient(path, authenticated_user=None)
    assert (verdict.reply, verdict.remote) == (replies.RECIPIENT_OK, (CAROL,))
    bad, _ = parse_path(
        "<SRS0=zzzz=AA=sender.test=carol@local.test>", utf8=False, allow_null=False, allow_postmaster=True
    )
    assert policy.check_recipient(bad, authenticated_user=None).reply == replies.USER_UNKNOWN


def test_forwarded_recipients_are_one_destination() -> None:
    recipient = Recipient("bob@remote.test", "fwd@local.test", Route.FORWARD)
    assert destination_of(recipient) == "forward"


# --- the ARC sealer -----------------------------------------------------------------------------

MESSAGE = b"From: carol@sender.test\r\nTo: fwd@local.test\r\nSubject: hi\r\n\r\nhello\r\n"


def with_results(message: bytes = MESSAGE) -> bytes:
    field = results.header_field("mx.local.test", [results.arc_result("none", 0, None)])
    return field + message


def test_the_sealer_seals_with_the_domains_rsa_key(tmp_path: Path) -> None:
    dkim_keys.generate(tmp_path, LOCAL, "ed", "ed25519")
    sealer = ArcSealer(Signer(tmp_path, [LOCAL]), "mx.local.test")
    assert sealer.arc_set(with_results(), LOCAL, what="test") == b""  # Ed25519 cannot seal ARC
    dkim_keys.generate(tmp_path, LOCAL, "rsa1", "rsa")
    fields = sealer.arc_set(with_results(), LOCAL, what="test")
    assert fields.startswith(b"ARC-Seal: i=1; ") and b"cv=none" in fields and b"s=rsa1" in fields
    assert b"ARC-Authentication-Results: i=1; mx.local.test;" in fields


def test_what_cannot_be_sealed_is_forwarded_unsealed_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sealer = ArcSealer(Signer(tmp_path, [LOCAL]), "mx.local.test")
    caplog.set_level(logging.INFO, "postoffice.mailauth")
    assert sealer.arc_set(with_results(), LOCAL, what="queue_id=Q1") == b""
    dkim_keys.generate(tmp_path, LOCAL, "rsa1", "rsa")
    assert sealer.arc_set(MESSAGE, LOCAL, what="queue_id=Q2") == b""  # no results of ours
    assert sealer.arc_set(None, LOCAL, what="queue_id=Q3") == b""  # too large to read
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 3 and all("event=arc-not-sealed domain=local.test" in line for line in lines)
    assert "postoffice dkim generate local.test" in lines[0]


# --- the agent ----------------------------------------------------------------------------------


async def queued(spool: FileSpool, sender: str, *recipients: Recipient) -> QueuedMessage:
    writer = spool.put(Envelope(sender, recipients, received_at=1_750_000_000.0, ret="HDRS", envid="E1"))
    writer.write(with_results())
    return await writer.commit()


def agent(
    tmp_path: Path, spool: FileSpool, submitted: list[QueuedMessage], *, create: bool = True
) -> ForwardAgent:
    dkim_keys.generate(tmp_path, LOCAL, "rsa1", "rsa")
    sealer = ArcSealer(Signer(tmp_path, [LOCAL, "other.test"]), "mx.local.test")
    return ForwardAgent(
        spool, rewriting(tmp_path, create=create), sealer, submitted.append, default_domain=LOCAL
    )


async def test_the_agent_queues_one_copy_per_alias_domain(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path / "spool")
    submitted: list[QueuedMessage] = []
    bob = Recipient("bob@remote.test", "fwd@local.test", Route.FORWARD, ("SUCCESS",), "rfc822;fwd@local.test")
    dan = Recipient("dan@remote.test", "team@other.test", Route.FORWARD)
    message = await queued(spool, CAROL, bob, dan)
    results_ = await agent(tmp_path, spool, submitted).deliver(message, [bob, dan])
    assert all(isinstance(result, Delivered) and result.dsn_passed_on for result in results_)
    assert [result.detail for result in results_] == [f"forwarded as {copy.queue_id}" for copy in submitted]
    first, second = (copy.envelope for copy in submitted)
    assert first.mail_from.endswith("=sender.test=carol@local.test")
    assert second.mail_from.endswith("=sender.test=carol@other.test")
    assert first.recipients == (
        Recipient("bob@remote.test", "fwd@local.test", Route.REMOTE, ("SUCCESS",), "rfc822;fwd@local.test"),
    )
    assert (first.received_at, first.ret, first.envid) == (1_750_000_000.0, "HDRS", "E1")
    with spool.open(submitted[0].queue_id) as content:
        sealed = content.read()
    with spool.open(submitted[1].queue_id) as content:
        unsealed = content.read()
    assert sealed.startswith(b"ARC-Seal: i=1; ") and sealed.endswith(with_results())
    assert unsealed == with_results()  # other.test has no key


async def test_a_secret_that_cannot_be_read_defers_and_queues_nothing(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path / "spool")
    submitted: list[QueuedMessage] = []
    bob = Recipient("bob@remote.test", "fwd@local.test", Route.FORWARD)
    message = await queued(spool, CAROL, bob)
    [result] = await agent(tmp_path, spool, submitted, create=False).deliver(message, [bob])
    assert isinstance(result, TempFail) and result.reply == replies.LOCAL_ERROR
    assert submitted == [] and spool.pending() == [message.queue_id]


def test_a_given_secret_file_is_checked_when_the_server_is_built(tmp_path: Path) -> None:
    missing = tmp_path / "missing.secret"
    config = make_config(tmp_path, authentication=AuthenticationSettings(srs_secret_file=missing))
    with pytest.raises(ConfigError, match=r"missing\.secret: no such file") as raised:
        srs_secrets(config)
    assert raised.value.key == "authentication.srs_secret_file"
    missing.write_text("s3cret\n")
    assert srs_secrets(config).current() == (b"s3cret",)
    assert not (tmp_path / "srs.secret").exists()
