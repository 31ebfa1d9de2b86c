"""What each kind of listener offers and demands: TLS, AUTH, and submission rules.

Untrusted input seen here: the client's address, to tell loopback connections apart.

==========  ================================  ===========================  ===============
kind        TLS                               AUTH                         MAIL needs AUTH
==========  ================================  ===========================  ===============
smtp        STARTTLS (RFC 3207)               after TLS                    no (MX service)
submission  STARTTLS, required before AUTH    after TLS (RFC 6409, 8314)   yes
smtps       implicit, from the first byte     yes (RFC 8314 §3)            yes
local       none (a Unix socket)              none: trusted as the system  no
==========  ================================  ===========================  ===============

"After TLS" has one exception, off by default: ``[auth] allow_plaintext_on_loopback`` lets
programs on the same machine authenticate without TLS, since nobody can listen on loopback.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, replace

from postoffice.net.login import Authenticator
from postoffice.net.tls import ServerTls
from postoffice.smtp import sasl
from postoffice.smtp.server import ServerSettings

# Listener kinds on which MAIL needs an authenticated session (RFC 6409 §4.3, RFC 8314 §3.3).
SUBMISSION_KINDS = frozenset({"submission", "smtps"})
# The server's own Unix socket (net.local_socket): only the server's user and root can open it.
LOCAL_KIND = "local"


@dataclass(frozen=True, slots=True)
class Security:
    """TLS and AUTH for the listeners, as the composition root configured them."""

    tls: ServerTls | None = None
    login: Authenticator | None = None
    # The MX listener offers STARTTLS (the submission listeners always do when tls is set).
    starttls_on_smtp: bool = False
    plaintext_auth_on_loopback: bool = False


def settings_for(kind: str, base: ServerSettings, security: Security) -> ServerSettings:
    """The session settings of a listener of ``kind``."""
    has_tls = security.tls is not None
    mechanisms = sasl.MECHANISMS if security.login is not None else ()
    if kind == LOCAL_KIND:
        return replace(base, starttls=False, auth_mechanisms=())  # nothing to hide or prove here
    if kind == "smtps":
        return replace(base, implicit_tls=True, auth_mechanisms=mechanisms, auth_requires_tls=True)
    starttls = has_tls if kind == "submission" else has_tls and security.starttls_on_smtp
    return replace(base, starttls=starttls, auth_mechanisms=mechanisms, auth_requires_tls=True)


def for_client(settings: ServerSettings, security: Security, client: str) -> ServerSettings:
    """``settings`` for one connection: plaintext AUTH from loopback, where allowed."""
    if security.plaintext_auth_on_loopback and settings.auth_requires_tls and is_loopback(client):
        return replace(settings, auth_requires_tls=False)
    return settings


@functools.lru_cache(maxsize=1024)  # per connection, and clients come back: parsing is 5 µs
def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback
