"""Fetching another domain's MTA-STS policy file over HTTPS (RFC 8461 §3.3), with httpx.

Untrusted input seen here: everything the policy host sends (status, headers, body). The
request goes to an address our own resolver found for ``mta-sts.DOMAIN`` (so one DNS setting
covers it, as it covers MX lookups), with that name as SNI and as the name the certificate must
carry; the response is read only up to :data:`POLICY_SIZE_LIMIT` bytes and within a time
limit, and a redirect is never followed (§3.3: "senders MUST NOT follow HTTP redirects").
Every failure is a :class:`StsFetchError` with one line saying why.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING

from postoffice.mailauth.mta_sts import POLICY_SIZE_LIMIT

if TYPE_CHECKING:  # imported when the first policy is fetched: most servers never fetch one
    import httpx

WELL_KNOWN = "/.well-known/mta-sts.txt"
# §3.3 asks senders to impose a timeout; mox and Postfix's resolver use about a minute or
# less. The fetch holds up a delivery attempt, so it is short.
FETCH_TIMEOUT = 20.0
_OK = 200


class StsFetchError(Exception):
    """The policy could not be fetched; the message says why, in one line."""


class StsWebPkiError(StsFetchError):
    """The policy host's certificate was not accepted, or its TLS failed (RFC 8460
    ``sts-webpki-invalid``)."""


async def fetch_policy(
    host: str,
    addresses: Sequence[str],
    port: int,
    context: ssl.SSLContext,
    *,
    timeout: float = FETCH_TIMEOUT,
) -> str:
    """The policy text from ``https://HOST/.well-known/mta-sts.txt``, trying each address."""
    import httpx

    if not addresses:
        raise StsFetchError(f"{host} has no address")
    failure = StsFetchError(f"{host}: nothing tried")
    for address in addresses:
        try:
            async with asyncio.timeout(timeout):
                return await _fetch_from(host, address, port, context, timeout)
        except TimeoutError:
            failure = StsFetchError(f"{host}[{address}]: no complete answer within {timeout:g}s")
        except httpx.TransportError as exc:
            reason, webpki = _transport_reason(exc)
            kind = StsWebPkiError if webpki else StsFetchError
            failure = kind(f"{host}[{address}]: {reason}")
        except (httpx.HTTPError, httpx.InvalidURL, UnicodeError, ValueError) as exc:
            # Anything else the server's answer or the name can make httpx or h11 raise.
            raise StsFetchError(f"{host}[{address}]: {type(exc).__name__}: {str(exc)[:200]}") from None
        except StsFetchError as exc:
            raise StsFetchError(f"{host}[{address}]: {exc}") from None
    raise failure


async def _fetch_from(host: str, address: str, port: int, context: ssl.SSLContext, timeout: float) -> str:
    import httpx

    literal = f"[{address}]" if ":" in address else address
    authority = host if port == 443 else f"{host}:{port}"
    async with httpx.AsyncClient(
        verify=context, follow_redirects=False, trust_env=False, timeout=timeout
    ) as client:
        request = client.build_request(
            "GET",
            f"https://{literal}:{port}{WELL_KNOWN}",
            headers={"Host": authority, "Accept": "text/plain", "Accept-Encoding": "identity"},
            # The name for SNI and the certificate check (httpcore's server_hostname).
            extensions={"sni_hostname": host},
        )
        response = await client.send(request, stream=True)
        try:
            _check_response(response)
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > POLICY_SIZE_LIMIT:
                    raise StsFetchError(f"the policy is larger than {POLICY_SIZE_LIMIT} bytes")
        finally:
            await response.aclose()
    try:
        return body.decode("ascii")
    except UnicodeDecodeError:
        raise StsFetchError("the policy is not ASCII text") from None


def _check_response(response: httpx.Response) -> None:
    if 300 <= response.status_code < 400:
        raise StsFetchError(f"HTTP {response.status_code}: a redirect, not followed (RFC 8461 §3.3)")
    if response.status_code != _OK:
        raise StsFetchError(f"HTTP {response.status_code}")
    kind = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "text/plain":  # §3.2: the policy is served as text/plain
        raise StsFetchError(f"Content-Type {kind[:40]!r}, not text/plain")
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        raise StsFetchError("a compressed policy (not asked for)")


def _transport_reason(exc: httpx.TransportError) -> tuple[str, bool]:
    """One line: the TLS error under httpx's and httpcore's wrappers when there is one; and
    whether it was TLS (the certificate) that failed."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"certificate not accepted: {cause.verify_message or cause.reason}", True
        if isinstance(cause, ssl.SSLError):
            return f"TLS failed: {cause.reason or cause}", True
        cause = cause.__cause__ or cause.__context__
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200], False
