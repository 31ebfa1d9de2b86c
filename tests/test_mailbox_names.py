"""Mailbox names: every address maps to two plain names inside the mail root, or is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.maildir.names import mailbox_location, mailbox_path


@pytest.mark.parametrize(
    ("address", "domain", "local"),
    [
        ("user@example.com", "example.com", "user"),
        ("User.Name@Example.COM", "example.com", "user.name"),
        ("a+tag@example.com", "example.com", "a+tag"),
        ("!#$&'*+-=?^_`{|}~.@example.com", "example.com", "!#$&'*+-=?^_`{|}~."),
        ("../x@example.com", "example.com", "%2E./x".replace("/", "%2F")),
        ("a/b@example.com", "example.com", "a%2Fb"),
        ("a\\b@example.com", "example.com", "a%5Cb"),
        (".hidden@example.com", "example.com", "%2Ehidden"),
        ("..@example.com", "example.com", "%2E."),
        (".@example.com", "example.com", "%2E"),
        ("a\x00b@example.com", "example.com", "a%00b"),
        ("a\nb@example.com", "example.com", "a%0Ab"),
        ("a%@example.com", "example.com", "a%25"),
        ('"john doe"@example.com', "example.com", "%22john%20doe%22"),
        ('"a@b"@example.com', "example.com", "%22a@b%22".replace("@", "%40")),
        ("a:b@example.com", "example.com", "a%3Ab"),
        ("Jörg@Bücher.example", "bücher.example", "jörg"),
        ("用户@例子.广告", "例子.广告", "用户"),
        ("J\u006f\u0308rg@example.com", "example.com", "jörg"),  # NFD spelling, same mailbox
        ("a\u200bb@example.com", "example.com", "a%E2%80%8Bb"),  # zero-width space is not a letter
        ("postmaster@[192.0.2.1]", "[192.0.2.1]", "postmaster"),
        ("root@[IPv6:2001:db8::1]", "[ipv6:2001:db8::1]", "root"),
    ],
)
def test_mapping(tmp_path: Path, address: str, domain: str, local: str) -> None:
    path = mailbox_path(tmp_path, address)
    assert path == tmp_path / domain / local
    assert path.parent.parent == tmp_path


@pytest.mark.parametrize(
    "address",
    [
        "postmaster",  # bare postmaster is resolved by the caller
        "@example.com",
        "user@",
        "user@.",
        "user@..",
        "user@.example.com",
        "user@example..com",
        "user@example.com.",
        "user@exa/mple.com",
        "user@exa\\mple.com",
        "user@exa\x00mple.com",
        "user@exa mple.com",
        "user@[]",
        "user@[192.0.2.1",
        "user@[a/b]",
        "user@[a\\b]",
        "user@[a b]",
        "user@" + "a" * 256,
        " " * 100 + "@example.com",  # 300 bytes once encoded
        "x" * 256 + "@example.com",
        "%" * 86 + "@example.com",
    ],
)
def test_refused(tmp_path: Path, address: str) -> None:
    with pytest.raises(ValueError):
        mailbox_path(tmp_path, address)


def test_long_unicode_local_part_is_bounded_in_bytes(tmp_path: Path) -> None:
    fits = "é" * 127  # 254 bytes of UTF-8
    assert len(os.fsencode(mailbox_path(tmp_path, fits + "@example.com").name)) == 254
    with pytest.raises(ValueError):
        mailbox_path(tmp_path, fits + "éé@example.com")


def test_case_and_normalisation_variants_share_a_mailbox(tmp_path: Path) -> None:
    variants = ["José@Example.com", "JOSÉ@example.COM", "jose\u0301@example.com"]
    assert len({mailbox_path(tmp_path, address) for address in variants}) == 1


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "example.com").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the mail root"):
        mailbox_path(root, "user@example.com")


def test_a_symlink_placed_after_an_earlier_lookup_is_refused(tmp_path: Path) -> None:
    # The name mapping is cached; the symlink check must not be.
    root = tmp_path / "mail"
    outside = tmp_path / "outside"
    (root / "example.com").mkdir(parents=True)
    outside.mkdir()
    assert mailbox_path(root, "user@example.com") == root / "example.com" / "user"
    (root / "example.com" / "user").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the mail root"):
        mailbox_path(root, "user@example.com")


def test_the_location_is_the_path_from_the_names_alone(tmp_path: Path) -> None:
    """mailbox_location never looks at the disk; mailbox_path does, and refuses the symlink."""
    root = tmp_path / "mail"
    (root / "example.com").mkdir(parents=True)
    (root / "example.com" / "user").symlink_to(tmp_path)
    assert mailbox_location(root, "User@Example.com") == root / "example.com" / "user"
    with pytest.raises(ValueError, match="outside the mail root"):
        mailbox_path(root, "User@Example.com")
    with pytest.raises(ValueError):
        mailbox_location(root, "no-domain")


def test_distinct_local_parts_stay_distinct(tmp_path: Path) -> None:
    # Percent-encoding "%" itself keeps the mapping one-to-one.
    names = {mailbox_path(tmp_path, f"{local}@example.com") for local in ["a/b", "a%2Fb", "a%252Fb", "a_b"]}
    assert len(names) == 4


@given(st.text(min_size=1, max_size=80), st.sampled_from(["example.com", "[192.0.2.1]", "bücher.de"]))
def test_any_local_part_stays_inside_the_root(local: str, domain: str) -> None:
    root = Path("/srv/mail")
    try:
        path = mailbox_path(root, f"{local}@{domain}")
    except ValueError:
        return  # refusing is always safe
    assert path.parent.parent == root
    assert path.name not in ("", ".", "..") and not path.name.startswith(".")
    assert "/" not in path.name and "\x00" not in path.name
    assert all(char.isprintable() for char in path.name)
