"""Automatic certificates from an ACME CA (RFC 8555): the files in ``<data-dir>/acme/``, one
order (in a thread), the HTTP-01 challenge responder and the renewal schedule.

Untrusted input seen here: the CA's answers (:mod:`.order`) and HTTP requests to the challenge
listener (:mod:`.challenges`). See docs/certificates.md.
"""
