"""IMAP sessions over the storage seam: what a logged-in mail client may do with its mailbox.

Untrusted input seen here: parsed IMAP commands (:mod:`postoffice.imap`) from a client that
has logged in, and mail other people sent, read through the
:class:`~postoffice.storage.MailboxStore`. Sans-I/O like the SMTP transaction layer
(:mod:`postoffice.smtpd`): no sockets, no event loop; store calls block, so the transport
(:mod:`postoffice.net.imap`) runs each command in a worker thread.
"""
