"""Moving a server's stores to other stores: ``postoffice migrate-store`` (docs/cluster.md).

Untrusted input seen here: what the source stores hold (message bytes from SMTP clients,
folder and keyword names mail clients chose, envelopes and state logs), copied as data through
the storage seams and never parsed.

Everything goes through the seams only (:class:`~postoffice.storage.MailboxStore`,
:class:`~postoffice.storage.MessageStore` and the accounts), so the same code moves an embedded
data directory into a cluster's PostgreSQL database, a database back into a data directory, or
one data directory into another. :mod:`.accounts` copies users (their password hashes, not
passwords) and aliases (and :func:`~postoffice.mailauth.dkim_keys.copy_keys` the DKIM keys),
:mod:`.mailboxes` every folder, message, flag, keyword and subscription,
:mod:`.queue` the queued messages with their envelopes and delivery state; :mod:`.run` puts
them together and :mod:`.tally` counts.

A run that stops half-way and is started again copies only what is missing: users and aliases
are set, not added; a mailbox message already in its target folder with the same bytes
(SHA-256) is skipped; a queued message carries its source queue ID in its envelope, so the
target's queue says what it holds already.
"""
