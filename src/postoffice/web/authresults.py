"""A stored message's authentication results (SPF, DKIM, DMARC, ARC), as the index keeps them,
the API shows them and search finds them.

Untrusted input seen here: the Authentication-Results fields of a stored message (RFC 8601),
which anyone sending mail can write, naming any authserv-id. Only this server's own field
counts: the topmost one whose authserv-id is our host name, which the SMTP side adds on top
of every message it checks after deleting any that claimed our name already (RFC 8601 §5). A
field naming another authserv-id is somebody else's claim and is never read; a message with
no field of ours (mail from an authenticated user, captured mail, mail stored before the
server checked any) has no results. Every value is bounded and kept as text; a field of ours
that does not parse gives no results rather than a guess.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from postoffice.mailauth import results
from postoffice.mailauth.results import AuthResultsError, MethodResult

# The results each method can have. RFC 8601 §2.7.2 (spf), §2.7.1 (dkim), RFC 7489 §11.2
# (dmarc), RFC 8617 §4.4 (arc). A result outside these is not kept (nothing could search it).
RESULTS: dict[str, tuple[str, ...]] = {
    "spf": ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy"),
    "dkim": ("pass", "fail", "neutral", "none", "temperror", "permerror", "policy"),
    "dmarc": ("pass", "fail", "none", "temperror", "permerror"),
    "arc": ("pass", "fail", "none"),
}
# The overall verdict (see Authentication.verdict).
VERDICTS = ("pass", "fail", "none")
# RFC 7489 §6.3 "p=": what the From domain asks receivers to do with mail failing DMARC.
POLICIES = ("none", "quarantine", "reject")
# A domain name is at most 253 characters (RFC 1035 §2.3.4); a selector is a domain-name
# fragment too (RFC 6376 §3.1). Longer values are not names: they are left out.
MAX_VALUE = 253
# Signatures kept per message: a message may carry any number; a person reads a handful.
MAX_SIGNATURES = 8
# SPF results that say the sender is not authorised: "fail", and "softfail", which RFC 7208
# §2.6.5 calls "probably not authorized" and which mail readers show as a failure too.
_SPF_FAILED = ("fail", "softfail")
_POLICY = re.compile(r"(?:^|\s)p=([A-Za-z]+)")


@dataclass(frozen=True, slots=True)
class Check:
    """One method's result, with what it was about: the domain (SPF: the MAIL FROM domain or
    the HELO name; DKIM: d=; DMARC: the From domain), the DKIM selector and the DMARC policy."""

    result: str
    domain: str | None = None
    selector: str | None = None
    policy: str | None = None


@dataclass(frozen=True, slots=True)
class Authentication:
    """The results of our Authentication-Results field: SPF, each DKIM signature, DMARC, ARC."""

    spf: Check | None = None
    dkim: tuple[Check, ...] = ()
    dmarc: Check | None = None
    arc: Check | None = None

    @property
    def verdict(self) -> str:
        """ "pass", "fail" or "none": whether the message as a whole is authenticated.

        DMARC decides when it reached a verdict: it is the check of the From domain the reader
        sees, and it already weighs SPF and DKIM (RFC 7489 §4.2: either, aligned, is enough),
        so a forwarded message whose SPF failed but whose DKIM passed DMARC passes. Without a
        DMARC verdict, any failure fails: SPF fail or softfail, or DKIM signatures of which
        none verified and one failed (one good signature beside a broken one is a pass, as
        with a mailing list's added signature); else a pass of either passes. ARC is left
        out: it tells what earlier hops saw, it does not authenticate anyone.
        """
        if self.dmarc is not None and self.dmarc.result in ("pass", "fail"):
            return self.dmarc.result
        dkim = {check.result for check in self.dkim}
        spf = self.spf.result if self.spf is not None else None
        if spf in _SPF_FAILED or ("fail" in dkim and "pass" not in dkim):
            return "fail"
        if spf == "pass" or "pass" in dkim:
            return "pass"
        return "none"

    def columns(self) -> tuple[str, str, str, str, str]:
        """What search looks at: (verdict, spf, dkim, dmarc, arc). An absent result is "";
        ``dkim`` holds each signature's result between spaces (" fail pass ")."""
        dkim = " ".join(sorted({check.result for check in self.dkim}))
        return (
            self.verdict,
            self.spf.result if self.spf is not None else "",
            f" {dkim} " if dkim else "",
            self.dmarc.result if self.dmarc is not None else "",
            self.arc.result if self.arc is not None else "",
        )

    def to_json(self) -> dict[str, Any]:
        """The API's ``authentication`` object (also how the index stores it)."""

        def one(check: Check | None, *names: str) -> dict[str, Any] | None:
            if check is None:
                return None
            return {"result": check.result, **{name: getattr(check, name) for name in names}}

        return {
            "verdict": self.verdict,
            "spf": one(self.spf, "domain"),
            "dkim": [one(check, "domain", "selector") for check in self.dkim],
            "dmarc": one(self.dmarc, "domain", "policy"),
            "arc": one(self.arc),
        }


# Columns of a message without results.
NO_COLUMNS = ("none", "", "", "", "")


def dumps(auth: Authentication | None) -> str | None:
    return None if auth is None else json.dumps(auth.to_json(), separators=(",", ":"))


def loads(text: object) -> Authentication | None:
    """What :func:`dumps` wrote; None for anything else (an index column is never trusted)."""
    if not isinstance(text, str):
        return None
    try:
        data = json.loads(text)
        return Authentication(
            spf=_check_of(data["spf"]),
            dkim=tuple(filter(None, map(_check_of, data["dkim"]))),
            dmarc=_check_of(data["dmarc"]),
            arc=_check_of(data["arc"]),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _check_of(data: Any) -> Check | None:
    if data is None:
        return None
    return Check(str(data["result"]), data.get("domain"), data.get("selector"), data.get("policy"))


def ours(values: Iterable[str], authserv_id: str) -> Authentication | None:
    """The results of the topmost field among ``values`` (Authentication-Results values, top
    first) that names ``authserv_id``; None when there is none, or it does not parse."""
    for value in values:
        field = f"{results.FIELD_NAME}:{value}".encode("utf-8", "replace")
        if not results.claims_authserv_id(field, authserv_id):
            continue
        try:
            parsed = results.parse(value)
        except AuthResultsError:
            return None
        return from_results(parsed.results)
    return None


def from_results(found: Sequence[MethodResult]) -> Authentication:
    """The results we keep of one field's ``method=result`` list."""
    by_method: dict[str, list[MethodResult]] = {}
    for item in found:
        method, result = item.method.lower(), item.result.lower()
        if result in RESULTS.get(method, ()):
            by_method.setdefault(method, []).append(item)
    spf = by_method.get("spf", [])
    # MAIL FROM is the identity DMARC uses; HELO only speaks for bounces (RFC 7208 §2.4).
    spf.sort(key=lambda item: _property(item, "smtp", "mailfrom") is None)
    return Authentication(
        spf=_spf(spf[0]) if spf else None,
        dkim=tuple(_dkim(item) for item in itertools.islice(by_method.get("dkim", []), MAX_SIGNATURES)),
        dmarc=_dmarc(by_method["dmarc"][0]) if "dmarc" in by_method else None,
        arc=Check(by_method["arc"][0].result.lower()) if "arc" in by_method else None,
    )


def _property(item: MethodResult, ptype: str, name: str) -> str | None:
    for prop in item.properties:
        if prop.ptype.lower() == ptype and prop.name.lower() == name:
            return prop.value
    return None


def _name(value: str | None) -> str | None:
    """A domain or selector as shown: lower case, printable, bounded; None if it is not one."""
    text = (value or "").strip().lower()
    if not text or len(text) > MAX_VALUE or not text.isprintable():
        return None
    return text


def _domain_of(address: str | None) -> str | None:
    # smtp.mailfrom and header.i may be a whole address or "@domain" (RFC 8601 §2.7.1, §2.7.2).
    return _name(address.rpartition("@")[2]) if address is not None else None


def _spf(item: MethodResult) -> Check:
    mailfrom = _property(item, "smtp", "mailfrom")
    domain = _domain_of(mailfrom) if mailfrom is not None else _name(_property(item, "smtp", "helo"))
    return Check(item.result.lower(), domain)


def _dkim(item: MethodResult) -> Check:
    domain = _name(_property(item, "header", "d")) or _domain_of(_property(item, "header", "i"))
    return Check(item.result.lower(), domain, _name(_property(item, "header", "s")))


def _dmarc(item: MethodResult) -> Check:
    # The policy is not a property (RFC 7489 §11.2 defines header.from only); our field and
    # OpenDMARC's carry it in the comment: "dmarc=fail (p=reject dis=quarantine)".
    match = _POLICY.search(item.comment or "")
    policy = match.group(1).lower() if match is not None else None
    return Check(
        item.result.lower(),
        _domain_of(_property(item, "header", "from")),
        policy=policy if policy in POLICIES else None,
    )
