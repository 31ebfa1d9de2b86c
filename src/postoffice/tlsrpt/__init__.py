"""TLS reporting (RFC 8460): the daily aggregate reports about the TLS of the mail we sent.

Untrusted input seen here: the ``_smtp._tls`` TXT records of the domains we delivered to
(through :mod:`postoffice.mailauth.tlsrpt_record`) and the counts of
:mod:`postoffice.delivery.tlsrpt`, whose names came from DNS.

- :mod:`~postoffice.tlsrpt.report`: the JSON report (§4) and its file name (§5.1);
- :mod:`~postoffice.tlsrpt.message`: the report as a mail message (§5.3);
- :mod:`~postoffice.tlsrpt.sender`: once a day, each finished day's reports, to the ``rua``
  of each domain: mailto: through our own queue (DKIM-signed), https: by POST.
"""
