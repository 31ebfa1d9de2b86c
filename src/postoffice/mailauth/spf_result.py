"""The result of an SPF check and the header fields that report it (RFC 7208 §2.6, §9; RFC 8601).

Untrusted input seen here: the sender address and HELO name (from the SMTP client) and problem
texts quoting SPF records (from DNS) all end up in header field text, so every value is quoted
or escaped here and control characters never pass (no header injection through a CR or LF).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

SpfResultCode = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]
Identity = Literal["mailfrom", "helo"]

# RFC 5322 §3.2.3: atext, and dot-atom = 1*atext *("." 1*atext).
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class SpfResult:
    """What check_host() found for one identity (RFC 7208 §2.6)."""

    result: SpfResultCode
    domain: str  # whose policy was asked: the MAIL FROM domain, or the HELO name
    sender: str  # <sender> as checked: the MAIL FROM address, or postmaster@<HELO name>
    ip: str  # the client's address
    identity: Identity = "mailfrom"
    helo: str = ""
    mechanism: str | None = None  # the term that decided ("ip4:192.0.2.0/24", "-all"); None for the default
    explanation: str | None = None  # fail only: the text for the rejection (exp= or the default, §6.2)
    problem: str | None = None  # none / temperror / permerror: what went wrong, one line

    @property
    def comment(self) -> str:
        """One line for people, saying what the result means for this sender and address."""
        sender, ip, problem = self.sender, self.ip, self.problem or "unknown"
        return {
            "pass": f"domain of {sender} designates {ip} as permitted sender",
            "fail": f"domain of {sender} does not designate {ip} as permitted sender",
            "softfail": f"domain of {sender} discourages use of {ip} as sender",
            "neutral": f"{ip} is neither permitted nor denied by domain of {sender}",
            "none": f"no SPF policy for {sender}: {problem}",
            "temperror": f"temporary error checking {sender}: {problem}",
            "permerror": f"SPF policy error for {sender}: {problem}",
        }[self.result]

    def authentication_results(self) -> str:
        """This result as an Authentication-Results resinfo (RFC 8601 §2.7.2, RFC 7208 §9.2):
        ``spf=pass (comment) smtp.mailfrom=user@example.com``, or ``smtp.helo=`` for HELO."""
        identity = f"smtp.mailfrom={_pvalue(self.sender)}"
        if self.identity == "helo":
            identity = f"smtp.helo={_pvalue(self.domain)}"
        return f"spf={self.result} ({_comment_text(self.comment)}) {identity}"

    def received_spf(self, receiver: str) -> str:
        """The value of a Received-SPF header field (RFC 7208 §9.1), added by ``receiver``."""
        result, pairs = self._received_spf(receiver)
        return f"{result} {'; '.join(pairs)}"

    def received_spf_field(self, receiver: str) -> bytes:
        """The whole Received-SPF field, CRLF-terminated and folded before each key-value pair
        (RFC 5322 §2.2.3), so no line of it grows long with the client's addresses."""
        result, pairs = self._received_spf(receiver)
        folded = ";\r\n\t".join(pairs)
        return f"Received-SPF: {result}\r\n\t{folded}\r\n".encode()

    def _received_spf(self, receiver: str) -> tuple[str, list[str]]:
        """§9.1: the result with its comment, then the key-value pairs."""
        pairs = [
            ("client-ip", self.ip),
            ("envelope-from", self.sender),
            ("helo", self.helo),
            ("receiver", receiver),
            ("identity", self.identity),
        ]
        if self.mechanism is not None:
            pairs.append(("mechanism", self.mechanism))
        if self.problem is not None and self.result in ("temperror", "permerror", "none"):
            pairs.append(("problem", self.problem))
        head = f"{self.result} ({_comment_text(f'{receiver}: {self.comment}')})"
        return head, [f"{key}={_value(value)}" for key, value in pairs]


def _clean(text: str) -> str:
    """No control character (CR, LF, NUL, ...) reaches a header field."""
    return _CONTROL.sub("?", text)


def _comment_text(text: str) -> str:
    """Text safe inside a comment: parentheses and backslashes quoted (RFC 5322 §3.2.2)."""
    return re.sub(r"([()\\])", r"\\\1", _clean(text))


def _value(text: str) -> str:
    """A dot-atom when it is one, else a quoted-string (RFC 5322 §3.2.4)."""
    text = _clean(text)
    if _DOT_ATOM.fullmatch(text):
        return text
    return '"' + re.sub(r'(["\\])', r"\\\1", text) + '"'


def _pvalue(address: str) -> str:
    """An RFC 8601 pvalue: ``local-part@domain`` as it is when both parts are atoms, else quoted."""
    local, at, domain = _clean(address).rpartition("@")
    if (not at or _DOT_ATOM.fullmatch(local)) and _DOT_ATOM.fullmatch(domain):
        return f"{local}{at}{domain}"
    return _value(address)
