"""Maildirs under a mail root: the embedded :class:`~postoffice.storage.MailboxStore`.

:mod:`~postoffice.maildir.names` maps an address to its directory (and back), never letting the
address choose the path; :mod:`~postoffice.maildir.layout` is what a Maildir looks like (its
directories, the names of its files); :mod:`~postoffice.maildir.write` is the delivery recipe;
:mod:`~postoffice.maildir.store` is the store itself (deliver, list, read, set flags, expunge);
:mod:`~postoffice.maildir.watch` follows what other programs change in the Maildirs.
"""
