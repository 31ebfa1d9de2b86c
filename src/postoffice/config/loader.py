"""Reading a configuration file against the schema, and the command line's overrides.

Untrusted input seen here: the configuration file and command-line overrides, written by the
operator. A mistake is reported as one :class:`~postoffice.errors.ConfigError` line naming the
file and the key (or the flag), never as a traceback.

Every key is read the same way, from its declaration in :mod:`postoffice.config.model`: its kind
reads the value, then its floor and ceiling are checked. Rules between keys (a TLS key needs its
certificate, relay credentials come in pairs, a group needs its user) are checked once each key involved is valid.
Validation collects every problem (one ConfigError per key) so ``check-config`` can list them
all; :func:`load_config` raises the first.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypedDict, TypeVar, Unpack

from postoffice.config.model import SECTIONS, Config
from postoffice.config.names import IMAP_KINDS, LISTENER_KINDS, POP3_LISTENER_KINDS, Listener
from postoffice.config.schema import Key, Section, keys_of, read
from postoffice.config.tables import QueueSettings
from postoffice.config.values import kind_of, primary_gid
from postoffice.errors import ConfigError

_T = TypeVar("_T")

# The values read so far: table name ("" for the top level) -> field name -> value.
_Given = dict[str, dict[str, Any]]


class Overrides(TypedDict, total=False):
    """What ``postoffice serve``'s options set: :func:`load_config`'s keyword arguments.

    ``listeners`` replace the file's listeners of their kind, non-empty ``domains`` replace its
    list, ``tls_cert`` (with ``tls_key``) its certificate, ``delivery`` (parsed values by
    :class:`DeliverySettings` field name, from ``--dns``, ``--mx-port``, ``--relay-host``) those
    keys of ``[delivery]``, and ``http_listeners`` (when not None; empty turns the web side off)
    ``[listen] http``; ``database`` the postgresql backend's database. ``hostname``, ``domains``, ``workers``, ``user`` and ``group`` are read as
    the file's values are, and a mistake in one is reported under its flag.
    """

    data_dir: Path | None
    listeners: Sequence[Listener]
    hostname: str | None
    domains: Sequence[str]
    transcript_log: Path | None
    delivery: dict[str, Any] | None
    tls_cert: Path | None
    tls_key: Path | None
    http_listeners: Sequence[Listener] | None
    workers: int | str | None
    database: str | None
    user: str | None
    group: str | None


class _Problems:
    """Collects one ConfigError per bad key, so a person sees every mistake in one run."""

    def __init__(self, label: str | None) -> None:
        self.label = label
        self.errors: list[ConfigError] = []

    def add(self, key: str | None, message: str) -> None:
        # One line each, whatever a quoted TOML key or a parser message holds.
        if key is not None and not key.isprintable():
            key = repr(key)
        message = " ".join(message.splitlines())
        self.errors.append(ConfigError(message, key=key, path=self.label))

    def check(self, key: str, parse: Callable[[], _T]) -> _T | None:
        """``parse()``, or None after recording why it failed."""
        try:
            return parse()
        except ValueError as exc:  # Invalid, and the ValueError of normalize_*
            self.add(key, str(exc))
        except ConfigError as exc:
            self.add(key, exc.detail)
        return None

    def clean(self, table: str) -> bool:
        """No problem found in ``table`` (a rule between its keys needs each of them valid)."""
        return not any(
            error.key == table or (error.key or "").startswith(table + ".") for error in self.errors
        )

    def unknown_keys(self, table: dict[str, Any], section: Section) -> None:
        known = section.key_names()
        if not section.name:
            known += tuple(other.name for other in SECTIONS if other.name)
        for name in table:
            if name in known:
                continue
            # A key of a table written at the top level: say which table it belongs in.
            home = [other.name for other in SECTIONS if not section.name and name in other.key_names()]
            close = difflib.get_close_matches(name, known, n=1)
            if home:
                hint = f"; it belongs in the [{home[0]}] table"
            elif close:
                hint = f"; did you mean {section.dotted(close[0])!r}?"
            else:
                hint = ""
            self.add(section.dotted(name), f"unknown key{hint}")


def _read_file(path: Path, problems: _Problems) -> dict[str, Any] | None:
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError:
        problems.add(None, "no such file")
    except IsADirectoryError:
        problems.add(None, "is a directory, not a configuration file")
    except OSError as exc:
        problems.add(None, exc.strerror or str(exc))
    except UnicodeDecodeError:
        problems.add(None, "not UTF-8 text (TOML files are UTF-8)")
    except tomllib.TOMLDecodeError as exc:
        problems.add(None, f"not valid TOML: {exc}")
    return None


def _table(problems: _Problems, data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        problems.add(name, f"expected a table ([{name}]), got {kind_of(value)}")
        return {}
    return value


def _read_keys(table: dict[str, Any], section: Section, base: Path, problems: _Problems) -> dict[str, Any]:
    problems.unknown_keys(table, section)
    found: dict[str, Any] = {}
    for item, key in keys_of(section.keys):
        if item.name in table:
            value = problems.check(
                section.dotted(item.name), functools.partial(read, key, table[item.name], base)
            )
            if value is not None:
                found[item.name] = value
    return found


def _read_many(data: dict[str, Any], section: Section, base: Path, problems: _Problems) -> dict[str, Any]:
    """An array of tables (``[[webhooks]]``): each entry read as a table; each needs a url."""
    entries = data.get(section.name, [])
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        problems.add(section.name, f"expected tables written [[{section.name}]], got {kind_of(entries)}")
        return {}
    read_entries = [_read_keys(entry, section, base, problems) for entry in entries]
    if any("url" not in entry for entry in entries):
        problems.add(section.dotted("url"), f"each [[{section.name}]] needs a url")
    return {"entries": read_entries}


def _read_sections(data: dict[str, Any], base: Path, problems: _Problems) -> _Given:
    given: _Given = {}
    for section in SECTIONS:
        if section.many:
            given[section.name] = _read_many(data, section, base, problems)
            continue
        table = _table(problems, data, section.name) if section.name else data
        given[section.name] = _read_keys(table, section, base, problems)
    return given


def _check_file(given: _Given, problems: _Problems) -> None:
    """Rules between keys of the file, before the command line has its say."""
    if problems.clean("tls") and "key" in given["tls"] and "cert" not in given["tls"]:
        problems.add("tls.key", "a key needs its certificate; set tls.cert too")
    proxy = given["proxy_protocol"]
    expected = any(proxy.get(kind) for kind in LISTENER_KINDS)
    if problems.clean("proxy_protocol") and expected and not proxy.get("trusted"):
        problems.add(
            "proxy_protocol.trusted",
            "no trusted proxy networks; a PROXY header is only believed from the load balancers listed here",
        )


def _check_merged(given: _Given, problems: _Problems) -> None:
    """Rules between keys that flags may have set too."""
    if problems.clean("queue"):
        queue = QueueSettings(**given["queue"])
        if queue.minimal_backoff_time > queue.maximal_backoff_time:
            problems.add("queue.minimal_backoff_time", "is longer than maximal_backoff_time")
    if problems.clean("delivery"):
        _check_relay(given["delivery"], problems)
    if problems.clean("acme") and given["acme"].get("enabled") and "cert" in given["tls"]:
        problems.add("acme.enabled", "[tls] cert is set too; use one or the other")
    if problems.clean("acme") and given["acme"].get("challenge") == "tls-alpn-01" and not _has_https(given):
        problems.add("acme.challenge", "tls-alpn-01 needs [listen] https (the CA connects to port 443)")


def _has_https(given: _Given) -> bool:
    listen = given["listen"]
    return bool(listen.get("https")) or any(item.kind == "https" for item in listen.get("http", ()))


def _check_identity(given: _Given, problems: _Problems) -> None:
    """A group is the user's; and a user whose own group is root's would keep gid 0."""
    user, group = given[""].get("user"), given[""].get("group")
    if group is not None and user is None:
        problems.add("group", "a group needs its user; set user too")
    elif user is not None and group is None and primary_gid(user) == 0:
        problems.add("user", f"{user!r} has root's group (gid 0) as its own; set group too")


def _check_relay(delivery: dict[str, Any], problems: _Problems) -> None:
    """Credentials come in pairs, and never cross a network in the clear."""
    has_user = "relay_user" in delivery
    has_password = "relay_password_file" in delivery
    if has_user != has_password:
        missing = "relay_password_file" if has_user else "relay_user"
        problems.add(f"delivery.{missing}", "relay_user and relay_password_file go together")
        return
    relay = delivery.get("relay_host")
    if has_user and relay is None:
        problems.add("delivery.relay_user", "credentials without a relay_host: nothing would use them")
    elif has_user and relay is not None and delivery.get("relay_tls", "starttls") == "none":
        try:
            loopback = ipaddress.ip_address(relay[0]).is_loopback
        except ValueError:
            loopback = relay[0] == "localhost"
        if not loopback:
            problems.add(
                "delivery.relay_tls",
                '"none" would send the relay password in the clear; use "starttls" or "tls"',
            )


def _top_key(name: str) -> Key:
    return next(key for item, key in keys_of(Config) if item.name == name)


def _from_flag(given: _Given, name: str, raw: object, flags: _Problems) -> None:
    """A top-level key set on the command line: read as from the file, reported under the flag."""
    key = _top_key(name)
    value = flags.check(key.flag or name, functools.partial(read, key, raw, Path.cwd()))
    if value is not None:
        given[""][name] = value


def _apply_overrides(given: _Given, overrides: Overrides, flags: _Problems) -> None:
    if overrides.get("hostname") is not None:
        _from_flag(given, "hostname", overrides.get("hostname"), flags)
    if overrides.get("domains"):
        _from_flag(given, "domains", list(overrides.get("domains", ())), flags)
    for name in ("workers", "user", "group"):
        if overrides.get(name) is not None:
            _from_flag(given, name, overrides.get(name), flags)
    for name in ("data_dir", "transcript_log"):
        value = overrides.get(name)
        if isinstance(value, Path):
            given[""][name] = value.expanduser().absolute()
    listeners = overrides.get("listeners", ())
    for kind in (*LISTENER_KINDS, *POP3_LISTENER_KINDS, *IMAP_KINDS, "https"):
        of_kind = tuple(listener for listener in listeners if listener.kind == kind)
        if of_kind:
            given["listen"][kind] = of_kind
    http = overrides.get("http_listeners")
    if http is not None:
        given["listen"]["http"] = tuple(http)
    given["delivery"].update(overrides.get("delivery") or {})
    if overrides.get("database") is not None:
        # --database names the shared database, so it means the postgresql backend too.
        given["storage"].update(backend="postgresql", database=overrides.get("database"))
    cert, key = overrides.get("tls_cert"), overrides.get("tls_key")
    if cert is not None:
        given["tls"]["cert"] = cert.expanduser().absolute()
        # A certificate from the command line never pairs with the file's key.
        given["tls"].pop("key", None)
    if key is not None:
        if cert is None:
            flags.add("--tls-key", "a key needs its certificate; give --tls-cert too")
        given["tls"]["key"] = key.expanduser().absolute()


def _collect(path: Path | None, overrides: Overrides) -> tuple[Config | None, list[ConfigError]]:
    problems = _Problems(str(path) if path is not None else None)
    given: _Given = {section.name: {} for section in SECTIONS}
    if path is not None:
        data = _read_file(path, problems)
        if data is None:
            return None, problems.errors
        given = _read_sections(data, path.absolute().parent, problems)
        _check_file(given, problems)
    # Command-line values override the file; they are checked the same way, under the flag name.
    flags = _Problems(None)
    _apply_overrides(given, overrides, flags)
    _check_merged(given, problems)
    if not any(error.key in ("user", "--user") for error in problems.errors + flags.errors):
        # Reported where the pair was last set: the command line, or else the file.
        by_flag = overrides.get("user") is not None or overrides.get("group") is not None
        _check_identity(given, flags if by_flag else problems)
    errors = problems.errors + flags.errors
    if errors:
        return None, errors
    built: dict[str, Any] = {}
    for section in SECTIONS:
        built.update(section.build(given[section.name]))
    return Config(**built, source=path), []


def load_config(path: Path | None = None, **overrides: Unpack[Overrides]) -> Config:
    """Build a :class:`Config` from the TOML file at ``path`` (if any) and command-line values.

    The keyword arguments (:class:`Overrides`) override the file. Raises the first
    :class:`ConfigError` found; :func:`check_config` lists all.
    """
    config, errors = _collect(path, overrides)
    if config is None:
        raise errors[0]
    return config


def check_config(path: Path | None) -> list[str]:
    """Every problem with the file at ``path``, one line each; empty when it loads."""
    _, errors = _collect(path, {})
    return [str(error) for error in errors]
