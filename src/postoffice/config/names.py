"""Names in the configuration: domains, addresses, ``HOST:PORT`` listeners and servers.

Untrusted input seen here: names from the configuration file and the command line. Each is
checked against its RFC grammar and returned in one normal form, or refused with a
``ValueError`` (a :class:`~postoffice.errors.ConfigError` naming the key, for addresses of
servers) whose message is one line. Domains and mail addresses are checked by
:mod:`postoffice.addresses` (:func:`normalize_domain`, :func:`normalize_address`), which every
layer shares.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from postoffice.addresses import normalize_domain
from postoffice.config.values import Invalid, array, string
from postoffice.errors import ConfigError

_PORT = re.compile(r"[0-9]{1,5}")


def parse_hostport(text: str, *, key: str = "listen.smtp") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[IPV6]:PORT`` for IPv6, as in RFC 3986 §3.2.2) into its parts.

    The host is an IP address or a host name (lower-cased); port 0 asks the OS for a free port.
    Errors are :class:`ConfigError` for ``key``.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ConfigError(f"{text!r}: expected [IPV6-ADDRESS]:PORT", key=key)
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{text!r}: {host!r} is not an IPv6 address", key=key) from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            raise ConfigError(f"{text!r}: expected HOST:PORT, as in 127.0.0.1:2525", key=key)
        if ":" in host:
            raise ConfigError(f"{text!r}: put an IPv6 address in brackets, as in [::1]:2525", key=key)
        host = _listen_host(text, host, key)
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise ConfigError(f"{text!r}: the port must be a number from 0 to 65535", key=key)
    return host, int(port_text)


def _listen_host(text: str, host: str, key: str) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        return normalize_domain(host)
    except ValueError:
        raise ConfigError(f"{text!r}: {host!r} is neither an IP address nor a host name", key=key) from None


def parse_dns_server(text: str, *, key: str = "delivery.dns") -> tuple[str, int]:
    """``IP:PORT``, ``[IPV6]:PORT`` or a bare IP (port 53): where MX lookups are sent."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        host, port = parse_hostport(text, key=key)
    else:
        host, port = text, 53
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{text!r}: a DNS server is given by IP address, not by name", key=key) from None
    if port == 0:
        raise ConfigError(f"{text!r}: port 0 names no server", key=key)
    return str(address), port


def parse_relay_host(text: str, *, key: str = "delivery.relay_host") -> tuple[str, int]:
    host, port = parse_hostport(text, key=key)
    if port == 0:
        raise ConfigError(f"{text!r}: port 0 names no server (587 is submission, 465 implicit TLS)", key=key)
    return host, port


# What each kind of listener is (the net layer decides what it offers):
#   smtp        the MX service other servers deliver to (port 25): STARTTLS offered, AUTH after TLS
#   submission  RFC 6409 message submission (port 587): STARTTLS, then AUTH, then MAIL
#   smtps       RFC 8314 §3 implicit TLS submission (port 465): TLS from the first byte
LISTENER_KINDS = ("smtp", "submission", "smtps")
# Mail reading (RFC 1939), apart from the SMTP listeners and never started unless asked:
#   pop3        POP3 with STLS (RFC 2595, port 110)
#   pop3s       POP3 over implicit TLS (RFC 8314 §3.3, port 995)
POP3_LISTENER_KINDS = ("pop3", "pop3s")
# The web side: plain HTTP ("http") and HTTPS ("https"), both in ``Config.http_listeners``.
WEB_LISTENER_KINDS = ("http", "https")
# IMAP for mail clients, likewise (Config.imap_listeners, not Config.listeners):
#   imap        RFC 9051 IMAP (port 143): STARTTLS, LOGINDISABLED before it except on loopback
#   imaps       RFC 8314 implicit TLS IMAP (port 993)
IMAP_KINDS = ("imap", "imaps")


@dataclass(frozen=True, slots=True)
class Listener:
    """One address to listen on; ``kind`` is one of :data:`LISTENER_KINDS`,
    :data:`POP3_LISTENER_KINDS` or :data:`WEB_LISTENER_KINDS`."""

    kind: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind} {host}:{self.port}"

    @property
    def address(self) -> str:
        """``HOST:PORT`` as the file and the command line write it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


DEFAULT_SMTP_LISTENER = Listener("smtp", "127.0.0.1", 2525)
# Mailpit's and MailHog's web port, so tools and habits carry over.
DEFAULT_HTTP_LISTENER = Listener("http", "127.0.0.1", 8025)
# RFC 8555 §8.3: the CA fetches http://<domain>/.well-known/acme-challenge/<token> on port 80.
DEFAULT_ACME_HTTP_LISTENER = Listener("acme_http", "0.0.0.0", 80)


def listeners(value: object, kind: str) -> tuple[Listener, ...]:
    """The ``[listen]`` array for ``kind``: ``"HOST:PORT"`` strings, none listed twice."""
    items = array(value, '"HOST:PORT" strings')
    if not items and kind != "http":  # [] is how the web side is turned off
        default = f" for the default {DEFAULT_SMTP_LISTENER.address}" if kind == "smtp" else ""
        raise Invalid(f"no addresses; leave the key out{default}")
    found: list[Listener] = []
    for item in items:
        listener = Listener(kind, *parse_hostport(string(item), key=f"listen.{kind}"))
        # Port 0 twice is two ephemeral ports, not a clash.
        if listener in found and listener.port != 0:
            raise Invalid(f"{item!r} is listed twice")
        found.append(listener)
    return tuple(found)


def domain_list(value: object) -> tuple[str, ...]:
    """Domain names, lower-cased, each once, in the order given."""
    domains: list[str] = []
    for item in array(value, "domain names"):
        domain = normalize_domain(string(item))
        if domain not in domains:
            domains.append(domain)
    return tuple(domains)
