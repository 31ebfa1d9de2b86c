"""Verifying mail from outside: SPF, DKIM, DMARC and ARC, an Authentication-Results field, and
what a DMARC policy asks for.

Untrusted input seen here: the envelope and the message's header section (the From fields,
Authentication-Results fields a sender wrote); the verifiers in :mod:`postoffice.mailauth`
read the rest.

At MAIL the check starts SPF (RFC 7208: the MAIL FROM identity, HELO's for a null sender)
beside the conversation (``Context.start``: the transaction cancels it if it ends without a
message) and defers, so the lookups run while the client sends its recipients and content. At the end of the
message it renames every Authentication-Results field that claims our authserv-id (RFC 8601 §5:
a forger's cannot pass) to ``X-Removed-Auth-Results`` in place — a name of the same 22 octets,
so the stored message is not copied — then verifies DKIM and ARC on the stored content, DMARC
on its From field, and puts a Received-SPF field (RFC 7208 §9.1) and above it one
Authentication-Results field of ours on top. With ``enforce``,
a DMARC failure under p=reject is refused with 550 5.7.1 (before any 250, RFC 7489 §10.3) and
one under p=quarantine goes to the recipient's Junk folder.

Not checked: authenticated sessions and those on the local socket (``postoffice sendmail``;
the listeners for submission get no such check at all), clients in ``skip_networks``, and
senders whose MAIL FROM or From domain is in ``skip_domains``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from postoffice import metrics
from postoffice.config import AuthenticationSettings
from postoffice.mailauth import dmarc, results
from postoffice.mailauth.inbound import Verification, Verifier
from postoffice.mailauth.spf_result import SpfResult
from postoffice.smtp import replies
from postoffice.smtpd.context import Background, Context, Message
from postoffice.smtpd.stages import Stage
from postoffice.smtpd.verdict import ACCEPT, DEFER, Verdict

log = logging.getLogger("postoffice.smtp")

REMOVED_NAME = b"X-Removed-Auth-Results"  # as long as "Authentication-Results"
QUARANTINE_FOLDER = "Junk"


class InboundAuthentication:
    """Mail stage (starts SPF and defers) and, deferred, the end of the message."""

    def __init__(self, verifier: Verifier, settings: AuthenticationSettings, hostname: str) -> None:
        self._verifier = verifier
        self._settings = settings
        self._hostname = hostname
        self._skip_domains = frozenset(domain.lower().rstrip(".") for domain in settings.skip_domains)

    async def check(self, ctx: Context) -> Verdict:
        if ctx.stage is Stage.MAIL:
            return self._start(ctx)
        lookup: Background[SpfResult] | None = ctx.transaction.notes.pop(self, None)
        if lookup is None or ctx.message is None:
            return ACCEPT
        return await self._finish(ctx, ctx.message, lookup)

    def _start(self, ctx: Context) -> Verdict:
        client = ctx.client
        if client.submits or self._settings.skips_network(client.address):
            return ACCEPT
        mail_from = ctx.transaction.mail_from
        if mail_from and self._skipped(mail_from.rpartition("@")[2]):
            return ACCEPT
        ctx.transaction.notes[self] = ctx.start(self._verifier.spf(client.address, mail_from, client.helo))
        return DEFER

    def _skipped(self, domain: str) -> bool:
        return bool(self._skip_domains) and domain.lower().rstrip(".") in self._skip_domains

    async def _finish(self, ctx: Context, message: Message, lookup: Background[SpfResult]) -> Verdict:
        header = message.header_section()
        from_fields: list[bytes] = []
        arc_sets = False
        for offset, field in _fields(header):
            name = results.field_name(field).lower()
            if name == b"arc-seal":
                arc_sets = True
            elif name == b"from":
                from_fields.append(field.partition(b":")[2])
            elif len(name) == len(REMOVED_NAME) and results.claims_authserv_id(field, self._hostname):
                message.overwrite(offset, REMOVED_NAME)
                log.info(
                    "session=%s event=forged-auth-results renamed=%s", ctx.client.id, REMOVED_NAME.decode()
                )
        if self._skip_domains and any(self._skipped(domain) for domain in _authors(from_fields)):
            lookup.cancel()
            return ACCEPT
        found = await self._verifier.verify(
            lookup, message.open, from_fields, _size(message), arc_sets=arc_sets
        )
        # RFC 7208 §9.1 asks for Received-SPF above our Received: field; RFC 8601 §5 for
        # Authentication-Results at the top. Later fields go above earlier ones.
        message.add_header(found.spf.received_spf_field(self._hostname))
        message.add_header(results.header_field(self._hostname, found.methods()))
        _count(found)
        return self._enforce(ctx, found)

    def _enforce(self, ctx: Context, found: Verification) -> Verdict:
        report = found.dmarc
        # Every message's results are in its Authentication-Results field and the metrics; the
        # log says so only when they change what becomes of the message.
        acting = self._settings.enforce and report.result == "fail" and report.disposition != "none"
        (log.info if acting else log.debug)(
            "session=%s event=authentication spf=%s dkim=%s dmarc=%s arc=%s policy=%s",
            ctx.client.id,
            found.spf.result,
            ",".join(item.result for item in found.dkim) or "none",
            report.result,
            found.arc.result,
            report.disposition,
        )
        # Only a DMARC "fail" is acted on: a permerror or temperror (no usable From field, DNS
        # trouble) is recorded, never a reason to refuse or hide mail (RFC 7489 §6.6.3).
        if not self._settings.enforce or report.result != "fail":
            return ACCEPT
        if report.disposition == "reject":
            return replies.dmarc_reject(report.policy_domain or report.from_domain)
        if report.disposition == "quarantine":
            ctx.transaction.folder = QUARANTINE_FOLDER
        return ACCEPT


def _fields(header: bytes) -> Iterator[tuple[int, bytes]]:
    """The header section's fields with their offsets (a line starting with SP or HTAB
    continues the field before it, RFC 5322 §2.2.3)."""
    start, offset, field = 0, 0, b""
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and field:
            field += line
        else:
            if field:
                yield start, field
            start, field = offset, line
        offset += len(line)
    if field:
        yield start, field


def _authors(from_fields: list[bytes]) -> list[str]:
    try:
        return dmarc.author_domains(from_fields)
    except dmarc.AuthorError:
        return []


def _size(message: Message) -> int:
    with message.open() as content:
        start = content.tell()  # a spool file's reader starts past the envelope line
        return content.seek(0, 2) - start


def _count(found: Verification) -> None:
    counters = metrics.current()
    counters.authentication_result("spf", found.spf.result)
    for item in found.dkim or ():
        counters.authentication_result("dkim", item.result)
    if not found.dkim:
        counters.authentication_result("dkim", "none")
    counters.authentication_result("dmarc", found.dmarc.result)
    counters.authentication_result("arc", found.arc.result)
