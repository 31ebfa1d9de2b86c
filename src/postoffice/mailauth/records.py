"""The DNS records a local domain needs, as data: what ``postoffice dns DOMAIN`` prints and checks.

Untrusted input seen here: the domain the operator typed (it must be one of the configured
local domains). Everything else comes from the configuration and the DKIM key directory.

Each record is a :class:`Record`: where it goes, its data, how a published one is compared
(:class:`Match`) and the comment that says what it is for. :data:`BUILDERS` lists the kinds a
domain needs, one function each; TLS-RPT (RFC 8460 §3, ``_smtp._tls.DOMAIN``) is one of them.
MTA-STS and DANE's TLSA are in :mod:`postoffice.mailauth.records_tls`.

Choices, and why:

- SPF is ``v=spf1 mx -all``: this server sends from the host its MX record names, so ``mx``
  authorises exactly that host and stays right when its addresses change. Outbound mail binds
  no source address, so a listener's address need not be the one mail leaves from, and no
  ``ip4:`` is guessed from it.
- DMARC starts at ``p=quarantine`` with aggregate reports to postmaster@DOMAIN (RFC 7489
  §6.3): mail this server sends is DKIM-signed by the domain and passes SPF through ``mx``, so
  it is aligned and unaffected, while forgeries go to spam rather than the inbox. The address
  is in the domain itself, so no external-destination record is needed (RFC 7489 §7.1), and
  postmaster always exists (RFC 5321 §4.5.1).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from postoffice.config import Config, Listener
from postoffice.errors import ConfigError, DkimError
from postoffice.mailauth.dkim_keys import DkimKey, check_domain, txt_strings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# One MX record, so its preference is only a convention (RFC 5321 §5.1: lower is preferred).
MX_PREFERENCE = 10
SPF_RECORD = "v=spf1 mx -all"
DMARC_POLICY = "quarantine"
# Names no other server can look up (RFC 6761 §6.3 localhost, RFC 6762 .local, the common
# .localdomain and ICANN's private-use .internal): an MX record must not point at them.
_PRIVATE_SUFFIXES = ("localhost", "localdomain", "local", "internal")


class Match(enum.Enum):
    """How a published record is compared with the one wanted (see records_check)."""

    MX = "mx"  # some MX record at the name points at our host
    ADDRESS = "address"  # the address is published; with no data, any A or AAAA is
    SPF = "spf"  # the one v=spf1 record is ours
    DKIM = "dkim"  # the key record holds our public key
    DMARC = "dmarc"  # one valid v=DMARC1 record with a policy
    STS = "sts"  # the one v=STSv1 record carries our policy's id
    STS_HOST = "sts-host"  # the policy host's name leads somewhere (CNAME or addresses)
    TLSA = "tlsa"  # a TLSA record with our data
    TLSRPT = "tlsrpt"  # one v=TLSRPTv1 record whose rua has our address


@dataclass(frozen=True, slots=True)
class Record:
    """One record to publish; ``data`` None when it cannot be known here (``comments`` say
    what to publish instead)."""

    purpose: str  # a few words, as the check's lines name it: "SPF", "DKIM key 202507"
    name: str  # absolute, with the trailing dot
    rdtype: str  # "MX", "TXT", "A", "AAAA", "CNAME", "TLSA"
    data: str | None  # MX and A in presentation form; TXT the whole text, unsplit
    match: Match
    comments: tuple[str, ...]

    def zone_lines(self) -> list[str]:
        """The comments, then the record as a zone file line (nothing more when data is None)."""
        lines = [f"; {comment}" for comment in self.comments]
        if self.data is not None:
            lines.append(f"{self.name} IN {self.rdtype} {zone_data(self.rdtype, self.data)}")
        return lines


@dataclass(frozen=True, slots=True)
class MailDomain:
    """What decides a domain's records: its name, the host receiving and sending its mail, that
    host's public addresses when the configuration shows them, and its signing keys."""

    domain: str  # lower-case A-labels, no trailing dot
    hostname: str
    addresses: tuple[IPAddress, ...] = ()
    dkim_keys: tuple[DkimKey, ...] = ()
    relay_host: str | None = None
    sts_policy: str | None = None  # our MTA-STS policy text (records_tls.py), None: not published
    tlsa: str | None = None  # "3 1 1 <hex>" for the current certificate, None: unreadable
    tlsrpt_rua: str = ""  # where TLS reports about mail to the domain go (RFC 8460 §3)


def zone_data(rdtype: str, data: str) -> str:
    """``data`` as it is written in a zone file: TXT text quoted, in strings of at most 255
    octets (RFC 1035 §3.3.14; receivers join them, RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
    if rdtype != "TXT":
        return data
    quoted = (piece.replace("\\", "\\\\").replace('"', '\\"') for piece in txt_strings(data))
    return " ".join(f'"{piece}"' for piece in quoted)


def mail_domain(config: Config, domain: str, keys: Iterable[DkimKey]) -> MailDomain:
    """The facts for ``domain``, or ConfigError if it is not a local domain or the host name is
    not one other servers can look up."""
    try:
        name = check_domain(domain)
    except DkimError as exc:
        raise ConfigError(str(exc)) from None
    local = {_a_label(local) for local in config.domains}
    if name not in local:
        listed = ", ".join(sorted(local)) or "none: capture mode"
        raise ConfigError(
            f"{name} is not a local domain of this server (domains: {listed})",
            key="domains",
            path=str(config.source) if config.source else None,
        )
    hostname = _a_label(config.hostname)
    if "." not in hostname or hostname.rsplit(".", 1)[-1] in _PRIVATE_SUFFIXES:
        raise ConfigError(
            f"{hostname!r} is not a name other mail servers can look up: set hostname to this"
            " host's public name (the MX record points at it)",
            key="hostname",
            path=str(config.source) if config.source else None,
        )
    signing = tuple(key for key in keys if key.domain == name and key.signing)
    relay = config.delivery.relay_host[0] if config.delivery.relay_host else None
    rua = config.tls_reporting.rua or f"postmaster@{name}"
    return MailDomain(name, hostname, public_addresses(config.listeners), signing, relay, tlsrpt_rua=rua)


def _a_label(name: str) -> str:
    try:
        return check_domain(name)
    except DkimError:
        return name.lower().rstrip(".")


def public_addresses(listeners: Iterable[Listener]) -> tuple[IPAddress, ...]:
    """The global addresses mail listeners are bound to: this host's public ones. A wildcard
    (0.0.0.0, ::), a private address (behind NAT or a proxy) or a name tells nothing."""
    found: list[IPAddress] = []
    for listener in listeners:
        try:
            address = ipaddress.ip_address(listener.host)
        except ValueError:
            continue
        if address.is_global and address not in found:
            found.append(address)
    return tuple(found)


def _mx(domain: MailDomain) -> list[Record]:
    return [
        Record(
            "MX",
            f"{domain.domain}.",
            "MX",
            f"{MX_PREFERENCE} {domain.hostname}.",
            Match.MX,
            (f"Mail for {domain.domain} goes to {domain.hostname} (RFC 5321 §5.1).",),
        )
    ]


def _addresses(domain: MailDomain) -> list[Record]:
    host = f"{domain.hostname}."
    why = f"{domain.hostname}'s addresses, which the MX record and SPF's mx lead to."
    ptr = "Ask whoever gave you each address to set its reverse DNS (PTR) to this name too."
    if not domain.addresses:
        return [
            Record(
                "mail host address",
                host,
                "A",
                None,
                Match.ADDRESS,
                (
                    f"{why} Publish its public IPv4 (A) and IPv6 (AAAA) addresses, in its own zone.",
                    ptr,
                    f"{host} IN A <public IPv4 address>",
                    f"{host} IN AAAA <public IPv6 address>",
                ),
            )
        ]
    return [
        Record(
            "mail host address",
            host,
            "A" if address.version == 4 else "AAAA",
            str(address),
            Match.ADDRESS,
            (f"{why} {ptr}",),
        )
        for address in domain.addresses
    ]


def _spf(domain: MailDomain) -> list[Record]:
    comments = [
        f"SPF (RFC 7208): only the hosts of {domain.domain}'s MX record send its mail; -all fails the rest."
    ]
    if domain.relay_host is not None:
        comments.append(
            f"Mail leaves through the relay {domain.relay_host}: add what its provider publishes"
            " for SPF (usually an include:) before -all."
        )
    return [Record("SPF", f"{domain.domain}.", "TXT", SPF_RECORD, Match.SPF, tuple(comments))]


def _dkim(domain: MailDomain) -> list[Record]:
    if not domain.dkim_keys:
        return [
            Record(
                "DKIM key",
                f"SELECTOR._domainkey.{domain.domain}.",
                "TXT",
                None,
                Match.DKIM,
                (
                    f"DKIM (RFC 6376): no key signs mail from {domain.domain} yet. Run"
                    f' "postoffice dkim generate {domain.domain}" first, then this command again.',
                ),
            )
        ]
    return [
        Record(
            f"DKIM key {key.selector}",
            f"{key.record_name}.",
            "TXT",
            key.record(),
            Match.DKIM,
            (
                f"DKIM (RFC 6376): the public {key.algorithm}-{key.bits} key of selector"
                f" {key.selector}, which signs mail from {domain.domain}.",
            ),
        )
        for key in domain.dkim_keys
    ]


def _dmarc(domain: MailDomain) -> list[Record]:
    text = f"v=DMARC1; p={DMARC_POLICY}; rua=mailto:postmaster@{domain.domain}"
    comments = (
        f"DMARC (RFC 7489): receivers put mail from {domain.domain} that neither SPF nor DKIM"
        f" authenticates in spam, and send daily reports to postmaster@{domain.domain}.",
        "If other services send mail as this domain, start with p=none until the reports show"
        " them passing; once only your own mail appears there, p=reject.",
    )
    return [Record("DMARC", f"_dmarc.{domain.domain}.", "TXT", text, Match.DMARC, comments)]


def _tlsrpt(domain: MailDomain) -> list[Record]:
    rua = domain.tlsrpt_rua or f"postmaster@{domain.domain}"
    comments = (
        f"TLS reporting (RFC 8460): servers that send mail to {domain.domain} report daily to"
        f" {rua} how their TLS connections to it went ([tls_reporting] rua).",
    )
    text = f"v=TLSRPTv1; rua=mailto:{rua}"
    return [Record("TLS-RPT", f"_smtp._tls.{domain.domain}.", "TXT", text, Match.TLSRPT, comments)]


Builder = Callable[[MailDomain], list[Record]]
# The records every local domain needs, in the order they are printed and checked.
BUILDERS: tuple[Builder, ...] = (_mx, _addresses, _spf, _dkim, _dmarc, _tlsrpt)


def records_for(domain: MailDomain) -> list[Record]:
    return [record for build in BUILDERS for record in build(domain)]


def zone_text(domain: MailDomain, records: Iterable[Record]) -> str:
    """Every record with its comments, ready to paste into the domain's zone file."""
    lines = [f"; The DNS records {domain.domain} needs (postoffice dns {domain.domain})."]
    for record in records:
        lines.append("")
        lines.extend(record.zone_lines())
    return "\n".join(lines) + "\n"
