"""One certificate order, start to finish, with the certbot project's ``acme`` library.

Untrusted input seen here: the CA's HTTPS answers (JSON, certificates), parsed by ``acme`` and
``josepy``; what goes wrong becomes one line (:func:`describe`).

Blocking: it runs in a thread of its own (:mod:`postoffice.acme.renewal`), never on the event
loop. RFC 8555 §7.3 (the account: found again by its key, so nothing about it needs keeping),
§7.4 (the order), §8.3 (HTTP-01: the key authorization is published through
:class:`~postoffice.acme.challenges.Challenges` while the CA validates; or TLS-ALPN-01, RFC 8737:
a validation certificate through :class:`~postoffice.acme.alpn.TlsAlpnChallenges`), §7.4 again
(finalize with a CSR for the certificate's own key, then fetch the chain).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from typing import Any, cast

import requests
from acme import challenges, client, crypto_util, errors, messages
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from postoffice import __version__
from postoffice.acme.ca import CaSettings, OrderError, Responders
from postoffice.acme.files import AcmeFiles

log = logging.getLogger("postoffice.acme")

# How long the CA gets to validate the challenges and issue the certificate.
ORDER_TIMEOUT = 120.0
# Each HTTPS request to the CA.
NETWORK_TIMEOUT = 30


# The ``acme`` library dropped its TLS-ALPN-01 classes (certbot 2.x); the challenge object and
# its response (RFC 8737 §3: token, key authorization, an empty JSON answer) are the library's
# own key-authorization kind, registered by type name so orders parse it.
@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    typ = "tls-alpn-01"
    response_cls = TLSALPN01Response

    def validation(self, account_key: Any, **kwargs: Any) -> str:
        return self.key_authorization(account_key)


def obtain(ca: CaSettings, files: AcmeFiles, published: Responders) -> bytes:
    """A new certificate chain (PEM) for ``ca.domains``; OrderError says why not."""
    try:
        return _obtain(ca, files, published)
    except OrderError:
        raise
    except Exception as exc:  # the library's, requests', josepy's: all one line
        raise OrderError(describe(exc)) from None


def _obtain(ca: CaSettings, files: AcmeFiles, published: Responders) -> bytes:
    files.ensure_keys()
    account_key = JWKEC(key=files.read_key(files.account_key))
    # requests takes a CA bundle's path where a bool is annotated.
    verify = cast(bool, str(ca.ca_file)) if ca.ca_file is not None else True
    net = client.ClientNetwork(
        account_key,
        alg=ES256,
        verify_ssl=verify,
        user_agent=f"postoffice/{__version__}",
        timeout=NETWORK_TIMEOUT,
    )
    acme = client.ClientV2(client.ClientV2.get_directory(ca.directory, net), net)
    _account(acme, ca.email)
    order = acme.new_order(crypto_util.make_csr(files.key_pem(), list(ca.domains)))
    answered: list[tuple[str, str]] = []
    try:
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue  # validated recently, for this account (RFC 8555 §7.1.4)
            challenge = _pick(authz, _offered(ca, published))
            answered.append(_publish(challenge, authz.body.identifier.value, account_key, published))
            acme.answer_challenge(challenge, challenge.chall.response(account_key))
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
        order = acme.poll_and_finalize(order, deadline)
    finally:
        for kind, key in answered:
            if kind == TLSALPN01.typ and published.alpn is not None:
                published.alpn.withdraw(key)
            else:
                published.http.withdraw(key)
    if not order.fullchain_pem:
        raise OrderError("the CA finished the order without a certificate")
    return order.fullchain_pem.encode("ascii")


def _account(acme: client.ClientV2, email: str | None) -> None:
    """Register the account key, or find the account it already has (RFC 8555 §7.3.1)."""
    registration = messages.NewRegistration.from_data(email=email, terms_of_service_agreed=True)
    try:
        acme.new_account(registration)
    except errors.ConflictError as exc:
        acme.query_registration(messages.RegistrationResource(uri=exc.location, body=messages.Registration()))


def _offered(ca: CaSettings, published: Responders) -> tuple[str, ...]:
    """The challenge types we can answer, in the configured order."""
    return tuple(kind for kind in ca.challenges if kind != TLSALPN01.typ or published.alpn is not None)


def _pick(authz: messages.AuthorizationResource, kinds: Sequence[str]) -> messages.ChallengeBody:
    """The CA's challenge of the first type in ``kinds`` that it offers for this name."""
    offered = {challenge.chall.typ: challenge for challenge in authz.body.challenges}
    for kind in kinds:
        if kind in offered:
            return offered[kind]
    name = authz.body.identifier.value
    raise OrderError(f"the CA offers no {' or '.join(kinds)} challenge for {name}")


def _publish(
    challenge: messages.ChallengeBody, name: str, account_key: JWKEC, published: Responders
) -> tuple[str, str]:
    """Make the answer visible to the CA; what to withdraw afterwards (its type, and key)."""
    chall = cast(challenges.KeyAuthorizationChallenge, challenge.chall)
    key_authorization = chall.key_authorization(account_key)
    log.info("event=acme-challenge name=%s type=%s", name, chall.typ)
    if isinstance(chall, TLSALPN01) and published.alpn is not None:
        published.alpn.publish(name, key_authorization)
        return TLSALPN01.typ, name
    token = chall.encode("token")
    published.http.publish(token, key_authorization)
    return challenges.HTTP01.typ, token


def describe(exc: BaseException) -> str:
    """One line for what went wrong with an order."""
    if isinstance(exc, errors.ValidationError):
        return "validation failed: " + "; ".join(_failures(exc.failed_authzrs))
    if isinstance(exc, messages.Error):
        return (
            f"the CA refused: {exc.typ.removeprefix(messages.ERROR_PREFIX)}: {exc.detail or exc.title or ''}"
        )
    if isinstance(exc, errors.TimeoutError):
        return "the CA did not finish the order in time"
    if isinstance(exc, requests.exceptions.SSLError):
        return (
            f"the CA's HTTPS certificate is not trusted (set [acme] ca_file for a private CA): {_first(exc)}"
        )
    if isinstance(exc, requests.exceptions.RequestException):
        return f"cannot reach the CA: {type(exc).__name__}: {_first(exc)}"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {_first(exc)}"


def _failures(authzs: Sequence[messages.AuthorizationResource]) -> list[str]:
    found: list[str] = []
    for authz in authzs:
        for challenge in authz.body.challenges:
            error: Any = challenge.error
            if error is not None:
                detail = error.detail or error.typ
                found.append(f"{authz.body.identifier.value} {challenge.chall.typ}: {detail}")
    return found or ["the CA gave no reason"]


def _first(exc: BaseException) -> str:
    """The innermost reason, on one line (requests nests urllib3's errors several deep)."""
    while exc.__context__ is not None and not str(exc):
        exc = exc.__context__
    return " ".join(str(exc).split())[:300]
