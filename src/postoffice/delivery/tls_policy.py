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
an outbound TLS result is known (successes and failures), and logs it in one line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from postoffice.client.connection import SmtpClient
from postoffice.delivery.dane import DanePolicy, Tlsa, check_certificate, dane_policy, tlsa_name
from postoffice.delivery.dns import Endpoint, MxResolver, RouteError
from postoffice.delivery.mtasts import StsPolicies
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


OPPORTUNISTIC = Requirement("opportunistic", "may")


class TransportSecurity:
    """Builds each destination's :class:`DomainSecurity` (one per delivery attempt)."""

    def __init__(self, resolver: MxResolver, sts: StsPolicies | None, *, dane: bool) -> None:
        self._resolver = resolver
        self._sts = sts
        self._dane = dane

    async def for_domain(self, domain: str) -> DomainSecurity:
        policy = await self._sts.policy_for(domain) if self._sts is not None else None
        if policy is not None and policy.mode == "none":
            policy = None
        return DomainSecurity(domain, policy, self._resolver if self._dane else None)


class DomainSecurity:
    """The TLS requirements for one destination domain's MX hosts."""

    def __init__(self, domain: str, sts: StsPolicy | None, dane_resolver: MxResolver | None) -> None:
        self.domain = domain
        self.sts = sts
        self._dane_resolver = dane_resolver

    async def for_host(self, endpoint: Endpoint) -> Requirement:
        if self._dane_resolver is not None:
            found = await self._dane(endpoint)
            if found is not None:
                return found
        sts = self.sts
        if sts is None:
            return OPPORTUNISTIC
        if sts.mode == "testing":
            if not sts.allows(endpoint.host):
                self.outcome(
                    endpoint, "mta-sts-testing", "validation-failure", "MX not listed; delivered (testing)"
                )
            return Requirement("mta-sts-testing", "may")
        if not sts.allows(endpoint.host):
            refusal = replies.policy_mx_refused(endpoint.host, self.domain)
            self.outcome(endpoint, "mta-sts", "validation-failure", str(refusal))
            return Requirement("mta-sts", "verify", refusal=refusal)
        return Requirement("mta-sts", "verify")

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
            self.outcome(endpoint, "dane", "dnssec-invalid", str(refusal))
            return Requirement("dane", "require", refusal=refusal)
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
        return Requirement("dane", "require", dane=policy)

    def check(self, endpoint: Endpoint, requirement: Requirement, client: SmtpClient) -> Reply | None:
        """After STARTTLS: None when the connection meets ``requirement``, else the failure."""
        if requirement.dane is not None:
            problem = check_certificate(requirement.dane, client.peer_certificate())
            if problem is not None:
                failure = replies.policy_tls_failed(endpoint.host, "DANE", problem)
                self.outcome(endpoint, "dane", "validation-failure", str(failure))
                return failure
        if not client.tls_active:  # only "may" gets here without TLS
            if requirement.source == "mta-sts-testing":
                self.outcome(endpoint, requirement.source, "starttls-not-supported", "delivered (testing)")
            return None
        self.outcome(endpoint, requirement.source, "success", "")
        return None

    def failed(self, endpoint: Endpoint, requirement: Requirement, reply: Reply) -> Reply:
        """A connection under ``requirement`` failed with ``reply``: the failure to record, a
        policy's 4.7.5 when TLS was what failed."""
        if requirement.source in ("dane", "mta-sts") and reply.enhanced in ("4.7.4", "4.7.5"):
            policy = "DANE" if requirement.source == "dane" else f"MTA-STS policy of {self.domain}"
            kind = "starttls-not-supported" if reply.enhanced == "4.7.4" else "certificate-not-trusted"
            reply = replies.policy_tls_failed(endpoint.host, policy, reply.text)
            self.outcome(endpoint, requirement.source, kind, str(reply))
        return reply

    def outcome(self, endpoint: Endpoint, source: str, result: str, detail: str) -> None:
        """The result of the TLS policy for one MX host: "success", or the failure as an RFC 8460
        §4.3 result type ("starttls-not-supported", "certificate-not-trusted",
        "validation-failure", "dnssec-invalid"). TLS reporting hooks in here."""
        if result == "success" and source == "opportunistic":
            return
        level = logging.INFO if result == "success" or source == "mta-sts-testing" else logging.WARNING
        log.log(
            level,
            "domain=%s host=%s policy=%s tls_result=%s detail=%r",
            self.domain,
            endpoint.host,
            source,
            result,
            detail,
        )
