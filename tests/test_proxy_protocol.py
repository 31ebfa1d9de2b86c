"""PROXY protocol v1/v2: the parser on bytes (table and property tests), then a real listener."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import RawSmtp, RunningServer
from postoffice.config import Limits, ProxyProtocol
from postoffice.net import proxy_protocol as pp
from postoffice.smtp import replies

SIG = pp.V2_SIGNATURE


def v2(command: int, family: int, block: bytes) -> bytes:
    return SIG + struct.pack("!BBH", 0x20 | command, family, len(block)) + block


TCP4_BLOCK = bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack("!HH", 56324, 25)
TCP6_BLOCK = (
    bytes.fromhex("20010db8000000000000000000000001")
    + bytes.fromhex("20010db8000000000000000000000002")
    + struct.pack("!HH", 4000, 25)
)

VALID = [
    (b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n", 1, ("192.0.2.1", 56324), ("198.51.100.2", 25)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 25\r\n", 1, ("2001:db8::1", 4000), ("2001:db8::2", 25)),
    (b"PROXY UNKNOWN\r\n", 1, None, None),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", 1, None, None),
    (v2(1, 0x11, TCP4_BLOCK), 2, ("192.0.2.1", 56324), ("198.51.100.2", 25)),
    (v2(1, 0x21, TCP6_BLOCK), 2, ("2001:db8::1", 4000), ("2001:db8::2", 25)),
    # TLVs after the addresses are skipped (§2.2.7).
    (v2(1, 0x11, TCP4_BLOCK + b"\x04\x00\x03abc"), 2, ("192.0.2.1", 56324), ("198.51.100.2", 25)),
    (v2(0, 0x00, b""), 2, None, None),  # LOCAL: a health check from the proxy itself
    (v2(0, 0x11, TCP4_BLOCK), 2, None, None),  # LOCAL ignores any address block
    (v2(1, 0x00, b""), 2, None, None),  # PROXY over UNSPEC: no address to use
]


@pytest.mark.parametrize(("header", "version", "source", "destination"), VALID)
def test_valid_headers(
    header: bytes, version: int, source: tuple[str, int] | None, destination: tuple[str, int] | None
) -> None:
    parsed = pp.parse(header + b"EHLO x\r\n")
    assert parsed == pp.ProxyHeader(version, source, destination, len(header))
    # Every proper prefix asks for more bytes.
    for cut in range(len(header)):
        assert pp.parse(header[:cut]) is None


INVALID = [
    b"EHLO client.example\r\n",
    b"GET / HTTP/1.1\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",  # a field short
    b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25 extra\r\n",
    b"PROXY TCP4 2001:db8::1 198.51.100.2 1 25\r\n",  # wrong family
    b"PROXY TCP6 192.0.2.1 2001:db8::2 1 25\r\n",
    b"PROXY TCP4 192.0.2.256 198.51.100.2 1 25\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 25\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 025 25\r\n",  # leading zero
    b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 25\r\n",
    b"PROXY TCP4  192.0.2.1 198.51.100.2 1 25\r\n",  # two spaces
    b"PROXY UDP4 192.0.2.1 198.51.100.2 1 25\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 25\n",  # bare LF
    b"PROXY TCP4 \xc3\xa9 198.51.100.2 1 25\r\n",
    b"PROXY " + b"A" * 120,  # no CRLF within 107 octets
    SIG + struct.pack("!BBH", 0x11, 0x11, 12) + TCP4_BLOCK,  # version 1 in a v2 header
    SIG + struct.pack("!BBH", 0x22, 0x11, 12) + TCP4_BLOCK,  # command 2
    v2(1, 0x12, TCP4_BLOCK),  # UDP
    v2(1, 0x31, b"\x00" * 216),  # UNIX sockets
    v2(1, 0x11, TCP4_BLOCK[:8]),  # address block too short
    v2(1, 0x21, TCP4_BLOCK),
]


@pytest.mark.parametrize("data", INVALID)
def test_invalid_headers_are_refused(data: bytes) -> None:
    with pytest.raises(pp.ProxyProtocolError):
        pp.parse(data)


def test_builders_round_trip() -> None:
    source, destination = ("203.0.113.9", 1234), ("127.0.0.1", 25)
    for header in (pp.v1_header(source, destination), pp.v2_header(source, destination)):
        assert pp.parse(header) == pp.ProxyHeader(
            (header[:1] == b"P" and 1) or 2, source, destination, len(header)
        )
    assert pp.parse(pp.v2_header(None)) == pp.ProxyHeader(2, None, None, 16)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=60).map(lambda b: b"PROXY " + b),
        st.binary(max_size=60).map(lambda b: SIG + b),
    )
)
def test_any_bytes_parse_or_refuse(data: bytes) -> None:
    """Parsed, needs more, or ProxyProtocolError: nothing else, and never past the data."""
    try:
        header = pp.parse(data)
    except pp.ProxyProtocolError:
        return
    if header is not None:
        assert 0 < header.length <= len(data)


# --- over a real socket ----------------------------------------------------------------------


def wait_for_metric(server: RunningServer, line: str) -> None:
    deadline = time.monotonic() + 10
    while line not in server.app.metrics.exposition().decode():
        assert time.monotonic() < deadline, line
        time.sleep(0.02)


def proxied_server(server_factory: Callable[..., RunningServer], trusted: tuple[str, ...]) -> RunningServer:
    return server_factory(
        proxy_protocol=ProxyProtocol(frozenset({"smtp"}), trusted),
        # Loopback is trusted for connection limits by default; make per-client limits bite.
        limits=Limits(connections_per_client=1, trusted_networks=()),
    )


@pytest.mark.parametrize("builder", [pp.v1_header, pp.v2_header])
def test_real_client_address_reaches_received_header(
    server_factory: Callable[..., RunningServer], builder: Callable[..., bytes]
) -> None:
    server = proxied_server(server_factory, ("127.0.0.0/8",))
    client = RawSmtp(server.port)
    try:
        # The header and the first command in one write: bytes after the header are SMTP.
        client.send(builder(("203.0.113.7", 40000), ("127.0.0.1", server.port)) + b"EHLO c.test\r\n")
        assert client.read_reply().startswith(b"220 ")
        assert client.read_reply().startswith(b"250")
        assert client.command("MAIL FROM:<a@b.test>").startswith(b"250")
        assert client.command("RCPT TO:<u@x.test>").startswith(b"250")
        assert client.command("DATA").startswith(b"354")
        assert client.command(b"Subject: hi\r\n\r\nbody\r\n.").startswith(b"250")
        assert client.command("QUIT").startswith(b"221")
    finally:
        client.close()
    (message,) = server.messages("u@x.test")
    assert "[203.0.113.7]" in message["Received"]


def test_per_client_limit_counts_the_real_address(server_factory: Callable[..., RunningServer]) -> None:
    server = proxied_server(server_factory, ("127.0.0.0/8",))
    first = RawSmtp(server.port)
    second = RawSmtp(server.port)
    third = RawSmtp(server.port)
    try:
        first.send(pp.v1_header(("198.51.100.1", 1), ("127.0.0.1", 25)))
        assert first.greeting().startswith(b"220 ")
        # Same real client again: over connections_per_client = 1, though the proxy is one host.
        second.send(pp.v2_header(("198.51.100.1", 2), ("127.0.0.1", 25)))
        assert second.greeting() == replies.TOO_MANY_CONNECTIONS_FROM_CLIENT.render(enhanced=False)
        # Another real client behind the same proxy is served.
        third.send(pp.v1_header(("198.51.100.2", 3), ("127.0.0.1", 25)))
        assert third.greeting().startswith(b"220 ")
    finally:
        for client in (first, second, third):
            client.close()


def test_untrusted_proxy_is_refused(server_factory: Callable[..., RunningServer]) -> None:
    server = proxied_server(server_factory, ("192.0.2.0/24",))
    client = RawSmtp(server.port)
    try:
        client.send(pp.v1_header(("203.0.113.7", 1), ("127.0.0.1", 25)))
        assert client.read_rest() == b""  # closed, no greeting, whatever the header claims
    except ConnectionResetError:
        pass
    finally:
        client.close()
    wait_for_metric(server, 'postoffice_sessions_total{outcome="proxy-refused"} 1.0')


def test_missing_or_broken_header_closes_without_greeting(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = proxied_server(server_factory, ("127.0.0.0/8",))
    for data in (b"EHLO direct.client\r\n", b"PROXY TCP4 1.2.3.4\r\n"):
        client = RawSmtp(server.port)
        try:
            client.send(data)
            assert client.read_rest() == b""
        except ConnectionResetError:
            pass
        finally:
            client.close()
    wait_for_metric(server, 'postoffice_sessions_total{outcome="proxy-refused"} 2.0')
    # The listener goes on serving proxied clients.
    client = RawSmtp(server.port)
    try:
        client.send(pp.v2_header(None))  # LOCAL: the proxy's own health check
        assert client.greeting().startswith(b"220 ")
    finally:
        client.close()


def test_plain_listener_takes_no_header(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        client = RawSmtp.__new__(RawSmtp)
        client.sock, client._buffer = sock, b""
        assert client.greeting().startswith(b"220 ")
        assert client.command(pp.v1_header(("203.0.113.7", 1), ("127.0.0.1", 25))[:-2]).startswith(b"5")
