"""The outbound TLS policy: what DANE (RFC 7672) and MTA-STS (RFC 8461) require of each MX host,
and whether a connection met it.

Untrusted input seen here: TLSA records (:mod:`postoffice.delivery.dane`), MTA-STS policies
(:mod:`postoffice.delivery.mtasts`) and the certificate an MX host presents.

For each destination domain, then each MX host, in this order:

1. ``[delivery.tls_policy]`` names the domain: the operator's choice stands (none of this runs);
2. DANE: the resolver validates (``dns_validates``) and the host's TLSA RRset is authenticated:
   STARTTLS is mandatory, the certificate must match a usable record; all records unusable:
   STARTTLS is still mandatory (§2.2). DANE takes precedence over MTA-STS (RFC 8461 §2);
3. MTA-STS ``enforce``: a host the policy does not list is not used (§4.1), a listed one only
   over STARTTLS with a certificate valid for its name (§4.2, ``[delivery] tls_ca_file``);
   ``testing``: delivered as usual, what enforce would refuse is logged (§5);
4. otherwise opportunistic TLS, as before.

A host that cannot meet its requirement fails with ``451 4.7.5`` and the next MX is tried; when
none can, the message waits for the next retry. :meth:`DomainSecurity.outcome` is the one place
an outbound TLS policy result is known (successes and failures), and logs it in one line.

TLS reporting (RFC 8460, :mod:`postoffice.delivery.tlsrpt`): each host's :class:`Requirement`
carries the policy a report names (``sts`` with the policy's lines and MX patterns, ``tlsa``
with the TLSA records, else ``no-policy-found``), and the remote agent counts each session's
TLS under it. The failures that come before a session or instead of one are counted here, by
:meth:`DomainSecurity.outcome`: an MX host an MTA-STS policy does not list
(``validation-failure``), a TLSA lookup that failed (``dnssec-invalid``), a certificate no
TLSA record matches (``tlsa-invalid``), a policy that could not be fetched
(``sts-policy-fetch-error``, ``sts-policy-invalid``, ``sts-webpki-invalid``).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import dataclass

from postoffice.client.connection import SmtpClient
from postoffice.delivery.dane import DanePolicy, Tlsa, check_certificate, dane_policy, tlsa_name
from postoffice.delivery.dns import Endpoint, MxResolver, RouteError
from postoffice.delivery.mtasts import NO_STS, StsLookup, StsPolicies
from postoffice.delivery.tlsrpt import NO_POLICY, TlsPolicy, TlsReportStore
from postoffice.mailauth.mta_sts import StsPolicy
from postoffice.smtp import replies
from postoffice.smtp.replies import Reply

log = logging.getLogger("postoffice.delivery")

AD_FLAG = 0x0020  # RFC 4035 §3.2.3 (dns.flags.AD)


@dataclass(frozen=True, slots=True)
class Requirement:
    """What one MX host must offer: ``tls`` is the remote agent's policy name (``may``,
    ``require``, ``verify``); ``refusal`` set means the host is not to be used at all."""

    source: str  # "dane", "mta-sts", "mta-sts-testing" or "opportunistic"
    tls: str
    dane: DanePolicy | None = None
    refusal: Reply | None = None
    # The policy a TLS report names (RFC 8460 §4.4); ``reported``: this host's result is
    # already counted (an MX host a testing policy does not list), the session is not.
    report: TlsPolicy = NO_POLICY
    reported: bool = False


OPPORTUNISTIC = Requirement("opportunistic", "may")


class TransportSecurity:
    """Builds each destination's :class:`DomainSecurity` (one per delivery attempt)."""

    def __init__(
        self,
        resolver: MxResolver,
        sts: StsPolicies | None,
        *,
        dane: bool,
        reports: TlsReportStore | None = None,
    ) -> None:
        """``reports``: where the policy failures are counted for TLS reporting (RFC 8460)."""
        self._resolver = resolver
        self._sts = sts
        self._dane = dane
        self.reports = reports

    async def for_domain(self, domain: str) -> DomainSecurity:
        found = await self._sts.lookup(domain) if self._sts is not None else NO_STS
        security = DomainSecurity(domain, found, self._resolver if self._dane else None, self.reports)
        if found.failure:
            await security.outcome(None, "mta-sts", found.failure, found.reason)
        return security


def sts_report(domain_sts: StsLookup) -> TlsPolicy:
    """RFC 8460 §4.4: an ``sts`` policy's strings are its lines, its mx-host the patterns."""
    policy = domain_sts.policy
    if policy is None:
        return TlsPolicy("sts")
    lines = tuple(line for line in domain_sts.text.replace("\r\n", "\n").split("\n") if line)
    return TlsPolicy("sts", lines, policy.mx)


def tlsa_report(records: list[Tlsa]) -> TlsPolicy:
    """RFC 8460 §4.4: a ``tlsa`` policy's strings are its records in presentation form."""
    return TlsPolicy(
        "tlsa", tuple(f"{r.usage} {r.selector} {r.matching} {r.data.hex().upper()}" for r in records)
    )


class DomainSecurity:
    """The TLS requirements for one destination domain's MX hosts."""

    def __init__(
        self,
        domain: str,
        sts: StsLookup,
        dane_resolver: MxResolver | None,
        reports: TlsReportStore | None = None,
    ) -> None:
        self.domain = domain
        # A policy of mode "none" asks nothing (RFC 8461 §5).
        self.sts: StsPolicy | None = sts.policy if sts.policy and sts.policy.mode != "none" else None
        self._sts_report = sts_report(sts)
        self._dane_resolver = dane_resolver
        self._reports = reports

    async def for_host(self, endpoint: Endpoint) -> Requirement:
        if self._dane_resolver is not None:
            found = await self._dane(endpoint)
            if found is not None:
                return found
        sts = self.sts
        if sts is None:
            return OPPORTUNISTIC
        report = self._sts_report
        if sts.mode == "testing":
            listed = sts.allows(endpoint.host)
            if not listed:
                await self.outcome(
                    endpoint, "mta-sts-testing", "validation-failure", "MX not listed; delivered (testing)"
                )
            return Requirement("mta-sts-testing", "may", report=report, reported=not listed)
        if not sts.allows(endpoint.host):
            # RFC 8460 §4.3 has no type of its own for an MX host the policy does not list:
            # "validation-failure", as other senders report it.
            refusal = replies.policy_mx_refused(endpoint.host, self.domain)
            await self.outcome(endpoint, "mta-sts", "validation-failure", str(refusal))
            return Requirement("mta-sts", "verify", refusal=refusal, report=report)
        return Requirement("mta-sts", "verify", report=report)

    async def _dane(self, endpoint: Endpoint) -> Requirement | None:
        """DANE's requirement for the host, or None when its TLSA records are absent or not
        authenticated (then DANE does not apply, §2.2)."""
        assert self._dane_resolver is not None
        name = tlsa_name(endpoint.host, endpoint.port)
        try:
            answer = await self._dane_resolver.lookup(name, "TLSA")
        except RouteError as exc:
            # §2.2: a failed TLSA lookup (a validating resolver's SERVFAIL for bogus data)
            # makes the host unusable, never a reason to deliver without DANE.
            refusal = replies.policy_tls_failed(endpoint.host, "DANE", f"TLSA lookup failed ({exc.reply})")
            await self.outcome(endpoint, "dane", "dnssec-invalid", str(refusal), TlsPolicy("tlsa"))
            return Requirement("dane", "require", refusal=refusal, report=TlsPolicy("tlsa"))
        if answer is None or not answer.response.flags & AD_FLAG:
            return None
        records = [Tlsa(rr.usage, rr.selector, rr.mtype, bytes(rr.cert)) for rr in answer]
        policy = dane_policy(name, endpoint.host, records)
        if policy.unusable:
            log.warning(
                "host=%s status=dane-unusable-records name=%s unusable=%d usable=%d",
                endpoint.host,
                name,
                policy.unusable,
                len(policy.records),
            )
        return Requirement("dane", "require", dane=policy, report=tlsa_report(records))

    async def check(self, endpoint: Endpoint, requirement: Requirement, client: SmtpClient) -> Reply | None:
        """After STARTTLS: None when the connection meets ``requirement``, else the failure."""
        if requirement.dane is not None:
            problem = check_certificate(requirement.dane, client.peer_certificate())
            if problem is not None:
                failure = replies.policy_tls_failed(endpoint.host, "DANE", problem)
                # RFC 8460 §4.3.2.1: no record of the RRset matched.
                await self.outcome(endpoint, "dane", "tlsa-invalid", str(failure), requirement.report)
                return failure
        if not client.tls_active:  # only "may" gets here without TLS
            if requirement.source == "mta-sts-testing":
                self._log(endpoint, requirement.source, "starttls-not-supported", "delivered (testing)")
            return None
        self._log(endpoint, requirement.source, "success", "")
        return None

    def failed(self, endpoint: Endpoint, requirement: Requirement, reply: Reply) -> Reply:
        """A connection under ``requirement`` failed with ``reply``: the failure to record, a
        policy's 4.7.5 when TLS was what failed."""
        if requirement.source in ("dane", "mta-sts") and reply.enhanced in ("4.7.4", "4.7.5"):
            policy = "DANE" if requirement.source == "dane" else f"MTA-STS policy of {self.domain}"
            kind = "starttls-not-supported" if reply.enhanced == "4.7.4" else "certificate-not-trusted"
            reply = replies.policy_tls_failed(endpoint.host, policy, reply.text)
            # The session's TLS failure is counted by the remote agent (with finer types).
            self._log(endpoint, requirement.source, kind, str(reply))
        return reply

    async def outcome(
        self,
        endpoint: Endpoint | None,
        source: str,
        result: str,
        detail: str,
        report: TlsPolicy | None = None,
    ) -> None:
        """A policy failure before a session or instead of one, as an RFC 8460 §4.3 result type
        ("validation-failure", "dnssec-invalid", "tlsa-invalid", "sts-policy-fetch-error",
        ...): logged, and counted for TLS reporting under ``report`` (default: the domain's
        MTA-STS policy). ``endpoint`` None: the domain's policy itself failed."""
        self._log(endpoint, source, result, detail)
        if self._reports is None:
            return
        policy = self._sts_report if report is None else report
        host = endpoint.host if endpoint is not None else ""
        address = endpoint.address if endpoint is not None else ""
        try:
            await asyncio.to_thread(
                self._reports.record_failure, self.domain, policy, result, "", host, address
            )
        except (sqlite3.Error, OSError, ValueError) as exc:
            log.warning("event=tlsrpt-not-recorded domain=%s reason=%r", self.domain, str(exc))

    def _log(self, endpoint: Endpoint | None, source: str, result: str, detail: str) -> None:
        """One line for the result of the TLS policy for one MX host (or the domain)."""
        if result == "success" and source == "opportunistic":
            return
        level = logging.INFO if result == "success" or source == "mta-sts-testing" else logging.WARNING
        log.log(
            level,
            "domain=%s host=%s policy=%s tls_result=%s detail=%r",
            self.domain,
            endpoint.host if endpoint is not None else "-",
            source,
            result,
            detail,
        )
