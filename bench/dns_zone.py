"""A small DNS server on 127.0.0.1 for ``postoffice-verify``: the load generator's sender domain
passes SPF (RFC 7208) from loopback and has a DMARC record (RFC 7489) that asks for nothing.

Every other name gets NXDOMAIN, so DKIM (smtp-source signs nothing), ARC and any other lookup
end quickly instead of waiting on a resolver the machine may not have.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import load
from dnslib import QTYPE, RCODE, RR, TXT, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer

SENDER_DOMAIN = load.SENDER.rpartition("@")[2]
SPF_RECORD = "v=spf1 ip4:127.0.0.0/8 -all"
DMARC_RECORD = "v=DMARC1; p=none"


def zone(domain: str = SENDER_DOMAIN) -> dict[str, str]:
    """Owner name (absolute, lower case) to its one TXT record."""
    return {f"{domain}.": SPF_RECORD, f"_dmarc.{domain}.": DMARC_RECORD}


class ZoneResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, records: dict[str, str]) -> None:
        self.records = records

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).lower()
        text = self.records.get(name)
        if text is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype in (QTYPE.TXT, QTYPE.ANY):
            reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(text), ttl=3600))
        # Another type at a name that exists: NOERROR with no answer (RFC 2308 NODATA).
        return reply


def _free_port() -> int:
    # One port free for both UDP and TCP (a resolver retries truncated answers over TCP).
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


@contextlib.contextmanager
def serving(records: dict[str, str] | None = None) -> Iterator[int]:
    """Run the zone on 127.0.0.1 (UDP and TCP, in threads) and yield its port."""
    resolver = ZoneResolver(zone() if records is None else records)
    port = _free_port()
    udp = DNSServer(resolver, address="127.0.0.1", port=port, logger=_Quiet())
    tcp = DNSServer(resolver, address="127.0.0.1", port=port, tcp=True, logger=_Quiet())
    udp.start_thread()
    tcp.start_thread()
    try:
        yield port
    finally:
        udp.stop()
        tcp.stop()
        udp.server.server_close()
        tcp.server.server_close()


class _Quiet:
    """dnslib's logger interface, logging nothing: a line per query would cost the bench."""

    def log_recv(self, *args: object) -> None: ...
    def log_send(self, *args: object) -> None: ...
    def log_request(self, *args: object) -> None: ...
    def log_reply(self, *args: object) -> None: ...
    def log_truncated(self, *args: object) -> None: ...
    def log_error(self, *args: object) -> None: ...
    def log_data(self, *args: object) -> None: ...
