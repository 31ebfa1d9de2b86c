"""Automatic certificates from an ACME CA (RFC 8555): the account, the order, the HTTP-01
challenge and the renewal schedule. See docs/certificates.md."""
