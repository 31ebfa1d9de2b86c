"""The one DNS resolver construction: the system's, or the server named by ``--dns HOST:PORT``.

Untrusted input seen here: none; the nameserver comes from the configuration (``[delivery] dns``
or ``--dns``). Everything that looks names up (MX routing in :mod:`postoffice.delivery.dns`, the
mail authentication checks in :mod:`postoffice.mailauth`) builds its resolver here, so one
setting points all of them at the same server.
"""

from __future__ import annotations

import logging

import dns.asyncresolver
import dns.resolver

log = logging.getLogger("postoffice.dns")


def make_resolver(nameserver: tuple[str, int] | None, *, timeout: float) -> dns.asyncresolver.Resolver:
    """An async resolver asking ``nameserver`` (IP, port), or the system's when None.

    ``timeout`` is the lifetime of one query, retries included (dnspython's ``lifetime``).
    """
    if nameserver is None:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            # No /etc/resolv.conf (a bare container): a local resolver is the only guess,
            # and lookups fail as temporary until one answers or `--dns` names another.
            log.warning("status=no-resolver-configuration using=127.0.0.1:53")
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = ["127.0.0.1"]
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [nameserver[0]]
        resolver.port = nameserver[1]
    resolver.lifetime = timeout
    return resolver
