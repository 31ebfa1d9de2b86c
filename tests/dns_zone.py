"""An authoritative DNS server on loopback (dnslib) for tests that need more than A and MX:
TXT with several strings, the obsolete SPF type, PTR, CNAME chains, and names that time out or
answer with an error RCODE.

It answers like a real authoritative server: names are case-insensitive, a CNAME is followed
inside the zone (the chain goes into the answer, so a resolver sees what it would see from a
real server), an unknown name is NXDOMAIN, a known name without records of the asked type is
NOERROR with no answer. Record data is kept as bytes so a test can publish what a zone file
could not (a non-ASCII or NUL octet in a TXT string).

Usage::

    with dns_zone_server() as dns:
        dns.zone.txt("example.test", "v=spf1 ", "ip4:192.0.2.1 -all")
        resolver = dns.resolver(timeout=1.0)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RR, TLSA, TXT, A, DNSError, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from postoffice.dns_resolver import make_resolver

Key = tuple[bytes, ...]
# A CNAME chain longer than this is a loop; real servers stop around here too (BIND: 16).
CNAME_CHAIN_LIMIT = 8


def _key(name: str | bytes | DNSLabel) -> Key:
    """A name as the server compares it: its labels, lower-case, without the root."""
    label = name if isinstance(name, DNSLabel) else DNSLabel(name)
    return tuple(part.lower() for part in label.label)


def _text(value: str | bytes) -> bytes:
    """A TXT string as octets: text that fits in Latin-1 keeps its code points as octets (so a
    test can write "\\xEF\\xBB\\xBF" for those three bytes), anything else becomes UTF-8."""
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


@dataclass
class _Name:
    records: list[RR] = field(default_factory=list)
    timeout: bool = False  # queries for types without records are never answered
    rcode: int | None = None  # every query gets this RCODE (SERVFAIL, REFUSED, ...)


class DnsZone(BaseResolver):  # type: ignore[misc]
    """The records a test publishes; ``queries`` lists what was asked, as (name, type)."""

    def __init__(self) -> None:
        self._names: dict[Key, _Name] = {}
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    # --- publishing --------------------------------------------------------------------------

    def _entry(self, name: str) -> _Name:
        return self._names.setdefault(_key(name), _Name())

    def _add(self, name: str, rtype: int, rdata: Any) -> None:
        label = DNSLabel(name)
        with self._lock:
            self._entry(name).records.append(RR(label, rtype, rdata=rdata, ttl=60))

    def exists(self, name: str) -> None:
        """The name exists, with no records (every query gets NOERROR, no answer)."""
        self._entry(name)

    def a(self, name: str, *addresses: str) -> None:
        for address in addresses:
            if ":" in address:
                self._add(name, QTYPE.AAAA, AAAA(address))
            else:
                self._add(name, QTYPE.A, A(address))

    def mx(self, name: str, preference: int, exchange: str) -> None:
        self._add(name, QTYPE.MX, MX(DNSLabel(exchange or "."), preference))

    def txt(self, name: str, *strings: str | bytes) -> None:
        """One TXT record made of ``strings`` (RFC 7208 §3.3: they are joined without spaces)."""
        self._add(name, QTYPE.TXT, TXT([_text(s) for s in strings]))

    def spf(self, name: str, *strings: str | bytes) -> None:
        """One record of the obsolete SPF type (99, RFC 4408), which has TXT's format."""
        self._add(name, QTYPE.SPF, TXT([_text(s) for s in strings]))

    def ptr(self, name: str, target: str) -> None:
        self._add(name, QTYPE.PTR, PTR(DNSLabel(target)))

    def cname(self, name: str, target: str) -> None:
        self._add(name, QTYPE.CNAME, CNAME(DNSLabel(target)))

    def tlsa(self, name: str, usage: int, selector: int, matching: int, data: bytes) -> None:
        self._add(name, QTYPE.TLSA, TLSA(usage, selector, matching, data))

    def timeout(self, name: str) -> None:
        """Queries for ``name`` asking for a type it has no records of are never answered."""
        self._entry(name).timeout = True

    def rcode(self, name: str, rcode: int | str) -> None:
        """Every query for ``name`` is answered with ``rcode`` (a number or "SERVFAIL")."""
        self._entry(name).rcode = getattr(RCODE, rcode) if isinstance(rcode, str) else rcode

    # --- answering ---------------------------------------------------------------------------

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        qtype = request.q.qtype
        with self._lock:
            self.queries.append((str(request.q.qname), QTYPE.get(qtype, str(qtype))))
            reply = request.reply()
            self._answer(reply, _key(request.q.qname), qtype)
        return reply

    def _answer(self, reply: DNSRecord, key: Key, qtype: int) -> None:
        seen: set[Key] = set()
        while key not in seen and len(seen) < CNAME_CHAIN_LIMIT:
            seen.add(key)
            entry = self._names.get(key)
            if entry is None:
                # RFC 6604 §2.1: the RCODE is that of the last name in a CNAME chain.
                reply.header.rcode = RCODE.NXDOMAIN
                return
            if entry.rcode is not None:
                reply.header.rcode = entry.rcode
                return
            matching = [rr for rr in entry.records if rr.rtype == qtype]
            aliases = [rr for rr in entry.records if rr.rtype == QTYPE.CNAME]
            if matching or (aliases and qtype != QTYPE.CNAME):
                for record in matching or aliases[:1]:
                    reply.add_answer(record)
                if matching:
                    return
                key = _key(aliases[0].rdata.label)  # RFC 1034 §4.3.2: restart at the alias target
                continue
            if entry.timeout:
                # dnslib's handler drops the query without a reply when resolve() raises this.
                raise DNSError("zone says: time out")
            return


@dataclass
class ZoneServer:
    zone: DnsZone
    server: DNSServer
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def serve(self, zone: DnsZone) -> None:
        """Answer from ``zone`` from now on (one server for many tests: stopping one takes 0.5 s)."""
        self.zone = zone
        self.server.server.resolver = zone

    def resolver(self, timeout: float = 2.0) -> dns.asyncresolver.Resolver:
        """A resolver asking this server, built the way the server builds its own."""
        return make_resolver(self.address, timeout=timeout)


@contextlib.contextmanager
def dns_zone_server(zone: DnsZone | None = None) -> Iterator[ZoneServer]:
    """Serve ``zone`` (or a new empty one) over UDP on 127.0.0.1 at an ephemeral port."""
    zone = zone or DnsZone()
    quiet = DNSLogger(log="-request,-reply,-truncated,-data,-recv,-send,-error", prefix=False)
    server = DNSServer(zone, address="127.0.0.1", port=0, logger=quiet)
    server.start_thread()
    try:
        yield ZoneServer(zone, server, server.server.server_address[1])
    finally:
        server.stop()
