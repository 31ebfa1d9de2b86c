"""The Signer: which domain's keys sign (From for users' mail, the host name for reports), the
key directory re-read when it changes, and nothing signed for a domain that is not ours."""

from __future__ import annotations

from pathlib import Path

from postoffice.mailauth import dkim_keys
from postoffice.mailauth.dkim_signer import Signer, from_domain


def test_from_domain_reads_the_one_from_field() -> None:
    assert (
        from_domain(b"Subject: x\r\nFrom: Alice\r\n <Alice@Local.Test>\r\nTo: b@c.test\r\n") == "local.test"
    )
    assert from_domain(b"Subject: no author\r\n") is None
    assert from_domain(b"From: a@one.test\r\nFrom: b@two.test\r\n") is None  # RFC 5322 §3.6: one
    assert from_domain(b"From: a@one.test, b@two.test\r\n") is None  # whose key would sign?


def test_only_a_local_author_domain_is_signed_for(tmp_path: Path) -> None:
    signer = Signer(tmp_path, ["local.test"])
    assert signer.for_author(b"From: a@local.test\r\n") == "local.test"
    assert signer.for_author(b"From: a@elsewhere.test\r\n") is None
    assert signer.for_author(b"From: a@sub.local.test\r\n") is None


def test_reports_use_the_host_name_key_or_the_longest_local_parent(tmp_path: Path) -> None:
    signer = Signer(tmp_path, ["example.test", "mail.example.test"])
    assert signer.for_host("mx.mail.example.test") == "mail.example.test"  # no keys yet: said
    dkim_keys.generate(tmp_path, "example.test", "s1")
    assert signer.for_host("mx.mail.example.test") == "example.test"  # the one with keys
    dkim_keys.generate(tmp_path, "mx.mail.example.test", "s1")
    assert signer.for_host("mx.mail.example.test") == "mx.mail.example.test"
    assert Signer(tmp_path, []).for_host("host.nowhere.test") is None


def test_keys_are_read_again_when_the_directory_changes(tmp_path: Path) -> None:
    signer = Signer(tmp_path, ["local.test"])
    assert signer.keys("local.test") == []
    dkim_keys.generate(tmp_path, "local.test", "one")
    assert [key.selector for key in signer.keys("local.test")] == ["one"]
    dkim_keys.retire(tmp_path, "local.test", "one")
    assert signer.keys("local.test") == []


def test_no_signatures_when_off_or_without_keys(tmp_path: Path) -> None:
    message = b"From: a@local.test\r\nSubject: s\r\n\r\nbody\r\n"
    signer = Signer(tmp_path, ["local.test"], enabled=False)
    dkim_keys.generate(tmp_path, "local.test", "one", "ed25519")
    assert signer.sign(message, "local.test", what="test") is None
    signer.configure(["local.test"], enabled=True)
    signed = signer.sign(message, "local.test", what="test")
    assert signed is not None and signed.selectors == ("one",) and len(signed.fields) == 1
    assert signer.sign(message, "other.test", what="test") is None
