"""Verifying one incoming message: SPF, DKIM, ARC and DMARC together, for a receiving server.

Untrusted input seen here: the client's address, HELO name and MAIL FROM (checked by the SMTP
grammar), and the message content, read through the callables the caller hands in; every
lookup its domains cause goes to DNS through our resolver, with its timeout.

The SMTP side starts :meth:`Verifier.spf` beside the conversation when MAIL FROM is accepted
(``Context.start``), so the SPF lookups run while the client sends its recipients and content,
and calls :meth:`Verifier.verify` once the whole message is in. Nothing here raises for hostile input or DNS trouble: a lookup that
fails is a ``temperror`` (RFC 7208 §2.6.6, RFC 6376 §6.1.2, RFC 7489 §6.6.3), recorded in the
results and never a reason to refuse the message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import BinaryIO

import dns.asyncresolver

from postoffice.mailauth import arc, dkim_verify, dmarc, results
from postoffice.mailauth.dkim_dns import TxtResolver
from postoffice.mailauth.results import MethodResult
from postoffice.mailauth.spf import SpfOptions, check_mail_from
from postoffice.mailauth.spf_result import SpfResult
from postoffice.mailauth.verdicts import DkimVerdict, SpfVerdict

log = logging.getLogger("postoffice.mailauth")

# ARC verification (dkimpy) needs the whole message in memory: larger messages get arc=none
# with a comment saying why rather than tens of megabytes per session.
ARC_SIZE_LIMIT = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Verification:
    """Every result for one message, and the Authentication-Results entries they make."""

    spf: SpfResult
    dkim: tuple[dkim_verify.DkimResult, ...]
    arc: arc.ArcResult
    dmarc: dmarc.DmarcResult

    def methods(self) -> list[MethodResult]:
        """spf, then one dkim per signature (dkim=none without any), dmarc, arc (RFC 8601)."""
        spf = self.spf
        found = [replace(results.spf_result(spf_verdict(spf)), comment=spf.comment)]
        for item in self.dkim:
            entry = results.dkim_result(dkim_verdict(item))
            found.append(entry if item.result == "pass" else replace(entry, comment=item.reason))
        if not self.dkim:
            found.append(MethodResult("dkim", "none", comment="no signatures"))
        report = self.dmarc
        found.append(
            results.dmarc_result(report.result, report.from_domain, report.policy, report.disposition)
        )
        chain = self.arc
        entry = results.arc_result(chain.result, chain.instances, chain.oldest_pass)
        found.append(
            replace(entry, comment=chain.reason[:100]) if chain.result != "pass" and chain.reason else entry
        )
        return found


def spf_verdict(result: SpfResult) -> SpfVerdict:
    return SpfVerdict(result.result, result.domain, result.identity)


def dkim_verdict(result: dkim_verify.DkimResult) -> DkimVerdict:
    return DkimVerdict(result.result, result.domain, result.selector, result.b_prefix)


class Verifier:
    """One per server: the resolvers and options every message's checks share."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, txt: TxtResolver, *, hostname: str) -> None:
        self._resolver = resolver
        self._txt = txt
        self._options = SpfOptions(receiver=hostname, time_limit=max(resolver.lifetime * 4, 1.0))

    async def spf(self, ip: str, mail_from: str, helo: str) -> SpfResult:
        """SPF for the MAIL FROM identity (the HELO identity for a null sender, RFC 7208 §2.4).
        Never raises: the caller starts it at MAIL beside the conversation and awaits it when
        the message is in (:meth:`verify`)."""
        try:
            return await check_mail_from(ip, mail_from, helo, resolver=self._resolver, options=self._options)
        except Exception as exc:  # SPF is never a reason to lose the message
            log.warning("event=spf-error error=%r", f"{type(exc).__name__}: {exc}")
            domain = mail_from.rpartition("@")[2] if mail_from else helo
            return SpfResult(
                "temperror", domain, mail_from or f"postmaster@{helo}", ip, problem=type(exc).__name__
            )

    async def verify(
        self,
        spf: Awaitable[SpfResult],
        open_message: Callable[[], BinaryIO],
        from_fields: Sequence[bytes],
        size: int,
        *,
        arc_sets: bool = True,
    ) -> Verification:
        """DKIM and ARC on the stored message, then DMARC from its From fields (RFC 7489 §6.6).
        ``arc_sets``: False when the caller saw no ARC-Seal field (arc=none without reading the
        message again)."""
        spf_result = await spf
        with open_message() as content:
            signatures = await self._dkim(content)
        chain = (
            await self._arc(open_message, size) if arc_sets else arc.ArcResult("none", reason="no ARC sets")
        )
        verdicts = [dkim_verdict(item) for item in signatures]
        try:
            report = await dmarc.evaluate_message(
                from_fields, spf_verdict(spf_result), verdicts, self._resolver
            )
        except Exception as exc:
            log.warning("event=dmarc-error error=%r", f"{type(exc).__name__}: {exc}")
            report = dmarc.DmarcResult("temperror", "", reason=type(exc).__name__)
        return Verification(spf_result, tuple(signatures), chain, report)

    async def _dkim(self, content: BinaryIO) -> list[dkim_verify.DkimResult]:
        try:
            return await dkim_verify.verify(content, self._txt, timeout=self._resolver.lifetime)
        except Exception as exc:
            log.warning("event=dkim-error error=%r", f"{type(exc).__name__}: {exc}")
            return [dkim_verify.DkimResult("temperror", "", "", "", f"not checked: {type(exc).__name__}")]

    async def _arc(self, open_message: Callable[[], BinaryIO], size: int) -> arc.ArcResult:
        if size > ARC_SIZE_LIMIT:
            return arc.ArcResult("none", reason=f"not checked: message over {ARC_SIZE_LIMIT} octets")
        try:
            with open_message() as content:
                data = content.read(ARC_SIZE_LIMIT + 1)
            return await arc.verify(data, self._resolver)
        except Exception as exc:
            log.warning("event=arc-error error=%r", f"{type(exc).__name__}: {exc}")
            return arc.ArcResult("none", reason=f"not checked: {type(exc).__name__}")
