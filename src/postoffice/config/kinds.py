"""The kinds of value a configuration key holds: each a reader, a name and a TOML writer.

Untrusted input seen here: values from the configuration file and the command line, passed to
the readers of :mod:`postoffice.config.values` and :mod:`postoffice.config.names`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from typing import Any

from postoffice.addresses import normalize_address, normalize_domain
from postoffice.config import names, values
from postoffice.config.schema import Bound, Kind, plain, toml_text
from postoffice.config.values import Invalid, string

# Log lines as key=value text or one JSON object each.
LOG_FORMATS = ("text", "json")
# RFC 8996 deprecates TLS 1.0 and 1.1; RFC 8314 §4.1 asks for TLS 1.2 or later.
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
# Per-destination TLS: "none" never, "may" when offered (opportunistic, RFC 3207 §4, no
# certificate check, as Postfix "may"), "require" encrypted or not at all (Postfix
# "encrypt"), "verify" encrypted with a certificate valid for the MX host name.
TLS_POLICIES = ("none", "may", "require", "verify")
# Towards a relay host: "none", "starttls" (RFC 3207, required) or "tls" (implicit TLS from
# the first byte, RFC 8314 §3.3); with either TLS mode the relay's certificate is verified.
RELAY_TLS_MODES = ("none", "starttls", "tls")
# [mta_sts] mode: RFC 8461 §3.2's three, and "off" for no policy at all.
STS_MODES = ("off", "none", "testing", "enforce")
# What a webhook can be told of (web/webhooks.py).
WEBHOOK_EVENTS = ("message.received", "message.deleted", "delivery.failed")


def _one_of(choices: Sequence[str]) -> str:
    return " or ".join(toml_text(choice) for choice in choices)


def _log_format(value: object) -> str:
    text = string(value)
    if text not in LOG_FORMATS:
        raise Invalid(f"{text!r} is not a log format; use one of {', '.join(LOG_FORMATS)}")
    return text


def _tls_version(value: object) -> str:
    text = string(value).strip()
    # "1.2" is how people say it; "TLSv1.2" is how OpenSSL and Python's ssl.TLSVersion spell it.
    normal = text if text.startswith("TLSv") else f"TLSv{text}"
    if normal not in TLS_VERSIONS:
        raise Invalid(
            f"{text!r} is not a TLS version postoffice accepts; write one of {', '.join(TLS_VERSIONS)}"
        )
    return normal


def _tls_policy(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise Invalid(f'expected a table of "domain" = "policy", got {values.kind_of(value)}')
    policy: dict[str, str] = {}
    for domain, level in value.items():
        try:
            name = normalize_domain(domain)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        try:
            policy[name] = values.choice(level, TLS_POLICIES)
        except Invalid as exc:
            raise Invalid(f"{domain!r}: {exc}") from None
    return tuple(sorted(policy.items()))


def _relay_user(value: object) -> str:
    user = string(value)
    if not user or not user.isprintable():
        raise Invalid("expected a non-empty user name of printable characters")
    return user


def _webhook_url(value: object) -> str:
    url = string(value).strip()
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("http", "https") or not rest or any(ch.isspace() for ch in url):
        raise Invalid(f"{url[:80]!r} is not an http:// or https:// URL")
    return url


def _webhook_events(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise Invalid("expected a non-empty array of event names")
    events = tuple(string(item) for item in value)
    for event in events:
        if event not in WEBHOOK_EVENTS:
            raise Invalid(f"{event!r} is not an event; expected {_one_of(WEBHOOK_EVENTS)}")
    return events


def _show_size(octets: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if octets >= factor and octets % factor == 0:
            return toml_text(f"{octets // factor}{unit}")
    return str(octets)


def _show_duration(seconds: float) -> str:
    if seconds == 0:
        return "0"
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= factor and seconds % factor == 0:
            return toml_text(f"{int(seconds // factor)}{unit}")
    return toml_text(f"{toml_text(seconds)}s")


def _show_listeners(listeners: Sequence[names.Listener]) -> str:
    return toml_text([listener.address for listener in listeners])


def _show_tls_policy(policy: Sequence[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{toml_text(domain)} = {toml_text(level)}" for domain, level in policy) + "}"


def choice_of(choices: Sequence[str]) -> Kind:
    """One of ``choices``, written in any case."""
    return Kind(_one_of(choices), plain(lambda value: values.choice(value, choices)))


def listeners_of(kind: str) -> Kind:
    """The ``[listen]`` addresses of one kind of listener."""
    return Kind('array of "HOST:PORT"', plain(lambda value: names.listeners(value, kind)), _show_listeners)


def _domain(value: object) -> str:
    return normalize_domain(string(value))


def _address(value: object) -> str:
    return normalize_address(string(value))


def _dns_server(value: object) -> tuple[str, int]:
    return names.parse_dns_server(string(value))


def _https_url(value: object) -> str:
    text = string(value).strip()
    parts = urllib.parse.urlsplit(text)
    # RFC 8555 §6.1: ACME is spoken over HTTPS only.
    if parts.scheme != "https" or not parts.hostname:
        raise Invalid(f"{text!r}: expected an https:// URL")
    return text


def _relay_host(value: object) -> tuple[str, int]:
    return names.parse_relay_host(string(value))


def _show_host_port(address: Any) -> str:
    host, port = address
    return toml_text(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")


SIZE = Kind("size", plain(values.parse_size), _show_size)
DURATION = Kind("duration", plain(values.parse_duration), _show_duration)
COUNT = Kind("integer", plain(values.integer), floor=Bound(1), excess="too many")
BOOLEAN = Kind("true or false", plain(values.boolean))
PATH = Kind("path", values.path, lambda path: toml_text(str(path)))
PORT = Kind("port", plain(values.port))
NETWORKS = Kind("array of networks (CIDR)", plain(values.networks))
DOMAIN = Kind("domain name", plain(_domain))
DOMAINS = Kind("array of domain names", plain(names.domain_list))
ADDRESS = Kind("address", plain(_address))
DNS_SERVER = Kind('"IP:PORT" or "IP"', plain(_dns_server), _show_host_port)
HTTPS_URL = Kind("https:// URL", plain(_https_url))
RELAY_HOST = Kind('"HOST:PORT"', plain(_relay_host), _show_host_port)
LOG_FORMAT = Kind(_one_of(LOG_FORMATS), plain(_log_format))
TLS_VERSION = Kind(_one_of(TLS_VERSIONS), plain(_tls_version))
TLS_POLICY = Kind('table of "domain" = policy', plain(_tls_policy), _show_tls_policy)
RELAY_USER = Kind("user name", plain(_relay_user))
USER = Kind("user name on this machine", plain(values.system_user))
GROUP = Kind("group name on this machine", plain(values.system_group))
FILE_MODE = Kind("octal file mode", plain(values.file_mode), lambda mode: f"0o{mode:03o}")
WEBHOOK_URL = Kind("http:// or https:// URL", plain(_webhook_url))
EVENTS = Kind("array of " + _one_of(WEBHOOK_EVENTS), plain(_webhook_events))
SECRET = Kind("string", plain(string), lambda _secret: '""')
WORKERS = Kind('integer or "auto"', plain(values.workers), floor=Bound(1), excess="too many")
