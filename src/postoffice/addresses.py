"""Mail addresses: the one canonical form of an address, and the checks a configured one passes.

Untrusted input seen here: addresses from SMTP clients (RCPT and MAIL paths, parsed by the SMTP
grammar first), from the command line, the configuration and the accounts file. Nothing here
touches a file or a socket.

**The canonical form** (:func:`canonical`) is ``local@domain`` split at the last ``@``, with
both parts lower-cased and in Unicode NFC. Every lookup and every mailbox goes by it, so that
``Ann@Example.COM``, ``ann@example.com`` and the two spellings of ``é`` (one code point, or
``e`` and a combining accent) are one user and one mailbox:

* the domain is case-insensitive (RFC 5321 §2.4);
* a local part may be case-sensitive, but RFC 5321 §2.4 lets a host treat its own as it likes,
  and Postfix folds to lower case for its lookups, as every mail provider does;
* RFC 6531 §3.3 refers to RFC 5198, which asks for NFC.

The forms a client sends keep their case on the wire (relayed addresses, the envelope's
original recipient): only this server's own lookups and mailboxes fold.

**Configured addresses** (:func:`normalize_address`, :func:`normalize_domain`) are checked
against the grammar first: a dot-atom local part (RFC 5322 §3.2.3, UTF-8 allowed by RFC 6531) and
a host name of LDH or IDNA labels. Quoted local parts are legal on the wire but nobody needs one
to configure a server.
"""

from __future__ import annotations

import re
import unicodedata

# RFC 1035 §2.3.1 "preferred name syntax" as relaxed by RFC 1123 §2.1 (labels may start with a
# digit): letters, digits and inner hyphens, 1 to 63 octets.
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# RFC 5321 §4.5.3.1.2: a domain is at most 255 octets; the dotted text form of that is 253.
_MAX_DOMAIN_TEXT = 253
# RFC 5321 §4.5.3.1.1: a local part is at most 64 octets.
_MAX_LOCAL_PART = 64
# RFC 5322 §3.2.3 atext, the characters of a dot-atom besides letters and digits.
_ATEXT_SPECIALS = frozenset("!#$%&'*+-/=?^_`{|}~")


def fold(text: str) -> str:
    """``text`` lower-cased and in NFC: how each part of an address is compared."""
    lowered = text.lower()
    # ASCII text is in NFC already: only other text needs the normalizer (several per message).
    return lowered if lowered.isascii() else unicodedata.normalize("NFC", lowered)


def split(address: str) -> tuple[str, str]:
    """``(local, domain)``, split at the last ``@`` (a quoted local part may hold one);
    ValueError if either is empty."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"address has no local part and domain: {address!r}")
    return local, domain


def join(local: str, domain: str) -> str:
    """The canonical form of the address with these parts (an unquoted local part), unchecked:
    an empty part stays empty, and the lookup it goes to finds nobody."""
    return f"{fold(local)}@{fold(domain)}"


def canonical(address: str) -> str:
    """The canonical form of ``address`` (see the module docstring); ValueError if it has no
    local part and domain."""
    local, domain = split(address)
    return join(local, domain)


def canonical_or_none(address: str) -> str | None:
    """:func:`canonical`, or None when ``address`` has no local@domain shape (a lookup that
    can find nobody)."""
    try:
        return canonical(address)
    except ValueError:
        return None


def local_part(address: str) -> str:
    """The canonical local part of a canonical address (``postmaster`` of ``postmaster@x``)."""
    return address.rpartition("@")[0]


def domain_of(address: str) -> str:
    """The domain of an address, as written (everything after the last ``@``)."""
    return address.rpartition("@")[2]


def normalize_domain(name: str) -> str:
    """Return ``name`` lower-cased if it is a valid domain name; raise ``ValueError`` if not.

    Labels are LDH (RFC 1035/1123) or IDNA U-labels (RFC 5890), checked through their ASCII
    form so the length limits hold on the wire. Address literals are not domain names.
    """
    if not name:
        raise ValueError("empty domain name")
    lowered = name.lower()
    ascii_labels: list[str] = []
    for label in lowered.split("."):
        if not label:
            raise ValueError(f"{name!r} has an empty label")
        if label.isascii():
            ascii_label = label
        else:
            try:
                ascii_label = label.encode("idna").decode("ascii")
            except UnicodeError:
                raise ValueError(f"{name!r}: {label!r} is not a valid internationalised label") from None
        if not _LDH_LABEL.fullmatch(ascii_label):
            raise ValueError(f"{name!r}: labels are letters, digits and inner hyphens, at most 63 characters")
        ascii_labels.append(ascii_label)
    if len(".".join(ascii_labels)) > _MAX_DOMAIN_TEXT:
        raise ValueError(f"{name[:40]!r}...: longer than {_MAX_DOMAIN_TEXT} characters")
    # RFC 3696 §2: a top-level domain is never all-numeric, which also keeps "10.0.0.1" out.
    if ascii_labels[-1].isdigit():
        raise ValueError(f"{name!r} is not a domain name (the last label is all digits)")
    return lowered


def _is_atext(char: str) -> bool:
    if char.isascii():
        return char.isalnum() or char in _ATEXT_SPECIALS
    # RFC 6531 §3.3 adds UTF8-non-ascii to atext; controls and spaces stay out.
    return char.isprintable() and not char.isspace()


def normalize_address(address: str, *, fold_local: bool = False) -> str:
    """Return ``local@domain`` with the domain lower-cased; raise ``ValueError`` if invalid.

    The local part must be a dot-atom of at most 64 octets. Local parts are case-sensitive in
    general (RFC 5321 §2.4), so a configured one keeps its case; ``fold_local``, for addresses
    this server owns (users, aliases), returns the :func:`canonical` form instead.
    """
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"{address!r} is not an address of the form local@domain")
    atoms = local.split(".")
    if not all(atom and all(_is_atext(char) for char in atom) for atom in atoms):
        raise ValueError(f"{address!r}: the local part has a character or dot that is not allowed")
    if len(local.encode("utf-8")) > _MAX_LOCAL_PART:
        raise ValueError(f"{address!r}: the local part is longer than {_MAX_LOCAL_PART} octets")
    try:
        domain = normalize_domain(domain)
    except ValueError as exc:
        raise ValueError(f"{address!r}: {exc}") from None
    return join(local, domain) if fold_local else f"{local}@{domain}"
