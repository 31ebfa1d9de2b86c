"""TXT lookups for DKIM key records (RFC 6376 §3.6.2), through dnspython's async resolver.

Untrusted input seen here: the names looked up (built from a message's d= and s=, checked to be
DNS names before they get here) and the answers, which the signing domain's zone writes.

:class:`TxtResolver` is what the verifier needs, so tests and callers can hand it any async
source of TXT records; :class:`DnsTxtResolver` is the real one, configured like the MX resolver
from the server's one DNS setting (``[delivery] dns``: an IP and port, or the system's).
"""

from __future__ import annotations

import logging
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

log = logging.getLogger("postoffice.mailauth")

# dnspython's default lifetime; RFC 6376 §6.1.2 asks only that a failed lookup be a TEMPFAIL.
DEFAULT_TIMEOUT = 5.0


class TxtLookupError(Exception):
    """The lookup failed rather than answered (timeout, SERVFAIL, no server): a temporary error."""


class TxtResolver(Protocol):
    async def txt(self, name: str) -> list[bytes]:
        """The TXT records at ``name``, each one's strings joined (RFC 6376 §3.6.2.2 "Strings in
        a TXT RR MUST be concatenated together before use"); empty when the name does not exist
        or has none. Raises TxtLookupError when no answer came."""
        ...


class DnsTxtResolver:
    """TXT lookups through ``nameserver`` (IP, port), or the system's resolvers when None."""

    def __init__(
        self, nameserver: tuple[str, int] | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        if nameserver is None:
            try:
                self._resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                # As delivery.dns: no /etc/resolv.conf, so a local resolver is the only guess.
                log.warning("status=no-resolver-configuration using=127.0.0.1:53")
                self._resolver = dns.asyncresolver.Resolver(configure=False)
                self._resolver.nameservers = ["127.0.0.1"]
        else:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [nameserver[0]]
            self._resolver.port = nameserver[1]
        self._resolver.lifetime = timeout

    async def txt(self, name: str) -> list[bytes]:
        try:
            answer = await self._resolver.resolve(
                dns.name.from_text(name, origin=dns.name.root), "TXT", raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.Timeout:
            raise TxtLookupError(f"TXT query for {name} timed out") from None
        except dns.resolver.NoNameservers:
            raise TxtLookupError(f"no DNS server answered the TXT query for {name}") from None
        except dns.exception.DNSException as exc:
            raise TxtLookupError(f"TXT query for {name}: {type(exc).__name__}") from None
        if answer.rrset is None:
            return []
        return [b"".join(record.strings) for record in answer.rrset]
