"""The ``[listen]`` and ``[proxy_protocol]`` tables: where the server listens, and which
listeners expect a PROXY protocol header.

Untrusted input seen here: none; this module declares, as :mod:`postoffice.config.tables`
does for the other tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from postoffice.config.kinds import BOOLEAN, NETWORKS, listeners_of
from postoffice.config.names import (
    DEFAULT_ACME_HTTP_LISTENER,
    DEFAULT_HTTP_LISTENER,
    DEFAULT_SMTP_LISTENER,
    Listener,
)
from postoffice.config.schema import setting
from postoffice.config.tables import Limits


@dataclass(frozen=True, slots=True)
class ProxyProtocol:
    """Which listener kinds expect a PROXY protocol header (HAProxy v1/v2), and from whom.

    A PROXY header names the client's address, so it is only believed from ``trusted``
    networks (the load balancers); a connection from elsewhere on such a listener is closed.
    The file writes it as :class:`ProxyProtocolKeys`.
    """

    kinds: frozenset[str] = frozenset()
    trusted: tuple[str, ...] = ()

    def expects_header(self, kind: str) -> bool:
        return kind in self.kinds

    def is_trusted(self, address: str) -> bool:
        return Limits(trusted_networks=self.trusted).is_trusted(address)


def _proxy_flag(kind: str) -> bool:
    return setting(False, BOOLEAN, f"The {kind} listeners expect a PROXY protocol header (v1 or v2).")


@dataclass(frozen=True, slots=True)
class ProxyProtocolKeys:
    """``[proxy_protocol]`` as the file writes it: a switch per listener kind, and the networks."""

    smtp: bool = _proxy_flag("smtp")
    submission: bool = _proxy_flag("submission")
    smtps: bool = _proxy_flag("smtps")
    trusted: tuple[str, ...] = setting(
        (),
        NETWORKS,
        "The load balancers a header is believed from; a connection from elsewhere on such a"
        " listener is closed unanswered. Required when a listener expects the header.",
    )


@dataclass(frozen=True, slots=True)
class ListenKeys:
    """``[listen]`` as the file writes it; the loader makes ``Config.listeners`` and
    ``Config.http_listeners`` of it."""

    smtp: tuple[Listener, ...] = setting(
        (),
        listeners_of("smtp"),
        "The MX service other servers deliver to (port 25 in production): STARTTLS offered, AUTH"
        " only inside TLS.",
        default_text=f'["{DEFAULT_SMTP_LISTENER.address}"] when no listener of any kind is set',
        flag="--smtp",
    )
    submission: tuple[Listener, ...] = setting(
        (),
        listeners_of("submission"),
        "Message submission for mail programs (RFC 6409, port 587): STARTTLS, then AUTH, then MAIL.",
        default_text="none",
        flag="--submission",
    )
    smtps: tuple[Listener, ...] = setting(
        (),
        listeners_of("smtps"),
        "Submission over implicit TLS (RFC 8314, port 465): TLS from the first byte.",
        default_text="none",
        flag="--smtps",
    )
    acme_http: tuple[Listener, ...] = setting(
        (),
        listeners_of("acme_http"),
        "With [acme] enabled: the HTTP-01 challenge responder (RFC 8555 §8.3), which answers only"
        " /.well-known/acme-challenge/; the CA connects to port 80.",
        default_text=f'["{DEFAULT_ACME_HTTP_LISTENER.address}"] when [acme] is enabled',
    )
    pop3: tuple[Listener, ...] = setting(
        (),
        listeners_of("pop3"),
        "POP3 for mail programs (RFC 1939, port 110): STLS offered, login only inside TLS except"
        " from loopback; INBOX only (docs/pop3.md).",
        default_text="none",
        flag="--pop3",
    )
    pop3s: tuple[Listener, ...] = setting(
        (),
        listeners_of("pop3s"),
        "POP3 over implicit TLS (RFC 8314, port 995): TLS from the first byte.",
        default_text="none",
        flag="--pop3s",
    )
    imap: tuple[Listener, ...] = setting(
        (),
        listeners_of("imap"),
        "IMAP for mail clients (RFC 9051, port 143): STARTTLS, and passwords only inside TLS"
        " (or from loopback). See docs/imap.md.",
        default_text="none",
        flag="--imap",
    )
    imaps: tuple[Listener, ...] = setting(
        (),
        listeners_of("imaps"),
        "IMAP over implicit TLS (RFC 8314, port 993): TLS from the first byte.",
        default_text="none",
        flag="--imaps",
    )
    http: tuple[Listener, ...] = setting(
        (DEFAULT_HTTP_LISTENER,),
        listeners_of("http"),
        "The web UI and JSON API; [] turns them off (--no-http).",
        flag="--http",
    )
    https: tuple[Listener, ...] = setting(
        (),
        listeners_of("https"),
        "The same web UI, JSON API and MTA-STS policy over HTTPS (port 443 in production; RFC 8461"
        " §3.3 wants the policy at https://mta-sts.DOMAIN/), with the SMTP listeners' certificate;"
        " an ACME renewal is used without a restart.",
        default_text="none",
        flag="--https",
    )
