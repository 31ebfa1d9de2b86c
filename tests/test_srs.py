"""The Sender Rewriting Scheme: round trips, SRS1 wrapping, expiry and forgery, and the same
addresses as postsrsd (Debian's, libsrs2's scheme) writes and reads them."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import require_tool
from mail_peers import free_port
from postoffice.mailauth.srs import Srs, SrsError

NOW = 1_796_000_000.0  # a fixed day for the table tests
DAY = 86400


def _srs(domain: str = "forward.example", secrets: tuple[bytes, ...] = (b"s3cret",), now: float = NOW) -> Srs:
    return Srs(secrets, domain, clock=lambda: now)


def test_srs0_round_trip() -> None:
    srs = _srs()
    rewritten = srs.forward("Ann.Smith@Example.COM")
    local, _, domain = rewritten.partition("@")
    assert domain == "forward.example"
    assert local.startswith("SRS0=") and local.endswith("=Example.COM=Ann.Smith")
    assert srs.reverse(rewritten) == "Ann.Smith@Example.COM"
    assert srs.reverse(rewritten.lower()) == "ann.smith@example.com"  # a relay lower-cased it


def test_null_sender_and_own_domain_stay() -> None:
    srs = _srs()
    assert srs.forward("") == ""
    assert srs.forward("user@Forward.Example") == "user@Forward.Example"


def test_second_forwarder_wraps_into_srs1_and_bounces_retrace() -> None:
    first, second, third = (
        _srs("one.example", (b"a",)),
        _srs("two.example", (b"b",)),
        _srs("three.example", (b"c",)),
    )
    once = first.forward("ann@example.com")
    twice = second.forward(once)
    assert twice.startswith("SRS1=") and "=one.example==" in twice
    thrice = third.forward(twice)
    assert thrice.endswith("@three.example") and "=one.example==" in thrice
    # A bounce to the last address goes straight back to the first forwarder, which reverses.
    assert third.reverse(thrice) == once
    assert second.reverse(twice) == once
    assert first.reverse(once) == "ann@example.com"


def test_expired_and_future_days() -> None:
    rewritten = _srs().forward("ann@example.com")
    assert _srs(now=NOW + 21 * DAY).reverse(rewritten) == "ann@example.com"
    with pytest.raises(SrsError, match="expired"):
        _srs(now=NOW + 22 * DAY).reverse(rewritten)
    with pytest.raises(SrsError, match="expired"):
        _srs(now=NOW - 2 * DAY).reverse(rewritten)  # a day that wraps to 1022 days old


@pytest.mark.parametrize(
    "address",
    [
        "ann@example.com",
        "SRS0@forward.example",
        "SRS0=@forward.example",
        "SRS0=abcd=AA=example.com@forward.example",
        "SRS0=abcd=A!=example.com=ann@forward.example",
        "SRS1=abcd=one.example@forward.example",
        "SRS1==one.example==x@forward.example",
    ],
)
def test_not_reversible(address: str) -> None:
    with pytest.raises(SrsError):
        _srs().reverse(address)


def test_forged_hash_and_other_secret_fail_and_rotation_works() -> None:
    rewritten = _srs().forward("ann@example.com")
    local, _, domain = rewritten.partition("@")
    forged = "SRS0=AAAA" + local[9:] + "@" + domain
    with pytest.raises(SrsError, match="hash"):
        _srs().reverse(forged)
    with pytest.raises(SrsError, match="hash"):
        _srs(secrets=(b"other",)).reverse(rewritten)
    assert _srs(secrets=(b"new", b"s3cret")).reverse(rewritten) == "ann@example.com"


def test_separators_libsrs2_reads() -> None:
    rewritten = _srs().forward("ann@example.com")
    assert _srs().reverse("SRS0+" + rewritten[5:]) == "ann@example.com"


_LOCAL = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="@"), min_size=1, max_size=30
)
_DOMAIN = st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){1,3}", fullmatch=True)


@given(_LOCAL, _DOMAIN, st.integers(min_value=0, max_value=21))
def test_round_trip_any_address(local: str, domain: str, days_later: int) -> None:
    sender = f"{local}@{domain}"
    try:
        rewritten = _srs().forward(sender)
    except SrsError:
        assert local[:5].upper() in ("SRS1=", "SRS1+", "SRS1-")  # only a malformed SRS1 is refused
        return
    assert _srs(now=NOW + days_later * DAY).reverse(rewritten) == sender


@given(st.text(max_size=80))
def test_reverse_raises_only_its_error(address: str) -> None:
    with contextlib.suppress(SrsError):
        _srs().reverse(address)


# --- postsrsd, an independent implementation -----------------------------------------------------


@contextlib.contextmanager
def _postsrsd(directory: Path, secret: bytes, domain: str) -> Iterator[tuple[int, int]]:
    secrets = directory / "srs.secret"
    secrets.write_bytes(secret + b"\n")
    forward, reverse = free_port("127.0.0.1"), free_port("127.0.0.1")
    process = subprocess.Popen(
        [
            require_tool("postsrsd"),
            f"-s{secrets}",
            f"-d{domain}",
            "-l127.0.0.1",
            f"-f{forward}",
            f"-r{reverse}",
            "-4",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", reverse), timeout=1):
                break
            time.sleep(0.05)
        yield forward, reverse
    finally:
        process.terminate()
        process.wait(timeout=10)


def _ask(port: int, address: str) -> str:
    """postsrsd's TCP table (Postfix tcp_table(5)): ``get ADDRESS`` → ``200 ANSWER``."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(f"get {urllib.parse.quote(address)}\n".encode())
        reply = conn.makefile("rb").readline().decode().strip()
    code, _, value = reply.partition(" ")
    assert code == "200", reply
    return urllib.parse.unquote(value)


def test_postsrsd_writes_and_reads_the_same_addresses(tmp_path: Path) -> None:
    srs = Srs((b"shared-secret",), "forward.example")  # today's clock: postsrsd has no other
    other = Srs((b"other-secret",), "first.example")
    senders = ["ann@example.com", "Bob.Smith+tag@Mail.Example.ORG", other.forward("carol@example.net")]
    with _postsrsd(tmp_path, b"shared-secret", "forward.example") as (forward, reverse):
        for sender in senders:
            ours = srs.forward(sender)
            assert _ask(forward, sender) == ours
            assert _ask(reverse, ours) == srs.reverse(ours)
        wrapped = other.forward(srs.forward("dave@example.com"))  # SRS1 through another forwarder
        assert _ask(forward, wrapped) == srs.forward(wrapped)
