"""The PROXY protocol header (HAProxy, versions 1 and 2), parsed from bytes alone.

Untrusted input seen here: the first bytes of a connection on a listener configured to expect
a PROXY header. They claim the real client's address, so a listener only takes them from a
configured trusted proxy (the caller checks that); this module only decides whether the bytes
are a well-formed header, and never reads beyond it.

Specification: "The PROXY protocol, Versions 1 & 2" (haproxy.org/download/2.9/doc/proxy-protocol.txt).

* Version 1 is one text line, ``PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\\r\\n``, at most 107
  octets with its CRLF (§2.1); ``PROXY UNKNOWN ...`` means the proxy does not know the source.
* Version 2 starts with a 12-octet signature, then version/command, family/transport and a
  16-bit length of the address block (§2.2). ``LOCAL`` connections (health checks from the
  proxy itself) carry no client address; TLVs after the addresses are skipped.

:func:`parse` returns a :class:`ProxyHeader`, None when more bytes are needed, or raises
:class:`ProxyProtocolError`: a receiver "MUST NOT try to guess" a broken header (§2).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# §2.1: "the maximum line lengths the receiver must support including the CRLF are 107".
V1_MAX_LENGTH = 107
# §2.2: the header is 16 octets, then the address block; its length is 16 bits.
_V2_FIXED = 16
_V2_ADDRESS_LENGTHS = {0x1: 12, 0x2: 36}  # AF_INET: 4+4+2+2, AF_INET6: 16+16+2+2


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY header; the connection must be closed."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What the proxy told us, and how many octets of the stream the header took."""

    version: int
    # The client's address and port as the proxy saw it; None for LOCAL and UNKNOWN.
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``; None if ``data`` is a prefix of one."""
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)] and data[:1] == b"\r":
        return _parse_v2(data) if len(data) >= len(V2_SIGNATURE) else None
    if data[: len(V1_PREFIX)] == V1_PREFIX[: len(data)]:
        return _parse_v1(data) if len(data) >= len(V1_PREFIX) else None
    raise ProxyProtocolError("no PROXY protocol signature")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH or b"\n" in data[:V1_MAX_LENGTH]:
            raise ProxyProtocolError("version 1 header without CRLF within 107 octets")
        return None
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("version 1 header is not ASCII") from None
    # §2.1: fields are separated by exactly one space.
    fields = line.split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF is found"
        return ProxyHeader(1, None, None, end + 2)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("version 1 header must be PROXY TCP4|TCP6|UNKNOWN SRC DST SPORT DPORT")
    version = 4 if fields[1] == "TCP4" else 6
    source = (_address(fields[2], version), _port(fields[4]))
    destination = (_address(fields[3], version), _port(fields[5]))
    return ProxyHeader(1, source, destination, end + 2)


def _address(text: str, version: int) -> str:
    try:
        address = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyProtocolError(f"{text[:60]!r} is not an IPv{version} address") from None
    return str(address)


def _port(text: str) -> int:
    # §2.1: ports are decimal, 0 to 65535; leading zeros would make two spellings of one port.
    if not text.isascii() or not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == "0"):
        raise ProxyProtocolError(f"{text[:10]!r} is not a port number")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"{port} is not a port number")
    return port


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < _V2_FIXED:
        return None
    version_command, family_transport, length = struct.unpack_from("!BBH", data, len(V2_SIGNATURE))
    if version_command >> 4 != 2:
        raise ProxyProtocolError("version 2 signature with another version number")
    command = version_command & 0x0F
    if command not in (0x0, 0x1):
        raise ProxyProtocolError(f"version 2 command {command} is neither LOCAL nor PROXY")
    total = _V2_FIXED + length
    if len(data) < total:
        return None
    if command == 0x0:
        # §2.2 LOCAL: "the receiver must accept this connection as valid and must use the real
        # connection endpoints and discard the protocol block including the family".
        return ProxyHeader(2, None, None, total)
    family, transport = family_transport >> 4, family_transport & 0x0F
    if family not in _V2_ADDRESS_LENGTHS or transport != 0x1:
        # UNSPEC, UNIX sockets and datagrams: no TCP client address to use.
        if family_transport == 0x00:
            return ProxyHeader(2, None, None, total)
        raise ProxyProtocolError(f"version 2 family/transport {family_transport:#04x} is not TCP over IP")
    needed = _V2_ADDRESS_LENGTHS[family]
    if length < needed:
        raise ProxyProtocolError("version 2 address block is shorter than its family needs")
    block = data[_V2_FIXED : _V2_FIXED + needed]
    if family == 0x1:
        src, dst, sport, dport = struct.unpack("!4s4sHH", block)
        return ProxyHeader(
            2,
            (str(ipaddress.IPv4Address(src)), sport),
            (str(ipaddress.IPv4Address(dst)), dport),
            total,
        )
    src, dst, sport, dport = struct.unpack("!16s16sHH", block)
    return ProxyHeader(
        2,
        (str(ipaddress.IPv6Address(src)), sport),
        (str(ipaddress.IPv6Address(dst)), dport),
        total,
    )


def v1_header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A version 1 header, for clients and tests."""
    family = "TCP6" if ":" in source[0] else "TCP4"
    return f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def v2_header(source: tuple[str, int] | None, destination: tuple[str, int] | None = None) -> bytes:
    """A version 2 header (PROXY over TCP, or LOCAL when ``source`` is None), for clients and tests."""
    if source is None or destination is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, 0)
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0])
    family = 0x11 if src.version == 4 else 0x21
    block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(block)) + block
