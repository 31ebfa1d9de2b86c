"""TLS for the SMTP listeners: one server ``ssl.SSLContext`` whose certificate can be re-read.

Untrusted input seen here: none from the network directly (the handshake is OpenSSL's, driven
by asyncio); the certificate and key files the operator names, which OpenSSL parses.

The context is made once and shared by every mail listener: implicit TLS
(``create_server(ssl=)``) and STARTTLS (``loop.start_tls``) alike; the HTTPS listener has a
front context of its own, the one whose handshakes may get a TLS-ALPN-01 validation certificate. :meth:`ServerTls.reload` (SIGHUP) and
:meth:`ServerTls.use` (a certificate from ACME) load the certificate and key into a *new*
context, checked whole, and swap one reference; the shared context's servername callback,
which OpenSSL runs at every ClientHello, moves each new connection onto the newest context.
Sessions already running keep theirs and every new handshake presents the new certificate,
without closing a listener or a connection, and no handshake sees a half-loaded pair.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from cryptography import x509

from postoffice.acme.alpn import TlsAlpnChallenges
from postoffice.acme.certificate import read_certificate_info
from postoffice.acme.files import AcmeFiles
from postoffice.config import Config
from postoffice.errors import ConfigError
from postoffice.net.selfsigned import ensure_self_signed

log = logging.getLogger("postoffice.tls")

# How long a closing TLS session waits for the client's close_notify (and for our last reply to
# leave the TLS layer) before the socket is closed anyway. RFC 8446 §6.1: the side that closes
# need not wait for the peer's close_notify; Postfix does not (tls_fast_shutdown_enable). A
# client that reads our 421 and then neither answers nor hangs up would otherwise hold its
# session for asyncio's default of 30 s.
SHUTDOWN_TIMEOUT = 2.0

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class ServerTls:
    """The server side of TLS: the context, and where its certificate and key come from."""

    def __init__(
        self,
        cert: Path,
        key: Path | None = None,
        *,
        min_version: str = "TLSv1.2",
        config_file: Path | None = None,
        source: str = "file",
    ) -> None:
        self.cert = cert
        self.key = key
        self.source = source
        self._config_file = config_file
        self._min_version = _VERSIONS[min_version]
        # The context every listener and every STARTTLS is given, for good; a new certificate
        # goes into a new context, which _select hands each new connection.
        self.context = self._new_context()
        self._load(self.context)
        self._current = self.context
        self.context.sni_callback = self._select
        # Names an ACME CA is validating by TLS-ALPN-01 (RFC 8737) at this moment, if any, and
        # the HTTPS listener's own front context: the CA validates on port 443 only, so only
        # those handshakes are ever shown a validation certificate, never a mail client's.
        self.alpn_challenges = TlsAlpnChallenges()
        self.https_context = self._new_context()
        self._load(self.https_context)
        self.https_context.sni_callback = self._select
        self.info = read_certificate_info(cert, source)
        log.info("event=tls-loaded cert=%s source=%s%s", cert, source, _expiry(cert))

    @classmethod
    def from_config(cls, config: Config) -> ServerTls:
        """The configured certificate, ACME's, or a self-signed one for the host name (made once)."""
        tls = config.tls
        if tls.cert is not None:
            return cls(tls.cert, tls.key, min_version=tls.min_version, config_file=config.source)
        if config.acme.enabled:
            acme = cls.from_acme(config)
            if acme is not None:
                return acme
        cert, key, made = ensure_self_signed(config.tls_dir, config.hostname)
        if config.acme.enabled:
            log.info("event=tls-self-signed cert=%s: until ACME has a certificate", cert)
        elif made:
            log.warning(
                "event=tls-self-signed cert=%s: no [tls] cert is configured, so a self-signed "
                "certificate for %s was generated; clients will warn about it until you set [tls] cert and key",
                cert,
                config.hostname,
            )
        else:
            log.info("event=tls-self-signed cert=%s: using the self-signed certificate made earlier", cert)
        return cls(cert, key, min_version=tls.min_version, config_file=config.source, source="self-signed")

    @classmethod
    def from_acme(cls, config: Config) -> ServerTls | None:
        """The certificate ACME saved earlier, if there is one that loads."""
        files = AcmeFiles(config.acme_dir)
        if not files.has_certificate():
            return None
        try:
            return cls(files.cert, files.key, min_version=config.tls.min_version, source="acme")
        except ConfigError as exc:
            log.error("event=tls-acme-unusable %s; a self-signed certificate is used until a new one", exc)
            return None

    def _new_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # RFC 8996 retires TLS 1.0/1.1; RFC 8314 §4.1 asks for 1.2 or later.
        context.minimum_version = self._min_version
        # Client certificates are not asked for: AUTH identifies submission users.
        context.verify_mode = ssl.CERT_NONE
        return context

    def _select(
        self, connection: ssl.SSLObject | ssl.SSLSocket, name: str | None, front: ssl.SSLContext
    ) -> None:
        """At each ClientHello (OpenSSL's servername callback runs with or without SNI): the
        connection takes the newest certificate's context. Swapping one reference is atomic,
        so a handshake gets the old certificate and key or the new ones, never a mix, and
        connections already in TLS keep what they had. A name under TLS-ALPN-01 validation gets
        the validation certificate instead on the HTTPS listener (:mod:`postoffice.acme.alpn`)."""
        current = self._current
        if front is self.https_context:
            current = self.alpn_challenges.context_for(name) or current
        if current is not front:
            connection.context = current

    def reload(self) -> bool:
        """Re-read the certificate and key (SIGHUP). On any error the old ones stay in use."""
        try:
            fresh = self._new_context()
            self._load(fresh)
        except ConfigError as exc:
            log.error("event=tls-reload-failed %s; the previous certificate stays in use", exc)
            return False
        self._current = fresh
        self.info = read_certificate_info(self.cert, self.source)
        log.info("event=tls-reloaded cert=%s source=%s%s", self.cert, self.source, _expiry(self.cert))
        return True

    def use(self, cert: Path, key: Path | None, source: str) -> bool:
        """Switch to another certificate (ACME's first one); False keeps the current one."""
        previous = (self.cert, self.key, self.source)
        self.cert, self.key, self.source = cert, key, source
        if self.reload():
            return True
        self.cert, self.key, self.source = previous
        return False

    def _load(self, context: ssl.SSLContext) -> None:
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
            files = f"{self.cert}" + (f" and {self.key}" if self.key is not None else "")
            raise ConfigError(
                f"cannot load the certificate and key from {files}: {reason}",
                key="tls.cert",
                path=str(self._config_file) if self._config_file is not None else None,
            ) from None


def _expiry(cert: Path) -> str:
    """`` expires=<date>`` for the first certificate in the file, for the log."""
    try:
        first = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError):
        return ""
    return f" subject={first.subject.rfc4514_string()} expires={first.not_valid_after_utc:%Y-%m-%d}"
