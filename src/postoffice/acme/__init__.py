"""Automatic certificates from an ACME CA (RFC 8555): the files in ``<data-dir>/acme/``, one
order (in a thread), the HTTP-01 and TLS-ALPN-01 (RFC 8737) challenge responders and the
renewal schedule.

Untrusted input seen here: the CA's answers (:mod:`.order`) and HTTP requests to the challenge
listener (:mod:`.challenges`), TLS server names on the HTTPS listener (:mod:`.alpn`). See docs/certificates.md.
"""
