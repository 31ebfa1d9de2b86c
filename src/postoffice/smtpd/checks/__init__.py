"""The checks the server runs by default (see :func:`postoffice.smtpd.standard.standard_stages`).

Untrusted input seen here: whatever the context carries from the client; each module says what
it looks at.
"""
