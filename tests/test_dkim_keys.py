"""DKIM keys on disk and the ``postoffice dkim`` commands: made 0600 and never overwritten,
names checked before they become paths, records ready to paste, retired keys no longer sign."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dkim_support import txt_rdata
from postoffice.errors import DkimError
from postoffice.mailauth import dkim_keys
from postoffice.mailauth.dkim_record import parse_key_record


def _postoffice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postoffice", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_generate_stores_a_private_key_and_returns_the_record(tmp_path: Path) -> None:
    key = dkim_keys.generate(tmp_path, "Example.COM.", "s2025")
    assert key.path == tmp_path / "dkim" / "example.com" / "s2025.key"
    assert (key.domain, key.algorithm, key.bits, key.signing) == ("example.com", "rsa", 2048, True)
    assert key.path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "dkim").stat().st_mode & 0o777 == 0o700
    assert [p.name for p in key.path.parent.iterdir()] == ["s2025.key"]  # no temporary file left
    record = parse_key_record(key.record())
    assert (record.key_type, record.bits) == ("rsa", 2048)
    assert record.key.public_numbers() == key.private_key.public_key().public_numbers()


def test_the_zone_line_splits_the_record_into_255_octet_strings(tmp_path: Path) -> None:
    key = dkim_keys.generate(tmp_path, "example.com", "s1")
    line = key.zone_line()
    name, _, strings = line.partition(" IN TXT ")
    assert name == "s1._domainkey.example.com."
    pieces = re.findall(r'"([^"]*)"', strings)
    assert len(pieces) == 2 and all(len(piece) <= 255 for piece in pieces)
    assert "".join(pieces) == key.record() and key.record().startswith("v=DKIM1; k=rsa; p=")
    # The same strings, served from DNS, read back as the key (RFC 6376 §3.6.2.2).
    assert b"".join(txt_rdata(key.record()).data).decode() == key.record()


def test_ed25519_keys_publish_the_raw_public_key(tmp_path: Path) -> None:
    """RFC 8463 §4.2: p= is the base64 of the 32-octet public key."""
    key = dkim_keys.generate(tmp_path, "example.com", algorithm="ed25519", now=1_751_328_000)
    assert key.selector == "202507-ed25519"
    assert key.zone_line() == (f'202507-ed25519._domainkey.example.com. IN TXT "{key.record()}"')
    assert re.fullmatch(r"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=", key.record())
    assert parse_key_record(key.record()).key_type == "ed25519"


@pytest.mark.parametrize(
    "domain", ["../etc", "a/b.example", "..", "", "-x.example", "ex ample.com", "a" * 64 + ".com"]
)
def test_domains_that_are_not_dns_names_are_refused(tmp_path: Path, domain: str) -> None:
    with pytest.raises(DkimError, match="not a valid domain"):
        dkim_keys.generate(tmp_path, domain)
    assert not (tmp_path / "dkim").exists() and not (tmp_path.parent / "etc" / "dkim").exists()


@pytest.mark.parametrize("selector", ["../x", "a/b", "s_1", ".s", "s..t"])
def test_selectors_that_are_not_dns_names_are_refused(tmp_path: Path, selector: str) -> None:
    with pytest.raises(DkimError, match="not a valid selector"):
        dkim_keys.generate(tmp_path, "example.com", selector)


def test_a_key_is_never_overwritten(tmp_path: Path) -> None:
    first = dkim_keys.generate(tmp_path, "example.com", "s1")
    before = first.path.read_bytes()
    with pytest.raises(DkimError, match="already exists"):
        dkim_keys.generate(tmp_path, "example.com", "s1", "ed25519")
    assert first.path.read_bytes() == before


def test_every_key_signs_until_retired(tmp_path: Path) -> None:
    dkim_keys.generate(tmp_path, "example.com", "old")
    dkim_keys.generate(tmp_path, "example.com", "new")
    dkim_keys.generate(tmp_path, "example.com", "ed", "ed25519")
    dkim_keys.generate(tmp_path, "example.org", "s1")
    ring = dkim_keys.list_keys(tmp_path)
    assert [k.selector for k in ring.signing("EXAMPLE.com")] == ["ed", "new", "old"]
    dkim_keys.retire(tmp_path, "example.com", "old")
    ring = dkim_keys.list_keys(tmp_path)
    assert [k.selector for k in ring.signing("example.com")] == ["ed", "new"]
    assert [(k.domain, k.selector, k.signing) for k in ring.keys] == [
        ("example.com", "ed", True),
        ("example.com", "new", True),
        ("example.com", "old", False),
        ("example.org", "s1", True),
    ]
    with pytest.raises(DkimError, match="no key"):
        dkim_keys.retire(tmp_path, "example.com", "never")


def test_unreadable_key_files_are_reported_not_fatal(tmp_path: Path) -> None:
    good = dkim_keys.generate(tmp_path, "example.com", "good")
    (good.path.parent / "junk.key").write_text("not a key")
    (tmp_path / "dkim" / "Bad..Name").mkdir()
    ring = dkim_keys.list_keys(tmp_path)
    assert [k.selector for k in ring.keys] == ["good"]
    assert len(ring.problems) == 2
    assert any("junk.key: skipped" in p and "PEM" in p for p in ring.problems)
    assert dkim_keys.list_keys(tmp_path / "nowhere") == dkim_keys.KeyRing(())


def test_the_dkim_commands(tmp_path: Path) -> None:
    data = str(tmp_path)
    made = _postoffice("dkim", "generate", "example.com", "--selector", "s1", "--data-dir", data)
    assert made.returncode == 0, made.stderr
    assert "s1._domainkey.example.com. IN TXT" in made.stdout
    zone_line = made.stdout.strip().splitlines()[-1]
    ed = _postoffice("dkim", "generate", "example.com", "--algorithm", "ed25519", "--data-dir", data)
    assert ed.returncode == 0 and "k=ed25519" in ed.stdout
    assert _postoffice("dkim", "retire", "example.com", "s1", "--data-dir", data).returncode == 0
    listed = _postoffice("dkim", "list", "--records", "--data-dir", data)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert re.match(r"example\.com  \d{6}-ed25519  ed25519-256  signs  ", lines[0])
    assert re.match(r"example\.com  s1  rsa-2048  retired  ", lines[2])
    assert lines[3].strip() == zone_line
    refused = _postoffice("dkim", "generate", "../../etc", "--data-dir", data)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert (
        refused.stderr.startswith("postoffice: '../../etc' is not a valid domain")
        and "Traceback" not in refused.stderr
    )
    again = _postoffice("dkim", "generate", "example.com", "--selector", "s1", "--data-dir", data)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_dkim_list_without_keys(tmp_path: Path) -> None:
    listed = _postoffice("dkim", "list", "--data-dir", str(tmp_path))
    assert listed.returncode == 0 and "no DKIM keys in" in listed.stdout
