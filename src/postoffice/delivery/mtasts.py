"""Other domains' MTA-STS policies (RFC 8461): discovered, fetched, cached, for outbound delivery.

Untrusted input seen here: the ``_mta-sts`` TXT records of recipient domains, policy files from
their web servers (:mod:`postoffice.delivery.sts_fetch`), and the cache files in the data
directory (read back through the same strict parser, so a damaged one is only a miss).

The order of §3.3 and §5.1: a policy is fetched when the TXT record's id differs from the
cached policy's, or none is cached; a cached policy is used until its ``max_age`` runs out,
even when the TXT record is gone or the policy host is down (that is what protects against an
attacker who blocks them). A domain with no policy, or one that cannot be fetched and is not
cached, is delivered to as any other: MTA-STS only ever adds requirements. The cache is one
JSON file per domain under ``<data-dir>/mta-sts/``, written durably, so a restart keeps it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from postoffice import durable
from postoffice.delivery.dns import MxResolver, RouteError
from postoffice.delivery.sts_fetch import FETCH_TIMEOUT, StsFetchError, StsWebPkiError, fetch_policy
from postoffice.mailauth.mta_sts import StsPolicy, StsRecord, StsSyntaxError, parse_policy, parse_record

log = logging.getLogger("postoffice.delivery")

_CACHE_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,252}")
# A policy that could not be fetched is not asked for again (for the same id) for this long:
# every message to the domain would otherwise cost a fetch and a log line (Postfix's
# minimal_backoff_time, the queue's first retry).
FAILED_FETCH_BACKOFF = 300.0


@dataclass(frozen=True, slots=True)
class CachedPolicy:
    id: str
    fetched: float  # epoch seconds
    text: str
    policy: StsPolicy

    def fresh(self, now: float) -> bool:
        return now < self.fetched + self.policy.max_age


@dataclass(frozen=True, slots=True)
class StsLookup:
    """What :meth:`StsPolicies.lookup` found: the policy in force (None: none) and its text;
    ``failure``, when a fetch was tried and failed, is its RFC 8460 §4.3.2.2 result type
    (``sts-policy-fetch-error``, ``sts-policy-invalid``, ``sts-webpki-invalid``) and ``reason``
    its one line, for TLS reporting."""

    policy: StsPolicy | None
    text: str = ""
    failure: str = ""
    reason: str = ""


NO_STS = StsLookup(None)


class StsPolicies:
    """The MTA-STS policy in force for each destination domain."""

    def __init__(
        self,
        resolver: MxResolver,
        cache_dir: Path | None,
        context: ssl.SSLContext,
        *,
        port: int = 443,
        timeout: float = FETCH_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._resolver = resolver
        self._cache_dir = cache_dir
        self._context = context
        self._port = port
        self._timeout = timeout
        self._clock = clock
        self._memory: dict[str, CachedPolicy] = {}
        self._failed: dict[str, tuple[str, float]] = {}  # domain -> (record id, until)

    async def policy_for(self, domain: str) -> StsPolicy | None:
        """The policy to apply to ``domain`` now (mode ``none`` included), or None."""
        return (await self.lookup(domain)).policy

    async def lookup(self, domain: str) -> StsLookup:
        """:meth:`policy_for` with the policy's text and a failed fetch's result type."""
        try:  # the A-label form (RFC 5890): the names looked up and the Host header are ASCII
            domain = domain.lower().removesuffix(".").encode("idna").decode("ascii")
        except UnicodeError:
            return NO_STS
        now = self._clock()
        cached = await self._cached(domain)
        usable = cached if cached is not None and cached.fresh(now) else None
        kept = StsLookup(usable.policy, usable.text) if usable is not None else NO_STS
        try:
            record = await self._record(domain)
        except RouteError as exc:
            log.info("domain=%s status=mta-sts-lookup-failed reason=%r", domain, str(exc.reply))
            return kept
        if record is None or (usable is not None and usable.id == record.id):
            return kept
        failed_id, until = self._failed.get(domain, ("", 0.0))
        if failed_id == record.id and now < until:
            return kept
        try:
            fetched = await self._fetch(domain, record.id, now)
        except (RouteError, StsFetchError, StsSyntaxError) as exc:
            self._failed[domain] = (record.id, now + FAILED_FETCH_BACKOFF)
            keeps = "cached" if usable is not None else "none"
            log.warning("domain=%s status=mta-sts-unusable policy=%s reason=%r", domain, keeps, str(exc))
            return StsLookup(kept.policy, kept.text, _failure_type(exc), str(exc))
        self._failed.pop(domain, None)
        return StsLookup(fetched.policy, fetched.text)

    async def _fetch(self, domain: str, record_id: str, now: float) -> CachedPolicy:
        host = f"mta-sts.{domain}"
        addresses = await self._resolver.addresses(host)
        text = await fetch_policy(host, addresses, self._port, self._context, timeout=self._timeout)
        fetched = CachedPolicy(record_id, now, text, parse_policy(text))
        self._memory[domain] = fetched
        await asyncio.to_thread(self._store, domain, fetched)
        log.info("domain=%s status=mta-sts-fetched id=%s mode=%s", domain, record_id, fetched.policy.mode)
        return fetched

    async def _record(self, domain: str) -> StsRecord | None:
        """§3.1: of the TXT records at ``_mta-sts``, those starting ``v=STSv1``; exactly one of
        them, valid, or there is no policy to fetch."""
        answer = await self._resolver.lookup(f"_mta-sts.{domain}", "TXT")
        if answer is None:
            return None
        texts = [b"".join(record.strings).decode("latin-1") for record in answer]
        candidates = [text for text in texts if text.startswith("v=STSv1")]
        if len(candidates) != 1:
            return None
        try:
            return parse_record(candidates[0])
        except StsSyntaxError as exc:
            log.info("domain=%s status=mta-sts-bad-record reason=%r", domain, str(exc))
            return None

    # --- the cache ----------------------------------------------------------------------------

    def _path(self, domain: str) -> Path | None:
        if self._cache_dir is None:
            return None
        return self._cache_dir / f"{domain}.json" if _CACHE_NAME.fullmatch(domain) else None

    async def _cached(self, domain: str) -> CachedPolicy | None:
        if domain in self._memory:
            return self._memory[domain]
        path = self._path(domain)
        if path is None:
            return None
        cached = await asyncio.to_thread(_load, path)
        if cached is not None:
            self._memory[domain] = cached
        return cached

    def _store(self, domain: str, cached: CachedPolicy) -> None:
        path = self._path(domain)
        if path is None:
            return
        data = {"id": cached.id, "fetched": cached.fetched, "policy": cached.text}
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            durable.replace_file(path, json.dumps(data).encode("utf-8"))
        except OSError as exc:
            log.warning("domain=%s status=mta-sts-cache-unwritable error=%r", domain, exc.strerror)


def _failure_type(exc: Exception) -> str:
    """RFC 8460 §4.3.2.2: the result type of a policy that could not be had."""
    if isinstance(exc, StsSyntaxError):
        return "sts-policy-invalid"
    if isinstance(exc, StsWebPkiError):
        return "sts-webpki-invalid"
    return "sts-policy-fetch-error"


def _load(path: Path) -> CachedPolicy | None:
    """A cached policy, or None when there is none or it cannot be read back whole."""
    try:
        data = json.loads(path.read_bytes())
        text = str(data["policy"])
        return CachedPolicy(str(data["id"]), float(data["fetched"]), text, parse_policy(text))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("path=%s status=mta-sts-cache-unreadable error=%r", path, str(exc)[:200])
        return None
