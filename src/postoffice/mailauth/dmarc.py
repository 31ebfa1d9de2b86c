"""DMARC (RFC 7489): the From domain's policy record, its evaluation against the SPF and DKIM
results, and the disposition to apply.

Untrusted input seen here: the message's From field (anyone sending mail writes it), the SPF
and DKIM verdicts (their domains are the sender's choice) and the policy records in DNS (written
by whoever controls the From domain's zone). A record that does not parse is a permerror, never
an exception past :func:`evaluate`; :func:`parse_record` raises only :class:`DmarcRecordError`.

The steps, in RFC 7489's order:

* §6.6.1: the Author Domain is the domain of the one address in the one From field; a message
  without that is outside DMARC (a permerror here, for the caller to refuse, as RFC 5322 §3.6
  allows exactly one From field); a From field with several addresses is checked for each of
  their domains and the strictest failing policy wins.
* §6.6.3: the policy record is the one TXT record starting ``v=DMARC1`` at ``_dmarc.<From
  domain>``, else at ``_dmarc.<Organizational Domain>`` (§3.2: one label below the public
  suffix, from the Public Suffix List the ``publicsuffixlist`` package ships).
* §3.1: SPF and DKIM identifiers align with the From domain strictly (equal) or relaxed (same
  Organizational Domain); one aligned pass of either is a DMARC pass (§4.2).
* §6.3 ``pct`` and §6.6.4: a failing message gets the policy (``sp`` for a subdomain whose
  record came from its Organizational Domain) when it falls in the sampled percentage, and the
  next weaker one otherwise.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.headerregistry import AddressHeader
from email.policy import SMTP

import dns.asyncresolver
from publicsuffixlist import PublicSuffixList

from postoffice.errors import PostofficeError
from postoffice.mailauth.dnstxt import TxtTemporaryError, lookup_txt
from postoffice.mailauth.verdicts import DkimVerdict, SpfVerdict

POLICIES = ("none", "quarantine", "reject")
RESULTS = ("pass", "fail", "none", "temperror", "permerror")
# RFC 7489 §6.3 defaults.
DEFAULT_PCT = 100
DEFAULT_RI = 86400
# RFC 7489 §6.6.1 checks every domain of a multi-valued From field; each costs up to two DNS
# lookups, so the count is bounded (DMARCbis §11.8, "Denial of DMARC Processing Attacks").
MAX_AUTHOR_DOMAINS = 5

# RFC 7489 §6.4: dmarc-version = "v" *WSP "=" *WSP %x44 %x4d %x41 %x52 %x43 %x31 ("DMARC1",
# case-sensitive); the tag name itself is case-insensitive.
_VERSION = re.compile(r"[ \t]*[vV][ \t]*=[ \t]*DMARC1[ \t]*(?:;|$)")
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s,!]+(?:![0-9]+[kmgtKMGT]?)?")
_KEYWORD = re.compile(r"[A-Za-z0-9-]+")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")

# The From field of nearly every message is one plain mailbox, "local@domain" or "Display Name
# <local@domain>" (RFC 5322 §3.4: atoms or a simple quoted-string as the name, a dot-atom on
# both sides of the @). Those are read with this; anything else (comments, groups, several
# addresses, escapes, obsolete syntax, non-ASCII) goes to the stdlib's full parser, which gives
# the same domain for these but costs a fraction of a millisecond per message.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_WORD = rf'(?:{_ATEXT}|"[ !#-\[\]-~]*")'  # an atom or a quoted-string without escapes
_ADDR_SPEC = rf"{_ATEXT}(?:\.{_ATEXT})*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)"
_PLAIN_MAILBOX = re.compile(rf"(?:(?:{_WORD}(?:[ \t]+{_WORD})*[ \t]*)?<{_ADDR_SPEC}>|{_ADDR_SPEC})")
# Distinct texts kept for the caches below (records, domains): bounded, a few hundred octets each.
CACHE_SIZE = 4096


class DmarcError(PostofficeError, ValueError):
    """Input DMARC cannot use; ``str()`` names what is wrong, in one line."""


class DmarcRecordError(DmarcError):
    """A DMARC record that does not follow RFC 7489 §6.4."""


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """A parsed policy record (RFC 7489 §6.3). ``sp`` None means "as ``p``"."""

    p: str
    sp: str | None = None
    pct: int = DEFAULT_PCT
    adkim: str = "r"
    aspf: str = "r"
    fo: tuple[str, ...] = ("0",)
    rf: tuple[str, ...] = ("afrf",)
    ri: int = DEFAULT_RI
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()

    @property
    def subdomain_policy(self) -> str:
        return self.sp or self.p


@dataclass(frozen=True, slots=True)
class DmarcResult:
    """What DMARC says of a message.

    ``result`` is one of RESULTS (RFC 7489 §11.2). ``policy`` is the policy the domain owner
    asks for (``p`` or ``sp``; None without a record) and ``disposition`` what to do after
    ``pct`` sampling: "none" unless the result is "fail" (or the From field is unusable, see
    :func:`evaluate_message`).
    """

    result: str
    from_domain: str
    disposition: str = "none"
    policy: str | None = None
    policy_domain: str | None = None
    record: DmarcRecord | None = None
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""


# Given a record's pct (1 to 99: 0 and 100 need no dice), True when this message falls in the
# sampled share (RFC 7489 §6.6.4).
Sampler = Callable[[int], bool]

_system_random = random.SystemRandom()


def sample_percent(pct: int) -> bool:
    """The default sampler: true for ``pct`` messages in a hundred, at random."""
    return _system_random.randrange(100) < pct


# --- the record (RFC 7489 §6.3, §6.4) ------------------------------------------------------------


def is_dmarc_record(text: str) -> bool:
    """RFC 7489 §6.6.3: records that do not start with ``v=DMARC1`` are discarded."""
    return _VERSION.match(text) is not None


@functools.lru_cache(maxsize=CACHE_SIZE)  # DmarcRecord is immutable; errors are not cached
def parse_record(text: str) -> DmarcRecord:
    """The record's tags; raises DmarcRecordError for a record RFC 7489 §6.4 does not allow."""
    if not is_dmarc_record(text):
        raise DmarcRecordError("the record does not start with v=DMARC1")
    tags: dict[str, str] = {}
    for part in text.split(";")[1:]:
        part = part.strip(" \t")
        if not part:
            continue  # a trailing or doubled separator
        name, equals, value = part.partition("=")
        name = name.strip(" \t").lower()
        if not equals or not _TAG_NAME.fullmatch(name):
            raise DmarcRecordError(f"malformed tag {part[:40]!r}")
        if name in tags:
            raise DmarcRecordError(f"tag {name} appears twice")
        tags[name] = value.strip(" \t")
    return _record_from_tags(tags)


def _record_from_tags(tags: dict[str, str]) -> DmarcRecord:
    rua = _uris(tags.get("rua"))
    p = tags.get("p", "").lower()
    sp = tags["sp"].lower() if "sp" in tags else None
    if p not in POLICIES or (sp is not None and sp not in POLICIES):
        # RFC 7489 §6.6.3: without a valid p (or with an invalid sp), a record with a valid
        # rua is taken as p=none; any other is no policy at all.
        if not rua:
            raise DmarcRecordError(f"p={tags.get('p', '')!r} sp={tags.get('sp', '')!r}: no valid policy")
        p, sp = "none", None
    return DmarcRecord(
        p=p,
        sp=sp,
        pct=_number(tags, "pct", DEFAULT_PCT, 100),
        adkim=_alignment(tags, "adkim"),
        aspf=_alignment(tags, "aspf"),
        fo=_colon_list(tags, "fo", ("0",), lambda item: item in ("0", "1", "d", "s")),
        rf=_colon_list(tags, "rf", ("afrf",), lambda item: _KEYWORD.fullmatch(item) is not None),
        ri=_number(tags, "ri", DEFAULT_RI, 2**32 - 1),
        rua=rua,
        ruf=_uris(tags.get("ruf")),
    )


def _number(tags: dict[str, str], name: str, default: int, highest: int) -> int:
    value = tags.get(name)
    if value is None:
        return default
    if not value.isascii() or not value.isdigit() or int(value) > highest:
        raise DmarcRecordError(f"{name}={value[:20]!r} is not a number from 0 to {highest}")
    return int(value)


def _alignment(tags: dict[str, str], name: str) -> str:
    value = tags.get(name, "r").lower()
    if value not in ("r", "s"):
        raise DmarcRecordError(f"{name}={value[:20]!r} is neither r nor s")
    return value


def _colon_list(
    tags: dict[str, str], name: str, default: tuple[str, ...], valid: Callable[[str], bool]
) -> tuple[str, ...]:
    if name not in tags:
        return default
    items = tuple(item.strip(" \t").lower() for item in tags[name].split(":"))
    if not all(valid(item) for item in items):
        raise DmarcRecordError(f"{name}={tags[name][:40]!r} is malformed")
    return items


def _uris(value: str | None) -> tuple[str, ...]:
    """The syntactically valid URIs of a rua/ruf list (RFC 7489 §6.4 dmarc-uri); reports are
    not ours to send, so an invalid one is only left out."""
    if value is None:
        return ()
    items = (item.strip(" \t") for item in value.split(","))
    return tuple(item for item in items if _URI.fullmatch(item))


# --- domains (RFC 7489 §3.1, §3.2) ---------------------------------------------------------------

_psl: PublicSuffixList | None = None


@functools.lru_cache(maxsize=CACHE_SIZE)
def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix plus one label; a public suffix is its own."""
    global _psl
    if _psl is None:
        _psl = PublicSuffixList()  # reads the list the package ships: no download
    return _psl.privatesuffix(domain) or domain


@functools.lru_cache(maxsize=CACHE_SIZE)
def normalize_domain(domain: str) -> str | None:
    """The domain as lower-case A-labels without a final dot (RFC 7489 §6.6.1), or None when
    it is not a domain name."""
    domain = domain.strip().rstrip(".").lower()
    if not domain or domain.startswith("[") or ".." in domain:
        return None
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    if not all(_LABEL.fullmatch(label) for label in ascii_domain.split(".")):
        return None
    return ascii_domain


def aligned(from_domain: str, identifier: str, mode: str) -> bool:
    """RFC 7489 §3.1.1/§3.1.2: strict ("s") needs the same name, relaxed ("r") the same
    Organizational Domain."""
    other = normalize_domain(identifier)
    if other is None:
        return False
    if mode == "s":
        return other == from_domain
    return organizational_domain(other) == organizational_domain(from_domain)


# --- policy discovery (RFC 7489 §6.6.3) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Discovery:
    record: DmarcRecord | None = None
    domain: str | None = None  # where the record was found
    result: str = "none"  # when there is no record: none, temperror or permerror
    reason: str = ""


async def discover_policy(from_domain: str, resolver: dns.asyncresolver.Resolver) -> _Discovery:
    """The record at ``_dmarc.<from_domain>``, else at the Organizational Domain's."""
    found = await _policy_at(from_domain, resolver)
    organizational = organizational_domain(from_domain)
    if found.result == "none" and found.record is None and organizational != from_domain:
        found = await _policy_at(organizational, resolver)
    return found


async def _policy_at(domain: str, resolver: dns.asyncresolver.Resolver) -> _Discovery:
    try:
        answer = await lookup_txt(resolver, f"_dmarc.{domain}")
    except TxtTemporaryError as exc:
        return _Discovery(result="temperror", reason=str(exc))
    records = [text for text in answer.records if is_dmarc_record(text)]
    if not records:
        return _Discovery(reason=f"no DMARC record at _dmarc.{domain}")
    if len(records) > 1:
        # "If the remaining set contains multiple records ..., policy discovery terminates
        # and DMARC processing is not applied to this message."
        return _Discovery(domain=domain, reason=f"{len(records)} DMARC records at _dmarc.{domain}")
    try:
        return _Discovery(parse_record(records[0]), domain)
    except DmarcRecordError as exc:
        return _Discovery(domain=domain, result="permerror", reason=f"_dmarc.{domain}: {exc}")


# --- evaluation (RFC 7489 §4.2, §6.6.2, §6.6.4) --------------------------------------------------


async def evaluate(
    from_domain: str,
    spf: SpfVerdict | None,
    dkim: Sequence[DkimVerdict],
    resolver: dns.asyncresolver.Resolver,
    *,
    sample: Sampler = sample_percent,
) -> DmarcResult:
    """DMARC for one Author Domain. Never raises for anything the sender or DNS did."""
    domain = normalize_domain(from_domain)
    if domain is None:
        return DmarcResult(
            "permerror", from_domain, reason=f"From domain {from_domain[:80]!r} is not a domain name"
        )
    found = await discover_policy(domain, resolver)
    if found.record is None:
        return DmarcResult(found.result, domain, policy_domain=found.domain, reason=found.reason)
    record = found.record
    spf_aligned = (
        spf is not None and spf.result.lower() == "pass" and aligned(domain, spf.domain, record.aspf)
    )
    dkim_aligned = any(
        verdict.result.lower() == "pass" and aligned(domain, verdict.domain, record.adkim) for verdict in dkim
    )
    # sp applies to a subdomain whose own name has no record (RFC 7489 §6.3 "sp").
    policy = record.p if found.domain == domain else record.subdomain_policy
    passed = spf_aligned or dkim_aligned
    return DmarcResult(
        "pass" if passed else "fail",
        domain,
        disposition="none" if passed else _disposition(policy, record.pct, sample),
        policy=policy,
        policy_domain=found.domain,
        record=record,
        spf_aligned=spf_aligned,
        dkim_aligned=dkim_aligned,
        reason=_reason(passed, spf_aligned, dkim_aligned),
    )


def _disposition(policy: str, pct: int, sample: Sampler) -> str:
    """RFC 7489 §6.6.4 with §6.3 pct: a message outside the sampled share gets the next
    weaker policy (reject → quarantine, quarantine → none)."""
    if policy == "none" or pct >= 100 or (pct > 0 and sample(pct)):
        return policy
    return "quarantine" if policy == "reject" else "none"


def _reason(passed: bool, spf_aligned: bool, dkim_aligned: bool) -> str:
    if not passed:
        return "neither SPF nor DKIM passed aligned with the From domain"
    return (
        " and ".join(name for name, ok in (("SPF", spf_aligned), ("DKIM", dkim_aligned)) if ok) + " aligned"
    )


# --- the Author Domain (RFC 7489 §6.6.1) ---------------------------------------------------------


class AuthorError(DmarcError):
    """The message has no single usable From field (RFC 5322 §3.6, RFC 7489 §6.6.1)."""


def author_domains(from_fields: Sequence[str | bytes]) -> list[str]:
    """The distinct domains of the From field's addresses (``from_fields``: the value of every
    From field in the message, unfolded or not). Raises AuthorError when there is not exactly
    one From field, when an address has no domain, or when there are over MAX_AUTHOR_DOMAINS."""
    if len(from_fields) != 1:
        raise AuthorError(f"{len(from_fields)} From fields (RFC 5322 §3.6 asks for one)")
    value = from_fields[0]
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    text = re.sub(r"\r?\n(?=[ \t])", "", text).strip()
    plain = _PLAIN_MAILBOX.fullmatch(text)
    domain = normalize_domain(plain.group(1) or plain.group(2)) if plain else None
    domains = [domain] if domain else _parsed_domains(text)
    if len(domains) > MAX_AUTHOR_DOMAINS:
        raise AuthorError(
            f"the From field names {len(domains)} domains (at most {MAX_AUTHOR_DOMAINS} are checked)"
        )
    return domains


def _parsed_domains(text: str) -> list[str]:
    """The From field's domains by the stdlib's full RFC 5322 parser."""
    try:
        header = SMTP.header_factory("From", text)
    except Exception as exc:  # the stdlib parser's failures on hostile input are not a closed set
        raise AuthorError(f"the From field does not parse: {type(exc).__name__}") from None
    if not isinstance(header, AddressHeader) or not header.addresses:
        raise AuthorError("the From field has no address")
    domains: list[str] = []
    for address in header.addresses:
        domain = normalize_domain(address.domain)
        if domain is None:
            raise AuthorError(f"From address {address.addr_spec[:80]!r} has no domain")
        if domain not in domains:
            domains.append(domain)
    return domains


# The order of strictness when several Author Domains are checked: the first of these results
# any domain has decides; among failures, the strictest disposition.
_SEVERITY = {"fail": 0, "temperror": 1, "permerror": 2, "none": 3, "pass": 4}
_STRICTNESS = {"reject": 0, "quarantine": 1, "none": 2}


async def evaluate_message(
    from_fields: Sequence[str | bytes],
    spf: SpfVerdict | None,
    dkim: Sequence[DkimVerdict],
    resolver: dns.asyncresolver.Resolver,
    *,
    sample: Sampler = sample_percent,
) -> DmarcResult:
    """DMARC for a message, given its From field(s).

    A message without exactly one From field naming domains is a permerror with disposition
    "reject": RFC 5322 §3.6 forbids it and RFC 7489 §6.6.1 leaves it outside DMARC, so nothing
    can protect the author it shows. A From field with several domains is checked for each
    (§6.6.1): the first failure by strictest disposition decides, else the worst other result.
    """
    try:
        domains = author_domains(from_fields)
    except AuthorError as exc:
        return DmarcResult("permerror", "", disposition="reject", reason=str(exc))
    results = [await evaluate(domain, spf, dkim, resolver, sample=sample) for domain in domains]
    return min(results, key=lambda r: (_SEVERITY[r.result], _STRICTNESS.get(r.disposition, 3)))
