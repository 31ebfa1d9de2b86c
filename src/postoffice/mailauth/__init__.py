"""Mail authentication checks: SPF (RFC 7208), DKIM (RFC 6376), DMARC (RFC 7489) and ARC (RFC 8617).

Untrusted input seen here: everything. The client's IP address and HELO name, the envelope
sender and the message come from the SMTP client; the policies, keys and records come from DNS
zones that whoever owns a domain writes. Every check turns bad input into its protocol's error
result (``permerror``, ``temperror``), within bounded time and memory, and never raises.

Each check is usable alone, takes an injected ``dns.asyncresolver.Resolver`` (built by
:func:`postoffice.dns_resolver.make_resolver` from the server's one DNS setting) and is tested
against its published test vectors. The SMTP session wires them into its stages.
"""
